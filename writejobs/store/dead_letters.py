"""A project's operations by filter, newest first: the dead letters an operator replays.

Dead letters are the operations whose public status is `failure` (`failed`,
`expired`, `cancelled`); the same read serves any states. Like the console's
reads (`store.console_queries`), a page is one keyset range per state of an
index, `(created_at, id) < (:t, :id)`, merged newest first: the project's
(`ix_operations_project_state_created`) or, with an installation, the
installation's (with an object, the one that has it). `since`/`until` bound the
time the write was accepted. The `error` filter (a case-insensitive substring
of the last error or the result) is applied within those ranges, so a rare
error costs a longer scan, never a wrong page. Read-only; never commits.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, func, or_, select, tuple_
from sqlalchemy.orm import Session

from writejobs.clock import as_utc
from writejobs.core.operations import FAILURES
from writejobs.store.operations_repo import decode_page_token, encode_page_token
from writejobs.store.tables import Operation

MAX_ERROR_FILTER_CHARS = 200


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which of a project's operations to list. Empty `states`: the failures."""

    states: tuple[str, ...] = ()
    installation_id: str | None = None
    object_name: str | None = None
    since: datetime | None = None  # accepted at or after
    until: datetime | None = None  # accepted before
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Page:
    operations: list[Operation]
    next_token: str | None


def _ranges(
    project_id: str, flt: DeadLetterFilter, before: tuple[datetime, str] | None
) -> list[Select[Operation]]:
    base: Select[Operation] = select(Operation).where(Operation.project_id == project_id)
    if flt.installation_id is not None:
        base = base.where(Operation.installation_id == flt.installation_id)
    if flt.object_name is not None:
        base = base.where(Operation.object_name == flt.object_name)
    if flt.since is not None:
        base = base.where(Operation.created_at >= flt.since)
    if flt.until is not None:
        base = base.where(Operation.created_at < flt.until)
    if before is not None:
        base = base.where(tuple_(Operation.created_at, Operation.id) < tuple_(*before))
    if flt.error:
        needle = flt.error.lower()
        base = base.where(
            or_(
                func.lower(Operation.last_error).contains(needle, autoescape=True),
                func.lower(Operation.result_summary).contains(needle, autoescape=True),
            )
        )
    states = flt.states or tuple(s.value for s in FAILURES)
    return [base.where(Operation.state == state) for state in states]


def list_page(
    session: Session,
    project_id: str,
    flt: DeadLetterFilter,
    *,
    page_size: int,
    page_token: str | None = None,
) -> Page:
    """The project's operations matching `flt`, newest first, `page_size` at a time.

    Raises ValueError for a `page_token` this did not make.
    """
    before = None if page_token is None else decode_page_token(page_token)
    newest_first = (Operation.created_at.desc(), Operation.id.desc())
    runs = [
        list(session.scalars(q.order_by(*newest_first).limit(page_size + 1)))
        for q in _ranges(project_id, flt, before)
    ]
    merged = list(heapq.merge(*runs, key=_sort_key, reverse=True))[: page_size + 1]
    if len(merged) <= page_size:
        return Page(merged, None)
    last = merged[page_size - 1]
    return Page(merged[:page_size], encode_page_token(as_utc(last.created_at), last.id))


def _sort_key(op: Operation) -> tuple[datetime, str]:
    return (as_utc(op.created_at), op.id)


def collect(
    session: Session, project_id: str, flt: DeadLetterFilter, limit: int
) -> list[Operation]:
    """Up to `limit` of the matching operations, newest first, page by page."""
    found: list[Operation] = []
    token: str | None = None
    while len(found) < limit:
        page = list_page(
            session, project_id, flt, page_size=min(500, limit - len(found)), page_token=token
        )
        found.extend(page.operations)
        if page.next_token is None:
            break
        token = page.next_token
    return found
