"""Operations the intake committed but could not hand to Redis, and taking them back.

An accepted asynchronous write is an operation row first; sending its task (or
appending it to its auto-batch buffer) comes after, and Redis may be away for
that second. The row then stays `queued` (or `pending`) with
`handoff_failed_at` set, and the scheduler's hand-off sweep sends it as soon as
Redis answers. Only failures are written, so a healthy intake pays nothing, and
a healthy backlog waiting in the Celery queue is never mistaken for lost work.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from writejobs.core.operations import State
from writejobs.store.tables import Operation

_NO_SYNC = {"synchronize_session": False}
# The states a failed hand-off leaves an operation in; any other means it got through.
_WAITING = (State.PENDING.value, State.QUEUED.value)


def mark_failed(session: Session, operation_ids: list[str], *, now: datetime) -> None:
    """Note that these operations' hand-off failed at `now` (committed by the caller)."""
    statement = (
        update(Operation)
        .where(Operation.id.in_(operation_ids), Operation.state.in_(_WAITING))
        .values(handoff_failed_at=now)
    )
    session.execute(statement, execution_options=_NO_SYNC)


def take_failed(session: Session, *, now: datetime, limit: int = 1000) -> list[Operation]:
    """Clear the mark of (at most `limit`) marked operations and return those still waiting.

    The mark is cleared in one compare-and-set UPDATE, so of several schedulers
    only one takes each operation. Marks on operations that moved on (the send
    that "failed" got through after all) are simply cleared. Not committed: the
    caller commits with its log lines, then sends.
    """
    marked = (
        select(Operation.id)
        .where(Operation.handoff_failed_at.is_not(None))
        .order_by(Operation.handoff_failed_at)
        .limit(limit)
    )
    statement = (
        update(Operation)
        .where(Operation.handoff_failed_at.is_not(None), Operation.id.in_(marked))
        .values(handoff_failed_at=None, updated_at=now)
        .returning(Operation.id)
    )
    taken = list(session.scalars(statement, execution_options=_NO_SYNC))
    if not taken:
        return []
    rows = session.scalars(
        select(Operation)
        .where(Operation.id.in_(taken), Operation.state.in_(_WAITING))
        .order_by(Operation.created_at)
    )
    return list(rows)
