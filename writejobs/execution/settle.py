"""Settling an attempt: what its results mean for the operation, decided and written once.

Every attempt of every write ends here. `decide` turns the attempt's counts (a
`Tally`) into what comes next, and `conclude` writes that: the log lines that
tell it and the compare-and-set move. A record-by-record write (single, batch,
auto-batch member) gets there through `settle`, which keeps one result row per
record, in input order, and merges each attempt's results in; a bulk job feeds
its job's counters straight to `decide` and `conclude` (`execution.bulk`).

* no record left that failed retryably → the terminal state its counts give;
* some left, and the retry policy finds a time before the deadline → `retrying`;
* some left and no time → `expired`, each such record failed with
  "deadline exceeded" and the last provider error;
* some left, and a cancel was asked for while the attempt ran → `cancelled`,
  each such record failed with "cancelled" (`execution.cancel`). The move into
  `retrying` refuses an operation with a cancel request, so a cancel that comes
  while this settles is never outlived by a retry.

Nothing here commits: the caller owns the transaction.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from writejobs.clock import as_utc, iso
from writejobs.core.operations import State, outcome_state
from writejobs.core.retry import next_attempt_at
from writejobs.errors import ProviderError
from writejobs.execution.cancel import CANCELLED, cancelled_rows
from writejobs.execution.cancel import summary as cancel_summary
from writejobs.providers.base import RecordResult
from writejobs.store import operations_repo
from writejobs.store.tables import Operation

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt's results for the records it tried, by their index in the operation."""

    results: dict[int, RecordResult]
    errors: list[str]
    retry_after_s: float | None = None
    # Set when the provider call failed as a whole (the API maps it for sync writes).
    call_error: ProviderError | None = None


@dataclass(frozen=True, slots=True)
class Tally:
    """An attempt's outcome in counts: all that deciding what comes next needs.

    `retryable` counts the failed records another attempt may still write (for a
    bulk write, 1: the job); `failed_whole` ends the write failed whatever the
    counts say (a job Salesforce failed, a CSV we refused).
    """

    succeeded: int
    failed: int
    retryable: int = 0
    retry_after_s: float | None = None
    last_error: str | None = None
    failed_whole: bool = False


@dataclass(frozen=True, slots=True)
class Settled:
    """What comes next for an operation; `next_attempt_at` and `backoff_failures` when retrying."""

    state: State
    next_attempt_at: datetime | None = None
    backoff_failures: int | None = None


def result_row(result: RecordResult) -> dict[str, Any]:
    row: dict[str, Any] = {"success": result.success}
    if result.record_id is not None:
        row["recordId"] = result.record_id
    if result.data is not None:
        row["data"] = result.data
    if result.error is not None:
        row["error"] = result.error
    if not result.success and result.retryable:
        row["retryable"] = True
    if result.status_code is not None:
        row["status"] = result.status_code
    return row


def indices_to_try(op: Operation, *, all_or_none: bool) -> list[int]:
    """Records still to write: never tried, or failed retryably (all of them if all-or-none)."""
    rows = op.results or []
    if not rows:
        return list(range(op.record_count))
    retry = [i for i, row in enumerate(rows) if not row["success"] and row.get("retryable")]
    if all_or_none and retry:
        return list(range(op.record_count))
    return retry


def ends_the_write(attempt: Attempt) -> bool:
    """Whether settling `attempt` ends its operation, however the merge comes out: no
    record it tried failed retryably (those it did not try were written or refused
    before). Its settling then writes log lines and one terminal move, and reads
    nothing first (a cancel only matters to a retry).
    """
    return not any(not r.success and r.retryable for r in attempt.results.values())


def decide(
    op: Operation,
    tally: Tally,
    *,
    now: datetime,
    may_retry: bool,
    rng: random.Random,
    cancel_requested: bool = False,
) -> Settled:
    """The one decision: terminal, retrying at a computed time, expired, or cancelled (pure)."""
    if tally.retryable and may_retry:
        if cancel_requested:
            return Settled(State.CANCELLED)
        if op.deadline_at is not None:
            failures = op.backoff_failures + (0 if tally.retry_after_s is not None else 1)
            deadline = as_utc(op.deadline_at)
            at = next_attempt_at(failures, now, deadline, tally.retry_after_s, rng)
            if at is not None:
                return Settled(State.RETRYING, at, failures)
        return Settled(State.EXPIRED)
    if tally.failed_whole:
        return Settled(State.FAILED)
    return Settled(outcome_state(tally.succeeded, tally.failed))


