"""The Salesforce adapter: REST API v60.0 sObject writes, one at a time or 200 per call.

Wire format (contract section 6.1): a single create `POST`s the record's fields to
`/sobjects/{Object}` and gets `{id, success, errors}`; an update `PATCH`es
`/sobjects/{Object}/{id}` (204, no body) and a delete `DELETE`s it. Batches go to
sObject Collections, `POST` (create) or `PATCH` (update) `/composite/sobjects` with
`{allOrNone, records: [{…fields, attributes: {type}}]}`, whose answer is one save
result per record, **in input order**. Salesforce accepts up to 200 records a call;
an all-or-none call that fails answers every other record with
`ALL_OR_NONE_OPERATION_ROLLED_BACK`.

A create of an object with a natural key (`WriteOptions.natural_key`, an external id
field) whose record carries it is an upsert by that field: one record `PATCH`es
`/sobjects/{Object}/{Field}/{value}` (201 created or 200 updated with
`{id, success, errors, created}`, 204 before API 46.0)
(https://developer.salesforce.com/docs/platform/api-rest/guide/dome-upsert.html), a
batch `PATCH`es `/composite/sobjects/{Object}/{Field}` with records carrying
`attributes.type` and the field, answered by one UpsertResult per record in input
order (https://developer.salesforce.com/docs/platform/api-rest/guide/resources-composite-sobjects-collections-upsert.html).
A value that matches several records is refused (300 `MULTIPLE_CHOICES` alone, a
`DUPLICATE_EXTERNAL_ID` error in a collection).

Errors come as `[{message, errorCode}]` (save results: `[{statusCode, message}]`).
`classify_failure` is the one place that knows which of them are worth retrying:
`REQUEST_LIMIT_EXCEEDED` (which Salesforce sends with a 403), `UNABLE_TO_LOCK_ROW`
and `SERVER_UNAVAILABLE`, beside the statuses every provider shares (`http_common`).
`read_rate_limit` reads the org's 24-hour usage from `Sforce-Limit-Info`, which every
REST answer carries, and tells a spent allowance from too many concurrent requests.

Large loads go through Bulk API 2.0 instead (`salesforce_bulk`); credentials
(bearer or OAuth2) are the injected client's business (`providers.connect`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx

from writejobs.clock import Clock, utcnow
from writejobs.core.flow import Policy, RateLimitObservation
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
    first_text,
    is_retryable_status,
    json_objects,
    parse_retry_after,
    read_json,
    rejects_the_record,
    response_failure,
    transport_failure,
    unreadable_response,
    write_in_chunks,
    write_split,
)
from writejobs.providers.natural_keys import upsert_value
from writejobs.providers.salesforce_headers import forwarded_headers

PROVIDER = "salesforce"
DISPLAY_NAME = "Salesforce"
API_VERSION = "v60.0"
SOBJECTS_PATH = f"/services/data/{API_VERSION}/sobjects"
COLLECTIONS_PATH = f"/services/data/{API_VERSION}/composite/sobjects"
# Salesforce's own limit for one sObject Collections call.
MAX_COLLECTION_RECORDS = 200
# Salesforce's error codes for a condition that passes on its own.
RETRYABLE_ERROR_CODES = frozenset(
    {"REQUEST_LIMIT_EXCEEDED", "UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE"}
)
ROLLED_BACK = "ALL_OR_NONE_OPERATION_ROLLED_BACK"
LIMIT_INFO_HEADER = "Sforce-Limit-Info"
REQUEST_LIMIT_EXCEEDED = "REQUEST_LIMIT_EXCEEDED"
# `api-usage=18/5000`: calls in the last 24 hours / the org's allowance. The header may
# carry more parts (`per-app-api-usage=…`), so the org's pair is found by its name.
_API_USAGE = re.compile(r"(?:^|[,;\s])api-usage=(\d+)/(\d+)")
_NO_RESULT = "Salesforce returned no result for this record"
_NOT_SENT = "not sent: another record of this all-or-none batch has no id"
_MULTIPLE_MATCHES = "MULTIPLE_CHOICES: the external id matches more than one record"


class SalesforceAdapter:
    """Writes sObjects through an `httpx.Client` whose `base_url` (the org's My Domain
    URL) and bearer token are set.

    `write_one` raises `RetryableProviderError` (connection errors, timeouts, 408,
    429, 5xx, `REQUEST_LIMIT_EXCEEDED`, `UNABLE_TO_LOCK_ROW`, `SERVER_UNAVAILABLE`)
    or `PermanentProviderError` (401 `INVALID_SESSION_ID`, other 403s, an unreadable
    2xx) when the call itself fails; any other refusal (`INVALID_FIELD`,
    `REQUIRED_FIELD_MISSING`, `NOT_FOUND`, …) is Salesforce rejecting the record and
    comes back as a failed `RecordResult` whose error reads `"ERROR_CODE: message"`.
    `write_batch` never raises. Those of `options.headers` that Salesforce defines
    for REST API calls (`Sforce-*`, `x-sfdc-packageversion-*`, the conditional
    `If-*` headers) are sent on every call, overriding the client's; others are not.

    Associations do not apply: Salesforce relates records through lookup fields in
    the record itself. The record id is `record["id"]` (or Salesforce's own `Id`).
    """

    provider: str = PROVIDER
    max_batch_size: int = MAX_COLLECTION_RECORDS

    def __init__(self, client: httpx.Client, *, clock: Clock = utcnow) -> None:
        self._client = client
        # Turns a Retry-After HTTP-date into seconds; injected so tests fix "now".
        self._clock = clock

    def write_one(
        self, object_name: str, write_type: WriteType, item: WriteItem, options: WriteOptions
    ) -> RecordResult:
        """Create (`POST`), update (`PATCH`) or delete (`DELETE`) one record."""
        headers = forwarded_headers(options)
        key_value = upsert_value(PROVIDER, options.natural_key, item)
        if write_type == "create" and options.natural_key is not None and key_value is not None:
            return self._upsert_one(object_name, options.natural_key, key_value, item, headers)
        if write_type == "create":
            response = self._send("POST", _sobject_path(object_name), headers, item.record)
            if response.is_success:
                body = read_json(response)
                if not isinstance(body, dict):
                    raise unreadable_response(
                        response,
                        provider=PROVIDER,
                        display_name=DISPLAY_NAME,
                        expected="a JSON object",
                    )
                return save_result(body)
        else:
            record_id, fields = _split_id(item.record)
            if record_id is None:
                return _missing_id(write_type)
            path = _sobject_path(object_name, record_id)
            if write_type == "delete":
                response = self._send("DELETE", path, headers)
            else:
                response = self._send("PATCH", path, headers, fields)
            if response.is_success:
                # An update answers 204 with no body; a body, when there is one, is a save result.
                body = read_json(response)
                if write_type == "update" and isinstance(body, dict) and "success" in body:
                    return save_result(body, record_id=record_id)
                return RecordResult(success=True, record_id=record_id)
        error = classify_failure(response, now=self._clock())
        if not rejects_the_record(error):
            raise error
        return RecordResult(success=False, error=error.message, status_code=error.status_code)

    def write_batch(
        self,
        object_name: str,
        write_type: Literal["create", "update"],
        items: list[WriteItem],
        options: WriteOptions,
    ) -> BatchOutcome:
        """Write `items` in sObject Collections calls of up to 200; results in input order.

        `options.all_or_none` holds within each call (so within 200 records). A
        call that fails marks all of its records failed (retryable when the
        failure is), and the outcome's `retry_after_s` is the longest any call
        was asked to wait.
        """

        def write(part: list[WriteItem], *, upsert: bool = False) -> BatchOutcome:
            return write_in_chunks(
                part,
                self.max_batch_size,
                lambda chunk: self._write_collection(
                    object_name, write_type, chunk, options, upsert=upsert
                ),
            )

        def upserted(item: WriteItem) -> bool:
            return upsert_value(PROVIDER, options.natural_key, item) is not None

        marks = [upserted(item) for item in items]
        if write_type != "create" or not any(marks):
            return write(items)
        if options.all_or_none and not all(marks):
            # Two calls could not be all or none together: every record is created.
            return write(items)
        return write_split(items, upserted, lambda part: write(part, upsert=True), write)

    def _upsert_one(
        self,
        object_name: str,
        field: str,
        value: str,
        item: WriteItem,
        headers: list[tuple[str, str]],
    ) -> RecordResult:
        """`PATCH /sobjects/{Object}/{Field}/{value}`: the record created (201) or updated.

        The field is in the path, so it is left out of the body.
        """
        path = f"{_sobject_path(object_name)}/{quote(field, safe='')}/{quote(value, safe='')}"
        body = {k: v for k, v in item.record.items() if k != field}
        response = self._send("PATCH", path, headers, body)
        if response.status_code == 300:
            # Several records hold the value: Salesforce lists them and writes nothing.
            return RecordResult(success=False, error=_MULTIPLE_MATCHES, status_code=300)
        if response.is_success:
            answer = read_json(response)
            if isinstance(answer, dict) and "success" in answer:
                return save_result(answer)
            if response.status_code == 204:
                # Before API 46.0 an update answered 204 with no body (and no id).
                return RecordResult(success=True)
            raise unreadable_response(
                response, provider=PROVIDER, display_name=DISPLAY_NAME, expected="a save result"
            )
        error = classify_failure(response, now=self._clock())
        if not rejects_the_record(error):
            raise error
        return RecordResult(success=False, error=error.message, status_code=error.status_code)

    def _write_collection(
        self,
        object_name: str,
        write_type: Literal["create", "update"],
        chunk: list[WriteItem],
        options: WriteOptions,
        *,
        upsert: bool = False,
    ) -> BatchOutcome:
        """One collection call: create, update, or (`upsert`) upsert by the natural key."""
        early: dict[int, RecordResult] = {}
        records: list[dict[str, Any]] = []
        sent: list[int] = []
        attributes = {"type": object_name}
        for position, item in enumerate(chunk):
            if write_type == "create":
                records.append(item.record | {"attributes": attributes})
                sent.append(position)
                continue
            record_id, fields = _split_id(item.record)
            if record_id is None:
                early[position] = _missing_id("update")
                continue
            records.append(fields | {"id": record_id, "attributes": attributes})
            sent.append(position)
        if early and options.all_or_none:
            # Sending the rest would write some records of an all-or-none batch.
            not_sent = RecordResult(success=False, error=_NOT_SENT)
            return BatchOutcome(results=[early.get(p, not_sent) for p in range(len(chunk))])
        if not records:
            return BatchOutcome(results=[early[p] for p in range(len(chunk))])

        method = "POST" if write_type == "create" and not upsert else "PATCH"
        path = COLLECTIONS_PATH
        if upsert:
            assert options.natural_key is not None
            path = f"{path}/{quote(object_name, safe='')}/{quote(options.natural_key, safe='')}"
        body = {"allOrNone": options.all_or_none, "records": records}
        try:
            response = self._send(method, path, forwarded_headers(options), body)
            saved = self._save_results(response)
        except ProviderError as error:
            return failed_chunk(error, len(chunk), early)

        # Save results come back in the order the records were sent.
        results = early | {p: save_result(s) for p, s in zip(sent, saved, strict=False)}
        errors: list[str] = []
        if len(saved) != len(sent):
            errors.append(f"Salesforce returned {len(saved)} results for {len(sent)} records")
        return BatchOutcome(
            results=[
                results.get(p, RecordResult(success=False, error=_NO_RESULT))
                for p in range(len(chunk))
            ],
            errors=errors,
        )

    def _save_results(self, response: httpx.Response) -> list[dict[str, Any]]:
        """The save results of a collection call; raises `ProviderError` when there are none.

        Salesforce may answer a collection with 400 and still send one save result
        per record, so a 400 whose body is save results is read as results.
        """
        body = read_json(response)
        if _is_save_results(body) and (response.is_success or response.status_code == 400):
            return json_objects(body)
        if response.is_success:
            raise unreadable_response(
                response,
                provider=PROVIDER,
                display_name=DISPLAY_NAME,
                expected="a JSON array of save results",
            )
        raise classify_failure(response, now=self._clock())

    def _send(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: dict[str, Any] | None = None,
    ) -> httpx.Response:
        try:
            return self._client.request(method, path, json=body, headers=headers)
        except httpx.TransportError as exc:
            raise transport_failure(exc, provider=PROVIDER, display_name=DISPLAY_NAME) from exc


def classify_failure(
    failure: httpx.Response | httpx.TransportError, *, now: datetime
) -> ProviderError:
    """The error a failed Salesforce call stands for: retryable or permanent.

    Retryable: connection errors and timeouts, 408, 429 and 5xx, and any status
    whose body names `REQUEST_LIMIT_EXCEEDED`, `UNABLE_TO_LOCK_ROW` or
    `SERVER_UNAVAILABLE`, with the response's `Retry-After` in `retry_after_s`.
    Permanent: every other 4xx. The message is Salesforce's, as
    `"ERROR_CODE: message"` (several errors joined by "; ").
    """
    if isinstance(failure, httpx.TransportError):
        return transport_failure(failure, provider=PROVIDER, display_name=DISPLAY_NAME)
    errors = _error_items(read_json(failure))
    codes = {str(e.get("errorCode") or e.get("statusCode")) for e in errors}
    retryable = is_retryable_status(failure.status_code) or bool(codes & RETRYABLE_ERROR_CODES)
    message = _join_errors(errors) or _fallback_message(failure)
    return response_failure(failure, message, provider=PROVIDER, retryable=retryable, now=now)


def read_rate_limit(response: httpx.Response, now: datetime) -> RateLimitObservation | None:
    """What a Salesforce answer says of the org's limits; None when it says nothing.

    `Sforce-Limit-Info: api-usage=N/M` (on every REST answer) is the 24-hour
    allowance `M`, of which `M - N` is left. `REQUEST_LIMIT_EXCEEDED` (a 403, body
    `[{"message": "TotalRequests Limit exceeded.", "errorCode": …}]`) refuses the
    call: `TotalRequests` is the spent day (policy `daily`; the window rolls, so no
    reset hint), any other (`ConcurrentRequests`, 25 requests of 20 s or longer)
    is `concurrent`. A 429, which the REST API does not document, is `rolling`.
    """
    daily_max = daily_remaining = None
    usage = _API_USAGE.search(response.headers.get(LIMIT_INFO_HEADER, ""))
    if usage is not None:
        used, daily_max = int(usage.group(1)), int(usage.group(2))
        daily_remaining = max(daily_max - used, 0)
    policy: Policy | None = None
    if response.status_code == 429:
        policy = "rolling"
    elif response.status_code == 403:
        # REQUEST_LIMIT_EXCEEDED is always a 403; other error bodies are left unread
        # here (the response hook runs before the body is read).
        errors = _error_items(read_json(response))
        limited = [e for e in errors if e.get("errorCode") == REQUEST_LIMIT_EXCEEDED]
        if limited:
            message = str(limited[0].get("message") or "")
            policy = "daily" if "TotalRequests" in message else "concurrent"
    retry_after_s = None
    if policy is not None:
        retry_after_s = parse_retry_after(response.headers.get("Retry-After"), now=now)
    if daily_max is None and policy is None:
        return None
    return RateLimitObservation(
        daily_max=daily_max,
        daily_remaining=daily_remaining,
        policy=policy,
        retry_after_s=retry_after_s,
    )


def save_result(item: dict[str, Any], *, record_id: str | None = None) -> RecordResult:
    """One Salesforce save result `{id, success, errors}` as a `RecordResult`.

    A failure is retryable when one of its error codes is (`UNABLE_TO_LOCK_ROW`);
    `ALL_OR_NONE_OPERATION_ROLLED_BACK` is not: the record failed for another's sake.
    """
    returned_id = item.get("id")
    result_id = record_id if returned_id in (None, "") else str(returned_id)
    if item.get("success") is True:
        return RecordResult(success=True, record_id=result_id)
    errors = json_objects(item.get("errors"))
    codes = {str(e.get("statusCode") or e.get("errorCode")) for e in errors}
    return RecordResult(
        success=False,
        record_id=result_id,
        error=_join_errors(errors) or "Salesforce did not save this record",
        retryable=bool(codes & RETRYABLE_ERROR_CODES),
    )


def _is_save_results(body: Any) -> bool:
    return (
        isinstance(body, list)
        and bool(body)
        and all(isinstance(item, dict) and "success" in item for item in body)
    )


def _error_items(body: Any) -> list[dict[str, Any]]:
    """Salesforce's errors as a list, whether it sent an array or (OAuth) one object."""
    if isinstance(body, dict):
        return [body]
    return json_objects(body)


def _join_errors(errors: Iterable[dict[str, Any]]) -> str:
    texts = []
    for error in errors:
        code = first_text([error.get("errorCode"), error.get("statusCode"), error.get("error")])
        message = first_text([error.get("message"), error.get("error_description")])
        if code and message:
            texts.append(f"{code}: {message}")
        elif code or message:
            texts.append(code or message or "")
    return "; ".join(texts)


def _fallback_message(response: httpx.Response) -> str:
    text = response.text.strip()
    return text[:500] if text else f"HTTP {response.status_code} {response.reason_phrase}"


def _split_id(record: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The record id (`id`, or Salesforce's `Id`) and the fields without it."""
    fields = {k: v for k, v in record.items() if k not in ("id", "Id")}
    record_id = record.get("id", record.get("Id"))
    return (None if record_id in (None, "") else str(record_id)), fields


def _missing_id(write_type: str) -> RecordResult:
    return RecordResult(success=False, error=f"a Salesforce {write_type} needs record.id")


def _sobject_path(object_name: str, record_id: str | None = None) -> str:
    # Quoted so an object name or id can never reach another path on Salesforce.
    path = f"{SOBJECTS_PATH}/{quote(object_name, safe='')}"
    return path if record_id is None else f"{path}/{quote(record_id, safe='')}"
