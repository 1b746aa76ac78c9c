"""Executing a write: call the provider for an operation and record what it said.

Used inline by the API for synchronous writes and by the worker's task for
asynchronous ones, so both paths share one truth about outcomes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from writejobs.clock import Clock
from writejobs.contract import WriteRequest
from writejobs.errors import ProviderError
from writejobs.failpoints import no_failpoint
from writejobs.operations import State, outcome_state
from writejobs.providers.base import (
    BatchOutcome,
    ProviderAdapter,
    RecordResult,
    WriteItem,
    WriteOptions,
)
from writejobs.settings import Settings
from writejobs.store import operations_repo, tenants_repo
from writejobs.store.tables import Installation, Operation

log = logging.getLogger(__name__)

AdapterOpener = Callable[[Installation, Settings], AbstractContextManager[ProviderAdapter]]


@dataclass(frozen=True, slots=True)
class ExecutionDeps:
    """What executing a write needs, injected so tests can drive each part."""

    settings: Settings
    sessions: sessionmaker[Session]
    open_adapter: AdapterOpener
    clock: Clock
    failpoint: Callable[[str], None] = no_failpoint


def call_provider(adapter: ProviderAdapter, op: Operation, request: WriteRequest) -> BatchOutcome:
    """Perform the operation's write; raises `ProviderError` when a single-record call fails."""
    options = WriteOptions(
        all_or_none=request.all_or_none,
        headers=[(h.key, h.value) for h in request.headers],
    )
    if request.batch is not None:
        items = [WriteItem(i.record, list(i.associations)) for i in request.batch]
        assert request.type != "delete"  # the contract refuses batch deletes at intake
        return adapter.write_batch(op.object_name, request.type, items, options)
    assert request.record is not None
    item = WriteItem(request.record, list(request.associations))
    return BatchOutcome([adapter.write_one(op.object_name, request.type, item, options)])


def record_outcome(
    session: Session, op: Operation, outcome: BatchOutcome, deps: ExecutionDeps
) -> State:
    """Write per-record results, counts and logs, and move the operation to its end state."""
    now = deps.clock()
    state = outcome_state(outcome.success_count, outcome.failure_count)
    results = [_result_row(r) for r in outcome.results]
    errors = list(outcome.errors) + [
        f"record {i}: {r.error}" for i, r in enumerate(outcome.results) if not r.success and r.error
    ]
    for index, result in enumerate(outcome.results):
        if not result.success:
            operations_repo.add_log(
                session, op.id, "record failed", now=now, severity="ERROR", error=result.error,
                details={"record_index": index, "http_status": result.status_code},
            )  # fmt: skip
    operations_repo.add_log(
        session, op.id, f"write finished: {state.value}", now=now,
        severity="INFO" if state is State.SUCCEEDED else "WARNING",
        details={"succeeded": outcome.success_count, "failed": outcome.failure_count},
    )  # fmt: skip
    log.info("operation %s: %s (%d succeeded, %d failed)", op.id, state.value,
             outcome.success_count, outcome.failure_count)  # fmt: skip
    operations_repo.transition(
        session, op.id, state, now=now,
        results=results, errors=errors or None,
        success_count=outcome.success_count, failure_count=outcome.failure_count,
        result_summary=summarize(op, outcome),
    )  # fmt: skip
    return state


def record_failure(
    session: Session, op: Operation, error: ProviderError, deps: ExecutionDeps
) -> None:
    """The provider call failed as a whole: every record failed with its message."""
    now = deps.clock()
    # The provider's message may quote record values: it goes to the operation's
    # logs (its owner's to read), never to the process log.
    log.warning("operation %s: provider call failed (HTTP %s, retryable=%s)",
                op.id, error.status_code, error.retryable)  # fmt: skip
    operations_repo.add_log(
        session, op.id, "provider call failed", now=now, severity="ERROR", error=error.message,
        details={"provider": error.provider, "http_status": error.status_code,
                 "retryable": error.retryable},
    )  # fmt: skip
    results = [{"success": False, "error": error.message}] * op.record_count
    operations_repo.transition(
        session, op.id, State.FAILED, now=now, results=results, errors=[error.message],
        success_count=0, failure_count=op.record_count,
        result_summary=f"[{op.object_name}] Error writing to provider: {error.message}",
    )  # fmt: skip