def conclude(
    session: Session,
    op: Operation,
    settled: Settled,
    tally: Tally,
    *,
    now: datetime,
    summary: str | None = None,
    errors: list[str] | None = None,
    details: dict[str, Any] | None = None,
    **fields: Any,
) -> bool:
    """Write what was decided: the log lines that tell it and the move; True if it moved.

    `summary` and `errors` are the terminal `result` and `errors` (a retry's are
    made here); `details` go on the closing log line; `fields` are further
    columns to set (a record write's `results`, a bulk job's `record_count`).
    """
    if settled.state is State.RETRYING:
        at, deadline = settled.next_attempt_at, op.deadline_at
        assert at is not None and deadline is not None
        why = (
            f"Retry-After {tally.retry_after_s:g}s"
            if tally.retry_after_s is not None
            else f"backoff after {settled.backoff_failures} failed attempt(s)"
        )
        moved = operations_repo.transition(
            session,
            op.id,
            State.RETRYING,
            now=now,
            unless_cancel_requested=True,
            next_attempt_at=at,
            backoff_failures=settled.backoff_failures,
            last_error=tally.last_error,
            result_summary=f"[{op.object_name}] Retrying: {tally.last_error}",
            success_count=tally.succeeded,
            failure_count=tally.failed,
            **fields,
        )
        if moved:
            operations_repo.add_log(
                session,
                op.id,
                f"retrying {_unfinished(op, tally)} at {iso(at)}",
                now=now,
                error=tally.last_error,
                details={
                    "delay_s": round((at - now).total_seconds(), 3),
                    "why": why,
                    "deadline": iso(as_utc(deadline)),
                    "attempt": op.attempts,
                },
            )
        return moved
    if settled.state is State.EXPIRED:
        operations_repo.add_log(
            session,
            op.id,
            "deadline exceeded",
            now=now,
            severity="ERROR",
            error=tally.last_error,
            details={
                "records": tally.retryable,
                "deadline": iso(as_utc(op.deadline_at)) if op.deadline_at else "none",
            },
        )
    if settled.state is State.CANCELLED:
        operations_repo.add_log(
            session,
            op.id,
            f"cancelled: {_unfinished(op, tally)} left unwritten, not retried",
            now=now,
            severity="WARNING",
            error=tally.last_error,
            details={"attempt": op.attempts},
        )
    state = settled.state
    operations_repo.add_log(
        session,
        op.id,
        f"write finished: {state.value}",
        now=now,
        severity="INFO" if state is State.SUCCEEDED else "WARNING",
        details={"succeeded": tally.succeeded, "failed": tally.failed, **(details or {})},
    )
    if op.shape == "bulk":
        # A bulk write's CSV is kept only while the write may still run.
        operations_repo.delete_payload(session, op.id)
    log.info("operation %s: %s", op.id, state.value)
    return operations_repo.transition(
        session,
        op.id,
        state,
        now=now,
        errors=errors or None,
        result_summary=summary,
        last_error=CANCELLED if state is State.CANCELLED else tally.last_error,
        next_attempt_at=None,
        success_count=tally.succeeded,
        failure_count=tally.failed,
        **fields,
    )


def expiry_message(last_error: str | None) -> str:
    """What an expired operation says: the deadline, and the last error before it."""
    return "deadline exceeded" + (f"; last error: {last_error}" if last_error else "")


def settle(
    session: Session,
    op: Operation,
    attempt: Attempt,
    *,
    now: datetime,
    may_retry: bool,
    rng: random.Random,
    cancel_requested: bool | None = None,
) -> Settled:
    """Merge a record write's attempt into the operation and move it to what comes next.

    `cancel_requested` is whether a cancel was asked for while the attempt ran (a
    batch reads it for all its members at once); None reads it here.
    """
    rows: list[dict[str, Any]] = list(op.results or [{"success": False}] * op.record_count)
    for index, result in attempt.results.items():
        rows[index] = result_row(result)
    _log_attempt(session, op, attempt, now)
    retryable = [i for i, row in enumerate(rows) if not row["success"] and row.get("retryable")]
    tally = Tally(
        succeeded=_count(rows, True),
        failed=_count(rows, False),
        retryable=len(retryable),
        retry_after_s=attempt.retry_after_s,
        last_error=_last_error(attempt) or op.last_error,
    )
    cancel = bool(retryable) and may_retry
    if cancel:
        cancel = (
            operations_repo.cancel_requested(session, op.id)
            if cancel_requested is None
            else cancel_requested
        )
    settled = decide(op, tally, now=now, may_retry=may_retry, rng=rng, cancel_requested=cancel)
    if settled.state is State.RETRYING:
        if conclude(session, op, settled, tally, now=now, results=rows):
            return settled
        if not operations_repo.cancel_requested(session, op.id):
            return settled  # another delivery or the watchdog moved it: not ours to end
        settled = Settled(State.CANCELLED)
    if settled.state is State.CANCELLED:
        rows = cancelled_rows(rows)
        summary = cancel_summary(op, _count(rows, True), _count(rows, False))
        errors = [CANCELLED, *_failed_rows(rows)]
        conclude(session, op, settled, tally, now=now, summary=summary, errors=errors, results=rows)
        return settled
    if settled.state is State.EXPIRED:
        _expire_rows(session, op, rows, retryable, tally, now)
        return settled
    for index, row in enumerate(rows):
        row.pop("retryable", None)
        if not row["success"] and index in attempt.results:
            operations_repo.add_log(
                session,
                op.id,
                "record failed",
                now=now,
                severity="ERROR",
                error=row.get("error"),
                details={"record_index": index, "http_status": row.get("status")},
            )
    summary = summarize(op, rows, settled.state)
    errors = attempt.errors + _failed_rows(rows)
    conclude(session, op, settled, tally, now=now, summary=summary, errors=errors, results=rows)
    return settled


