"""Executing a write: call the provider for an operation and settle what it said.

Used inline by the API for synchronous writes (one attempt, no retries) and by
the worker's task for asynchronous ones (retried until their deadline), so both
paths share one truth about outcomes (see `writejobs.execution.settle`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any, Literal, cast

from pydantic import ValidationError
from sqlalchemy.orm import Session

from writejobs.core.contract import WriteRequest
from writejobs.core.operations import State
from writejobs.errors import ProviderError
from writejobs.execution.bulk import run_bulk_attempt
from writejobs.execution.crash import end_crashed, is_transient
from writejobs.execution.deps import ExecutionDeps
from writejobs.execution.gate import WAITING, admit_operation
from writejobs.execution.repeats import natural_key, note_takeover
from writejobs.execution.settle import Attempt, ends_the_write, indices_to_try, settle
from writejobs.providers.base import (
    RecordResult,
    WriteItem,
    WriteOptions,
    WriteType,
)
from writejobs.store import operations_repo, worker_reads
from writejobs.store.db import pinned_session, statements_alone
from writejobs.store.tables import Installation, Operation

log = logging.getLogger(__name__)


def write_options(request: WriteRequest) -> WriteOptions:
    return WriteOptions(
        all_or_none=request.all_or_none, headers=[(h.key, h.value) for h in request.headers]
    )


def attempt_write(
    deps: ExecutionDeps,
    installation: Installation,
    op: Operation,
    options: WriteOptions,
    items: dict[int, WriteItem],
    *,
    single: bool,
) -> Attempt:
    """One provider call for the given records (by index); never raises for the provider.

    `single` writes one record with the provider's single-record call (the only
    one that deletes); otherwise the batch call. The installation's natural key
    of the object rides along in the options, so creates that carry it upsert.
    A failure of the whole call becomes a failed result for every record tried,
    retryable or not as the adapter classified it.
    """
    indices = list(items)
    object_name, write_type = op.object_name, op.write_type
    if options.natural_key is None:
        options = replace(options, natural_key=natural_key(installation, object_name))
    try:
        with deps.open_adapter(installation, deps.settings) as adapter:
            if single:
                one_type = cast(WriteType, write_type)
                result = adapter.write_one(object_name, one_type, items[indices[0]], options)
                return Attempt({indices[0]: result}, [])
            batch_type = cast(Literal["create", "update"], write_type)
            outcome = adapter.write_batch(
                object_name, batch_type, [items[i] for i in indices], options
            )
            return Attempt(
                dict(zip(indices, outcome.results, strict=True)),
                list(outcome.errors),
                outcome.retry_after_s,
            )
    except ProviderError as exc:
        failed = RecordResult(
            success=False, error=exc.message, retryable=exc.retryable, status_code=exc.status_code
        )
        return Attempt(
            {i: failed for i in indices}, [exc.message], exc.retry_after_s, call_error=exc
        )


def request_items(request: WriteRequest) -> list[WriteItem]:
    if request.batch is not None:
        return [WriteItem(i.record, list(i.associations)) for i in request.batch]
    assert request.record is not None
    return [WriteItem(request.record, list(request.associations))]


def start_attempt(
    session: Session,
    op: Operation,
    deps: ExecutionDeps,
    now: datetime,
    *,
    started: Callable[[Operation], dict[str, Any]] | None = None,
) -> bool:
    """Take the operation for one attempt (compare-and-set into `running`), committed.

    `op` becomes the row as taken (`take_operation`). With `started`, its "attempt
    started" log line (details from `op` as read, which the move takes only unchanged)
    commits with the move, in its statement on PostgreSQL.
    """
    line = None
    if started is not None:
        line = operations_repo.log_row(op.id, "attempt started", now=now, details=started(op))
    with statements_alone(session):
        taken = operations_repo.take_operation(
            session, op, now=now, lease_s=deps.settings.running_lease_s, log_line=line
        )
    if taken:
        log.info("operation %s: attempt %d started", op.id, op.attempts)
    return taken


def run_operation(operation_id: str, deps: ExecutionDeps) -> State | None:
    """Run one attempt of an asynchronous operation; the body of the worker's task.

    Returns the state it settled in, or None when another delivery holds the
    operation, its wait is not over, the admission gate holds it back (a paused
    installation, or no budget yet in the provider account's rate limit: it waits,
    still queued or retrying, and no attempt is counted; see `execution.gate`), or
    it already finished: a redelivered task must not write again. A synchronous
    write is never run here: it had its one attempt in its request. If our own
    code raises during the attempt, the operation ends `failed` and a sanitized
    `WriteCrashed` is raised instead
    (see `execution.crash`).
    """
    with pinned_session(deps.sessions) as session:
        with statements_alone(session):
            found = worker_reads.operation_with_installation(session, operation_id)
        if found is None:
            log.warning("operation %s: not found", operation_id)
            return None
        op, installation = found
        if op.mode == "synchronous":
            log.warning("operation %s: synchronous, never run by a worker", operation_id)
            return None
        # Running under a lapsed lease: a previous attempt may have reached the provider.
        taken_over = op.state == State.RUNNING.value
        if not taken_over and op.state in WAITING:
            if not admit_operation(session, op, installation, deps):
                return None
        bulk = op.shape == "bulk"
        try:
            request = None if bulk else WriteRequest.model_validate(op.request)
        except ValidationError as exc:  # accepted once, so a bug: never retried
            if start_attempt(session, op, deps, deps.clock()):
                raise end_crashed(session, [op.id], exc, now=deps.clock()) from None
            return None

        def started(read: Operation) -> dict[str, Any]:
            assert request is not None
            records = len(indices_to_try(read, all_or_none=request.all_or_none))
            return {"attempt": read.attempts + 1, "records": records}

        if not start_attempt(session, op, deps, deps.clock(), started=None if bulk else started):
            return None
        try:
            if request is None:
                return run_bulk_attempt(session, op, deps)
            return _run_records(session, op, installation, request, deps, taken_over=taken_over)
        except Exception as exc:
            if is_transient(exc):
                raise
            raise end_crashed(session, [op.id], exc, now=deps.clock()) from None


def _run_records(
    session: Session,
    op: Operation,
    installation: Installation,
    request: WriteRequest,
    deps: ExecutionDeps,
    *,
    taken_over: bool,
) -> State:
    """One attempt of a single-record or explicit-batch write that is now `running`
    (its "attempt started" line committed with the move)."""
    indices = indices_to_try(op, all_or_none=request.all_or_none)
    all_items = request_items(request)
    if taken_over:
        note_takeover(
            session,
            op,
            [all_items[i] for i in indices],
            provider=installation.provider,
            key=natural_key(installation, op.object_name),
            recorder=deps.recorder,
            now=deps.clock(),
        )
        session.commit()
    attempt = attempt_write(
        deps,
        installation,
        op,
        write_options(request),
        {i: all_items[i] for i in indices},
        single=request.batch is None,
    )
    deps.failpoint("operation.after_provider_call")
    now = deps.clock()
    if ends_the_write(attempt):
        # Log lines and the terminal move, gathered: one statement on PostgreSQL.
        with statements_alone(session), operations_repo.deferred(session):
            attempt = claim_own_duplicates(session, op, attempt, now)
            settled = settle(session, op, attempt, now=now, may_retry=True, rng=deps.rng)
    else:
        # The attempt's log lines go in one INSERT; the moves are made (and checked) at once.
        with operations_repo.deferred(session, moves=False):
            attempt = claim_own_duplicates(session, op, attempt, now)
            settled = settle(session, op, attempt, now=now, may_retry=True, rng=deps.rng)
        session.commit()
    if settled.state is State.RETRYING:
        assert settled.next_attempt_at is not None
        deps.schedule_retry("op", op.id, settled.next_attempt_at)
    return settled.state


def claim_own_duplicates(
    session: Session, op: Operation, attempt: Attempt, now: datetime
) -> Attempt:
    """On a repeated attempt, a create the provider refuses as already existing is our own.

    An earlier attempt wrote it and was cut off (worker killed) before it could
    record the result. Counting that as a failure would be a lie; hiding it
    would be one too: it becomes a success with the existing id, logged as a
    duplicate the provider saw.
    """
    if op.attempts <= 1 or op.write_type != "create":
        return attempt
    results = dict(attempt.results)
    for index, result in results.items():
        if not result.success and result.existing_id is not None:
            results[index] = replace(
                result, success=True, record_id=result.existing_id, error=None, status_code=None
            )
            operations_repo.add_log(
                session,
                op.id,
                "record already existed at the provider: counted as a duplicate",
                now=now,
                severity="WARNING",
                details={
                    "record_index": index,
                    "record_id": result.existing_id,
                    "attempt": op.attempts,
                },
            )
    return replace(attempt, results=results)
