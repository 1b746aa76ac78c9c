"""Queries on idempotency keys. Like every repository, none of these commits: the
caller owns the transaction (a key is inserted in its operation's)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, delete, insert, update
from sqlalchemy.orm import Session

from writejobs.store.tables import IdempotencyKey

IN_FLIGHT = "in_flight"
DONE = "done"

_KEYS: Table = IdempotencyKey.__table__  # type: ignore[assignment]
_NO_SYNC = {"synchronize_session": False}


def key_row(
    project_id: str,
    key: str,
    fingerprint: str,
    operation_id: str,
    *,
    now: datetime,
    ttl_s: float,
    answer: tuple[int, str] | None,
) -> dict[str, Any]:
    """A new key as an INSERT's values: `done` with `answer` (status, body), else `in_flight`."""
    return {
        "project_id": project_id,
        "key": key,
        "fingerprint": fingerprint,
        "state": IN_FLIGHT if answer is None else DONE,
        "operation_id": operation_id,
        "response_status": None if answer is None else answer[0],
        "response_body": None if answer is None else answer[1],
        "created_at": now,
        "expires_at": now + timedelta(seconds=ttl_s),
    }


def insert_keys(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert new keys; a key the project already holds raises `IntegrityError`
    (the primary key is the claim, atomic across processes on SQLite and PostgreSQL)."""
    if rows:
        session.execute(insert(_KEYS), rows)


def get_key(session: Session, project_id: str, key: str) -> IdempotencyKey | None:
    return session.get(IdempotencyKey, (project_id, key), populate_existing=True)


def finish(
    session: Session, project_id: str, key: str, operation_id: str, status: int, body: str
) -> bool:
    """Store the answer of an `in_flight` key that names `operation_id`; say if it did."""
    statement = (
        update(IdempotencyKey)
        .where(
            IdempotencyKey.project_id == project_id,
            IdempotencyKey.key == key,
            IdempotencyKey.operation_id == operation_id,
            IdempotencyKey.state == IN_FLIGHT,
        )
        .values(state=DONE, response_status=status, response_body=body)
    )
    return _changed(session.execute(statement, execution_options=_NO_SYNC))


def settle_abandoned(
    session: Session,
    project_id: str,
    key: str,
    *,
    claimed_before: datetime,
    status: int,
    body: str,
) -> bool:
    """Give an `in_flight` key claimed before `claimed_before` (its request died) an answer."""
    statement = (
        update(IdempotencyKey)
        .where(
            IdempotencyKey.project_id == project_id,
            IdempotencyKey.key == key,
            IdempotencyKey.state == IN_FLIGHT,
            IdempotencyKey.created_at < claimed_before,
        )
        .values(state=DONE, response_status=status, response_body=body)
    )
    return _changed(session.execute(statement, execution_options=_NO_SYNC))


def release(session: Session, project_id: str, key: str, operation_id: str) -> bool:
    """Free a key whose request ended without an answer worth keeping (a 5xx)."""
    statement = delete(IdempotencyKey).where(
        IdempotencyKey.project_id == project_id,
        IdempotencyKey.key == key,
        IdempotencyKey.operation_id == operation_id,
    )
    return _changed(session.execute(statement, execution_options=_NO_SYNC))


def drop_expired(session: Session, project_id: str, key: str, *, now: datetime) -> bool:
    """Delete this key if it has expired, so the request that found it may claim it anew."""
    statement = delete(IdempotencyKey).where(
        IdempotencyKey.project_id == project_id,
        IdempotencyKey.key == key,
        IdempotencyKey.expires_at <= now,
    )
    return _changed(session.execute(statement, execution_options=_NO_SYNC))


def purge_expired(session: Session, *, now: datetime) -> int:
    """Delete every expired key; how many."""
    statement = delete(IdempotencyKey).where(IdempotencyKey.expires_at <= now)
    result = session.execute(statement, execution_options=_NO_SYNC)
    count: int = result.rowcount  # type: ignore[attr-defined]
    return count


def _changed(result: Any) -> bool:
    return bool(result.rowcount == 1)
