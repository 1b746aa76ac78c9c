"""The write API's contract as pydantic models, and its validation rules.

Models mirror `WriteRequest` and the response schemas of the contract's
`api/write.yaml`. `parse_write_request` is the one entry point: it turns raw
JSON bytes into a `WriteRequest` or raises `ContractError` with a one-line
message naming the field, which the API answers as 400 text/plain.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from writejobs.errors import ContractError

MAX_BATCH_RECORDS = 100


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
    key: str
    value: str


class BatchItem(_Lenient):
    record: dict[str, Any]
    associations: list[dict[str, Any]] = Field(default_factory=list)


class WriteRequest(_Lenient):
    """`WriteRequest` of the contract; `mode` defaults to synchronous."""

    group_ref: str = Field(alias="groupRef", min_length=1)
    type: Literal["create", "update", "delete"]
    mode: Literal["synchronous", "asynchronous"] = "synchronous"
    retry_policy: RetryPolicy | None = Field(default=None, alias="retryPolicy")
    auto_batch_policy: AutoBatchPolicy | None = Field(default=None, alias="autoBatchPolicy")
    record: dict[str, Any] | None = None
    batch_policy: BatchPolicy | None = Field(default=None, alias="batchPolicy")
    batch: list[BatchItem] | None = Field(default=None, min_length=1, max_length=MAX_BATCH_RECORDS)
    associations: list[dict[str, Any]] = Field(default_factory=list)
    headers: list[Header] = Field(default_factory=list)

    @property
    def is_async(self) -> bool:
        return self.mode == "asynchronous"

    @property
    def all_or_none(self) -> bool:
        return self.batch_policy.all_or_none if self.batch_policy else False


class WriteResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    success: bool
    recordId: str | None = None  # noqa: N815 - the contract's field name
    data: dict[str, Any] | None = None


class ErrorMessage(BaseModel):
    message: str


def parse_write_request(body: bytes) -> WriteRequest:
    """Parse and validate a write request, or raise `ContractError` naming the problem."""
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ContractError(f"request body is not valid JSON: {exc}") from None
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


def _has_id(record: dict[str, Any]) -> bool:
    value = record.get("id")
    return isinstance(value, str | int) and str(value) != ""


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
            name = _ALIASES.get(part, part)
            parts.append(f".{name}" if parts else name)
    field = "".join(parts) or "request body"
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return f"{field} is required"
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
