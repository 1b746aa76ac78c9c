"""A local HubSpot CRM v3: the object endpoints writejobs calls, with HubSpot's bodies.

It keeps records in a `SandboxState` and answers the way HubSpot does where an
adapter can tell the difference: numeric string ids, `201`/`207` batch creates
matched by `objectWriteTraceId`, all-or-none batches when no trace ids are sent,
always-partial batch updates matched by `context.ids`, batch upserts by a unique
property (`idProperty`; each result says whether it is `new`), `INVALID_EMAIL`
validation, contact email uniqueness (409) and bearer-token authentication.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from sandbox.state import SandboxState, StoredRecord, iso_now

PROVIDER = "hubspot"
MAX_BATCH_INPUTS = 100
OBJECTS_PREFIX = "/crm/v3/objects"

# Loose on purpose: HubSpot's own check accepts most things with one @ and a dotted domain.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


# Path parameters under HubSpot's names, so route templates read like HubSpot's docs.
ObjectType = Annotated[str, Path(alias="objectType")]
RecordId = Annotated[str, Path(alias="id")]


class HubSpotError(Exception):
    """A HubSpot error body: raised inside the sandbox, rendered by `hubspot_error_response`."""

    def __init__(
        self,
        status_code: int,
        category: str,
        message: str,
        context: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.category = category
        self.message = message
        self.context = context

    def as_batch_error(self) -> dict[str, Any]:
        """The shape of one entry of a 207 response's `errors`."""
        body: dict[str, Any] = {
            "status": "error",
            "category": self.category,
            "message": self.message,
        }
        if self.context is not None:
            body["context"] = self.context
        return body


def hubspot_error_response(error: HubSpotError) -> JSONResponse:
    """A whole-call HubSpot error: `{status, message, correlationId, category}`."""
    body = error.as_batch_error() | {"correlationId": str(uuid.uuid4())}
    return JSONResponse(body, status_code=error.status_code)


class ObjectInput(BaseModel):
    """Body of a single create or update."""

    properties: dict[str, Any]
    # Accepted so the adapter's body is the real one; nothing reads associations back yet.
    associations: list[dict[str, Any]] = Field(default_factory=list)


class BatchCreateInput(ObjectInput):
    objectWriteTraceId: str | None = None  # HubSpot's field name, camelCase on the wire


class BatchCreateRequest(BaseModel):
    inputs: list[BatchCreateInput]


class BatchUpdateInput(BaseModel):
    id: str
    properties: dict[str, Any]


class BatchUpdateRequest(BaseModel):
    inputs: list[BatchUpdateInput]


class BatchUpsertInput(BaseModel):
    """One input of a batch upsert: the record holding `idProperty` = `id`, or a new one."""

    idProperty: str = Field(min_length=1)  # noqa: N815 - HubSpot's field name
    id: str = Field(min_length=1)
    properties: dict[str, Any]
    objectWriteTraceId: str | None = None  # noqa: N815 - HubSpot's field name


class BatchUpsertRequest(BaseModel):
    inputs: list[BatchUpsertInput]


