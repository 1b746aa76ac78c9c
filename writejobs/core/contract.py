"""The write API's contract as pydantic models, and its validation rules.

The models mirror the contract's `WriteRequest` (`api/write.yaml`); the
responses are shaped in one place, `api_shim.views`. `parse_write_request` is
the one entry point: it turns raw JSON bytes into a `WriteRequest` or raises
`ContractError` with a one-line message naming the field, which the API
answers as 400 text/plain.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from writejobs.core.json_input import load_json, shown
from writejobs.errors import ContractError

MAX_BATCH_RECORDS = 100
# As long as the columns that keep them (`installations.group_ref`, `operations.object_name`).
MAX_GROUP_REF_CHARS = 200
MAX_NAME_CHARS = 200
# Record ids: Salesforce's are 18 characters, HubSpot's numbers; this is room to spare.
MAX_RECORD_ID_CHARS = 255
# Request headers a write may carry (Salesforce's few, see providers/salesforce.py).
MAX_HEADERS = 20
MAX_HEADER_NAME_CHARS = 100
MAX_HEADER_VALUE_CHARS = 1000
# RFC 9110 section 5.6.2: a field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 section 5.5: visible ASCII, spaces and tabs; never CR, LF or NUL. ASCII
# only, because that is what an HTTP client encodes a header value in.
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*")


class _Lenient(BaseModel):
    # The contract's request schemas allow fields they do not name.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class RetryPolicy(_Lenient):
    deadline_hours: int = Field(default=1, ge=1, le=48, alias="deadlineHours")


class AutoBatchPolicy(_Lenient):
    max_delay_minutes: int = Field(ge=1, le=1440, alias="maxDelayMinutes")
    retry_deadline_hours: int = Field(default=1, ge=1, le=48, alias="retryDeadlineHours")


class BatchPolicy(_Lenient):
    all_or_none: bool = Field(default=False, alias="allOrNone")


class Header(_Lenient):
    """A request header the write asks us to send to the provider (Salesforce's only)."""

    key: Annotated[str, Field(min_length=1, max_length=MAX_HEADER_NAME_CHARS)]
    value: Annotated[str, Field(max_length=MAX_HEADER_VALUE_CHARS)]


class BatchItem(_Lenient):
    record: dict[str, Any]
    associations: list[dict[str, Any]] = Field(default_factory=list)


class WriteRequest(_Lenient):
    """`WriteRequest` of the contract; `mode` defaults to synchronous."""

    group_ref: str = Field(alias="groupRef", min_length=1, max_length=MAX_GROUP_REF_CHARS)
    type: Literal["create", "update", "delete"]
    mode: Literal["synchronous", "asynchronous"] = "synchronous"
    retry_policy: RetryPolicy | None = Field(default=None, alias="retryPolicy")
    auto_batch_policy: AutoBatchPolicy | None = Field(default=None, alias="autoBatchPolicy")
    record: dict[str, Any] | None = None
    batch_policy: BatchPolicy | None = Field(default=None, alias="batchPolicy")
    batch: list[BatchItem] | None = Field(default=None, min_length=1, max_length=MAX_BATCH_RECORDS)
    associations: list[dict[str, Any]] = Field(default_factory=list)
    headers: list[Header] = Field(default_factory=list, max_length=MAX_HEADERS)

    @property
    def is_async(self) -> bool:
        return self.mode == "asynchronous"

    @property
    def all_or_none(self) -> bool:
        return self.batch_policy.all_or_none if self.batch_policy else False


def parse_write_request(body: bytes) -> WriteRequest:
    """Parse and validate a write request, or raise `ContractError` naming the problem.

    The body is read by `load_json`, which refuses NaN, huge numbers, deep
    nesting and lone surrogates before any model sees them.
    """
    raw = load_json(body)
    if not isinstance(raw, dict):
        raise ContractError("request body must be a JSON object")
    try:
        request = WriteRequest.model_validate(raw)
    except ValidationError as exc:
        raise ContractError(_describe(exc.errors()[0])) from None
    _check_rules(request)
    return request


def _check_rules(request: WriteRequest) -> None:
    """The rules the contract states in prose rather than in its schema."""
    if request.record is None and request.batch is None:
        raise ContractError("one of record or batch is required")
    if request.record is not None and request.batch is not None:
        raise ContractError("provide either record or batch, not both")
    if request.auto_batch_policy is not None:
        if request.batch is not None:
            raise ContractError("autoBatchPolicy applies to single records: use record, not batch")
        if not request.is_async:
            raise ContractError("autoBatchPolicy requires mode asynchronous")
    if request.type == "delete":
        if request.batch is not None:
            raise ContractError("batch supports create and update only, not delete")
        if request.is_async:
            raise ContractError("delete is synchronous only: leave out mode")
    if request.type in ("update", "delete"):
        if request.record is not None and not _has_id(request.record):
            raise ContractError(f"record.id is required for {request.type}")
        for index, item in enumerate(request.batch or []):
            if not _has_id(item.record):
                raise ContractError(f"batch[{index}].record.id is required for update")
    if request.record is not None:
        _check_record_id(request.record, "record.id")
    for index, item in enumerate(request.batch or []):
        _check_record_id(item.record, f"batch[{index}].record.id")
    for index, header in enumerate(request.headers):
        _check_header(header, f"headers[{index}]")


def _has_id(record: dict[str, Any]) -> bool:
    value = record.get("id")
    return isinstance(value, str | int) and str(value) != ""


def _check_record_id(record: dict[str, Any], field: str) -> None:
    """An id goes into the provider's URL path: it must stay one path segment.

    `Id` too: the Salesforce adapter takes Salesforce's own spelling.
    """
    for name in ("id", "Id"):
        value = record.get(name)
        if not isinstance(value, str):
            continue
        where = field if name == "id" else field.removesuffix("id") + "Id"
        if len(value) > MAX_RECORD_ID_CHARS:
            raise ContractError(f"{where} must be at most {MAX_RECORD_ID_CHARS} characters")
        check_path_segment(value, where)


def check_path_segment(value: str, field: str) -> None:
    """Refuse a value that would not stay one segment of a URL path (`.`, `..`, a `/`)."""
    if value in (".", "..") or "/" in value:
        raise ContractError(f"{field} {shown(value)} is not allowed: no '.', '..' or '/'")


def check_target_names(integration_id_or_name: str, object_name: str) -> None:
    """The integration and object the request path names: bounded, one path segment each."""
    if len(integration_id_or_name) > MAX_NAME_CHARS:
        raise ContractError(f"integrationId must be at most {MAX_NAME_CHARS} characters")
    if len(object_name) > MAX_NAME_CHARS:
        raise ContractError(f"objectName must be at most {MAX_NAME_CHARS} characters")
    check_path_segment(object_name, "objectName")


def _check_header(header: Header, field: str) -> None:
    if not _TOKEN.fullmatch(header.key):
        raise ContractError(
            f"{field}.key {shown(header.key)} is not a header name: letters, digits and "
            "!#$%&'*+-.^_`|~ only"
        )
    if not _FIELD_VALUE.fullmatch(header.value):
        raise ContractError(
            f"{field}.value must be printable ASCII: no CR, LF or other control characters"
        )


_ALIASES = {
    "group_ref": "groupRef",
    "retry_policy": "retryPolicy",
    "auto_batch_policy": "autoBatchPolicy",
    "batch_policy": "batchPolicy",
    "deadline_hours": "deadlineHours",
    "max_delay_minutes": "maxDelayMinutes",
    "retry_deadline_hours": "retryDeadlineHours",
    "all_or_none": "allOrNone",
}


def _describe(error: Any) -> str:
    """One line from a pydantic error, in the contract's field names."""
    parts: list[str] = []
    for part in error["loc"]:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            name = _ALIASES.get(part, part)[:MAX_NAME_CHARS]
            parts.append(f".{name}" if parts else name)
    field = "".join(parts) or "request body"
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return f"{field} is required"
    if kind == "string_too_long":
        return f"{field} must be at most {ctx.get('max_length')} characters"
    if kind == "string_too_short":
        return f"{field} must not be empty"
    if kind == "too_long":
        return f"{field} must have at most {ctx.get('max_length')} items"
    if kind == "too_short":
        return f"{field} must have at least {ctx.get('min_length')} item(s)"
    if kind == "literal_error":
        return f"{field} must be one of {ctx.get('expected')}"
    if kind == "greater_than_equal":
        return f"{field} must be at least {ctx.get('ge')}"
    if kind == "less_than_equal":
        return f"{field} must be at most {ctx.get('le')}"
    return f"{field}: {error['msg']}"
