"""`PUT /v1/projects/{p}/integrations/{i}/objects/{objectName}:async`: bulk CSV upserts.

The contract's legacy bulk endpoint (section 2a): Salesforce only, a CSV inline
(`recordsCSV`, at most 10 MiB) or by URL (`recordsURL`, at most 150 MiB), upserted
by `primaryKey`. Answers `{operationId}` at once; the worker runs the Bulk API
2.0 job and the operation tells how it went.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from api_shim.deps import CallerProject, IdempotencyKey, State, read_limited_body
from api_shim.idempotent import answer_once
from writejobs.clock import utcnow
from writejobs.core.bulk_contract import MAX_INLINE_CSV_BYTES, BulkUpsertRequest, parse_bulk_request
from writejobs.intake.bulk import accept_bulk_upsert
from writejobs.intake.idempotency import KeyClaim
from writejobs.intake.write import WriteTarget

router = APIRouter()

# JSON escaping can double a CSV (every quote and newline is two characters).
MAX_BODY_BYTES = 2 * MAX_INLINE_CSV_BYTES + 64 * 1024
_TOO_LARGE_REMEDY = "Send a CSV over 10 MiB as recordsURL."

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
    state: State,
    project: CallerProject,
    idempotency_key: IdempotencyKey,
    integrationId: str,  # noqa: N803
    objectName: str,  # noqa: N803
) -> Response:
    """200 `{operationId}` once the write is recorded; 400 text/plain for a bad request.

    An `Idempotency-Key` works as on the write endpoint: a repeat gets the first answer.
    """
    state.quota.check(project.id, utcnow())
    body = await read_limited_body(request, MAX_BODY_BYTES, remedy=_TOO_LARGE_REMEDY)
    # Parsing and checking up to 20 MiB of JSON is CPU work: off the event loop.
    bulk, csv_content = await run_in_threadpool(parse_bulk_request, body)
    target = WriteTarget(project, integrationId, objectName)

    def perform(claim: KeyClaim | None) -> Response:
        op = accept_bulk_upsert(target, bulk, csv_content, state.deps, state.dispatch, claim)
        state.metrics.count("writes_accepted", shape=op.shape)
        return JSONResponse({"operationId": op.id})

    return await answer_once(state, project, idempotency_key, request, body, perform)