def require_bearer(authorization: Annotated[str | None, Header()] = None) -> None:
    """Any non-empty bearer token passes; no token is HubSpot's 401."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HubSpotError(401, "INVALID_AUTHENTICATION", "Authentication credentials not found.")


def create_router(state: SandboxState) -> APIRouter:
    """The HubSpot routes, storing into `state`."""
    router = APIRouter(prefix=OBJECTS_PREFIX, dependencies=[Depends(require_bearer)])

    @router.post("/{objectType}", status_code=201)
    def create_object(object_type: ObjectType, body: ObjectInput, request: Request) -> Any:
        request.state.inputs = 1
        with state.lock:
            record = _create(state, object_type, body.properties)
            return _record_body(record)

    @router.get("/{objectType}/{id}")
    def get_object(object_type: ObjectType, record_id: RecordId) -> Any:
        with state.lock:
            return _record_body(_existing(state, object_type, record_id))

    @router.patch("/{objectType}/{id}")
    def update_object(
        object_type: ObjectType, record_id: RecordId, body: ObjectInput, request: Request
    ) -> Any:
        request.state.inputs = 1
        with state.lock:
            return _record_body(_update(state, object_type, record_id, body.properties))

    @router.delete("/{objectType}/{id}", status_code=204)
    def delete_object(object_type: ObjectType, record_id: RecordId, request: Request) -> Response:
        request.state.inputs = 1
        with state.lock:
            _delete(state, object_type, record_id)
        return Response(status_code=204)

    @router.post("/{objectType}/batch/create")
    def batch_create(
        object_type: ObjectType, body: BatchCreateRequest, request: Request
    ) -> JSONResponse:
        request.state.inputs = len(body.inputs)
        started_at = iso_now()
        with state.lock:
            state.batch_sizes.append(len(body.inputs))
            _check_batch_size(len(body.inputs))
            return _batch_create(state, object_type, body.inputs, started_at)

    @router.post("/{objectType}/batch/update")
    def batch_update(
        object_type: ObjectType, body: BatchUpdateRequest, request: Request
    ) -> JSONResponse:
        request.state.inputs = len(body.inputs)
        started_at = iso_now()
        with state.lock:
            state.batch_sizes.append(len(body.inputs))
            _check_batch_size(len(body.inputs))
            return _batch_update(state, object_type, body.inputs, started_at)

    @router.post("/{objectType}/batch/upsert")
    def batch_upsert(
        object_type: ObjectType, body: BatchUpsertRequest, request: Request
    ) -> JSONResponse:
        request.state.inputs = len(body.inputs)
        started_at = iso_now()
        with state.lock:
            state.batch_sizes.append(len(body.inputs))
            _check_batch_size(len(body.inputs))
            return _batch_upsert(state, object_type, body.inputs, started_at)

    return router


def _batch_upsert(
    state: SandboxState, object_type: str, inputs: list[BatchUpsertInput], started_at: str
) -> JSONResponse:
    """Update the record holding each input's `idProperty` value, or create it; partial
    when every input has a trace id (as creates are), otherwise all or none."""
    partial = all(i.objectWriteTraceId is not None for i in inputs)
    if not partial:
        # All or none: every input is checked before any is written.
        for item in inputs:
            _check_email(item.properties)
            _check_faults(state, item.properties)
    written: list[tuple[BatchUpsertInput, StoredRecord, bool]] = []
    errors: list[HubSpotError] = []
    for item in inputs:
        # The value names the record: it is what the record holds once written.
        properties = item.properties | {item.idProperty: item.id}
        existing = _holding(state, object_type, item.idProperty, item.id)
        try:
            if existing is None:
                written.append((item, _create(state, object_type, properties), True))
            else:
                written.append((item, _update(state, object_type, existing, properties), False))
        except HubSpotError as error:
            if not partial:
                # Past the checks only a conflict is left: undo this call's creates.
                for _item, record, new in written:
                    if new:
                        _delete(state, object_type, record.id)
                raise
            error.context = {"objectWriteTraceId": [item.objectWriteTraceId or ""]}
            errors.append(error)
    results = []
    for item, record, new in written:
        body = _record_body(record) | {"new": new}
        if item.objectWriteTraceId is not None:
            body["objectWriteTraceId"] = item.objectWriteTraceId
        results.append(body)
    return _batch_response(results, errors, started_at, all_ok_status=200)


def _holding(state: SandboxState, object_type: str, prop: str, value: str) -> str | None:
    """The id of the record whose `prop` is `value` (contacts' email case-insensitively)."""
    if object_type == "contacts" and prop == "email":
        return state.unique_index(PROVIDER, object_type, "email").get(value.strip().lower())
    for record in state.objects(PROVIDER, object_type).values():
        if record.properties.get(prop) == value:
            return record.id
    return None


def _batch_create(
    state: SandboxState, object_type: str, inputs: list[BatchCreateInput], started_at: str
) -> JSONResponse:
    """Partial when every input has a trace id (HubSpot's rule); otherwise all or none."""
    partial = all(i.objectWriteTraceId is not None for i in inputs)
    created: list[tuple[BatchCreateInput, StoredRecord]] = []
    errors: list[HubSpotError] = []
    for item in inputs:
        try:
            created.append((item, _create(state, object_type, item.properties)))
        except HubSpotError as error:
            if not partial:
                # All or none: undo what this batch stored, then refuse it as a whole.
                for _item, record in created:
                    _delete(state, object_type, record.id)
                raise
            error.context = {"objectWriteTraceId": [item.objectWriteTraceId or ""]}
            errors.append(error)
    results = []
    for item, record in created:
        body = _record_body(record)
        if item.objectWriteTraceId is not None:
            body["objectWriteTraceId"] = item.objectWriteTraceId
        results.append(body)
    return _batch_response(results, errors, started_at, all_ok_status=201)


def _batch_update(
    state: SandboxState, object_type: str, inputs: list[BatchUpdateInput], started_at: str
) -> JSONResponse:
    """Always partial; unknown ids share one OBJECT_NOT_FOUND error, as HubSpot groups them."""
    results: list[dict[str, Any]] = []
    errors: list[HubSpotError] = []
    missing: list[str] = []
    for item in inputs:
        if item.id not in state.objects(PROVIDER, object_type):
            missing.append(item.id)
            continue
        try:
            results.append(_record_body(_update(state, object_type, item.id, item.properties)))
        except HubSpotError as error:
            error.context = {"ids": [item.id]}
            errors.append(error)
    if missing:
        message = (
            f"Could not get some {object_type.upper().removesuffix('S')} objects, "
            "they may be deleted or not exist. Check that ids are valid."
        )
        errors.insert(0, HubSpotError(404, "OBJECT_NOT_FOUND", message, {"ids": missing}))
    return _batch_response(results, errors, started_at, all_ok_status=200)


def _batch_response(
    results: list[dict[str, Any]],
    errors: list[HubSpotError],
    started_at: str,
    *,
    all_ok_status: int,
) -> JSONResponse:
    body: dict[str, Any] = {
        "status": "COMPLETE",
        "results": results,
        "startedAt": started_at,
        "completedAt": iso_now(),
    }
    if not errors:
        return JSONResponse(body, status_code=all_ok_status)
    body["numErrors"] = len(errors)
    body["errors"] = [e.as_batch_error() for e in errors]
    return JSONResponse(body, status_code=207)


def _check_batch_size(count: int) -> None:
    if count > MAX_BATCH_INPUTS:
        raise HubSpotError(
            400,
            "VALIDATION_ERROR",
            f"Batch input is limited to {MAX_BATCH_INPUTS} inputs; received {count}.",
        )


# Store operations. Each is called with `state.lock` held and raises HubSpotError.


def _create(state: SandboxState, object_type: str, properties: dict[str, Any]) -> StoredRecord:
    _check_email(properties)
    _check_faults(state, properties)
    email = _contact_email(object_type, properties)
    emails = state.unique_index(PROVIDER, object_type, "email")
    if email is not None and email in emails:
        state.duplicate_creates += 1
        raise _contact_exists(emails[email])
    now = iso_now()
    record = StoredRecord(
        id=state.next_id(), properties=_as_strings(properties), created_at=now, updated_at=now
    )
    state.objects(PROVIDER, object_type)[record.id] = record
    if email is not None:
        emails[email] = record.id
    return record


def _update(
    state: SandboxState, object_type: str, record_id: str, properties: dict[str, Any]
) -> StoredRecord:
    record = _existing(state, object_type, record_id)
    _check_email(properties)
    _check_faults(state, properties)
    emails = state.unique_index(PROVIDER, object_type, "email")
    new_email = _contact_email(object_type, properties)
    if new_email is not None and emails.get(new_email, record.id) != record.id:
        raise _contact_exists(emails[new_email])
    if "email" in properties:
        old_email = _contact_email(object_type, record.properties)
        if old_email is not None:
            emails.pop(old_email, None)
        if new_email is not None:
            emails[new_email] = record.id
    record.properties |= _as_strings(properties)
    record.updated_at = iso_now()
    return record


def _delete(state: SandboxState, object_type: str, record_id: str) -> None:
    record = _existing(state, object_type, record_id)
    del state.objects(PROVIDER, object_type)[record_id]
    email = _contact_email(object_type, record.properties)
    if email is not None:
        state.unique_index(PROVIDER, object_type, "email").pop(email, None)


def _existing(state: SandboxState, object_type: str, record_id: str) -> StoredRecord:
    record = state.objects(PROVIDER, object_type).get(record_id)
    if record is None:
        raise HubSpotError(404, "OBJECT_NOT_FOUND", "resource not found")
    return record


def _check_faults(state: SandboxState, properties: dict[str, Any]) -> None:
    """A record a fault rule rejects, refused the way HubSpot refuses invalid values."""
    reason = state.faults.reject_reason(properties)
    if reason is not None:
        raise HubSpotError(400, "VALIDATION_ERROR", f"Property values were not valid: {reason}")


def _check_email(properties: dict[str, Any]) -> None:
    value = properties.get("email")
    # An empty value clears the property in HubSpot, so only a non-empty one is checked.
    if value in (None, "") or (isinstance(value, str) and _EMAIL.match(value)):
        return
    detail = {
        "isValid": False,
        "message": f"Email address {value} is invalid",
        "error": "INVALID_EMAIL",
        "name": "email",
    }
    message = "Property values were not valid: " + json.dumps([detail], separators=(",", ":"))
    raise HubSpotError(400, "VALIDATION_ERROR", message)


def _contact_email(object_type: str, properties: dict[str, Any]) -> str | None:
    """The key HubSpot deduplicates contacts on; other objects have none."""
    value = properties.get("email")
    if object_type != "contacts" or not isinstance(value, str) or not value:
        return None
    return value.strip().lower()


def _contact_exists(existing_id: str) -> HubSpotError:
    return HubSpotError(409, "CONFLICT", f"Contact already exists. Existing ID: {existing_id}")


def _as_strings(properties: dict[str, Any]) -> dict[str, Any]:
    """HubSpot stores and returns every property value as a string (null stays null)."""
    return {name: _as_string(value) for name, value in properties.items()}


def _as_string(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _record_body(record: StoredRecord) -> dict[str, Any]:
    system = {
        "hs_object_id": record.id,
        "createdate": record.created_at,
        "hs_lastmodifieddate": record.updated_at,
    }
    return {
        "id": record.id,
        "properties": record.properties | system,
        "createdAt": record.created_at,
        "updatedAt": record.updated_at,
        "archived": False,
    }
