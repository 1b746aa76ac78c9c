"""The AvePoint Opus adapter: records submitted to a connector connection, 15 per call.

Wire format (AvePoint Graph Modern API, "Submit Records"): `POST /connector/records`
with `{id, conflictOption, data}`, where `id` is the connection's GUID (from the
connection's JSON file under Opus > Settings > Connector), `conflictOption` is
`Overwrite` or `Skip` (what to do with a record whose `rowKey` Opus already holds)
and `data` holds at most 15 records, each with its unique `rowKey`. Success is
`201 {statusCode: 201, message: null}`; records Opus did not take are listed in
`failedItems`, which are matched back to inputs by `rowKey`.

The client's `base_url` is the region's records service, e.g.
`https://graph-us.avepointonlineservices.com/records`.

Opus has one submit call and no delete, so creates submit with `Skip` (never
overwrite what is there), updates with `Overwrite`, and deletes fail per record.

Opus publishes no rate limits; `read_rate_limit` reads the one signal it gives, a
429 with `Retry-After`.

A record is named by its `rowKey`, so Opus always recognises a create sent again:
with `Skip` it keeps the record the first attempt wrote and creates no second one.
When the object's natural key is `rowKey` (`WriteOptions.natural_key`, the only one
Opus has), creates submit with `Overwrite`: an upsert by `rowKey`, as HubSpot's and
Salesforce's are by theirs, so the record holds what was sent last. (Opus's guide,
Appendices > API for Connector > Supported APIs: `conflictOption` is "the conflict
resolution when there are records with the same unique key", `Overwrite` or `Skip`;
https://stg.learn.cdn.sharepointguild.com/avepoint-opus/appendices/api-for-connector/supported-apis.html)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import httpx

from writejobs.clock import Clock, utcnow
from writejobs.core.flow import RateLimitObservation
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
    parse_retry_after,
    read_json,
    rejects_the_record,
    response_failure,
    transport_failure,
    unreadable_response,
    write_in_chunks,
)

PROVIDER = "opus"
DISPLAY_NAME = "AvePoint Opus"
RECORDS_PATH = "/connector/records"
# "You can submit up to 15 records to AvePoint Opus at a time."
MAX_RECORDS_PER_CALL = 15
CONFLICT_OPTIONS = frozenset({"Overwrite", "Skip"})
ROW_KEY = "rowKey"
_NOT_ACCEPTED = "AvePoint Opus did not accept this record"
_NO_DELETE = "AvePoint Opus cannot delete records: its connector API only submits them"


class OpusAdapter:
    """Submits records to one Opus connection through an `httpx.Client` with a bearer set.

    `connection_id` is the connection's GUID. Until installations carry provider
    settings it comes from the constructor; when it is None (as the registry
    builds the adapter) the write's object name is the connection id, so a
    caller names the connection it writes to in `objectName` (an Opus connection
    is one kind of record, as an object type is elsewhere).

    `create_conflict_option` and `update_conflict_option` (`Skip` or `Overwrite`,
    else `ValueError`) say what Opus does with a `rowKey` it already holds. The
    record id in results is the record's `rowKey`; a record without one fails
    without a call. `options.headers` and associations do not apply to Opus.

    `write_one` raises `RetryableProviderError` (connection errors, timeouts, 408,
    429, 5xx) or `PermanentProviderError` (401, 403, an unreadable 2xx); any other
    4xx, or the record in `failedItems`, is a failed `RecordResult`. `write_batch`
    never raises.
    """

    provider: str = PROVIDER
    max_batch_size: int = MAX_RECORDS_PER_CALL

    def __init__(
        self,
        client: httpx.Client,
        *,
        connection_id: str | None = None,
        create_conflict_option: str = "Skip",
        update_conflict_option: str = "Overwrite",
        clock: Clock = utcnow,
    ) -> None:
        for option in (create_conflict_option, update_conflict_option):
            if option not in CONFLICT_OPTIONS:
                known = ", ".join(sorted(CONFLICT_OPTIONS))
                raise ValueError(f"unknown Opus conflictOption {option!r}; known: {known}")
        self._client = client
        self._connection_id = connection_id
        self._conflict_options = {
            "create": create_conflict_option,
            "update": update_conflict_option,
        }
        # Turns a Retry-After HTTP-date into seconds; injected so tests fix "now".
        self._clock = clock

    def write_one(
        self, object_name: str, write_type: WriteType, item: WriteItem, options: WriteOptions
    ) -> RecordResult:
        """Submit one record (create or update); a delete fails, since Opus has none."""
        if write_type == "delete":
            return RecordResult(success=False, record_id=row_key(item.record), error=_NO_DELETE)
        try:
            return self._submit(object_name, write_type, [item], options).results[0]
        except ProviderError as error:
            if not rejects_the_record(error):
                raise
            return RecordResult(
                success=False,
                record_id=row_key(item.record),
                error=error.message,
                status_code=error.status_code,
            )

    def write_batch(
        self,
        object_name: str,
        write_type: Literal["create", "update"],
        items: list[WriteItem],
        options: WriteOptions,
    ) -> BatchOutcome:
        """Submit `items` 15 per call; one result per item, in input order.

        Opus has no all-or-none: `options.all_or_none` is not honoured, and the
        records of one call succeed or fail one by one. A call that fails marks
        its records failed (retryable when the failure is), and the outcome's
        `retry_after_s` is the longest any call was asked to wait.
        """

        def write_chunk(chunk: list[WriteItem]) -> BatchOutcome:
            try:
                return self._submit(object_name, write_type, chunk, options)
            except ProviderError as error:
                return failed_chunk(
                    error, len(chunk), {p: _missing_row_key() for p in _keyless(chunk)}
                )

        return write_in_chunks(items, self.max_batch_size, write_chunk)

    def _submit(
        self,
        object_name: str,
        write_type: Literal["create", "update"],
        chunk: list[WriteItem],
        options: WriteOptions,
    ) -> BatchOutcome:
        """One call for up to 15 records; raises `ProviderError` when the call fails."""
        positions: dict[str, list[int]] = {}
        data: list[dict[str, Any]] = []
        for position, item in enumerate(chunk):
            key = row_key(item.record)
            if key is not None:
                positions.setdefault(key, []).append(position)
                data.append(item.record)
        keyless = {p: _missing_row_key() for p in _keyless(chunk)}
        if not data:
            return BatchOutcome(results=[keyless[p] for p in range(len(chunk))])

        body = {
            "id": self._connection_id or object_name,
            "conflictOption": self._conflict_option(write_type, options),
            "data": data,
        }
        response = self._send(body)
        if not response.is_success:
            raise classify_failure(response, now=self._clock())
        answer = read_json(response)
        if not isinstance(answer, dict):
            raise unreadable_response(
                response, provider=PROVIDER, display_name=DISPLAY_NAME, expected="a JSON object"
            )

        results: dict[int, RecordResult] = dict(keyless)
        for key, key_positions in positions.items():
            for position in key_positions:
                results[position] = RecordResult(success=True, record_id=key)
        unmatched: list[str] = []
        for key, message in _failed_items(answer):
            for position in positions.get(key or "", []):
                results[position] = RecordResult(success=False, record_id=key, error=message)
            if key not in positions:
                unmatched.append(f"failed item {key or '(no rowKey)'}: {message}")
        return BatchOutcome(results=[results[p] for p in range(len(chunk))], errors=unmatched)

    def _conflict_option(
        self, write_type: Literal["create", "update"], options: WriteOptions
    ) -> str:
        """`Overwrite` for a create by the natural key `rowKey` (an upsert); else as configured."""
        if write_type == "create" and options.natural_key == ROW_KEY:
            return "Overwrite"
        return self._conflict_options[write_type]

    def _send(self, body: dict[str, Any]) -> httpx.Response:
        try:
            return self._client.post(RECORDS_PATH, json=body)
        except httpx.TransportError as exc:
            raise transport_failure(exc, provider=PROVIDER, display_name=DISPLAY_NAME) from exc


def classify_failure(
    failure: httpx.Response | httpx.TransportError, *, now: datetime
) -> ProviderError:
    """The error a failed Opus call stands for: retryable or permanent.

    Retryable: connection errors and timeouts, 408, 429 and 5xx, with the
    response's `Retry-After` in `retry_after_s`. Permanent: every other 4xx,
    with Opus's `message`.
    """
    if isinstance(failure, httpx.TransportError):
        return transport_failure(failure, provider=PROVIDER, display_name=DISPLAY_NAME)
    body = read_json(failure)
    message = first_text([body.get("message")]) if isinstance(body, dict) else None
    if message is None:
        text = failure.text.strip()
        message = text[:500] if text else f"HTTP {failure.status_code} {failure.reason_phrase}"
    retryable = is_retryable_status(failure.status_code)
    return response_failure(failure, message, provider=PROVIDER, retryable=retryable, now=now)


def read_rate_limit(response: httpx.Response, now: datetime) -> RateLimitObservation | None:
    """A 429 is Opus throttling the call, for its `Retry-After` (seconds or an HTTP-date,
    relative to `now`); any other answer says nothing of limits (None)."""
    if response.status_code != 429:
        return None
    retry_after_s = parse_retry_after(response.headers.get("Retry-After"), now=now)
    return RateLimitObservation(
        policy="rolling", reset_after_s=retry_after_s, retry_after_s=retry_after_s
    )


def row_key(record: dict[str, Any]) -> str | None:
    """A record's `rowKey` as a string, or None when it has none."""
    value = record.get(ROW_KEY)
    if value is None or isinstance(value, bool) or not str(value).strip():
        return None
    return str(value)


def _failed_items(answer: dict[str, Any]) -> list[tuple[str | None, str]]:
    """(rowKey, message) for each entry of `failedItems`.

    Opus documents `failedItems` as "the records failed in the request"; an entry
    is read as the record itself (with any error message beside its fields) or
    as a bare rowKey. The response's own `message` stands in for a missing one.
    """
    fallback = first_text([answer.get("message")]) or _NOT_ACCEPTED
    items = answer.get("failedItems")
    failed: list[tuple[str | None, str]] = []
    for entry in items if isinstance(items, list) else []:
        if isinstance(entry, dict):
            message = first_text(
                [entry.get("errorMessage"), entry.get("message"), entry.get("error")]
            )
            failed.append((row_key(entry), message or fallback))
        elif isinstance(entry, str | int) and not isinstance(entry, bool):
            failed.append((str(entry), fallback))
    return failed


def _keyless(chunk: list[WriteItem]) -> list[int]:
    return [p for p, item in enumerate(chunk) if row_key(item.record) is None]


def _missing_row_key() -> RecordResult:
    return RecordResult(success=False, error=f"an Opus record needs {ROW_KEY}")
