"""Admission: may asynchronous work start an attempt now, or must it wait, and until when?

Every move of an operation or a batch into `running` by a worker asks
`check_admission` first. A `Deferral` is not an attempt: nothing is counted,
the operation keeps its state (`queued`, or `retrying`), and its task comes back
through the retry queue (`deps.schedule_retry`, the Redis zset the scheduler
releases), never as a Celery ETA task. The operation says why it waits
(`waiting_reason`, `waiting_since`) and its logs say it once, on the first
deferral, not on every look.

What holds work back today: an operator's pause of the installation
(`writejobs admin pause-installation`). A paused installation's work is looked
at again after `pause_recheck_s`, then after as long as it has waited so far,
at most `MAX_RECHECK_S` (so a long pause of a deep backlog costs the workers
little), never past its deadline; resuming releases it at once
(`release_installation`). Deadlines still apply: work whose deadline comes while
it waits ends `expired`, saying it waited for the pause.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from writejobs.clock import as_utc, iso
from writejobs.execution.deps import ExecutionDeps
from writejobs.execution.settle import expire
from writejobs.store import operations_repo
from writejobs.store.tables import Installation, Operation

log = logging.getLogger(__name__)

PAUSED = "installation paused"
# The longest a paused installation's work goes without being looked at again.
MAX_RECHECK_S = 60.0


@dataclass(frozen=True, slots=True)
class Deferral:
    """Work that may not start now: why, and when to look again (at most its deadline)."""

    reason: str
    until: datetime
    details: dict[str, str]


def check_admission(
    installation: Installation,
    *,
    now: datetime,
    deadline_at: datetime,
    waiting_since: datetime | None,
    recheck_s: float,
) -> Deferral | None:
    """None when work of `installation` may start now; otherwise how long it waits.

    `waiting_since` is when the work began to wait (None: it has not), so the next
    look comes after as long as it has waited, between `recheck_s` and
    `MAX_RECHECK_S`; `until` is never past `deadline_at`.
    """
    if installation.paused_at is None:
        return None
    waited_s = 0.0 if waiting_since is None else (now - as_utc(waiting_since)).total_seconds()
    wait_s = min(max(recheck_s, waited_s), max(recheck_s, MAX_RECHECK_S))
    until = min(now + timedelta(seconds=wait_s), as_utc(deadline_at))
    details = {"paused_at": iso(as_utc(installation.paused_at))}
    if installation.paused_reason:
        details["paused_reason"] = installation.paused_reason
    return Deferral(PAUSED, until, details)


def hold(
    session: Session,
    ops: Sequence[Operation],
    deferral: Deferral,
    *,
    now: datetime,
) -> tuple[list[str], list[str]]:
    """Hold `ops` back as `deferral` says, or expire those whose deadline has come.

    Returns (held ids, expired ids). Logs "waiting: <reason>" on an operation the
    first time it is held for that reason. Commits; the caller schedules the
    next look for the held ones (`deps.schedule_retry`).
    """
    due = [op for op in ops if as_utc(op.deadline_at) <= now]
    expired = []
    for op in due:
        reason = f"deadline exceeded while waiting: {deferral.reason}"
        if expire(session, op, reason, now=now):
            expired.append(op.id)
    rest = [op for op in ops if op not in due]
    held = operations_repo.note_waiting(
        session, [op.id for op in rest], deferral.reason, now=now, until=deferral.until
    )
    first = [op for op in rest if op.id in held and op.waiting_reason != deferral.reason]
    operations_repo.add_logs(
        session,
        [
            {
                "operation_id": op.id,
                "timestamp": now,
                "severity": "WARNING",
                "msg": f"waiting: {deferral.reason}",
                "details": {
                    **deferral.details,
                    "state": op.state,
                    "deadline": iso(as_utc(op.deadline_at)),
                },
            }
            for op in first
        ],
    )
    session.commit()
    return held, expired


def admit_operation(
    session: Session, op: Operation, installation: Installation, deps: ExecutionDeps
) -> bool:
    """True when `op` may start its attempt; otherwise it was held (or expired) here."""
    now = deps.clock()
    deferral = check_admission(
        installation,
        now=now,
        deadline_at=op.deadline_at,
        waiting_since=op.waiting_since,
        recheck_s=deps.settings.pause_recheck_s,
    )
    if deferral is None:
        return True
    held, _expired = hold(session, [op], deferral, now=now)
    if held:
        log.info("operation %s: waiting (%s) until %s", op.id, deferral.reason, iso(deferral.until))
        deps.schedule_retry("op", op.id, deferral.until)
    return False


def admit_batch(
    session: Session, batch_id: str, installation: Installation, deps: ExecutionDeps
) -> bool:
    """True when the batch may run; otherwise its startable members were held (or the
    ones out of time expired) and the batch's task comes back when the first look is due."""
    if installation.paused_at is None:
        return True  # the common case costs no read of the members
    now = deps.clock()
    members = operations_repo.startable_members(session, batch_id, now=now)
    if not members:
        return True  # nothing to hold: take_batch finds what (if anything) there is to do
    live = [as_utc(m.deadline_at) for m in members if as_utc(m.deadline_at) > now]
    since = [as_utc(m.waiting_since) for m in members if m.waiting_since is not None]
    deferral = check_admission(
        installation,
        now=now,
        deadline_at=min(live, default=now),
        waiting_since=min(since, default=None),
        recheck_s=deps.settings.pause_recheck_s,
    )
    if deferral is None:
        return True
    held, _expired = hold(session, members, deferral, now=now)
    if held:
        log.info("batch %s: waiting (%s) until %s", batch_id, deferral.reason, iso(deferral.until))
        deps.schedule_retry("batch", batch_id, deferral.until)
    return False


def release_installation(session: Session, installation_id: str, deps: ExecutionDeps) -> int:
    """Send the work a paused installation held back now (after a resume); count it.

    Each held operation becomes due at once, with a log line, and its task (or its
    batch's) goes through the retry queue, which the scheduler releases on its
    next pass. Commits.
    """
    now = deps.clock()
    released = operations_repo.release_waiting(session, installation_id, PAUSED, now=now)
    operations_repo.add_logs(
        session,
        [
            {"operation_id": op_id, "timestamp": now, "msg": "released: installation resumed"}
            for op_id, _batch in released
        ],
    )
    session.commit()
    batches = sorted({batch for _op, batch in released if batch is not None})
    for batch_id in batches:
        deps.schedule_retry("batch", batch_id, now)
    for op_id, batch in released:
        if batch is None:
            deps.schedule_retry("op", op_id, now)
    return len(released)
