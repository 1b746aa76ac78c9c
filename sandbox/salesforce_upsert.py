"""A local Salesforce upsert by an external id field, one record or a collection.

`PATCH /sobjects/{sObject}/{field}/{value}` answers 201 `{id, success, errors,
created: true}` when it created the record, 200 with `created: false` when it
updated the one record holding the value, and 300 (a list of the records' URLs)
when several hold it. `PATCH /composite/sobjects/{sObject}/{field}` answers one
UpsertResult per record, in input order, with `allOrNone` rollback; every record
must carry `attributes.type` (the URI's object) and the field. The sandbox has no
schema, so any field name may serve as the external id; values match
case-insensitively, as Salesforce's do unless the field is marked case-sensitive.
The records themselves are the ones `sandbox.salesforce` keeps.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse

from sandbox.salesforce import (
    _FIELD_NAME,
    DATA_PREFIX,
    MAX_COLLECTION_RECORDS,
    PROVIDER,
    ROLLED_BACK_MESSAGE,
    CollectionRequest,
    SalesforceError,
    SObject,
    _Checked,
    _create,
    _create_problems,
    _failed_save,
    _fault_problems,
    _field_problems,
    _fields,
    _raise_first,
    _update,
    require_session,
)
from sandbox.state import SandboxState


def create_router(state: SandboxState) -> APIRouter:
    """The Salesforce upsert routes, storing into `state`."""
    router = APIRouter(prefix=DATA_PREFIX, dependencies=[Depends(require_session)])

    @router.patch("/sobjects/{sObject}/{field}/{value}")
    def upsert_record(
        sobject: SObject,
        field: Annotated[str, Path()],
        value: Annotated[str, Path()],
        body: dict[str, Any],
        request: Request,
    ) -> Any:
        request.state.inputs = 1
        with state.lock:
            _check_external_field(field)
            matches = _holding(state, sobject, field, value)
            if len(matches) > 1:
                urls = [f"{DATA_PREFIX}/sobjects/{sobject}/{m}" for m in matches]
                return JSONResponse(urls, status_code=300)
            fields = _fields(body) | {field: value}
            if matches:
                _raise_first(_field_problems(sobject, fields) + _fault_problems(state, body))
                _update(state, sobject, matches[0], fields)
                return JSONResponse(_upsert_result(matches[0], created=False), status_code=200)
            _raise_first(_create_problems(sobject, body) + _fault_problems(state, body))
            record = _create(state, sobject, fields)
            return JSONResponse(_upsert_result(record.id, created=True), status_code=201)

    @router.patch("/composite/sobjects/{sObject}/{field}")
    def upsert_collection(
        sobject: SObject, field: Annotated[str, Path()], body: CollectionRequest, request: Request
    ) -> Any:
        request.state.inputs = len(body.records)
        with state.lock:
            _check_external_field(field)
            return _upsert_collection(state, sobject, field, body)

    return router


def _upsert_collection(
    state: SandboxState, sobject: str, field: str, body: CollectionRequest
) -> list[dict[str, Any]]:
    """UpsertResults in input order; with `allOrNone`, nothing written if one record fails."""
    state.batch_sizes.append(len(body.records))
    if len(body.records) > MAX_COLLECTION_RECORDS:
        raise SalesforceError(
            400,
            "EXCEEDED_ID_LIMIT",
            f"record limit reached. cannot submit more than {MAX_COLLECTION_RECORDS} "
            "records into this call",
        )
    checked = [_check_upsert(state, sobject, field, record) for record in body.records]
    if body.allOrNone and any(c.problems for c in checked):
        rolled_back = SalesforceError(400, "ALL_OR_NONE_OPERATION_ROLLED_BACK", ROLLED_BACK_MESSAGE)
        return [_failed_save(c.problems or [rolled_back], c.record_id) for c in checked]
    results: list[dict[str, Any]] = []
    for check, record in zip(checked, body.records, strict=True):
        if check.problems:
            results.append(_failed_save(check.problems, check.record_id))
            continue
        # Looked up again: an earlier record of this call may have created the value.
        matches = _holding(state, sobject, field, str(record[field]))
        if matches:
            _update(state, sobject, matches[0], _fields(record))
            results.append(_upsert_result(matches[0], created=False))
        else:
            created = _create(state, sobject, _fields(record))
            results.append(_upsert_result(created.id, created=True))
    return results


def _check_upsert(
    state: SandboxState, sobject: str, field: str, record: dict[str, Any]
) -> _Checked:
    """Check one record of a collection upsert, writing nothing."""
    attributes = record.get("attributes")
    record_type = attributes.get("type") if isinstance(attributes, dict) else None
    if record_type != sobject:
        message = f"Must send records of the type in the URI ({sobject}), in attributes.type."
        return _Checked(None, None, [SalesforceError(400, "INVALID_TYPE", message)])
    value = record.get(field)
    if value in (None, "") or isinstance(value, bool | dict | list):
        message = f"{field} not specified: an upsert needs the external id field"
        return _Checked(None, sobject, [SalesforceError(400, "MISSING_ARGUMENT", message)])
    matches = _holding(state, sobject, field, str(value))
    if len(matches) > 1:
        message = f"{field}: more than one record found for external id field: {matches}"
        return _Checked(None, sobject, [SalesforceError(400, "DUPLICATE_EXTERNAL_ID", message)])
    if matches:
        problems = _field_problems(sobject, _fields(record)) + _fault_problems(state, record)
        return _Checked(matches[0], sobject, problems)
    problems = _create_problems(sobject, record) + _fault_problems(state, record)
    return _Checked(None, sobject, problems)


def _holding(state: SandboxState, sobject: str, field: str, value: str) -> list[str]:
    """Ids of the records whose `field` (any case) holds `value` (any case)."""
    wanted = value.strip().lower()
    found = []
    for record in state.objects(PROVIDER, sobject).values():
        held = next((v for k, v in record.properties.items() if k.lower() == field.lower()), None)
        if held is not None and str(held).strip().lower() == wanted:
            found.append(record.id)
    return found


def _check_external_field(field: str) -> None:
    if not _FIELD_NAME.match(field) or field.lower() == "id":
        message = f"Provided external ID field does not exist or is not accessible: {field}"
        raise SalesforceError(404, "NOT_FOUND", message)


def _upsert_result(record_id: str, *, created: bool) -> dict[str, Any]:
    return {"id": record_id, "success": True, "errors": [], "created": created}
