"""The `write.async.done` notification body: the contract's payload, plus what it lacks.

The contract's `WriteAsyncDoneNotificationPayload` is `{notificationType, data}`
with `data` naming the installation and object, `success` (false for a partial
failure), `successfulRecordIds` and `errors`. It has no operation id, so a
receiver cannot tell which write ended; ours adds, inside `data`, `operationId`,
the public `status` and finer `state`, the counts, the auto-batch the write
rode in, and each record's outcome (`records: [{index, success, recordId?,
error?}]`).

writejobs has no connections, group names or consumers of its own: an
installation holds its credentials, so `connectionId` is the installation's id,
`groupName` is the `groupRef`, and `consumerRef`/`consumerName` are empty.

A body stays within `MAX_PAYLOAD_BYTES` (the contract's 300 KB): past it the
records go first, then the id and error lists, and what is left says so
(`truncated: true`) with the counts and `operationURL`, the operation to fetch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

NOTIFICATION_TYPE = "write.async.done"
MAX_PAYLOAD_BYTES = 300_000


@dataclass(frozen=True, slots=True)
class Finished:
    """What a notification tells of one ended operation (plain values, no ORM)."""

    operation_id: str
    project_id: str
    provider: str
    integration_id: str
    integration_name: str
    installation_id: str
    group_ref: str
    object_name: str
    state: str
    status: str
    shape: str
    write_type: str
    record_count: int
    success_count: int
    failure_count: int
    results: list[dict[str, Any]]
    errors: list[str]
    finished_at: str
    batch_id: str | None = None
    flush_reason: str | None = None


def render(finished: Finished, operation_url: str, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> str:
    """The JSON body for `finished`, at most `max_bytes` bytes of UTF-8 (compact JSON)."""
    data = _data(finished)
    full = _dumps(data)
    if len(full.encode()) <= max_bytes:
        return full
    data.pop("records")
    data["truncated"] = True
    data["operationURL"] = operation_url
    without_records = _dumps(data)
    if len(without_records.encode()) <= max_bytes:
        return without_records
    data.pop("successfulRecordIds")
    data.pop("errors")
    return _dumps(data)


def _data(f: Finished) -> dict[str, Any]:
    records = [_record(i, row) for i, row in enumerate(f.results)]
    data: dict[str, Any] = {
        "projectId": f.project_id,
        "provider": f.provider,
        "integrationId": f.integration_id,
        "integrationName": f.integration_name,
        "installationId": f.installation_id,
        "connectionId": f.installation_id,
        "groupRef": f.group_ref,
        "groupName": f.group_ref,
        "consumerRef": "",
        "consumerName": "",
        "objectName": f.object_name,
        # The contract: false for a partial failure, with both lists filled.
        "success": f.state == "succeeded",
        "successfulRecordIds": [r["recordId"] for r in records if "recordId" in r],
        "errors": f.errors,
        "operationId": f.operation_id,
        "status": f.status,
        "state": f.state,
        "shape": f.shape,
        "type": f.write_type,
        "recordCount": f.record_count,
        "successCount": f.success_count,
        "failureCount": f.failure_count,
        "finishedAt": f.finished_at,
        "records": records,
    }
    if f.batch_id is not None:
        data["batch"] = {"id": f.batch_id, "flushReason": f.flush_reason}
    return data


def _record(index: int, row: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {"index": index, "success": bool(row.get("success"))}
    if record["success"] and row.get("recordId") is not None:
        record["recordId"] = str(row["recordId"])
    if not record["success"] and row.get("error"):
        record["error"] = str(row["error"])
    return record


def _dumps(data: dict[str, Any]) -> str:
    body = {"notificationType": NOTIFICATION_TYPE, "data": data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)
