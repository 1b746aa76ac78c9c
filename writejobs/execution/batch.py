"""Executing an auto-batch: one provider batch call, one outcome per member operation.

Members that fail retryably wait together as a smaller retry batch, due at the
earliest of their own next-attempt times (each computed against that member's
own deadline, so none is tried past it); members out of time expire alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session

from writejobs.core.contract import WriteRequest
from writejobs.core.ids import new_id
from writejobs.core.operations import State
from writejobs.execution.crash import end_crashed, is_transient
from writejobs.execution.deps import ExecutionDeps
from writejobs.execution.gate import admit_batch
from writejobs.execution.repeats import natural_key, note_takeover
from writejobs.execution.run import (
    attempt_write,
    claim_own_duplicates,
    request_items,
)
from writejobs.execution.settle import Attempt, ends_the_write, settle
from writejobs.providers.base import WriteItem, WriteOptions
from writejobs.store import operations_repo, tenants_repo, worker_reads
from writejobs.store.db import pinned_session
from writejobs.store.tables import Operation

log = logging.getLogger(__name__)


def run_batch(
    batch_id: str, deps: ExecutionDeps, *, on_start: Callable[[str], None] | None = None
) -> dict[str, int]:
    """Write the members of a batch that this delivery could take; count how they settled.

    Each member moves into `running` by compare-and-set, so a redelivered task
    writes only members no live delivery holds and none that finished (nor any
    cancelled). A paused installation's batch, or one its provider account's rate
    limit has no budget for, waits (`execution.gate`): its members stay queued or
    retrying, no attempt counted, and the batch's task waits in the retry set.
    """
    with pinned_session(deps.sessions) as session:
        installation = worker_reads.batch_installation(session, batch_id)
        # One `now` for the look and the take: the members a dead worker held (their
        # previous attempt may have reached the provider) are known before the take.
        now = deps.clock()
        candidates = worker_reads.candidates(session, batch_id, now=now)
        if installation is not None and not admit_batch(
            session, batch_id, installation, deps, candidates, now=now
        ):
            return {}
        held = {m.id for m in candidates if m.taken_over}
        taken = operations_repo.take_batch(
            session, batch_id, now=now, lease_s=deps.settings.running_lease_s
        )
        if not taken:
            session.commit()
            log.info("batch %s: nothing to do (members finished, waiting or held)", batch_id)
            return {}
        # Each member's "attempt started" commits with its move into running.
        operations_repo.add_logs(
            session,
            [
                {
                    "operation_id": op.id,
                    "timestamp": now,
                    "msg": "attempt started",
                    "details": {
                        "attempt": op.attempts,
                        "batch_id": batch_id,
                        "batch_size": len(taken),
                    },
                }
                for op in taken
            ],
        )
        session.commit()
        log.info("batch %s: attempt started with %d member(s)", batch_id, len(taken))
        try:
            return _write_members(session, batch_id, taken, held, deps, on_start)
        except Exception as exc:
            if is_transient(exc):
                raise
            ids = [op.id for op in taken]
            raise end_crashed(session, ids, exc, now=deps.clock()) from None


def _write_members(
    session: Session,
    batch_id: str,
    taken: list[Operation],
    held: set[str],
    deps: ExecutionDeps,
    on_start: Callable[[str], None] | None,
) -> dict[str, int]:
    """One provider call for the members this delivery took, each settled on its own."""
    now = deps.clock()
    if on_start is not None:
        on_start(batch_id)
    first = taken[0]
    installation = tenants_repo.get_installation(session, first.installation_id)
    assert installation is not None
    items: dict[int, WriteItem] = {
        index: request_items(WriteRequest.model_validate(op.request))[0]
        for index, op in enumerate(taken)
    }
    key = natural_key(installation, first.object_name)
    for index, op in enumerate(taken):
        if op.id in held:
            note_takeover(
                session,
                op,
                [items[index]],
                provider=installation.provider,
                key=key,
                recorder=deps.recorder,
                now=now,
            )
    session.commit()
    options = WriteOptions(natural_key=key)
    attempt = attempt_write(deps, installation, first, options, items, single=False)
    deps.failpoint("batch.after_provider_call")
    now = deps.clock()
    counts: dict[str, int] = {}
    waiting: dict[str, datetime] = {}
    # Cancels asked for while the call ran, read once for every member; only a member
    # left to retry heeds one (one that ends stays ended), so a call that failed no
    # record retryably reads none (None: a member settles reading its own, if it must).
    cancels = (
        None
        if ends_the_write(attempt)
        else operations_repo.cancels_requested(session, [op.id for op in taken])
    )
    # Each member settles on its own; their log lines and moves are written together.
    with operations_repo.deferred(session):
        for index, op in enumerate(taken):
            member = Attempt(
                {0: attempt.results[index]}, list(attempt.errors), attempt.retry_after_s
            )
            member = claim_own_duplicates(session, op, member, now)
            settled = settle(
                session,
                op,
                member,
                now=now,
                may_retry=True,
                rng=deps.rng,
                cancel_requested=None if cancels is None else op.id in cancels,
            )
            counts[settled.state.value] = counts.get(settled.state.value, 0) + 1
            if settled.state is State.RETRYING and settled.next_attempt_at is not None:
                waiting[op.id] = settled.next_attempt_at
    session.commit()
    if waiting:
        _wait_as_retry_batch(deps, batch_id, waiting)
    return counts


def _wait_as_retry_batch(deps: ExecutionDeps, batch_id: str, waiting: dict[str, datetime]) -> None:
    retry_batch_id = new_id()
    at = min(waiting.values())
    with deps.sessions() as session:
        operations_repo.reassign_batch(session, list(waiting), retry_batch_id, at)
        for op_id in waiting:
            operations_repo.add_log(
                session,
                op_id,
                "waiting in a retry batch",
                now=deps.clock(),
                details={
                    "retry_batch_id": retry_batch_id,
                    "of_batch": batch_id,
                    "size": len(waiting),
                },
            )
        session.commit()
    deps.schedule_retry("batch", retry_batch_id, at)
