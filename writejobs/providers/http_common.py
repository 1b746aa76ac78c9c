"""What every HTTP provider adapter shares: failure classes, Retry-After and chunking.

Each adapter decides which of its provider's answers mean what (HubSpot's 477,
Salesforce's `UNABLE_TO_LOCK_ROW`); the rules that hold for all of them live here
so they are written, and tested, once:

- a connection error or timeout, a 408, a 429 or a 5xx is retryable, and the
  response's `Retry-After` (seconds or an HTTP-date) says how long to wait;
- a 401 or 403 fails the whole call (bad credentials fail every record alike),
  while any other refusal of a single-record call is the record's rejection;
- a batch is written in chunks of the provider's limit, and a chunk whose call
  fails marks its own records failed without losing the other chunks' results;
- what an answer says of the account's rate limits is read by each adapter
  module's `read_rate_limit`, and `rate_limit_hook` hands it on from every
  answer of a client (an httpx response event hook), so no call path changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from writejobs.clock import Clock
from writejobs.core.flow import RateLimitObservation
from writejobs.errors import PermanentProviderError, ProviderError, RetryableProviderError
from writejobs.providers.base import BatchOutcome, RecordResult, WriteItem

# Enough of a provider's answer to debug it from the logs without storing whole bodies.
RAW_RESPONSE_CHARS = 2000
# Bad credentials fail every record alike, so they are the call's failure, not a record's.
CALL_FAILURE_STATUSES = frozenset({401, 403})
_RETRYABLE_STATUSES = frozenset({408, 429})

ChunkWriter = Callable[[list[WriteItem]], BatchOutcome]
# A provider module's `read_rate_limit`: what one answer says of the limits, or None.
RateLimitReader = Callable[[httpx.Response, datetime], RateLimitObservation | None]
# Statuses whose body a reader needs (HubSpot's 429 names its policy, Salesforce's 403
# its error code); small bodies, read before the caller sees the response.
_LIMIT_BODY_STATUSES = frozenset({403, 429})


def is_retryable_status(status_code: int) -> bool:
    """Whether an HTTP status is worth retrying on every provider: 408, 429 or 5xx."""
    return status_code in _RETRYABLE_STATUSES or status_code >= 500


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Seconds to wait from a `Retry-After` header: delay-seconds or an HTTP-date.

    An HTTP-date is relative to `now`; a past date or a negative delay is 0.0 and
    an unreadable header is None (the retry policy then uses its own backoff).
    """
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            at = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        seconds = (at - now).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def transport_failure(
    error: httpx.TransportError, *, provider: str, display_name: str
) -> RetryableProviderError:
    """A connection error or timeout: always retryable, with no status code."""
    message = str(error) or type(error).__name__
    return RetryableProviderError(f"{display_name} unreachable: {message}", provider=provider)


def response_failure(
    response: httpx.Response,
    message: str,
    *,
    provider: str,
    retryable: bool,
    now: datetime,
) -> ProviderError:
    """The `ProviderError` for a failed response, with its status and raw body.

    A retryable failure carries the response's `Retry-After` in seconds.
    """
    raw = response.text[:RAW_RESPONSE_CHARS]
    if retryable:
        return RetryableProviderError(
            message,
            provider=provider,
            status_code=response.status_code,
            retry_after_s=parse_retry_after(response.headers.get("Retry-After"), now=now),
            raw_response=raw,
        )
    return PermanentProviderError(
        message, provider=provider, status_code=response.status_code, raw_response=raw
    )


def unreadable_response(
    response: httpx.Response, *, provider: str, display_name: str, expected: str
) -> PermanentProviderError:
    """A 2xx whose body we cannot read: not retried, since the same call reads the same."""
    return PermanentProviderError(
        f"{display_name} answered {response.status_code} with a body that is not {expected}",
        provider=provider,
        status_code=response.status_code,
        raw_response=response.text[:RAW_RESPONSE_CHARS],
    )


def rejects_the_record(error: ProviderError) -> bool:
    """Whether a failed single-record call means "this record is refused" (400, 404, 409…)."""
    return not error.retryable and error.status_code not in CALL_FAILURE_STATUSES


