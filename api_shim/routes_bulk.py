"""`PUT /v1/projects/{p}/integrations/{i}/objects/{objectName}:async`: bulk CSV upserts.

The contract's legacy bulk endpoint (section 2a): Salesforce only, a CSV inline
(`recordsCSV`, at most 10 MiB) or by URL (`recordsURL`, at most 150 MiB), upserted
by `primaryKey`. Answers `{operationId}` at once; the worker runs the Bulk API
2.0 job and the operation tells how it went.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api_shim.auth import authenticated_project
from api_shim.problems import ApiProblem
from api_shim.state import AppState
from writejobs.core.bulk_contract import MAX_INLINE_CSV_BYTES, BulkUpsertRequest, parse_bulk_request
from writejobs.intake.bulk import accept_bulk_upsert
from writejobs.intake.write import EnqueueFailed, WriteTarget

router = APIRouter()

# JSON escaping can double a CSV (every quote and newline is two characters).
MAX_BODY_BYTES = 2 * MAX_INLINE_CSV_BYTES + 64 * 1024

_REQUEST_SCHEMA = {
    "required": True,
    "content": {"application/json": {"schema": BulkUpsertRequest.model_json_schema(by_alias=True)}},
}


@router.put(
    "/v1/projects/{projectIdOrName}/integrations/{integrationId}/objects/{objectName}:async",
    openapi_extra={"requestBody": _REQUEST_SCHEMA},
    summary="Upsert records from a CSV (Salesforce Bulk API 2.0)",
    tags=["Write"],
)
async def upsert_records_async(
    request: Request,
    projectIdOrName: str,
    integrationId: str,
    objectName: str,  # noqa: N803
) -> JSONResponse:
    """200 `{operationId}` once the write is recorded; 400 text/plain for a bad request."""
    project = await authenticated_project(request, projectIdOrName)
    body = await _read_body(request)
    bulk, csv_content = parse_bulk_request(body)
    state: AppState = request.app.state.writejobs
    target = WriteTarget(project, integrationId, objectName)
    try:
        op = await run_in_threadpool(
            accept_bulk_upsert, target, bulk, csv_content, state.deps, state.dispatch
        )
    except EnqueueFailed as exc:
        remedy = "The queue is unavailable; send the write again."
        raise ApiProblem(503, str(exc), retryable=True, remedy=remedy) from exc
    state.metrics.count("writes_accepted", shape=op.shape)
    return JSONResponse({"operationId": op.id})


async def _read_body(request: Request) -> bytes:
    """The body, refused with 413 as soon as it is larger than `MAX_BODY_BYTES`."""
    too_large = ApiProblem(
        413,
        f"request body is larger than {MAX_BODY_BYTES} bytes",
        remedy="Send a CSV over 10 MiB as recordsURL.",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_BODY_BYTES:
            raise too_large
    return bytes(body)
