"""`POST /v1/projects/{p}/integrations/{i}/objects/{objectName}`: the write endpoint."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from api_shim.deps import CallerProject, IdempotencyKey, State, read_limited_body
from api_shim.idempotent import answer_once
from api_shim.problems import ApiProblem
from api_shim.views import batch_response, write_result
from writejobs.clock import iso, utcnow
from writejobs.core.contract import WriteRequest, parse_write_request
from writejobs.intake.idempotency import KeyClaim
from writejobs.intake.write import Accepted, WriteTarget, accept_write

router = APIRouter()

# Request bodies over this are refused before parsing (100 records of a CRM are far smaller).
MAX_BODY_BYTES = 10 * 1024 * 1024
# Bodies up to this are parsed on the event loop (tens of microseconds); larger ones in
# a thread, so one big batch cannot stall every other request.
SMALL_BODY_BYTES = 64 * 1024

_REQUEST_SCHEMA = {
    "required": True,
    "content": {"application/json": {"schema": WriteRequest.model_json_schema(by_alias=True)}},
}


@router.post(
    "/v1/projects/{projectIdOrName}/integrations/{integrationId}/objects/{objectName}",
    openapi_extra={"requestBody": _REQUEST_SCHEMA},
    summary="Write records",
    tags=["Write"],
)
async def write_records(
    request: Request,
    state: State,
    project: CallerProject,
    idempotency_key: IdempotencyKey,
    integrationId: str,  # noqa: N803
    objectName: str,  # noqa: N803
) -> Response:
    """Create, update or delete records: synchronously, asynchronously, or auto-batched.

    200 for every success; 400 text/plain for a bad request; 422 when the
    provider refused every record; problem+json for everything else. With an
    `Idempotency-Key`, a repeated request gets the first answer (409 while the
    first is running, 422 problem+json when the key was used for another request).
    """
    state.quota.check(project.id, utcnow())
    body = await read_limited_body(request, MAX_BODY_BYTES)
    if len(body) <= SMALL_BODY_BYTES:
        write = parse_write_request(body)
    else:
        # Parsing and checking up to 10 MiB of JSON is CPU work: off the event loop.
        write = await run_in_threadpool(parse_write_request, body)
    target = WriteTarget(project, integrationId, objectName)

    def perform(claim: KeyClaim | None) -> Response:
        accepted = accept_write(target, write, state.deps, state.dispatch, claim)
        state.metrics.count("writes_accepted", shape=accepted.operation.shape)
        return _answer(accepted, write)

    return await answer_once(state, project, idempotency_key, request, body, perform)


def _answer(accepted: Accepted, write: WriteRequest) -> Response:
    op_id = accepted.operation.id
    if write.is_async:
        return JSONResponse({"operationId": op_id})
    if accepted.provider_error is not None:
        error = accepted.provider_error
        if error.retryable:
            retry_after = None
            if error.retry_after_s is not None:
                retry_after = iso(utcnow() + timedelta(seconds=error.retry_after_s))
            raise ApiProblem(
                502,
                f"the provider is unavailable: {error.message}",
                retryable=True,
                retry_after=retry_after,
                context={"operationId": op_id},
                remedy="Try again later, or send the write asynchronously so we retry for you.",
            )
        if write.batch is not None:
            n = len(write.batch)
            body: dict[str, Any] = {
                "operationId": op_id,
                "successCount": 0,
                "failureCount": n,
                "errors": [{"message": error.message}],
            }
            return JSONResponse(body, status_code=422)
        return JSONResponse(_single_fail(op_id, error.message, error.raw_response), status_code=422)
    outcome = accepted.outcome
    assert outcome is not None
    if write.batch is not None:
        status = 200 if outcome.success_count > 0 else 422
        return JSONResponse(batch_response(op_id, outcome), status_code=status)
    result = outcome.results[0]
    if result.success:
        with_record_id = write.type != "delete"
        return JSONResponse(
            {"operationId": op_id, "result": write_result(result, with_record_id=with_record_id)}
        )
    return JSONResponse(_single_fail(op_id, result.error or "write failed", None), status_code=422)


def _single_fail(op_id: str, message: str, raw: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "operationId": op_id,
        "errors": [{"message": message}],
        "result": {"success": False},
    }
    if raw:
        body["rawResponse"] = raw
    return body