def read_json(response: httpx.Response) -> Any:
    """The response body as JSON, or None when it is empty or not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def json_objects(value: Any) -> list[dict[str, Any]]:
    """The JSON objects of a JSON array; anything else reads as no objects."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def failed_result(error: ProviderError) -> RecordResult:
    """What a record of a chunk whose call failed comes back as."""
    return RecordResult(
        success=False,
        error=error.message,
        retryable=error.retryable,
        status_code=error.status_code,
    )


def failed_chunk(
    error: ProviderError, size: int, early: dict[int, RecordResult] | None = None
) -> BatchOutcome:
    """A chunk of `size` records whose call failed; `early` keeps results decided before it."""
    failed = failed_result(error)
    early = early or {}
    return BatchOutcome(
        results=[early.get(position, failed) for position in range(size)],
        retry_after_s=error.retry_after_s,
    )


def write_in_chunks(
    items: list[WriteItem], chunk_size: int, write_chunk: ChunkWriter
) -> BatchOutcome:
    """Write `items` chunk by chunk and join the outcomes, in input order.

    `write_chunk` must not raise for a failed call (see `failed_chunk`); the
    joined `retry_after_s` is the longest any chunk was asked to wait, so a
    retry waits for all of them.
    """
    results: list[RecordResult] = []
    errors: list[str] = []
    retry_after_s: float | None = None
    for start in range(0, len(items), chunk_size):
        outcome = write_chunk(items[start : start + chunk_size])
        results.extend(outcome.results)
        errors.extend(outcome.errors)
        if outcome.retry_after_s is not None:
            retry_after_s = max(retry_after_s or 0.0, outcome.retry_after_s)
    return BatchOutcome(results=results, errors=errors, retry_after_s=retry_after_s)


def write_split(
    items: list[WriteItem],
    picked: Callable[[WriteItem], bool],
    write_picked: Callable[[list[WriteItem]], BatchOutcome],
    write_rest: Callable[[list[WriteItem]], BatchOutcome],
) -> BatchOutcome:
    """Write the items `picked` chooses with one writer and the rest with another.

    Used to send the creates that carry a natural key as upserts and the others as
    creates; the results come back in input order, the errors of both joined and
    `retry_after_s` the longer of the two. A side with no items is not called.
    """
    positions = [p for p, item in enumerate(items) if picked(item)]
    chosen = set(positions)
    rest = [p for p in range(len(items)) if p not in chosen]
    results: dict[int, RecordResult] = {}
    errors: list[str] = []
    retry_after_s: float | None = None
    for part, write in ((positions, write_picked), (rest, write_rest)):
        if not part:
            continue
        outcome = write([items[p] for p in part])
        results.update(zip(part, outcome.results, strict=True))
        errors.extend(outcome.errors)
        if outcome.retry_after_s is not None:
            retry_after_s = max(retry_after_s or 0.0, outcome.retry_after_s)
    return BatchOutcome(
        results=[results[p] for p in range(len(items))], errors=errors, retry_after_s=retry_after_s
    )


def first_text(values: Iterable[Any]) -> str | None:
    """The first non-empty string among `values` (a provider's message under any of its keys)."""
    return next((v for v in values if isinstance(v, str) and v.strip()), None)


def header_number(response: httpx.Response, name: str) -> float | None:
    """A header holding a finite, non-negative number, or None (absent or unreadable)."""
    raw = response.headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def header_int(response: httpx.Response, name: str) -> int | None:
    """A header holding a whole non-negative number, or None."""
    value = header_number(response, name)
    return int(value) if value is not None and value.is_integer() else None


def rate_limit_hook(
    read: RateLimitReader,
    on_observation: Callable[[RateLimitObservation], None],
    *,
    clock: Clock,
) -> Callable[[httpx.Response], None]:
    """An httpx `event_hooks["response"]` entry: every answer's observation, to the callback.

    The hook runs before the client reads the body, so it reads it for a 403 or 429
    (whose body names the limit); other bodies are left to stream. A callback that
    raises must not fail the write: it is the caller's job to keep it from raising.
    """

    def hook(response: httpx.Response) -> None:
        if response.status_code in _LIMIT_BODY_STATUSES:
            response.read()
        observation = read(response, clock())
        if observation is not None:
            on_observation(observation)

    return hook
