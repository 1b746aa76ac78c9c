"""Admission: may asynchronous work start an attempt now, or must it wait, and until when?

Every move of an operation or a batch into `running` by a worker asks
`check_admission` first. A `Deferral` is not an attempt: nothing is counted,
the operation keeps its state (`queued`, or `retrying`), and its task comes back
through the retry queue (`deps.schedule_retry`, the Redis zset the scheduler
releases), never as a Celery ETA task. The operation says why it waits
(`waiting_reason`, `waiting_since`) and its logs say it once, on the first
deferral, not on every look.

Two things hold work back, in this order (a paused installation takes no
rate-limit budget):

* an operator's pause of the installation (`writejobs admin pause-installation`);
* the fleet's rate limit of the installation's provider account
  (`check_rate_limit`: the limiter in Redis, `deps.limiter`): without budget for
  the attempt's calls (one per chunk of a batch; a bulk upsert takes one), the
  work waits until the limiter says budget frees, and its logs say "waiting for
  the provider's rate limit" with the figures. A synchronous write, which has no
  queue to wait in, waits up to `SYNC_WAIT_S` in its request and is otherwise
  refused (`admit_sync`: `RateLimited`, a 429 with `Retry-After`, nothing recorded).

On a pause: A paused installation's work is looked
at again after `pause_recheck_s`, then after as long as it has waited so far,
at most `MAX_RECHECK_S` (so a long pause of a deep backlog costs the workers
little), never past its deadline; resuming releases it at once
(`release_installation`). Deadlines still apply: work whose deadline comes while
it waits ends `expired`, saying it waited for the pause.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from writejobs.clock import as_utc, iso
from writejobs.core.flow import Account, RateLimit
from writejobs.core.operations import State
from writejobs.errors import RateLimited
from writejobs.execution.deps import ExecutionDeps
from writejobs.execution.settle import expire
from writejobs.providers.registry import batch_size
from writejobs.store import operations_repo, worker_reads
from writejobs.store.tables import Installation, Operation
from writejobs.store.worker_reads import Candidate

log = logging.getLogger(__name__)

PAUSED = "installation paused"
RATE_LIMITED = "provider rate limit"
# How long a synchronous write waits for budget inside its request before it is refused.
SYNC_WAIT_S = 1.0
# Waiting for an attempt: what the gate looks at (a lapsed running one is taken over).
WAITING = (State.QUEUED.value, State.RETRYING.value)
# The longest a paused installation's work goes without being looked at again.
MAX_RECHECK_S = 60.0
# Held operations a resume releases per transaction, and how long it waits for the
# ones a worker's transaction holds (see `release_installation`).
RELEASE_CHUNK = 1000
RELEASE_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class Deferral:
    """Work that may not start now: why, and when to look again (at most its deadline)."""

    reason: str
    until: datetime
    details: dict[str, str]
    # The operation's log line when it begins to wait; unset: "waiting: <reason>".
    message: str | None = None

    @property
    def log_message(self) -> str:
        return self.message or f"waiting: {self.reason}"


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


def account_for(installation: Installation) -> Account:
    """The provider account whose limit an installation's calls share."""
    return Account(
        installation.provider, installation.id, RateLimit.from_column(installation.rate_limit)
    )


def calls_for(shape: str, records: int, provider: str) -> int:
    """Provider calls one attempt makes: one per chunk of a batch; a bulk upsert, one."""
    if shape == "bulk":
        return 1
    return max(1, math.ceil(records / batch_size(provider)))


@dataclass(slots=True)
class Arrival:
    """A task at the gate, whose fair-share admission reservation ends once: after the
    limiter was asked (in the same Redis step, where `deps.acquire_arriving` is wired)
    or, when it never is, as the gate is left (`end`). Not before the limiter is asked:
    in between, a scheduler would count neither and admit one more than the window holds.
    """

    deps: ExecutionDeps
    kind: str
    target_id: str
    installation_id: str
    ended: bool = False

    def acquire(self, account: Account, now: datetime, calls: int) -> float:
        """The limiter's answer for `calls` (see `RateLimiter.acquire`)."""
        together = self.deps.acquire_arriving
        if together is None or self.ended:
            return self.deps.limiter.acquire(account, now, calls)
        wait_s = together(self.kind, self.target_id, self.installation_id, account, now, calls)
        self.ended = True
        return wait_s

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.deps.arrived(self.kind, self.target_id, self.installation_id)


