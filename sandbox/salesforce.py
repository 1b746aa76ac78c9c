"""A local Salesforce REST API v60.0: the sObject and sObject Collections writes, with
Salesforce's bodies.

It keeps records in a `SandboxState` and answers the way Salesforce does where an
adapter can tell the difference: 18-character ids with the object's key prefix,
`{id, success, errors}` save results, collections answered in input order with
`allOrNone` rollback, at most 200 records a collection (`EXCEEDED_ID_LIMIT`),
`INVALID_EMAIL_ADDRESS`, `REQUIRED_FIELD_MISSING` and `INVALID_FIELD` validation,
`NOT_FOUND` versus `ENTITY_IS_DELETED`, error bodies as `[{message, errorCode}]`
and bearer-token sessions (`INVALID_SESSION_ID`). Upserts by an external id field
are in `sandbox.salesforce_upsert`.

Salesforce, unlike HubSpot, lets two contacts share an email unless the org adds a
duplicate rule, so duplicates are stored and only counted.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, NamedTuple

from fastapi import APIRouter, Depends, Header, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from sandbox.state import SandboxState, StoredRecord, iso_now

PROVIDER = "salesforce"
DATA_PREFIX = "/services/data/v60.0"
MAX_COLLECTION_RECORDS = 200
ROLLED_BACK_MESSAGE = (
    "Record rolled back because not all records were valid and the request was using "
    "AllOrNone header"
)

# Key prefixes of the standard objects tests use; custom objects start with "a0".
_KEY_PREFIXES = {"Account": "001", "Contact": "003", "Lead": "00Q", "Opportunity": "006"}
_REQUIRED_FIELDS = {
    "Account": ("Name",),
    "Contact": ("LastName",),
    "Lead": ("LastName", "Company"),
}
# The objects whose Email the sandbox counts duplicate creates on.
_DUPLICATE_COUNTED = frozenset({"Contact", "Lead"})
_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# Loose on purpose, like Salesforce's own check: one @ and a dotted domain.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

# Path parameters under Salesforce's names, so route templates read like its docs.
SObject = Annotated[str, Path(alias="sObject")]
RecordId = Annotated[str, Path(alias="id")]


class SalesforceError(Exception):
    """One Salesforce error: raised inside the sandbox, rendered by `salesforce_error_response`
    as a whole call's error, or put in a save result as a record's."""

    def __init__(
        self,
        status_code: int,
        error_code: str,
        message: str,
        fields: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_code = error_code
        self.message = message
        self.fields = fields

    def as_call_error(self) -> dict[str, Any]:
        """The shape of one entry of a failed call's body: `{message, errorCode, fields?}`."""
        body: dict[str, Any] = {"message": self.message, "errorCode": self.error_code}
        if self.fields is not None:
            body["fields"] = self.fields
        return body

    def as_save_error(self) -> dict[str, Any]:
        """The shape of one entry of a save result's `errors`: `{statusCode, message, fields}`."""
        return {"statusCode": self.error_code, "message": self.message, "fields": self.fields or []}


def salesforce_error_response(error: SalesforceError) -> JSONResponse:
    """A whole-call Salesforce error: a JSON array of `{message, errorCode}`."""
    return JSONResponse([error.as_call_error()], status_code=error.status_code)


class CollectionRequest(BaseModel):
    """Body of an sObject Collections create or update."""

    allOrNone: bool = False  # noqa: N815 - Salesforce's field name
    records: list[dict[str, Any]]


