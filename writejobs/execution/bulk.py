"""Running a bulk CSV upsert: one Salesforce Bulk API 2.0 ingest job per attempt.

An attempt opens the CSV (the stored inline one, or `recordsURL` through
`safe_fetch`, which refuses internal addresses hop by hop), opens an upsert
job, streams the CSV into it through `checked_csv` (CRLF or a missing
`primaryKey` column stop it), closes it, and polls with a growing pause until
Salesforce is done or the deadline comes. Nothing on the way holds the file:
memory stays flat whatever its size.

The job's id is stored on the operation as soon as the job exists, so an
attempt that follows a killed worker picks up a job Salesforce is already
working through instead of writing the rows again; a job that never got its
whole upload is aborted and started afresh (an upsert by key writes the same
result twice, so starting again is safe). A failed upload aborts its job: a
half-sent CSV is never handed to Salesforce.

The outcome comes from the job's counters; the refused rows (first
`MAX_ROW_LOGS` of them) become log lines with Salesforce's message and the row's
`primaryKey` value, which is how the caller finds them in their file; the
written rows (`successfulResults`) are counted into created and updated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.orm import Session

from writejobs.clock import as_utc, iso
from writejobs.core.bulk_contract import (
    MAX_URL_CSV_BYTES,
    CsvRejected,
    StoredBulkRequest,
    checked_csv,
)
from writejobs.core.operations import State, outcome_state
from writejobs.core.retry import next_attempt_at
from writejobs.errors import PermanentProviderError, ProviderError
from writejobs.execution.deps import ExecutionDeps
from writejobs.execution.fetch_guard import FetchFailed, UnsafeUrl, open_csv_url
from writejobs.providers.salesforce_bulk import JobStatus, SalesforceBulkIngest
from writejobs.store import operations_repo, tenants_repo
from writejobs.store.tables import Operation

log = logging.getLogger(__name__)

# Polling pauses: short at first (small jobs finish in seconds), doubling to a cap.
FIRST_POLL_S = 0.5
MAX_POLL_S = 10.0
# Failed rows logged one by one; the rest are counted, and left in Salesforce's results.
MAX_ROW_LOGS = 1000
# Failed rows also named in the operation's `errors` (the view stays readable).
MAX_ERRORS = 100
INLINE_CHUNK_BYTES = 1024 * 1024


class LeaseLost(Exception):
    """The operation is no longer this attempt's (the watchdog ended it): stop quietly."""


def run_bulk_attempt(session: Session, op: Operation, deps: ExecutionDeps) -> State | None:
    """One attempt of a bulk operation that `start_attempt` moved to `running`.

    Returns the state it settled in, or None when the operation was taken away.
    """
    request = StoredBulkRequest.model_validate(op.request)
    installation = tenants_repo.get_installation(session, op.installation_id)
    assert installation is not None
    operations_repo.add_log(
        session,
        op.id,
        "attempt started",
        now=deps.clock(),
        details={"attempt": op.attempts, "job": op.provider_job_id or "new"},
    )
    session.commit()
    lease = _LeaseKeeper(session, op.id, deps)
    try:
        with deps.open_bulk(installation, deps.settings) as ingest:
            status = _resume(session, op, ingest, deps) or _start(
                session, op, request, ingest, deps, lease
            )
            status = _wait(ingest, status, op, deps, lease)
            if not status.done:
                _abort_quietly(ingest, status.job_id)
                why = f"Salesforce job {status.job_id} was still {status.state}; it was aborted"
                return _expire(session, op, why, deps, status)
            return _finish(session, op, request, ingest, status, deps)
    except LeaseLost:
        log.warning("operation %s: taken over while running; this attempt stops", op.id)
        return None
    except (CsvRejected, UnsafeUrl) as exc:
        return _fail(session, op, str(exc), deps)
    except FetchFailed as exc:
        if exc.retryable:
            return _retry_or_expire(session, op, exc.message, None, deps)
        return _fail(session, op, exc.message, deps)
    except ProviderError as exc:
        if exc.retryable:
            return _retry_or_expire(session, op, exc.message, exc.retry_after_s, deps)
        return _fail(session, op, exc.message, deps, status_code=exc.status_code)