def _claim_own_duplicates(
    session: Session, op: Operation, outcome: BatchOutcome, now: datetime
) -> BatchOutcome:
    """On a repeated attempt, a create the provider refuses as already existing is our own.

    An earlier attempt wrote it and was cut off (worker killed) before it could
    record the result. Counting that as a failure would be a lie; hiding it
    would be one too: it becomes a success with the existing id, logged as a
    duplicate the provider saw.
    """
    if op.attempts <= 1 or op.write_type != "create":
        return outcome
    results = list(outcome.results)
    for index, result in enumerate(results):
        if not result.success and result.existing_id is not None:
            results[index] = replace(result, success=True, record_id=result.existing_id,
                                     error=None, status_code=None)  # fmt: skip
            operations_repo.add_log(
                session, op.id, "record already existed at the provider: counted as a duplicate",
                now=now, severity="WARNING",
                details={"record_index": index, "record_id": result.existing_id,
                         "attempt": op.attempts},
            )  # fmt: skip
    return replace(outcome, results=results)


def run_operation(operation_id: str, deps: ExecutionDeps) -> State | None:
    """Run one asynchronous operation to its end; the body of the worker's task.

    Returns the state it ended in, or None when another delivery owns the
    operation or already finished it (a redelivered task must not write again).
    """
    with deps.sessions() as session:
        now = deps.clock()
        op = operations_repo.get_operation(session, operation_id)
        if op is None:
            log.warning("operation %s: not found", operation_id)
            return None
        moved = operations_repo.transition(
            session, operation_id, State.RUNNING, now=now,
            lease_s=deps.settings.running_lease_s,
            attempts=op.attempts + 1, last_attempt_at=now,
        )  # fmt: skip
        if not moved:
            return None
        session.refresh(op)
        log.info("operation %s: attempt %d started", op.id, op.attempts)
        operations_repo.add_log(
            session, op.id, "attempt started", now=now,
            details={"attempt": op.attempts, "records": op.record_count},
        )  # fmt: skip
        session.commit()
        installation = tenants_repo.get_installation(session, op.installation_id)
        assert installation is not None
        request = WriteRequest.model_validate(op.request)
        try:
            with deps.open_adapter(installation, deps.settings) as adapter:
                outcome = call_provider(adapter, op, request)
            deps.failpoint("operation.after_provider_call")
        except ProviderError as exc:
            record_failure(session, op, exc, deps)
            return State.FAILED
        except Exception as exc:
            # Our own bug must not leave the operation in_progress forever.
            log.exception("operation %s: unexpected error", operation_id)
            error = ProviderError(
                f"internal error: {type(exc).__name__}", provider=installation.provider
            )
            record_failure(session, op, error, deps)
            return State.FAILED
        return record_outcome(session, op, outcome, deps)


def summarize(op: Operation, outcome: BatchOutcome) -> str:
    """The operation's one-line `result`, in the contract's words."""
    if op.shape in ("single", "auto_batch"):
        first = outcome.results[0]
        if first.success:
            return f"[{op.object_name}] Write succeeded" + (
                f" (recordId {first.record_id})" if first.record_id else ""
            )
        return f"[{op.object_name}] Write failed: {first.error}"
    return (
        f"Batch write completed ({outcome.success_count} succeeded, {outcome.failure_count} failed)"
    )


def _result_row(result: RecordResult) -> dict[str, Any]:
    row: dict[str, Any] = {"success": result.success}
    if result.record_id is not None:
        row["recordId"] = result.record_id
    if result.data is not None:
        row["data"] = result.data
    if result.error is not None:
        row["error"] = result.error
    return row
