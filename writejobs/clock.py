"""Time, injected: every deadline and timestamp is computed from a `Clock`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands datetimes back without a zone; everything we store is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def iso(value: datetime) -> str:
    """RFC 3339 with a `Z`, as the contract's examples spell times."""
    return as_utc(value).isoformat().replace("+00:00", "Z")
