"""What an attempt's results mean for an operation: done, try again, or out of time.

An operation keeps one result row per record, in input order. After each
attempt the new results are merged in, and `settle` decides:

* no record left that failed retryably → the terminal state its counts give;
* some left, and the retry policy finds a time before the deadline → `retrying`;
* some left and no time → `expired`, each such record failed with
  "deadline exceeded" and the last provider error.
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
class Settled:
    state: State
    next_attempt_at: datetime | None = None


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


def settle(
    session: Session,
    op: Operation,
    attempt: Attempt,
    *,
    now: datetime,
    may_retry: bool,
    rng: random.Random,
    commit: bool = True,
) -> Settled:
    """Merge an attempt into the operation and move it to what comes next."""
    rows: list[dict[str, Any]] = list(op.results or [{"success": False}] * op.record_count)
    for index, result in attempt.results.items():
        rows[index] = result_row(result)
    _log_attempt(session, op, attempt, now)
    retryable = [i for i, row in enumerate(rows) if not row["success"] and row.get("retryable")]
    last_error = _last_error(attempt) or op.last_error
    if retryable and may_retry and op.deadline_at is not None:
        failures = op.backoff_failures + (0 if attempt.retry_after_s is not None else 1)
        deadline = as_utc(op.deadline_at)
        at = next_attempt_at(failures, now, deadline, attempt.retry_after_s, rng)
        if at is not None:
            why = (
                f"Retry-After {attempt.retry_after_s:g}s"
                if attempt.retry_after_s is not None
                else f"backoff after {failures} failed attempt(s)"
            )
            operations_repo.add_log(
                session,
                op.id,
                f"retrying {len(retryable)} record(s) at {iso(at)}",
                now=now,
                details={
                    "delay_s": round((at - now).total_seconds(), 3),
                    "why": why,
                    "deadline": iso(deadline),
                },
            )
            operations_repo.transition(
                session,
                op.id,
                State.RETRYING,
                now=now,
                results=rows,
                next_attempt_at=at,
                backoff_failures=failures,
                last_error=last_error,
                success_count=_count(rows, True),
                failure_count=_count(rows, False),
                result_summary=f"[{op.object_name}] Retrying: {last_error}",
                commit=commit,
            )
            return Settled(State.RETRYING, at)
    if retryable and may_retry:
        return _expire(session, op, rows, retryable, last_error, now, commit=commit)
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
    state = outcome_state(_count(rows, True), _count(rows, False))
    _finish(session, op, state, rows, attempt.errors, summarize(op, rows, state), now, commit)
    return Settled(state)


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
    # A bulk write's CSV is kept only while the write may still run.
    operations_repo.delete_payload(session, op.id)
    return _expire(session, op, rows, todo, op.last_error, now).state is State.EXPIRED


def _expire(
    session: Session,
    op: Operation,
    rows: list[dict[str, Any]],
    todo: list[int],
    last_error: str | None,
    now: datetime,
    *,
    commit: bool = True,
) -> Settled:
    message = "deadline exceeded" + (f"; last error: {last_error}" if last_error else "")
    for index in todo:
        rows[index] = {"success": False, "error": message}
    operations_repo.add_log(
        session,
        op.id,
        "deadline exceeded",
        now=now,
        severity="ERROR",
        error=last_error,
        details={
            "records": len(todo),
            "deadline": iso(as_utc(op.deadline_at)) if op.deadline_at else "none",
        },
    )
    summary = f"[{op.object_name}] {message}"
    moved = _finish(session, op, State.EXPIRED, rows, [message], summary, now, commit)
    return Settled(State.EXPIRED if moved else State(op.state))


def _finish(
    session: Session,
    op: Operation,
    state: State,
    rows: list[dict[str, Any]],
    errors: list[str],
    summary: str,
    now: datetime,
    commit: bool = True,
) -> bool:
    failed = [
        f"record {i}: {r['error']}"
        for i, r in enumerate(rows)
        if not r["success"] and r.get("error")
    ]
    operations_repo.add_log(
        session,
        op.id,
        f"write finished: {state.value}",
        now=now,
        severity="INFO" if state is State.SUCCEEDED else "WARNING",
        details={"succeeded": _count(rows, True), "failed": _count(rows, False)},
    )
    log.info("operation %s: %s", op.id, state.value)
    return operations_repo.transition(
        session,
        op.id,
        state,
        now=now,
        results=rows,
        errors=(errors + failed) or None,
        success_count=_count(rows, True),
        failure_count=_count(rows, False),
        result_summary=summary,
        next_attempt_at=None,
        commit=commit,
    )


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