def check_rate_limit(
    deps: ExecutionDeps,
    installation: Installation,
    *,
    calls: int,
    now: datetime,
    deadline_at: datetime | None,
    arrival: Arrival | None = None,
) -> Deferral | None:
    """None when the account has budget for `calls` now (their slots are taken);
    otherwise wait until the limiter says it frees, never past `deadline_at`. With
    `arrival`, the asking task's reservation ends with the ask."""
    account = account_for(installation)
    if arrival is not None:
        wait_s = arrival.acquire(account, now, calls)
    else:
        wait_s = deps.limiter.acquire(account, now, calls)
    if wait_s <= 0:
        return None
    until = now + timedelta(seconds=wait_s)
    if deadline_at is not None:
        until = min(until, as_utc(deadline_at))
    details = {
        "provider": installation.provider,
        "calls": str(calls),
        "wait_s": f"{wait_s:.3f}",
        "until": iso(until),
    }
    return Deferral(RATE_LIMITED, until, details, "waiting for the provider's rate limit")


def may_start(op: Operation, now: datetime) -> bool:
    """Whether the move into `running` would take `op` now (read before asking the
    limiter, so a stray early delivery takes no budget); the compare-and-set decides."""
    waits_until = as_utc(op.next_attempt_at) if op.next_attempt_at is not None else None
    if op.state == State.QUEUED.value:
        return waits_until is None or waits_until <= now
    if op.state == State.RETRYING.value:
        return waits_until is not None and waits_until <= now
    return False


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
                "msg": deferral.log_message,
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
    # The task reached its worker and takes its budget (or waits): the fair-share
    # admission's reservation ends.
    arrival = Arrival(deps, "op", op.id, installation.id)
    try:
        return _admit_operation(session, op, installation, deps, arrival)
    finally:
        arrival.end()


def _admit_operation(
    session: Session,
    op: Operation,
    installation: Installation,
    deps: ExecutionDeps,
    arrival: Arrival,
) -> bool:
    now = deps.clock()
    deferral = check_admission(
        installation,
        now=now,
        deadline_at=op.deadline_at,
        waiting_since=op.waiting_since,
        recheck_s=deps.settings.pause_recheck_s,
    )
    if deferral is None:
        if not may_start(op, now):
            return True  # its wait is not over: the compare-and-set refuses it, no budget spent
        calls = calls_for(op.shape, op.record_count, installation.provider)
        deferral = check_rate_limit(
            deps, installation, calls=calls, now=now, deadline_at=op.deadline_at, arrival=arrival
        )
    if deferral is None:
        return True
    held, _expired = hold(session, [op], deferral, now=now)
    if held:
        log.info("operation %s: waiting (%s) until %s", op.id, deferral.reason, iso(deferral.until))
        deps.schedule_retry("op", op.id, deferral.until)
    return False


def admit_batch(
    session: Session,
    batch_id: str,
    installation: Installation,
    deps: ExecutionDeps,
    members: Sequence[Candidate],
    *,
    now: datetime,
) -> bool:
    """True when the batch may run (its calls' budget taken); otherwise its startable
    members were held (or the ones out of time expired) and the batch's task comes
    back when the first look is due.

    `members` are the batch's candidates at `now` (`store.worker_reads.candidates`);
    the gate looks at those waiting for an attempt (queued, or retrying and due).
    """
    arrival = Arrival(deps, "batch", batch_id, installation.id)  # as in `admit_operation`
    try:
        return _admit_batch(session, batch_id, installation, deps, members, arrival, now=now)
    finally:
        arrival.end()


