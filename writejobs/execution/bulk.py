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

The outcome comes from the job's counters, fed into the same settle path as
every other write (`writejobs.execution.settle`); the job's rows are logged
and counted by `writejobs.execution.bulk_rows`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from writejobs.clock import as_utc
from writejobs.core.bulk_contract import MAX_URL_CSV_BYTES, StoredBulkRequest, checked_csv
from writejobs.core.operations import State
from writejobs.errors import (
    CsvRejected,
    FetchFailed,
    LeaseLost,
    PermanentProviderError,
    ProviderError,
    UnsafeUrl,
)
from writejobs.execution.bulk_rows import log_failed_rows, log_written_rows
from writejobs.execution.cancel import CANCELLED
from writejobs.execution.cancel import summary as cancel_summary
from writejobs.execution.deps import ExecutionDeps
from writejobs.execution.fetch_guard import open_csv_url
from writejobs.execution.lease import LeaseKeeper
from writejobs.execution.settle import Settled, Tally, conclude, decide, expiry_message
from writejobs.providers.salesforce_bulk import JobStatus, SalesforceBulkIngest
from writejobs.store import operations_repo, tenants_repo
from writejobs.store.tables import Operation

log = logging.getLogger(__name__)

# Polling pauses: short at first (small jobs finish in seconds), doubling to a cap.
FIRST_POLL_S = 0.5
MAX_POLL_S = 10.0
INLINE_CHUNK_BYTES = 1024 * 1024


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
    lease = LeaseKeeper(session, op.id, deps)
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
    session.commit()
    return None


def _start(
    session: Session,
    op: Operation,
    request: StoredBulkRequest,
    ingest: SalesforceBulkIngest,
    deps: ExecutionDeps,
    lease: LeaseKeeper,
) -> JobStatus:
    """Open the CSV, then a job; stream one into the other and close the job."""
    source = "recordsURL" if request.records_url is not None else "recordsCSV"
    with _open_csv(session, op, request, deps) as chunks:
        job_id = ingest.create_upsert_job(op.object_name, request.primary_key)
        operations_repo.set_provider_job(session, op.id, job_id)
        session.commit()
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
    lease: LeaseKeeper,
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
    failed = status.records_failed
    written = max(0, status.records_processed - failed)
    job = status.job_id
    errors = log_failed_rows(session, op, ingest, job, request.primary_key, deps) if failed else []
    if written:
        log_written_rows(session, op, ingest, job, deps)
    complete = status.state == "JobComplete"
    if complete:
        summary = f"[{op.object_name}] Bulk upsert completed ({written} succeeded, {failed} failed)"
    else:
        message = status.error_message or f"Salesforce job {job} ended {status.state}"
        errors.insert(0, message)
        summary = f"[{op.object_name}] Bulk upsert failed: {message} ({written} rows written)"
    state = _settle(
        session,
        op,
        Tally(written, failed, failed_whole=not complete),
        deps,
        summary=summary,
        errors=errors,
        details={"job": job, "job_state": status.state},
        record_count=status.records_processed,
    )
    log.info("operation %s: %s (%d written, %d failed)", op.id, state.value, written, failed)
    return state


def _retry_or_expire(
    session: Session,
    op: Operation,
    message: str,
    retry_after_s: float | None,
    deps: ExecutionDeps,
) -> State:
    tally = Tally(0, 0, retryable=1, retry_after_s=retry_after_s, last_error=message)
    return _settle(session, op, tally, deps)


def _expire(
    session: Session, op: Operation, why: str, deps: ExecutionDeps, status: JobStatus
) -> State:
    """The deadline came while Salesforce was still working through the job: past the
    deadline, the settle path finds no time for another attempt."""
    written = max(0, status.records_processed - status.records_failed)
    tally = Tally(written, status.records_failed, retryable=1, last_error=why)
    return _settle(session, op, tally, deps)


def _fail(
    session: Session,
    op: Operation,
    message: str,
    deps: ExecutionDeps,
    *,
    status_code: int | None = None,
) -> State:
    operations_repo.add_log(
        session,
        op.id,
        "bulk upsert failed",
        now=deps.clock(),
        severity="ERROR",
        error=message,
        details={"http_status": status_code or "none"},
    )
    tally = Tally(0, 0, last_error=message, failed_whole=True)
    summary = f"[{op.object_name}] Bulk upsert failed: {message}"
    return _settle(session, op, tally, deps, summary=summary, errors=[message])


def _settle(
    session: Session,
    op: Operation,
    tally: Tally,
    deps: ExecutionDeps,
    *,
    summary: str | None = None,
    errors: list[str] | None = None,
    details: dict[str, Any] | None = None,
    **fields: Any,
) -> State:
    """Hand the job's counts to the one settle path (`decide`, `conclude`), and commit."""
    now = deps.clock()
    cancel = bool(tally.retryable) and operations_repo.cancel_requested(session, op.id)
    settled = decide(op, tally, now=now, may_retry=True, rng=deps.rng, cancel_requested=cancel)
    moved = _conclude(session, op, settled, tally, now, summary, errors, details, fields)
    if not moved and settled.state is State.RETRYING:
        # A cancel came while this settled: the retry refused it, the cancel ends it.
        if operations_repo.cancel_requested(session, op.id):
            settled = Settled(State.CANCELLED)
            _conclude(session, op, settled, tally, now, summary, errors, details, fields)
    session.commit()
    if settled.state is State.RETRYING:
        assert settled.next_attempt_at is not None
        deps.schedule_retry("op", op.id, settled.next_attempt_at)
    return settled.state


def _conclude(
    session: Session,
    op: Operation,
    settled: Settled,
    tally: Tally,
    now: datetime,
    summary: str | None,
    errors: list[str] | None,
    details: dict[str, Any] | None,
    fields: dict[str, Any],
) -> bool:
    if settled.state is State.EXPIRED:
        message = expiry_message(tally.last_error)
        summary, errors = f"[{op.object_name}] {message}", [message]
    elif settled.state is State.CANCELLED:
        summary, errors = cancel_summary(op, tally.succeeded, tally.failed), [CANCELLED]
    return conclude(
        session,
        op,
        settled,
        tally,
        now=now,
        summary=summary,
        errors=errors,
        details=details,
        **fields,
    )


def _abandon(session: Session, op: Operation, ingest: SalesforceBulkIngest, job_id: str) -> None:
    """Abort a job whose upload did not finish, and forget it."""
    _abort_quietly(ingest, job_id)
    operations_repo.set_provider_job(session, op.id, None)
    session.commit()


def _abort_quietly(ingest: SalesforceBulkIngest, job_id: str) -> None:
    # Best effort: a job left Open is closed by Salesforce itself after a day.
    try:
        ingest.abort(job_id)
    except ProviderError as exc:
        log.warning("could not abort Salesforce job %s: %s", job_id, exc.message)
