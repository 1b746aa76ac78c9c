"""A local AvePoint Opus "Submit Records" API: `POST /records/connector/records`.

It keeps records per connection id in a `SandboxState`, keyed by `rowKey`, and
answers the way the AvePoint Graph Modern API documents: at most 15 records a call
(else 400), `201 {statusCode: 201, message: null}` when every record was taken,
and the records it refused listed in `failedItems` (each the submitted record with
an `errorMessage`). `conflictOption` decides a `rowKey` Opus already holds: `Skip`
leaves the stored record, `Overwrite` replaces it.

Opus has one call for creates and updates; writejobs sends creates with `Skip`, so
the sandbox counts a `Skip` of a `rowKey` it already holds as a duplicate create.
The checks are the documented ones that need no connection schema: a `rowKey` is
required, and `timeCreated` / `timeModified`, when sent, must be DateTimes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from sandbox.state import SandboxState, StoredRecord, iso_now

PROVIDER = "opus"
# The region's Graph host serves the records service under /records.
PREFIX = "/records"
MAX_RECORDS = 15
_DATETIME_COLUMNS = ("timeCreated", "timeModified")


class OpusError(Exception):
    """An Opus error body: raised inside the sandbox, rendered by `opus_error_response`."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def opus_error_response(error: OpusError) -> JSONResponse:
    """A whole-call Opus error: `{statusCode, message}`, the status repeated in the body."""
    body = {"statusCode": error.status_code, "message": error.message}
    return JSONResponse(body, status_code=error.status_code)


class SubmitRequest(BaseModel):
    """Body of a submit: the connection, the conflict resolution and the records."""

    id: str = Field(min_length=1)
    conflictOption: Literal["Overwrite", "Skip"]  # noqa: N815 - Opus's field name
    data: list[dict[str, Any]]


def require_bearer(authorization: Annotated[str | None, Header()] = None) -> None:
    """Any non-empty bearer token passes; no token is a 401."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise OpusError(401, "Unauthorized")


def create_router(state: SandboxState) -> APIRouter:
    """The Opus route, storing into `state`."""
    router = APIRouter(prefix=PREFIX, dependencies=[Depends(require_bearer)])

    @router.post("/connector/records")
    def submit_records(body: SubmitRequest, request: Request) -> JSONResponse:
        request.state.inputs = len(body.data)
        with state.lock:
            state.batch_sizes.append(len(body.data))
            if len(body.data) > MAX_RECORDS:
                raise OpusError(
                    400, f"You can submit up to {MAX_RECORDS} records to AvePoint Opus at a time."
                )
            failed = []
            for record in body.data:
                problem = _problem(record) or state.faults.reject_reason(record)
                if problem is None:
                    _store(state, body.id, body.conflictOption, record)
                else:
                    failed.append(record | {"errorMessage": problem})
        answer: dict[str, Any] = {"statusCode": 201, "message": None}
        if failed:
            answer["message"] = f"{len(failed)} of {len(body.data)} records failed to be submitted."
            answer["failedItems"] = failed
        return JSONResponse(answer, status_code=201)

    return router


def _problem(record: dict[str, Any]) -> str | None:
    """Why Opus refuses a record, or None."""
    row_key = record.get("rowKey")
    if isinstance(row_key, bool) or row_key is None or not str(row_key).strip():
        return "The rowKey of the record is required."
    for column in _DATETIME_COLUMNS:
        value = record.get(column)
        if value is not None and not _is_datetime(value):
            return f"The value of {column} is not a valid DateTime: {value}"
    return None


def _is_datetime(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _store(state: SandboxState, connection_id: str, option: str, record: dict[str, Any]) -> None:
    """Store a checked record under its rowKey. Call under `state.lock`."""
    rows = state.objects(PROVIDER, connection_id)
    key = str(record["rowKey"])
    now = iso_now()
    existing = rows.get(key)
    if existing is None:
        rows[key] = StoredRecord(id=key, properties=dict(record), created_at=now, updated_at=now)
    elif option == "Skip":
        state.duplicate_creates += 1
    else:
        existing.properties = dict(record)
        existing.updated_at = now