def require_session(authorization: Annotated[str | None, Header()] = None) -> None:
    """Any non-empty bearer token is a live session; no token is Salesforce's 401."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise SalesforceError(401, "INVALID_SESSION_ID", "Session expired or invalid")


def create_router(state: SandboxState) -> APIRouter:
    """The Salesforce routes, storing into `state`."""
    router = APIRouter(prefix=DATA_PREFIX, dependencies=[Depends(require_session)])

    @router.post("/sobjects/{sObject}", status_code=201)
    def create_record(sobject: SObject, body: dict[str, Any], request: Request) -> Any:
        request.state.inputs = 1
        with state.lock:
            _raise_first(_create_problems(sobject, body) + _fault_problems(state, body))
            record = _create(state, sobject, _fields(body))
            return {"id": record.id, "success": True, "errors": []}

    @router.get("/sobjects/{sObject}/{id}")
    def get_record(sobject: SObject, record_id: RecordId) -> Any:
        with state.lock:
            return _record_body(sobject, _existing(state, sobject, record_id))

    @router.patch("/sobjects/{sObject}/{id}", status_code=204)
    def update_record(
        sobject: SObject, record_id: RecordId, body: dict[str, Any], request: Request
    ) -> Response:
        request.state.inputs = 1
        with state.lock:
            _existing(state, sobject, record_id)
            _raise_first(_field_problems(sobject, _fields(body)) + _fault_problems(state, body))
            _update(state, sobject, record_id, _fields(body))
        return Response(status_code=204)

    @router.delete("/sobjects/{sObject}/{id}", status_code=204)
    def delete_record(sobject: SObject, record_id: RecordId, request: Request) -> Response:
        request.state.inputs = 1
        with state.lock:
            _delete(state, sobject, _existing(state, sobject, record_id))
        return Response(status_code=204)

    @router.post("/composite/sobjects")
    def create_collection(body: CollectionRequest, request: Request) -> Any:
        return _collection(state, body, request, update=False)

    @router.patch("/composite/sobjects")
    def update_collection(body: CollectionRequest, request: Request) -> Any:
        return _collection(state, body, request, update=True)

    return router


class _Checked(NamedTuple):
    """One collection record after its checks: what it writes to, or why it cannot."""

    record_id: str | None
    sobject: str | None
    problems: list[SalesforceError]


def _collection(
    state: SandboxState, body: CollectionRequest, request: Request, *, update: bool
) -> list[dict[str, Any]]:
    """Save results in input order. Every record is checked before any is written, so an
    all-or-none collection with a bad record writes nothing (Salesforce's rollback)."""
    request.state.inputs = len(body.records)
    with state.lock:
        state.batch_sizes.append(len(body.records))
        if len(body.records) > MAX_COLLECTION_RECORDS:
            raise SalesforceError(
                400,
                "EXCEEDED_ID_LIMIT",
                f"record limit reached. cannot submit more than {MAX_COLLECTION_RECORDS} "
                "records into this call",
            )
        checked = [_check(state, record, update=update) for record in body.records]
        if body.allOrNone and any(c.problems for c in checked):
            rolled_back = SalesforceError(
                400, "ALL_OR_NONE_OPERATION_ROLLED_BACK", ROLLED_BACK_MESSAGE
            )
            return [_failed_save(c.problems or [rolled_back], c.record_id) for c in checked]
        results: list[dict[str, Any]] = []
        for check, record in zip(checked, body.records, strict=True):
            if check.problems or check.sobject is None:
                results.append(_failed_save(check.problems, check.record_id))
            elif check.record_id is not None:
                _update(state, check.sobject, check.record_id, _fields(record))
                results.append({"id": check.record_id, "success": True, "errors": []})
            else:
                created = _create(state, check.sobject, _fields(record))
                results.append({"id": created.id, "success": True, "errors": []})
        return results


def _check(state: SandboxState, record: dict[str, Any], *, update: bool) -> _Checked:
    """Check one collection record, writing nothing."""
    attributes = record.get("attributes")
    sobject = attributes.get("type") if isinstance(attributes, dict) else None
    if not update:
        if not isinstance(sobject, str) or not sobject:
            problem = SalesforceError(400, "INVALID_TYPE", "Must send a concrete entity type.")
            return _Checked(None, None, [problem])
        problems = _create_problems(sobject, record) + _fault_problems(state, record)
        return _Checked(None, sobject, problems)
    record_id = record.get("id", record.get("Id"))
    if not isinstance(record_id, str) or not record_id:
        problem = SalesforceError(400, "MISSING_ARGUMENT", "Id not specified in an update call")
        return _Checked(None, None, [problem])
    if not isinstance(sobject, str) or not sobject:
        # Salesforce reads the object type of an update from the id.
        sobject = _object_holding(state, record_id)
    try:
        _existing(state, sobject or "", record_id)
    except SalesforceError as error:
        return _Checked(record_id, sobject, [error])
    problems = _field_problems(sobject or "", _fields(record)) + _fault_problems(state, record)
    return _Checked(record_id, sobject, problems)


def _fault_problems(state: SandboxState, record: dict[str, Any]) -> list[SalesforceError]:
    """What the fault rules make Salesforce say of a record: a validation rule, or a lock."""
    reason = state.faults.reject_reason(record)
    if reason is not None:
        return [SalesforceError(400, "FIELD_CUSTOM_VALIDATION_EXCEPTION", reason)]
    transient = state.faults.transient_reason(record)
    if transient is not None:
        return [SalesforceError(400, "UNABLE_TO_LOCK_ROW", transient)]
    return []


def _failed_save(problems: list[SalesforceError], record_id: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {"success": False, "errors": [p.as_save_error() for p in problems]}
    if record_id is not None:
        result["id"] = record_id
    return result


# Checks. Each returns Salesforce's errors for a record and writes nothing.


def _create_problems(sobject: str, record: dict[str, Any]) -> list[SalesforceError]:
    if any(key.lower() == "id" for key in record):
        return [SalesforceError(400, "INVALID_FIELD", "cannot specify Id in an insert call")]
    fields = _fields(record)
    problems = _field_problems(sobject, fields)
    present = {k.lower() for k, v in fields.items() if v not in (None, "")}
    missing = [f for f in _REQUIRED_FIELDS.get(sobject, ()) if f.lower() not in present]
    if missing:
        message = f"Required fields are missing: [{', '.join(missing)}]"
        problems.append(SalesforceError(400, "REQUIRED_FIELD_MISSING", message, missing))
    return problems


def _field_problems(sobject: str, fields: dict[str, Any]) -> list[SalesforceError]:
    problems = []
    for name, value in fields.items():
        if not _FIELD_NAME.match(name):
            message = f"No such column '{name}' on sobject of type {sobject}"
            problems.append(SalesforceError(400, "INVALID_FIELD", message, []))
        elif name.lower() == "email" and value not in (None, ""):
            if not (isinstance(value, str) and _EMAIL.match(value)):
                message = f"Email: invalid email address: {value}"
                problems.append(SalesforceError(400, "INVALID_EMAIL_ADDRESS", message, ["Email"]))
    return problems


def _raise_first(problems: list[SalesforceError]) -> None:
    """A single-record call answers with its first problem, as a whole-call error."""
    if problems:
        raise problems[0]


# Store operations. Each is called with `state.lock` held, on a record already checked.


def _create(state: SandboxState, sobject: str, fields: dict[str, Any]) -> StoredRecord:
    now = iso_now()
    key_prefix = _KEY_PREFIXES.get(sobject, "a0A")
    record_id = f"{key_prefix}{int(state.next_id()):012d}AAA"
    record = StoredRecord(id=record_id, properties=dict(fields), created_at=now, updated_at=now)
    state.objects(PROVIDER, sobject)[record_id] = record
    email = _email(sobject, fields)
    if email is not None:
        emails = state.unique_index(PROVIDER, sobject, "email")
        if email in emails:
            state.duplicate_creates += 1
        emails[email] = record_id
    return record


def _update(state: SandboxState, sobject: str, record_id: str, fields: dict[str, Any]) -> None:
    record = state.objects(PROVIDER, sobject)[record_id]
    old_email = _email(sobject, record.properties)
    # Field names are case-insensitive in Salesforce: `email` overwrites `Email`.
    names = {name.lower(): name for name in record.properties}
    for name, value in fields.items():
        record.properties.pop(names.get(name.lower(), name), None)
        record.properties[name] = value
    record.updated_at = iso_now()
    new_email = _email(sobject, record.properties)
    if new_email != old_email:
        _forget_email(state, sobject, old_email, record_id)
        if new_email is not None:
            state.unique_index(PROVIDER, sobject, "email")[new_email] = record_id


def _delete(state: SandboxState, sobject: str, record: StoredRecord) -> None:
    del state.objects(PROVIDER, sobject)[record.id]
    state.tombstones(PROVIDER, sobject).add(record.id)
    _forget_email(state, sobject, _email(sobject, record.properties), record.id)


def _forget_email(state: SandboxState, sobject: str, email: str | None, record_id: str) -> None:
    """Point the email index past a record that no longer holds `email`."""
    emails = state.unique_index(PROVIDER, sobject, "email")
    if email is None or emails.get(email) != record_id:
        return
    # Another record may share the email (duplicates are allowed); a rare scan finds it.
    holder = next(
        (
            other.id
            for other in state.objects(PROVIDER, sobject).values()
            if other.id != record_id and _email(sobject, other.properties) == email
        ),
        None,
    )
    if holder is None:
        del emails[email]
    else:
        emails[email] = holder


def _existing(state: SandboxState, sobject: str, record_id: str) -> StoredRecord:
    record = state.objects(PROVIDER, sobject).get(record_id)
    if record is not None:
        return record
    if record_id in state.tombstones(PROVIDER, sobject):
        raise SalesforceError(404, "ENTITY_IS_DELETED", "entity is deleted", [])
    raise SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")


def _object_holding(state: SandboxState, record_id: str) -> str | None:
    """The object type of an id (Salesforce reads it from the key prefix)."""
    for (provider, sobject), stored in state.records.items():
        if provider == PROVIDER and record_id in stored:
            return sobject
    for (provider, sobject), deleted in state.deleted_ids.items():
        if provider == PROVIDER and record_id in deleted:
            return sobject
    return None


def _fields(record: dict[str, Any]) -> dict[str, Any]:
    """A record's fields without the collection's `attributes` and the id."""
    return {k: v for k, v in record.items() if k != "attributes" and k.lower() != "id"}


def _email(sobject: str, fields: dict[str, Any]) -> str | None:
    """The email duplicates are counted on; other objects have none."""
    if sobject not in _DUPLICATE_COUNTED:
        return None
    value = next((v for k, v in fields.items() if k.lower() == "email"), None)
    return value.strip().lower() if isinstance(value, str) and value.strip() else None


def _record_body(sobject: str, record: StoredRecord) -> dict[str, Any]:
    return {
        "attributes": {"type": sobject, "url": f"{DATA_PREFIX}/sobjects/{sobject}/{record.id}"},
        "Id": record.id,
        **record.properties,
        "CreatedDate": _salesforce_time(record.created_at),
        "LastModifiedDate": _salesforce_time(record.updated_at),
    }


def _salesforce_time(iso: str) -> str:
    """Salesforce writes times as `2024-05-01T12:00:00.000+0000`."""
    return iso.removesuffix("Z") + "+0000"
