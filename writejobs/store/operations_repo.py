"""Queries on operations and their logs; the only code that moves an operation's state.

Like every repository, it never commits: the caller owns the transaction (a batch
settles all its members in one; a sync write records its row before the call).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from writejobs.core.operations import TERMINAL, State

# The state machine's moves live in operation_moves; callers reach them through here too.
from writejobs.store.bulk_insert import insert_rows
from writejobs.store.id_sets import among
from writejobs.store.operation_moves import _may_enter, defer_log
from writejobs.store.operation_moves import assign_batch as assign_batch
from writejobs.store.operation_moves import assign_batch_ids as assign_batch_ids
from writejobs.store.operation_moves import count_finished as count_finished
from writejobs.store.operation_moves import deferred as deferred
from writejobs.store.operation_moves import take_batch as take_batch
from writejobs.store.operation_moves import take_operation as take_operation
from writejobs.store.operation_moves import transition as transition

# An installation's operations page by page live in operation_pages, reached here too.
from writejobs.store.operation_pages import Page as Page
from writejobs.store.operation_pages import decode_page_token as decode_page_token
from writejobs.store.operation_pages import encode_page_token as encode_page_token
from writejobs.store.operation_pages import (
    list_installation_operations as list_installation_operations,
)
from writejobs.store.tables import Operation, OperationLog, OperationPayload

log = logging.getLogger(__name__)

# Bulk UPDATEs must not evaluate their WHERE against objects in the session:
# SQLite hands datetimes back without a zone, so the comparison would raise.
# Callers refresh the objects they keep using.
_NO_SYNC = {"synchronize_session": False}
_OPERATIONS: Table = Operation.__table__  # type: ignore[assignment]
_LOGS: Table = OperationLog.__table__  # type: ignore[assignment]


def insert_operation(session: Session, operation: Operation) -> None:
    """Insert a new operation with one Core INSERT (the ORM's unit of work costs more
    than the write itself at intake); `operation` stays a detached, readable object."""
    session.execute(insert(_OPERATIONS), [operation_row(operation)])


def operation_row(operation: Operation) -> dict[str, Any]:
    """A new operation as an INSERT's values. Unset attributes are left out, so the
    columns' own defaults apply (and a JSON column is SQL NULL, not JSON null)."""
    row = {c.key: getattr(operation, c.key) for c in Operation.__table__.columns}
    return {key: value for key, value in row.items() if value is not None}


def get_operation(session: Session, operation_id: str) -> Operation | None:
    return session.get(Operation, operation_id)


def get_project_operation(session: Session, project_id: str, operation_id: str) -> Operation | None:
    """The operation if it is the project's; a foreign id looks exactly like an unknown one."""
    op = session.get(Operation, operation_id)
    return op if op is not None and op.project_id == project_id else None


