"""Operations and write outcomes rendered in the contract's JSON shapes."""

from __future__ import annotations

from typing import Any

from writejobs.clock import as_utc, iso
from writejobs.core.operations import public_status
from writejobs.providers.base import BatchOutcome, RecordResult
from writejobs.store.tables import Installation, Operation, OperationLog


def operation_view(op: Operation) -> dict[str, Any]:
    """`Operation` of the platform API, plus our finer fields (the schema allows extras)."""
    results = op.results or []
    retry: dict[str, Any] = {"attempts": op.attempts}
    if op.last_attempt_at is not None:
        retry["lastAttempt"] = iso(op.last_attempt_at)
    metadata: dict[str, Any] = {
        "objects": [op.object_name],
        "retry": retry,
        "successfulRecordIds": [
            r["recordId"] for r in results if r.get("success") and "recordId" in r
        ],
    }
    if op.batch_id is not None:
        metadata["batch"] = {"id": op.batch_id, "flushReason": op.flush_reason}
    if op.replay_of is not None:
        metadata["replayOf"] = op.replay_of
    if op.waiting_reason is not None and public_status(op.state) == "in_progress":
        waiting: dict[str, Any] = {"reason": op.waiting_reason}
        if op.waiting_since is not None:
            waiting["since"] = iso(as_utc(op.waiting_since))
        metadata["waiting"] = waiting
    if op.cancel_requested_at is not None:
        metadata["cancelRequested"] = iso(as_utc(op.cancel_requested_at))
    view: dict[str, Any] = {
        "id": op.id,
        "projectId": op.project_id,
        "integrationId": op.integration_id,
        "installationId": op.installation_id,
        "configId": op.config_id,
        "actionType": "write",
        "status": public_status(op.state),
        "metadata": metadata,
        "createTime": iso(op.created_at),
        "updateTime": iso(op.updated_at),
        "state": op.state,
        "type": op.write_type,
        "mode": op.mode,
        "shape": op.shape,
        "recordCount": op.record_count,
        "successCount": op.success_count,
        "failureCount": op.failure_count,
        "records": results,
    }
    if op.result_summary is not None:
        view["result"] = op.result_summary
    if op.deadline_at is not None:
        view["deadline"] = iso(as_utc(op.deadline_at))
    if op.errors:
        view["errors"] = [{"message": m} for m in op.errors]
    if op.last_error is not None and public_status(op.state) == "failure":
        view["lastError"] = op.last_error
    return view


def installation_pause_view(
    installation: Installation, released: int | None = None
) -> dict[str, Any]:
    """An installation's pause: whether, since when, why; and what a resume released."""
    view: dict[str, Any] = {
        "installationId": installation.id,
        "groupRef": installation.group_ref,
        "paused": installation.paused_at is not None,
    }
    if installation.paused_at is not None:
        view["pausedAt"] = iso(as_utc(installation.paused_at))
        if installation.paused_reason:
            view["pausedReason"] = installation.paused_reason
    if released is not None:
        view["released"] = released
    return view


def log_view(entry: OperationLog) -> dict[str, Any]:
    message: dict[str, Any] = {
        "msg": entry.msg,
        "operation_id": entry.operation_id,
        "details": entry.details or {},
    }
    if entry.error is not None:
        message["error"] = entry.error
    return {"timestamp": iso(entry.timestamp), "severity": entry.severity, "message": message}


def write_result(result: RecordResult, *, with_record_id: bool = True) -> dict[str, Any]:
    """`WriteResult`: success, recordId (creates and updates only), data; nothing else."""
    body: dict[str, Any] = {"success": result.success}
    if with_record_id and result.success and result.record_id is not None:
        body["recordId"] = result.record_id
    if result.data is not None:
        body["data"] = result.data
    return body


def batch_response(operation_id: str, outcome: BatchOutcome) -> dict[str, Any]:
    """`WriteResponseBatch`; per-record errors go to `errors`, as `results` cannot carry them."""
    body: dict[str, Any] = {
        "operationId": operation_id,
        "successCount": outcome.success_count,
        "failureCount": outcome.failure_count,
        "results": [write_result(r) for r in outcome.results],
    }
    errors = [{"message": m} for m in outcome.errors] + [
        {"message": f"record {i}: {r.error}"}
        for i, r in enumerate(outcome.results)
        if not r.success and r.error
    ]
    if errors:
        body["errors"] = errors
    return body