def _admit_batch(
    session: Session,
    batch_id: str,
    installation: Installation,
    deps: ExecutionDeps,
    members: Sequence[Candidate],
    arrival: Arrival,
    *,
    now: datetime,
) -> bool:
    waiting = [m for m in members if m.state in WAITING]
    if not waiting:
        return True  # nothing to hold: take_batch finds what (if anything) there is to do
    live = [as_utc(m.deadline_at) for m in waiting if as_utc(m.deadline_at) > now]
    since = [as_utc(m.waiting_since) for m in waiting if m.waiting_since is not None]
    deferral = check_admission(
        installation,
        now=now,
        deadline_at=min(live, default=now),
        waiting_since=min(since, default=None),
        recheck_s=deps.settings.pause_recheck_s,
    )
    if deferral is None:
        calls = calls_for("auto_batch", len(waiting), installation.provider)
        deadline_at = min(live, default=now)
        deferral = check_rate_limit(
            deps, installation, calls=calls, now=now, deadline_at=deadline_at, arrival=arrival
        )
    if deferral is None:
        return True
    rows = worker_reads.operations(session, [m.id for m in waiting])
    held, _expired = hold(session, rows, deferral, now=now)
    if held:
        log.info("batch %s: waiting (%s) until %s", batch_id, deferral.reason, iso(deferral.until))
        deps.schedule_retry("batch", batch_id, deferral.until)
    return False


def release_installation(session: Session, installation_id: str, deps: ExecutionDeps) -> int:
    """Send the work a paused installation held back now (after a resume); count it.

    Each held operation becomes due at once, with a log line, and its task (or its
    batch's) goes through the retry queue, which the scheduler releases on its next
    pass. `RELEASE_CHUNK` operations a transaction, each committed before its tasks
    are sent: a hold of 20,000 is never one statement holding every row while workers
    take batches (on PostgreSQL that deadlocked), and a crash half-way loses nothing:
    what was not released yet keeps its pause's recheck in the retry queue, and a
    look at it then finds the installation resumed. Rows a worker holds are skipped,
    then looked at again until they are free or `RELEASE_WAIT_S` has passed (what a
    worker still holds by then is its to move; anything left has its recheck).
    """
    now = deps.clock()
    released = 0
    split: str | None = None  # the batch the last chunk may have cut: sent when whole
    gave_up_at = time.monotonic() + RELEASE_WAIT_S
    while True:
        chunk = operations_repo.release_waiting(
            session, installation_id, PAUSED, now=now, limit=RELEASE_CHUNK
        )
        if not chunk:
            left = operations_repo.count_waiting(session, installation_id, PAUSED)
            session.rollback()
            if left == 0 or time.monotonic() > gave_up_at:
                if split is not None:
                    deps.schedule_retry("batch", split, now)
                if left:
                    log.warning(
                        "installation %s: %d held operations busy; left to their recheck",
                        installation_id,
                        left,
                    )
                return released
            time.sleep(0.05)  # skipped rows a worker's transaction holds: look again
            continue
        operations_repo.add_logs(
            session,
            [
                {"operation_id": op_id, "timestamp": now, "msg": "released: installation resumed"}
                for op_id, _batch in chunk
            ],
        )
        session.commit()
        released += len(chunk)
        batches = {batch for _op, batch in chunk if batch is not None}
        if split is not None:
            batches.add(split)
        split = max(batches) if batches and len(chunk) == RELEASE_CHUNK else None
        # A batch seen again (members a worker held, freed since) is sent again: a
        # duplicate task is harmless, its members' move into `running` takes them once.
        for batch_id in sorted(batches - {split}):
            deps.schedule_retry("batch", batch_id, now)
        for op_id, batch in chunk:
            if batch is None:
                deps.schedule_retry("op", op_id, now)


def admit_sync(deps: ExecutionDeps, installation: Installation, records: int) -> None:
    """A synchronous write's turn: wait up to `SYNC_WAIT_S` for budget, else `RateLimited`.

    Called before the write is recorded, so a refused one leaves nothing behind
    and its client (told `Retry-After`) sends it again.
    """
    calls = calls_for("single", records, installation.provider)
    waited_s = 0.0
    while True:
        now = deps.clock()
        wait_s = deps.limiter.acquire(account_for(installation), now, calls)
        if wait_s <= 0:
            return
        if waited_s + wait_s > SYNC_WAIT_S:
            raise RateLimited("waiting for the provider's rate limit", retry_after_s=wait_s)
        time.sleep(wait_s)
        waited_s += wait_s
