"""The stalled-work sweep: send again the task of work that nobody is doing.

A task can be lost without a trace: a worker SIGKILLed while holding it (Redis
redelivers only after its visibility timeout, an hour), or a broker that lost
its data. SQL still says the work is `queued`, or `running` under a lease that
lapsed. Sending its task again is safe: the state machine lets exactly one
delivery run it, and the others find nothing to do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from writejobs.execution.settle import expire
from writejobs.store import operations_repo

log = logging.getLogger(__name__)


def requeue_stalled(
    sessions: sessionmaker[Session],
    send_operation: Callable[[str], None],
    send_batch: Callable[[str], None],
    *,
    now: datetime,
    stalled_after_s: float,
    limit: int = 1000,
) -> list[str]:
    """Send again the tasks of stalled operations; return the task ids (op or batch) sent."""
    with sessions() as session:
        stuck = operations_repo.stalled(
            session, now=now, queued_before=now - timedelta(seconds=stalled_after_s), limit=limit
        )
        batches = sorted({op.batch_id for op in stuck if op.batch_id is not None})
        singles = [op.id for op in stuck if op.batch_id is None]
        for state in ("queued", "running", "retrying"):
            ids = [op.id for op in stuck if op.state == state]
            if ids:
                operations_repo.touch(session, ids, state, now=now)
        for op in stuck:
            operations_repo.add_log(
                session,
                op.id,
                "task sent again: the operation stalled",
                now=now,
                severity="WARNING",
                details={"state": op.state},
            )
        session.commit()
    for batch_id in batches:
        log.warning("batch %s: stalled; sending its task again", batch_id)
        send_batch(batch_id)
    for op_id in singles:
        log.warning("operation %s: stalled; sending its task again", op_id)
        send_operation(op_id)
    return batches + singles


def expire_overdue(
    sessions: sessionmaker[Session], *, now: datetime, grace_s: float, limit: int = 1000
) -> list[str]:
    """The deadline watchdog: end what is still unfinished `grace_s` after its deadline.

    Workers expire operations themselves when no attempt fits before the
    deadline; this catches the rest (a wait lost with Redis, a dead scheduler),
    so nothing stays `in_progress` forever.
    """
    expired: list[str] = []
    with sessions() as session:
        overdue = operations_repo.overdue(
            session, deadline_before=now - timedelta(seconds=grace_s), now=now, limit=limit
        )
        for op in overdue:
            reason = f"watchdog: still {op.state} {grace_s:g}s after its deadline"
            if expire(session, op, reason, now=now):
                log.warning("operation %s: expired by the watchdog (was %s)", op.id, op.state)
                expired.append(op.id)
    return expired
