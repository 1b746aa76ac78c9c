"""What a finished bulk job's rows say: the refused ones logged, the written ones counted.

Salesforce keeps a job's per-row results; they are read as a stream and never
kept, since a job may have written a million rows. The first `MAX_ROW_LOGS`
refused rows become log lines with Salesforce's message and the row's
`primaryKey` value, which is how the caller finds them in their file; the
written rows (`successfulResults`) are counted into created and updated.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from writejobs.errors import ProviderError
from writejobs.execution.deps import ExecutionDeps
from writejobs.providers.salesforce_bulk import SalesforceBulkIngest
from writejobs.store import operations_repo
from writejobs.store.tables import Operation

# Failed rows logged one by one; the rest are counted, and left in Salesforce's results.
MAX_ROW_LOGS = 1000
# Failed rows also named in the operation's `errors` (the view stays readable).
MAX_ERRORS = 100


def log_failed_rows(
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


def log_written_rows(
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