def _resume(
    session: Session, op: Operation, ingest: SalesforceBulkIngest, deps: ExecutionDeps
) -> JobStatus | None:
    """The job an earlier attempt handed to Salesforce, if there is one to follow."""
    job_id = op.provider_job_id
    if job_id is None:
        return None
    try:
        status = ingest.poll(job_id)
    except PermanentProviderError:
        status = JobStatus(job_id, state="Gone")
    if status.state in ("UploadComplete", "InProgress", "JobComplete", "Failed"):
        operations_repo.add_log(
            session,
            op.id,
            f"following Salesforce job {job_id}",
            now=deps.clock(),
            details={"state": status.state},
        )
        session.commit()
        return status
    # Open: its upload was cut off; Aborted or gone: nothing to follow. Start again.
    if status.state == "Open":
        _abort_quietly(ingest, job_id)
    operations_repo.add_log(
        session,
        op.id,
        f"Salesforce job {job_id} of an earlier attempt was {status.state}: starting a new job",
        now=deps.clock(),
        severity="WARNING",
    )
    operations_repo.set_provider_job(session, op.id, None)
    return None


def _start(
    session: Session,
    op: Operation,
    request: StoredBulkRequest,
    ingest: SalesforceBulkIngest,
    deps: ExecutionDeps,
    lease: _LeaseKeeper,
) -> JobStatus:
    """Open the CSV, then a job; stream one into the other and close the job."""
    source = "recordsURL" if request.records_url is not None else "recordsCSV"
    with _open_csv(session, op, request, deps) as chunks:
        job_id = ingest.create_upsert_job(op.object_name, request.primary_key)
        operations_repo.set_provider_job(session, op.id, job_id)
        try:
            checked = checked_csv(chunks, request.primary_key, source=source)
            ingest.upload(job_id, lease.paced(checked))
            status = ingest.close(job_id)
        except BaseException:
            _abandon(session, op, ingest, job_id)
            raise
    operations_repo.add_log(
        session,
        op.id,
        f"CSV uploaded to Salesforce job {job_id}",
        now=deps.clock(),
        details={"bytes": lease.bytes_sent, "source": source, "state": status.state},
    )
    session.commit()
    log.info("operation %s: %d bytes uploaded to job %s", op.id, lease.bytes_sent, job_id)
    return status


@contextmanager
def _open_csv(
    session: Session, op: Operation, request: StoredBulkRequest, deps: ExecutionDeps
) -> Iterator[Iterable[bytes]]:
    if request.records_url is None:
        content = operations_repo.load_payload(session, op.id)
        if content is None:
            raise CsvRejected("the operation's recordsCSV is no longer stored")
        step = INLINE_CHUNK_BYTES
        yield (content[i : i + step] for i in range(0, len(content), step))
        return
    with open_csv_url(
        request.records_url,
        allowed_http_hosts=deps.settings.allowed_http_hosts,
        max_bytes=MAX_URL_CSV_BYTES,
        total_timeout_s=deps.settings.fetch_timeout_s,
    ) as chunks:
        yield chunks


def _wait(
    ingest: SalesforceBulkIngest,
    status: JobStatus,
    op: Operation,
    deps: ExecutionDeps,
    lease: _LeaseKeeper,
) -> JobStatus:
    """Poll until the job is done, or return it unfinished when the deadline comes."""
    assert op.deadline_at is not None
    deadline = as_utc(op.deadline_at)
    pause = FIRST_POLL_S
    while not status.done:
        left = (deadline - deps.clock()).total_seconds()
        if left <= 0:
            return status
        lease.renew(force=True)
        time.sleep(min(pause, left))
        status = ingest.poll(status.job_id)
        pause = min(pause * 2, MAX_POLL_S)
    return status


