"""The recovery sweeps: send again the task of work that nobody is doing.

Work the intake could not hand to Redis (a Redis restart) is marked so, and
is sent again within a sweep of Redis answering (`retry_handoffs`).

A task can be lost without a trace: a worker SIGKILLed while holding it (Redis
redelivers only after its visibility timeout, an hour), or a broker that lost
its data. SQL still says the work is `queued`, or `running` under a lease that
lapsed. Sending its task again is safe: the state machine lets exactly one
delivery run it, and the others find nothing to do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from writejobs.core.operations import State
from writejobs.execution.settle import expire
from writejobs.store import handoffs, operations_repo
from writejobs.store.tables import Operation

log = logging.getLogger(__name__)


def requeue_stalled(
    sessions: sessionmaker[Session],
    send_operation: Callable[[str], None],
    send_batch: Callable[[str], None],
    *,
    now: datetime,
    stalled_after_s: float,
    running_lease_s: float | None = None,
    limit: int = 1000,
    waiting: Callable[[Iterable[tuple[str, str]]], set[str]] | None = None,
) -> list[str]:
    """Send again the tasks of stalled operations; return the task ids (op or batch) sent.

    A `running` operation whose heartbeat-kept lease lapsed is sent again once it
    is a lease (`running_lease_s`) untouched, not the whole `stalled_after_s`.
    `waiting` tells, of (installation id, `op:<id>` / `batch:<id>`) pairs, which
    wait their turn in the fair-share admission (grouping/admission.py): those are
    not stalled, only behind their installation's backlog, and are left alone.
    """
    lapsed_s = stalled_after_s if running_lease_s is None else running_lease_s
    with sessions() as session:
        stuck = operations_repo.stalled(
            session,
            now=now,
            queued_before=now - timedelta(seconds=stalled_after_s),
            lapsed_before=now - timedelta(seconds=lapsed_s),
            limit=limit,
        )
        if waiting is not None and stuck:
            queued = waiting((op.installation_id, _member(op)) for op in stuck)
            stuck = [op for op in stuck if _member(op) not in queued]
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


def retry_handoffs(
    sessions: sessionmaker[Session],
    send_operation: Callable[[str], None],
    send_batch: Callable[[str], None],
    rebuffer: Callable[[list[Operation]], list[str]],
    *,
    now: datetime,
    limit: int = 1000,
) -> list[str]:
    """Hand off again the operations whose hand-off failed at intake; return their ids.

    No grace period: the mark says the hand-off is known to have failed, so
    nothing else is about to send them. Queued operations get their task (or,
    flushed into a batch, their batch's task); pending ones are buffered. A
    send that fails puts the marks of those not yet sent back, for the next pass.
    """
    with sessions() as session:
        taken = handoffs.take_failed(session, now=now, limit=limit)
        operations_repo.add_logs(
            session,
            [
                {
                    "operation_id": op.id,
                    "timestamp": now,
                    "msg": "queue available again: handing the write off",
                }
                for op in taken
            ],
        )
        session.commit()
    pending = [op for op in taken if op.state == State.PENDING.value]
    queued = [op for op in taken if op.state != State.PENDING.value]
    batches = sorted({op.batch_id for op in queued if op.batch_id is not None})
    singles = [op.id for op in queued if op.batch_id is None]
    left = [op.id for op in taken]
    try:
        rebuffer(pending)
        left = [op.id for op in queued]
        for batch_id in batches:
            send_batch(batch_id)
        for op_id in singles:
            send_operation(op_id)
            left.remove(op_id)
    except Exception:
        with sessions() as session:
            handoffs.mark_failed(session, left, now=now)
            session.commit()
        raise
    if taken:
        log.warning("handed off %d operations the intake could not", len(taken))
    return [op.id for op in taken]


def _member(op: Operation) -> str:
    return f"batch:{op.batch_id}" if op.batch_id is not None else f"op:{op.id}"


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
            moved = expire(session, op, reason, now=now)
            session.commit()
            if moved:
                log.warning("operation %s: expired by the watchdog (was %s)", op.id, op.state)
                expired.append(op.id)
    return expired