def expire(session: Session, op: Operation, reason: str, *, now: datetime) -> bool:
    """End an operation that outlived its deadline (the watchdog's verdict); True if moved."""
    rows: list[dict[str, Any]] = list(op.results or [{"success": False}] * op.record_count)
    # Unfinished records: never answered, or failed retryably and waiting.
    todo = [
        i
        for i, row in enumerate(rows)
        if (not row["success"] and row.get("error") is None) or row.get("retryable")
    ]
    operations_repo.add_log(
        session, op.id, reason, now=now, severity="ERROR", details={"state": op.state}
    )
    tally = Tally(
        succeeded=_count(rows, True),
        failed=_count(rows, False),
        retryable=len(todo),
        last_error=op.last_error,
    )
    return _expire_rows(session, op, rows, todo, tally, now)


def _expire_rows(
    session: Session,
    op: Operation,
    rows: list[dict[str, Any]],
    todo: list[int],
    tally: Tally,
    now: datetime,
) -> bool:
    message = expiry_message(tally.last_error)
    for index in todo:
        rows[index] = {"success": False, "error": message}
    return conclude(
        session,
        op,
        Settled(State.EXPIRED),
        tally,
        now=now,
        summary=f"[{op.object_name}] {message}",
        errors=[message, *_failed_rows(rows)],
        results=rows,
    )


def _unfinished(op: Operation, tally: Tally) -> str:
    return "the bulk upsert" if op.shape == "bulk" else f"{tally.retryable} record(s)"


def _failed_rows(rows: list[dict[str, Any]]) -> list[str]:
    return [
        f"record {i}: {r['error']}"
        for i, r in enumerate(rows)
        if not r["success"] and r.get("error")
    ]


def summarize(op: Operation, rows: list[dict[str, Any]], state: State) -> str:
    """The operation's one-line `result`, in the contract's words."""
    if op.shape in ("single", "auto_batch"):
        row = rows[0]
        if row["success"]:
            suffix = f" (recordId {row['recordId']})" if row.get("recordId") else ""
            return f"[{op.object_name}] Write succeeded{suffix}"
        return f"[{op.object_name}] Write failed: {row.get('error')}"
    return f"Batch write completed ({_count(rows, True)} succeeded, {_count(rows, False)} failed)"


def _log_attempt(session: Session, op: Operation, attempt: Attempt, now: datetime) -> None:
    statuses = sorted({str(r.status_code) for r in attempt.results.values() if r.status_code})
    failed = [r for r in attempt.results.values() if not r.success]
    operations_repo.add_log(
        session,
        op.id,
        f"attempt {op.attempts} finished",
        now=now,
        severity="INFO" if not failed else "WARNING",
        error=_last_error(attempt),
        details={
            "attempt": op.attempts,
            "records_tried": len(attempt.results),
            "succeeded": len(attempt.results) - len(failed),
            "failed": len(failed),
            "http_status": ",".join(statuses) or "2xx",
            "retry_after_s": attempt.retry_after_s if attempt.retry_after_s is not None else "none",
        },
    )


def _last_error(attempt: Attempt) -> str | None:
    for result in attempt.results.values():
        if not result.success and result.error:
            return result.error
    return attempt.errors[0] if attempt.errors else None


def _count(rows: list[dict[str, Any]], success: bool) -> int:
    return sum(1 for row in rows if bool(row["success"]) is success)
