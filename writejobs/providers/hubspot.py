"""The HubSpot adapter: CRM v3 object writes, one record at a time or in batches of 100.

Wire format (contract section 6.2): single writes send `{"properties", "associations"?}`
and get the record back; batch creates send `objectWriteTraceId` (the index in the
chunk) unless the caller wants all or none, which leaves HubSpot to refuse the whole
chunk when one input is bad; batch updates are always partial. Results come back
unordered, so they are matched to inputs by trace id (creates) or id (updates).

A create of an object with a natural key (`WriteOptions.natural_key`) whose record
carries it goes to `POST /crm/v3/objects/{objectType}/batch/upsert` instead (also for
a single record: HubSpot has no single-record upsert), each input
`{idProperty, id, properties, objectWriteTraceId}`; HubSpot creates the record or
updates the one holding that value and says which in each result's `new`
(https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/contacts/batch/upsert-contacts).

Every failed call is classified by `classify_failure`, the one place that knows which
HubSpot answers are worth retrying; the rules every provider shares (Retry-After,
transport errors, chunking) are in `http_common`. `read_rate_limit` reads the
`X-HubSpot-RateLimit-*` headers every answer carries and a 429's `policyName`.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx

from writejobs.clock import Clock, utcnow
from writejobs.errors import ProviderError
from writejobs.providers.base import (
    BatchOutcome,
    RecordResult,
    WriteItem,
    WriteOptions,
    WriteType,
)
from writejobs.providers.http_common import (
    failed_chunk,
    is_retryable_status,
    json_objects,
    read_json,
    rejects_the_record,
    response_failure,
    transport_failure,
    unreadable_response,
    write_in_chunks,
    write_split,
)

# Re-exported: callers and tests have always found it here.
from writejobs.providers.http_common import parse_retry_after as parse_retry_after

# The limits an answer tells: read in hubspot_limits, reached here too (the registry's map).
from writejobs.providers.hubspot_limits import read_rate_limit as read_rate_limit
from writejobs.providers.natural_keys import upsert_value

PROVIDER = "hubspot"
OBJECTS_PATH = "/crm/v3/objects"
DISPLAY_NAME = "HubSpot"
# HubSpot's "portal is migrating between data centres": it passes on its own.
_MIGRATING_STATUS = 477
# Per-record batch errors carry a category but no HTTP status; these are HubSpot's own.
_CATEGORY_STATUS = {"VALIDATION_ERROR": 400, "OBJECT_NOT_FOUND": 404, "CONFLICT": 409}
_NO_RESULT = "HubSpot returned no result for this record"
# The headers on every HubSpot answer (the daily pair only for private apps), and the
# per-second pair that API-key era answers carried instead of Max / Interval.


class HubSpotAdapter:
    """Writes CRM v3 objects through an `httpx.Client` whose `base_url` and bearer are set.

    `write_one` raises `RetryableProviderError` (connection errors, timeouts, 408,
    429, 477, 5xx) or `PermanentProviderError` (401, 403, unreadable 2xx) when the
    call itself fails; any other 4xx is HubSpot rejecting the record and comes back
    as a failed `RecordResult`. `write_batch` never raises.

    TODO: associations on batch update need a follow-up call to HubSpot's
    associations batch API; they are dropped for now.
    """

    provider: str = PROVIDER
    max_batch_size: int = 100

    def __init__(self, client: httpx.Client, *, clock: Clock = utcnow) -> None:
        self._client = client
        # Turns a Retry-After HTTP-date into seconds; injected so tests fix "now".
        self._clock = clock

    def write_one(
        self, object_name: str, write_type: WriteType, item: WriteItem, options: WriteOptions
    ) -> RecordResult:
        """Create (`POST`), update (`PATCH`, id from `record["id"]`) or delete one record."""
        record_id: str | None = None
        if write_type == "create" and self._upserted_by(options, item) is not None:
            return self._upsert_one(object_name, item, options)
        if write_type == "create":
            body: dict[str, Any] = {"properties": item.record}
            if item.associations:
                body["associations"] = item.associations
            response = self._send("POST", _objects_path(object_name), body)
        else:
            record_id, properties = _split_id(item.record)
            if record_id is None:
                return _missing_id(write_type)
            path = _objects_path(object_name, record_id)
            if write_type == "delete":
                response = self._send("DELETE", path)
            else:
                response = self._send("PATCH", path, {"properties": properties})

        if response.is_success:
            if write_type == "delete":
                return RecordResult(success=True, record_id=record_id)
            return _success(_json_object(response))
        error = classify_failure(response, now=self._clock())
        if not rejects_the_record(error):
            raise error
        return RecordResult(
            success=False,
            error=error.message,
            status_code=error.status_code,
            existing_id=existing_id(error.message) if error.status_code == 409 else None,
        )

    def write_batch(
        self,
        object_name: str,
        write_type: Literal["create", "update"],
        items: list[WriteItem],
        options: WriteOptions,
    ) -> BatchOutcome:
        """Write `items` in chunks of 100; one result per item, in input order.

        A chunk whose call fails marks all of its records failed (retryable when the
        failure is), and the outcome's `retry_after_s` is the longest any chunk was
        asked to wait. `options.all_or_none` applies to creates; updates are always
        partial on HubSpot.
        """

        def write(part: list[WriteItem]) -> BatchOutcome:
            return write_in_chunks(
                part,
                self.max_batch_size,
                lambda chunk: self._write_chunk(object_name, write_type, chunk, options),
            )

        upserted = [self._upserted_by(options, item) is not None for item in items]
        if write_type != "create" or not any(upserted):
            return write(items)
        if options.all_or_none and not all(upserted):
            # Two calls could not be all or none together: every record is created.
            return write(items)

        def upsert(part: list[WriteItem]) -> BatchOutcome:
            return write_in_chunks(
                part,
                self.max_batch_size,
                lambda chunk: self._upsert_chunk(object_name, chunk, options),
            )

        return write_split(
            items, lambda item: self._upserted_by(options, item) is not None, upsert, write
        )

    def _upserted_by(self, options: WriteOptions, item: WriteItem) -> str | None:
        return upsert_value(PROVIDER, options.natural_key, item)

    def _upsert_one(self, object_name: str, item: WriteItem, options: WriteOptions) -> RecordResult:
        """One record through the batch upsert; raises as `write_one` does."""
        try:
            return self._upsert(object_name, [item], options).results[0]
        except ProviderError as error:
            if not rejects_the_record(error):
                raise
            return RecordResult(success=False, error=error.message, status_code=error.status_code)

    def _upsert_chunk(
        self, object_name: str, chunk: list[WriteItem], options: WriteOptions
    ) -> BatchOutcome:
        try:
            return self._upsert(object_name, chunk, options)
        except ProviderError as error:
            return failed_chunk(error, len(chunk))

    def _upsert(
        self, object_name: str, chunk: list[WriteItem], options: WriteOptions
    ) -> BatchOutcome:
        """One batch upsert by the natural key; raises `ProviderError` when the call fails.

        Inputs carry their position as `objectWriteTraceId` (left out for all or
        none, as for creates), and results and errors are matched back by it.
        """
        assert options.natural_key is not None
        inputs: list[dict[str, Any]] = []
        keys: dict[int, str | None] = {}
        for position, item in enumerate(chunk):
            trace_id = None if options.all_or_none else str(position)
            entry: dict[str, Any] = {
                "idProperty": options.natural_key,
                "id": self._upserted_by(options, item),
                "properties": item.record,
            }
            if trace_id is not None:
                entry["objectWriteTraceId"] = trace_id
            inputs.append(entry)
            keys[position] = trace_id
        path = f"{_objects_path(object_name)}/batch/upsert"
        response = self._send("POST", path, {"inputs": inputs})
        if not response.is_success:
            raise classify_failure(response, now=self._clock())
        body = _json_object(response)
        matched, unmatched = _match(
            keys, body, context_key="objectWriteTraceId", result_key="objectWriteTraceId"
        )
        results = [
            matched.get(p, RecordResult(success=False, error=_NO_RESULT)) for p in range(len(chunk))
        ]
        return BatchOutcome(results=results, errors=unmatched)

    def _write_chunk(
        self,
        object_name: str,
        write_type: Literal["create", "update"],
        chunk: list[WriteItem],
        options: WriteOptions,
    ) -> BatchOutcome:
        # Inputs are built per position; a record that cannot be sent fails here alone.
        early: dict[int, RecordResult] = {}
        inputs: list[dict[str, Any]] = []
        keys: dict[int, str | None] = {}
        for position, item in enumerate(chunk):
            if write_type == "create":
                trace_id = None if options.all_or_none else str(position)
                inputs.append(_create_input(item, trace_id))
                keys[position] = trace_id
                continue
            record_id, properties = _split_id(item.record)
            if record_id is None:
                early[position] = _missing_id("update")
                continue
            inputs.append({"id": record_id, "properties": properties})
            keys[position] = record_id
        if not inputs:
            return BatchOutcome(results=[early[p] for p in range(len(chunk))])

        path = f"{_objects_path(object_name)}/batch/{write_type}"
        try:
            response = self._send("POST", path, {"inputs": inputs})
            if not response.is_success:
                raise classify_failure(response, now=self._clock())
            body = _json_object(response)
        except ProviderError as error:
            return failed_chunk(error, len(chunk), early)

        context_key = "objectWriteTraceId" if write_type == "create" else "ids"
        result_key = "objectWriteTraceId" if write_type == "create" else "id"
        matched, unmatched = _match(keys, body, context_key=context_key, result_key=result_key)
        matched |= early
        results = [
            matched.get(p, RecordResult(success=False, error=_NO_RESULT)) for p in range(len(chunk))
        ]
        return BatchOutcome(results=results, errors=unmatched)

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        try:
            return self._client.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise classify_failure(exc, now=self._clock()) from exc


def classify_failure(
    failure: httpx.Response | httpx.TransportError, *, now: datetime
) -> ProviderError:
    """The error a failed HubSpot call stands for: retryable or permanent.

    Retryable: connection errors and timeouts, 408, 429, 477 and 5xx, with the
    response's `Retry-After` (seconds or an HTTP-date, relative to `now`) in
    `retry_after_s`. Permanent: every other 4xx, with HubSpot's `message`.
    """
    if isinstance(failure, httpx.TransportError):
        return transport_failure(failure, provider=PROVIDER, display_name=DISPLAY_NAME)
    status = failure.status_code
    retryable = status == _MIGRATING_STATUS or is_retryable_status(status)
    return response_failure(
        failure, _hubspot_message(failure), provider=PROVIDER, retryable=retryable, now=now
    )


_EXISTING_ID = re.compile(r"Existing ID: ?(\d+)")


def existing_id(message: str) -> str | None:
    """The id HubSpot names when a create conflicts with a record it already has."""
    found = _EXISTING_ID.search(message)
    return found.group(1) if found else None


def _match(
    keys: dict[int, str | None],
    body: dict[str, Any],
    *,
    context_key: str,
    result_key: str,
) -> tuple[dict[int, RecordResult], list[str]]:
    """Per-position results of a batch response, and the errors that name no input.

    Results and errors are matched by key (trace id or record id); results that
    carry no key (an all-or-none create) fill the unmatched positions in order.
    """
    positions: dict[str, list[int]] = {}
    for position, key in keys.items():
        if key is not None:
            positions.setdefault(key, []).append(position)
    matched: dict[int, RecordResult] = {}
    keyless: list[RecordResult] = []
    for result in json_objects(body.get("results")):
        key = result.get(result_key)
        if key is not None and str(key) in positions:
            for position in positions[str(key)]:
                matched[position] = _success(result)
        else:
            keyless.append(_success(result))

    unmatched: list[str] = []
    for error in json_objects(body.get("errors")):
        message = str(error.get("message") or error.get("category") or "unknown HubSpot error")
        conflict = error.get("category") == "CONFLICT"
        failed = RecordResult(
            success=False,
            error=message,
            status_code=_CATEGORY_STATUS.get(str(error.get("category"))),
            existing_id=existing_id(message) if conflict else None,
        )
        context = error.get("context")
        named = context.get(context_key) if isinstance(context, dict) else None
        hits = [p for key in named or [] for p in positions.get(str(key), [])]
        for position in hits:
            matched[position] = failed
        if not hits:
            unmatched.append(message)

    open_positions = [p for p in keys if p not in matched]
    matched.update(zip(open_positions, keyless, strict=False))
    return matched, unmatched


def _create_input(item: WriteItem, trace_id: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"properties": item.record}
    if item.associations:
        entry["associations"] = item.associations
    if trace_id is not None:
        entry["objectWriteTraceId"] = trace_id
    return entry


def _split_id(record: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """HubSpot wants the id in the path or beside the properties, never among them."""
    properties = {k: v for k, v in record.items() if k != "id"}
    record_id = record.get("id")
    return (None if record_id in (None, "") else str(record_id)), properties


def _missing_id(write_type: str) -> RecordResult:
    return RecordResult(success=False, error=f"a HubSpot {write_type} needs record.id")


def _success(result: dict[str, Any]) -> RecordResult:
    properties = result.get("properties")
    return RecordResult(
        success=True,
        record_id=None if result.get("id") is None else str(result["id"]),
        data=properties if isinstance(properties, dict) else None,
    )


def _objects_path(object_name: str, record_id: str | None = None) -> str:
    # Quoted so an object name or id can never reach another path on HubSpot.
    path = f"{OBJECTS_PATH}/{quote(object_name, safe='')}"
    return path if record_id is None else f"{path}/{quote(record_id, safe='')}"


def _json_object(response: httpx.Response) -> dict[str, Any]:
    """A 2xx body as a JSON object; anything else is a call we cannot read, so not retried."""
    body = read_json(response)
    if not isinstance(body, dict):
        raise unreadable_response(
            response, provider=PROVIDER, display_name=DISPLAY_NAME, expected="a JSON object"
        )
    return body


def _hubspot_message(response: httpx.Response) -> str:
    body = read_json(response)
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]:
        return str(body["message"])
    text = response.text.strip()
    return text[:500] if text else f"HTTP {response.status_code} {response.reason_phrase}"
