"""An installation's operations, newest first, a page at a time: keyset pages bound by
the row value `(created_at, id)`, which the index on (installation_id, created_at, id)
seeks to at any depth (no OFFSET)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from writejobs.clock import as_utc, iso
from writejobs.store.tables import Operation


@dataclass(frozen=True, slots=True)
class Page:
    operations: list[Operation]
    next_token: str | None


def list_installation_operations(
    session: Session, installation_id: str, *, page_size: int, page_token: str | None
) -> Page:
    """Newest first, keyset-paginated on (created_at, id) so pages never skip or repeat.

    The token names the last row served; the next page starts strictly below it.
    The bound is one row-value comparison, `(created_at, id) < (:t, :id)`, so
    PostgreSQL and SQLite seek straight to it in `ix_operations_installation_created`
    (installation_id, created_at, id), read backwards: a page deep into a million
    rows costs what the first one does. The same bound written as `created_at < :t
    OR (created_at = :t AND id < :id)` is no index range to PostgreSQL, which then
    filters every newer row: 166 ms at depth 500,000 of 1,000,000 rows against
    0.03 ms (bench/read_bench.py).
    """
    statement = select(Operation).where(Operation.installation_id == installation_id)
    if page_token is not None:
        created_at, op_id = decode_page_token(page_token)
        statement = statement.where(
            tuple_(Operation.created_at, Operation.id) < tuple_(created_at, op_id)
        )
    statement = statement.order_by(Operation.created_at.desc(), Operation.id.desc())
    rows = list(session.scalars(statement.limit(page_size + 1)))
    if len(rows) <= page_size:
        return Page(rows, None)
    last = rows[page_size - 1]
    return Page(rows[:page_size], encode_page_token(as_utc(last.created_at), last.id))


def encode_page_token(created_at: datetime, operation_id: str) -> str:
    raw = json.dumps([iso(created_at), operation_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[datetime, str]:
    """Raise ValueError for a token we did not make."""
    try:
        padded = token + "=" * (-len(token) % 4)
        created, op_id = json.loads(base64.urlsafe_b64decode(padded))
        return datetime.fromisoformat(created.replace("Z", "+00:00")), str(op_id)
    except Exception as exc:  # any malformed token is the caller's error
        raise ValueError("pageToken is not valid") from exc