def _finish(
    session: Session,
    op: Operation,
    request: StoredBulkRequest,
    ingest: SalesforceBulkIngest,
    status: JobStatus,
    deps: ExecutionDeps,
) -> State:
    now = deps.clock()
    failed = status.records_failed
    written = max(0, status.records_processed - failed)
    job = status.job_id
    errors = _log_failed_rows(session, op, ingest, job, request.primary_key, deps) if failed else []
    if written:
        _log_written_rows(session, op, ingest, job, deps)
    if status.state == "JobComplete":
        state = outcome_state(written, failed)
        summary = f"[{op.object_name}] Bulk upsert completed ({written} succeeded, {failed} failed)"
    else:
        state = State.FAILED
        message = status.error_message or f"Salesforce job {job} ended {status.state}"
        errors.insert(0, message)
        summary = f"[{op.object_name}] Bulk upsert failed: {message} ({written} rows written)"
    operations_repo.add_log(
        session,
        op.id,
        f"write finished: {state.value}",
        now=now,
        severity="INFO" if state is State.SUCCEEDED else "WARNING",
        details={"succeeded": written, "failed": failed, "job": job, "job_state": status.state},
    )
    operations_repo.delete_payload(session, op.id)
    operations_repo.transition(
        session,
        op.id,
        state,
        now=now,
        record_count=status.records_processed,
        success_count=written,
        failure_count=failed,
        errors=errors or None,
        result_summary=summary,
        next_attempt_at=None,
    )
    log.info("operation %s: %s (%d written, %d failed)", op.id, state.value, written, failed)
    return state


def _log_failed_rows(
    session: Session,
    op: Operation,
    ingest: SalesforceBulkIngest,
    job_id: str,
    primary_key: str,
    deps: ExecutionDeps,
) -> list[str]:
    """One log line per refused row, up to `MAX_ROW_LOGS`; the first `MAX_ERRORS` messages."""
    now = deps.clock()
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    refused = 0
    for row in ingest.iter_failed_results(job_id):
        refused += 1
        if refused > MAX_ROW_LOGS:
            continue
        key = _value_of(row, primary_key)
        message = row.get("sf__Error", "") or "refused without a message"
        rows.append(
            {
                "operation_id": op.id,
                "timestamp": now,
                "severity": "ERROR",
                "msg": "row failed",
                "error": message,
                "details": {primary_key: key, "sf__Id": row.get("sf__Id", "")},
            }
        )
        if len(errors) < MAX_ERRORS:
            errors.append(f"{primary_key} {key}: {message}")
    if refused > MAX_ROW_LOGS:
        rows.append(
            {
                "operation_id": op.id,
                "timestamp": now,
                "severity": "WARNING",
                "msg": f"{refused - MAX_ROW_LOGS} more failed rows are not logged: "
                f"read them from Salesforce job {job_id}'s failedResults",
            }
        )
    operations_repo.add_logs(session, rows)
    return errors


def _log_written_rows(
    session: Session,
    op: Operation,
    ingest: SalesforceBulkIngest,
    job_id: str,
    deps: ExecutionDeps,
) -> None:
    """How many written rows created a record and how many updated one (`successfulResults`).

    Only counted, never kept: the job may have written a million rows. The counters
    already say how many were written, so a failed read costs this line, not the write.
    """
    created = updated = 0
    try:
        for row in ingest.iter_successful_results(job_id):
            if row.get("sf__Created", "").lower() == "true":
                created += 1
            else:
                updated += 1
    except ProviderError as exc:
        operations_repo.add_log(
            session,
            op.id,
            "could not read which rows were created",
            now=deps.clock(),
            severity="WARNING",
            error=exc.message,
        )
        return
    operations_repo.add_log(
        session,
        op.id,
        f"rows written: {created} created, {updated} updated",
        now=deps.clock(),
        details={"created": created, "updated": updated, "job": job_id},
    )


def _value_of(row: dict[str, Any], column: str) -> str:
    return next((str(v) for k, v in row.items() if k.lower() == column.lower()), "")


