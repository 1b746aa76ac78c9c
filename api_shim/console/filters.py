"""The console's query parameters, read strictly, and the words its pages show.

A bad parameter is the caller's error: `BadFilter` carries one line naming it,
answered as a 400 text/plain like every other bad request of the API.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from writejobs.clock import as_utc
from writejobs.core.operations import FAILURES, State
from writejobs.store.console_queries import OperationFilter
from writejobs.store.operations_repo import decode_page_token, encode_page_token

PUBLIC_STATUSES: dict[str, tuple[str, ...]] = {
    "in_progress": (
        State.PENDING.value,
        State.QUEUED.value,
        State.RUNNING.value,
        State.RETRYING.value,
    ),
    "success": (State.SUCCEEDED.value, State.PARTIALLY_SUCCEEDED.value),
    "failure": tuple(s.value for s in FAILURES),
}
STATES: tuple[str, ...] = tuple(s.value for s in State)
# Quick time windows offered next to the since/until fields.
WINDOWS: dict[str, timedelta] = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}
_MAX_OBJECT = 200


class BadFilter(ValueError):
    """A query parameter the console cannot use; the message names it."""


@dataclass(frozen=True, slots=True)
class OperationQuery:
    """The operations page's filters as given (for the form) and as the store reads them."""

    status: str = ""
    object_name: str = ""
    since: str = ""
    until: str = ""
    window: str = ""
    before: tuple[datetime, str] | None = None

    def store_filter(self, now: datetime) -> OperationFilter:
        states: tuple[str, ...] | None = None
        if self.status in PUBLIC_STATUSES:
            states = PUBLIC_STATUSES[self.status]
        elif self.status:
            states = (self.status,)
        since = _parse_time("since", self.since) if self.since else None
        if self.window:
            since = now - WINDOWS[self.window]
        until = _parse_time("until", self.until) if self.until else None
        if since is not None and until is not None and since >= until:
            raise BadFilter("since must be before until")
        return OperationFilter(states, self.object_name or None, since, until)

    def params(self, **changes: str) -> dict[str, str]:
        """The filter as query parameters (for links), without the page position."""
        current = {
            "status": self.status,
            "object": self.object_name,
            "since": self.since,
            "until": self.until,
            "window": self.window,
        }
        current.update(changes)
        return {k: v for k, v in current.items() if v}


def read_query(
    status: str | None,
    object_name: str | None,
    since: str | None,
    until: str | None,
    window: str | None,
    before: str | None,
) -> OperationQuery:
    """Check each parameter; raise BadFilter naming the first that is wrong."""
    status = (status or "").strip()
    if status and status not in PUBLIC_STATUSES and status not in STATES:
        raise BadFilter(f"status must be one of {', '.join([*PUBLIC_STATUSES, *STATES])}")
    object_name = (object_name or "").strip()
    if len(object_name) > _MAX_OBJECT:
        raise BadFilter(f"object is longer than {_MAX_OBJECT} characters")
    window = (window or "").strip()
    if window and window not in WINDOWS:
        raise BadFilter(f"window must be one of {', '.join(WINDOWS)}")
    since, until = (since or "").strip(), (until or "").strip()
    for name, value in (("since", since), ("until", until)):
        if value:
            _parse_time(name, value)
    position = None
    if before:
        try:
            position = decode_page_token(before)
        except ValueError:
            raise BadFilter("before is not a page position this console made") from None
    return OperationQuery(status, object_name, since, until, window, position)


def page_token(position: tuple[datetime, str]) -> str:
    return encode_page_token(as_utc(position[0]), position[1])


def _parse_time(name: str, value: str) -> datetime:
    """An ISO 8601 time (a browser's datetime-local `2026-11-24T09:30` included), UTC
    when it names no zone."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadFilter(f"{name} is not a time like 2026-11-24T09:30 (UTC)") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def encode_cursor(parts: tuple[str, ...]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode().rstrip("=")


def decode_cursor(token: str, size: int) -> tuple[str, ...]:
    try:
        parts = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:
        raise BadFilter("after is not a page position this console made") from None
    if not isinstance(parts, list) or len(parts) != size:
        raise BadFilter("after is not a page position this console made")
    if not all(isinstance(p, str) for p in parts):
        raise BadFilter("after is not a page position this console made")
    return tuple(parts)


def age(then: datetime | None, now: datetime) -> str:
    """How long ago, in the largest whole unit: `42 s`, `3 min`, `5 h`, `2 d`."""
    if then is None:
        return ""
    seconds = max(0, int((now - as_utc(then)).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def shown_count(n: int, cap: int) -> str:
    return f"{cap:,}+" if n > cap else f"{n:,}"