def add_log(
    session: Session,
    operation_id: str,
    msg: str,
    *,
    now: datetime,
    severity: str = "INFO",
    error: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append one line to an operation's story (committed by the caller)."""
    row = log_row(operation_id, msg, now=now, severity=severity, error=error, details=details)
    if not defer_log(session, row):
        session.execute(insert(_LOGS), [row])


def log_row(
    operation_id: str,
    msg: str,
    *,
    now: datetime,
    severity: str = "INFO",
    error: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One log line as an INSERT's values."""
    return {
        "operation_id": operation_id,
        "timestamp": now,
        "severity": severity,
        "msg": msg,
        "error": error,
        "details": {k: str(v) for k, v in (details or {}).items()},
    }


def add_logs(session: Session, rows: list[dict[str, Any]]) -> None:
    """Append many log lines in one statement: {operation_id, msg, timestamp, details, …}."""
    if rows:
        filled = [{"severity": "INFO", "error": None, "details": {}, **row} for row in rows]
        for row in filled:
            row["details"] = {k: str(v) for k, v in row["details"].items()}
        if not all(defer_log(session, row) for row in filled):
            insert_rows(session, _LOGS, filled)


def list_logs(session: Session, operation_id: str) -> list[OperationLog]:
    statement = (
        select(OperationLog)
        .where(OperationLog.operation_id == operation_id)
        .order_by(OperationLog.id)
    )
    return list(session.scalars(statement))


def stale_pending(session: Session, *, older_than: datetime, limit: int) -> list[Operation]:
    """Pending operations accepted before `older_than`: candidates for the recovery sweep."""
    statement = (
        select(Operation)
        .where(Operation.state == State.PENDING.value, Operation.created_at < older_than)
        .order_by(Operation.created_at)
        .limit(limit)
    )
    return list(session.scalars(statement))


def stalled(
    session: Session,
    *,
    now: datetime,
    queued_before: datetime,
    limit: int,
    lapsed_before: datetime | None = None,
) -> list[Operation]:
    """Operations whose task may be lost, untouched since `queued_before`: queued,
    running under a lease that lapsed (the worker holding it died), or retrying
    long past their time (the scheduler that released the wait died).

    An asynchronous operation's lease is kept alive by its worker's heartbeat
    (`store.leases`), so a lapsed one means a dead worker: it counts once it is
    untouched since `lapsed_before` (a lease ago), not `queued_before`.

    Never a synchronous write: it had its one attempt in its request, whose
    client may have sent it again; the watchdog ends one its API process left.
    """
    lapsed_before = lapsed_before or queued_before
    statement = (
        select(Operation)
        .where(
            Operation.mode != "synchronous",
            or_(
                and_(
                    Operation.state == State.QUEUED.value,
                    Operation.updated_at < queued_before,
                    # A queued row the gate deferred counts once its wait is long over.
                    or_(
                        Operation.next_attempt_at.is_(None),
                        Operation.next_attempt_at < queued_before,
                    ),
                ),
                and_(
                    Operation.state == State.RUNNING.value,
                    Operation.lease_expires_at < now,
                    Operation.updated_at < lapsed_before,
                ),
                and_(
                    Operation.state == State.RETRYING.value,
                    Operation.next_attempt_at < queued_before,
                    Operation.updated_at < queued_before,
                ),
            ),
        )
        .order_by(Operation.updated_at)
        .limit(limit)
    )
    return list(session.scalars(statement))


def touch(session: Session, operation_ids: list[str], state: str, *, now: datetime) -> None:
    """Mark operations as looked after now, if still in `state` (so a sweep resends once)."""
    statement = (
        update(Operation)
        .where(Operation.id.in_(operation_ids), Operation.state == state)
        .values(updated_at=now)
    )
    session.execute(statement, execution_options=_NO_SYNC)


def overdue(
    session: Session, *, deadline_before: datetime, now: datetime, limit: int
) -> list[Operation]:
    """Non-terminal operations whose deadline passed before `deadline_before`.

    A running one counts only when its lease lapsed: a live worker finishes it.
    """
    waiting = [State.PENDING.value, State.QUEUED.value, State.RETRYING.value]
    statement = (
        select(Operation)
        .where(
            Operation.deadline_at < deadline_before,
            or_(
                Operation.state.in_(waiting),
                and_(Operation.state == State.RUNNING.value, Operation.lease_expires_at < now),
            ),
        )
        .limit(limit)
    )
    return list(session.scalars(statement))


def reassign_batch(session: Session, operation_ids: list[str], batch_id: str, at: datetime) -> None:
    """Put retrying members into a retry batch that runs at `at` (one time for all)."""
    statement = (
        update(Operation)
        .where(Operation.id.in_(operation_ids), Operation.state == State.RETRYING.value)
        .values(batch_id=batch_id, next_attempt_at=at)
    )
    session.execute(statement, execution_options=_NO_SYNC)


def store_payload(session: Session, operation_id: str, content: bytes) -> None:
    """Keep a bulk write's inline CSV (committed by the caller, with its operation)."""
    session.execute(insert(OperationPayload), [{"operation_id": operation_id, "content": content}])


def load_payload(session: Session, operation_id: str) -> bytes | None:
    statement = select(OperationPayload.content).where(
        OperationPayload.operation_id == operation_id
    )
    content: bytes | None = session.scalar(statement)
    return content


def delete_payload(session: Session, operation_id: str) -> None:
    """Drop an ended operation's CSV (committed by the caller)."""
    session.execute(delete(OperationPayload).where(OperationPayload.operation_id == operation_id))


def set_provider_job(session: Session, operation_id: str, job_id: str | None) -> None:
    """Remember (or forget) the provider job a running bulk operation follows."""
    statement = (
        update(Operation)
        .where(Operation.id == operation_id, Operation.state == State.RUNNING.value)
        .values(provider_job_id=job_id)
    )
    session.execute(statement, execution_options=_NO_SYNC)


def renew_lease(session: Session, operation_id: str, *, now: datetime, lease_s: float) -> bool:
    """Extend a running operation's lease while its worker is still on it.

    False when the operation is no longer running (the watchdog ended it), so
    the worker stops.
    """
    statement = (
        update(Operation)
        .where(Operation.id == operation_id, Operation.state == State.RUNNING.value)
        .values(lease_expires_at=now + timedelta(seconds=lease_s))
    )
    renewed: bool = session.execute(statement, execution_options=_NO_SYNC).rowcount == 1  # type: ignore[attr-defined]
    return renewed


def note_waiting(
    session: Session,
    operation_ids: list[str],
    reason: str,
    *,
    now: datetime,
    until: datetime,
) -> list[str]:
    """Hold queued or due retrying operations back until `until`, saying why (no attempt).

    Their `next_attempt_at` becomes `until` (so a retrying one cannot be started
    earlier) and `waiting_since` is kept from the first time; returns the ids held.
    """
    waiting = frozenset({State.QUEUED, State.RETRYING})
    statement = (
        update(Operation)
        .where(Operation.id.in_(operation_ids), _may_enter(State.RUNNING, now, waiting))
        .values(
            waiting_reason=reason,
            waiting_since=func.coalesce(Operation.waiting_since, now),
            next_attempt_at=until,
            updated_at=now,
        )
        .returning(Operation.id)
    )
    return list(session.scalars(statement, execution_options=_NO_SYNC))


def release_waiting(
    session: Session, installation_id: str, reason: str, *, now: datetime, limit: int
) -> list[tuple[str, str | None]]:
    """Make up to `limit` of an installation's operations held for `reason` due now and
    no longer waiting; (id, batch id) of each. The caller commits, then sends their tasks.

    Rows another transaction holds are skipped (PostgreSQL's SKIP LOCKED; SQLite has one
    writer at a time anyway): a release never waits on a worker taking a batch, so it
    cannot deadlock with one, whatever order each locks its rows in. The rows it
    releases stop matching (`waiting_reason` is cleared), so the caller calls again
    until none is returned; `count_waiting` tells whether skipped ones remain. Taken
    in batch order, so only the greatest batch id returned may have members left.
    """
    held = (
        select(Operation.id)
        .where(_held_for(installation_id, reason))
        # A batch's members together (singles first), so a chunk splits at most one.
        .order_by(func.coalesce(Operation.batch_id, ""), Operation.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    statement = (
        update(Operation)
        .where(Operation.id.in_(held.scalar_subquery()))
        .values(next_attempt_at=now, waiting_reason=None, waiting_since=None, updated_at=now)
        .returning(Operation.id, Operation.batch_id)
    )
    return [(row[0], row[1]) for row in session.execute(statement, execution_options=_NO_SYNC)]


def count_waiting(session: Session, installation_id: str, reason: str) -> int:
    """How many of an installation's operations are held for `reason` (locked ones too)."""
    statement = select(func.count()).where(_held_for(installation_id, reason))
    return int(session.scalar(statement) or 0)


def _held_for(installation_id: str, reason: str) -> ColumnElement[bool]:
    return and_(
        Operation.installation_id == installation_id,
        Operation.state.in_([State.QUEUED.value, State.RETRYING.value]),
        Operation.waiting_reason == reason,
    )


def request_cancel(session: Session, operation_id: str, *, now: datetime) -> bool:
    """Mark an unfinished operation as to be cancelled; False when it has ended (or is
    unknown). Taking the row first makes the caller's next read of it current."""
    statement = (
        update(Operation)
        .where(
            Operation.id == operation_id,
            Operation.state.not_in([s.value for s in TERMINAL]),
        )
        .values(cancel_requested_at=func.coalesce(Operation.cancel_requested_at, now))
    )
    marked: bool = session.execute(statement, execution_options=_NO_SYNC).rowcount == 1  # type: ignore[attr-defined]
    return marked


def cancel_requested(session: Session, operation_id: str) -> bool:
    """Whether a cancel was asked for, read now (not from a loaded object)."""
    statement = select(Operation.cancel_requested_at).where(Operation.id == operation_id)
    return session.scalar(statement) is not None


def cancels_requested(session: Session, operation_ids: list[str]) -> set[str]:
    """Which of these operations a cancel was asked for, in one read."""
    statement = select(Operation.id).where(
        among(session, Operation.id, operation_ids), Operation.cancel_requested_at.is_not(None)
    )
    return set(session.scalars(statement))


def replay_of(session: Session, original_id: str) -> str | None:
    """The id of the operation that replays `original_id`, if there is one."""
    statement = select(Operation.id).where(Operation.replay_of == original_id)
    found: str | None = session.scalar(statement)
    return found
