"""Executing an auto-batch: one provider batch call, one outcome per member operation."""

from __future__ import annotations

import logging
from collections.abc import Callable

from writejobs.contract import WriteRequest
from writejobs.errors import ProviderError
from writejobs.execute import ExecutionDeps, record_failure, record_outcome
from writejobs.operations import State
from writejobs.providers.base import BatchOutcome, WriteItem, WriteOptions
from writejobs.store import operations_repo, tenants_repo

log = logging.getLogger(__name__)


def run_batch(
    batch_id: str, deps: ExecutionDeps, *, on_start: Callable[[str], None] | None = None
) -> dict[str, int]:
    """Write a flushed batch's members that this delivery could take; count outcomes.

    Each member moves `queued` → `running` by compare-and-set, so a redelivered
    task writes only members no live delivery holds and none that finished.
    """
    with deps.sessions() as session:
        now = deps.clock()
        members = operations_repo.batch_members(session, batch_id)
        taken = []
        for op in members:
            moved = operations_repo.transition(
                session, op.id, State.RUNNING, now=now, lease_s=deps.settings.running_lease_s,
                attempts=op.attempts + 1, last_attempt_at=now,
            )  # fmt: skip
            if moved:
                session.refresh(op)
                taken.append(op)
        if not taken:
            log.info("batch %s: nothing to do (members finished or held elsewhere)", batch_id)
            return {}
        if on_start is not None:
            on_start(batch_id)
        first = taken[0]
        for op in taken:
            operations_repo.add_log(
                session, op.id, "attempt started", now=now,
                details={"attempt": op.attempts, "batch_id": batch_id, "batch_size": len(taken)},
            )  # fmt: skip
        session.commit()
        installation = tenants_repo.get_installation(session, first.installation_id)
        assert installation is not None
        items = []
        for op in taken:
            request = WriteRequest.model_validate(op.request)
            assert request.record is not None
            items.append(WriteItem(request.record, list(request.associations)))
        try:
            with deps.open_adapter(installation, deps.settings) as adapter:
                outcome = adapter.write_batch(
                    first.object_name, first.write_type,  # type: ignore[arg-type]
                    items, WriteOptions(),
                )  # fmt: skip
            deps.failpoint("batch.after_provider_call")
        except ProviderError as exc:
            for op in taken:
                record_failure(session, op, exc, deps)
            return {"failed": len(taken)}
        counts: dict[str, int] = {}
        for index, op in enumerate(taken):
            member = BatchOutcome([outcome.results[index]], list(outcome.errors))
            state = record_outcome(session, op, member, deps)
            counts[state.value] = counts.get(state.value, 0) + 1
        return counts