def _retry_or_expire(
    session: Session,
    op: Operation,
    message: str,
    retry_after_s: float | None,
    deps: ExecutionDeps,
) -> State:
    now = deps.clock()
    assert op.deadline_at is not None
    failures = op.backoff_failures + (0 if retry_after_s is not None else 1)
    at = next_attempt_at(failures, now, as_utc(op.deadline_at), retry_after_s, deps.rng)
    if at is None:
        return _expire(session, op, message, deps, None)
    operations_repo.add_log(
        session,
        op.id,
        f"retrying at {iso(at)}",
        now=now,
        severity="WARNING",
        error=message,
        details={"delay_s": round((at - now).total_seconds(), 3), "attempt": op.attempts},
    )
    operations_repo.transition(
        session,
        op.id,
        State.RETRYING,
        now=now,
        next_attempt_at=at,
        backoff_failures=failures,
        last_error=message,
        result_summary=f"[{op.object_name}] Retrying: {message}",
    )
    deps.schedule_retry("op", op.id, at)
    return State.RETRYING


def _expire(
    session: Session, op: Operation, why: str, deps: ExecutionDeps, status: JobStatus | None
) -> State:
    now = deps.clock()
    message = f"deadline exceeded; {why}"
    written = 0 if status is None else max(0, status.records_processed - status.records_failed)
    operations_repo.add_log(
        session,
        op.id,
        "deadline exceeded",
        now=now,
        severity="ERROR",
        error=why,
        details={"rows_written": written},
    )
    operations_repo.delete_payload(session, op.id)
    operations_repo.transition(
        session,
        op.id,
        State.EXPIRED,
        now=now,
        errors=[message],
        success_count=written,
        failure_count=0 if status is None else status.records_failed,
        last_error=why,
        result_summary=f"[{op.object_name}] {message}",
        next_attempt_at=None,
    )
    return State.EXPIRED


def _fail(
    session: Session,
    op: Operation,
    message: str,
    deps: ExecutionDeps,
    *,
    status_code: int | None = None,
) -> State:
    now = deps.clock()
    operations_repo.add_log(
        session,
        op.id,
        "bulk upsert failed",
        now=now,
        severity="ERROR",
        error=message,
        details={"http_status": status_code or "none"},
    )
    operations_repo.delete_payload(session, op.id)
    operations_repo.transition(
        session,
        op.id,
        State.FAILED,
        now=now,
        errors=[message],
        last_error=message,
        result_summary=f"[{op.object_name}] Bulk upsert failed: {message}",
        next_attempt_at=None,
    )
    log.info("operation %s: failed", op.id)
    return State.FAILED


def _abandon(session: Session, op: Operation, ingest: SalesforceBulkIngest, job_id: str) -> None:
    """Abort a job whose upload did not finish, and forget it."""
    _abort_quietly(ingest, job_id)
    operations_repo.set_provider_job(session, op.id, None)


def _abort_quietly(ingest: SalesforceBulkIngest, job_id: str) -> None:
    # Best effort: a job left Open is closed by Salesforce itself after a day.
    try:
        ingest.abort(job_id)
    except ProviderError as exc:
        log.warning("could not abort Salesforce job %s: %s", job_id, exc.message)


class _LeaseKeeper:
    """Keeps a long attempt's lease (a big upload, a long poll) from lapsing under it."""

    def __init__(self, session: Session, operation_id: str, deps: ExecutionDeps) -> None:
        self._session = session
        self._operation_id = operation_id
        self._deps = deps
        self._every_s = deps.settings.running_lease_s / 3
        self._last = time.monotonic()
        self.bytes_sent = 0

    def renew(self, *, force: bool = False) -> None:
        """Extend the lease if a third of it has gone by (or `force`); `LeaseLost` if taken."""
        if not force and time.monotonic() - self._last < self._every_s:
            return
        lease_s = self._deps.settings.running_lease_s
        if not operations_repo.renew_lease(
            self._session, self._operation_id, now=self._deps.clock(), lease_s=lease_s
        ):
            raise LeaseLost(self._operation_id)
        self._last = time.monotonic()

    def paced(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """`chunks`, counted, renewing the lease as they go."""
        for chunk in chunks:
            self.bytes_sent += len(chunk)
            self.renew()
            yield chunk
