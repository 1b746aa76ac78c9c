"""The provider adapter seam: what every adapter takes and returns.

An adapter turns a list of records into its provider's wire calls and back into
one `RecordResult` per input record, in input order. It owns an injected
`httpx.Client`, so tests swap the network (a `MockTransport` or the sandbox on
loopback), never the code. Records the provider rejects are data in the
results; only failures of a whole call raise (see `writejobs.errors`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

WriteType = Literal["create", "update", "delete"]


@dataclass(frozen=True, slots=True)
class WriteItem:
    """One record to write, with the options the contract lets ride along."""

    record: dict[str, Any]
    associations: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RecordResult:
    """The provider's answer for one record.

    `retryable` is meaningful only when `success` is False: it says whether the
    record failed for a reason that may pass on a later attempt (a 503 on its
    chunk) rather than for a reason in the record itself (a validation error).
    """

    success: bool
    record_id: str | None = None
    data: dict[str, Any] | None = None
    error: str | None = None
    retryable: bool = False
    status_code: int | None = None
    # When the provider refused a create because the record already exists, the
    # id it named: after a cut-off attempt, that record is most likely our own.
    existing_id: str | None = None


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """Per-record results in input order, plus errors that belong to no record."""

    results: list[RecordResult]
    errors: list[str] = field(default_factory=list)
    # The longest Retry-After any chunk was given, so a retry waits for all of them.
    retry_after_s: float | None = None

    @property
    def success_count(self) -> int:
        return sum(1 for r in self.results if r.success)

    @property
    def failure_count(self) -> int:
        return len(self.results) - self.success_count


@dataclass(frozen=True, slots=True)
class WriteOptions:
    """Request-level options: `headers` are Salesforce's, `all_or_none` is the batch policy.

    `natural_key` is the installation's natural key of the object written (see
    `writejobs.providers.natural_keys`): a create whose record carries that field
    is written as an upsert by it, so a repeated attempt updates the record its
    earlier attempt wrote instead of creating a second one.
    """

    all_or_none: bool = False
    headers: list[tuple[str, str]] = field(default_factory=list)
    natural_key: str | None = None


class ProviderAdapter(Protocol):
    """What the write execution needs of a provider."""

    provider: str
    max_batch_size: int

    def write_one(
        self, object_name: str, write_type: WriteType, item: WriteItem, options: WriteOptions
    ) -> RecordResult:
        """Create, update or delete one record (delete needs only `record["id"]`).

        A record the provider rejects (validation, not found) comes back as a
        failed result; a failure of the call itself raises a `ProviderError`.
        """
        ...

    def write_batch(
        self,
        object_name: str,
        write_type: Literal["create", "update"],
        items: list[WriteItem],
        options: WriteOptions,
    ) -> BatchOutcome:
        """Write any number of records, chunked to `max_batch_size` per provider call.

        Never raises for a failed chunk: its records come back failed, with
        `retryable` set when the chunk failed for a retryable reason, so the
        results of the chunks that did succeed are never lost.
        """
        ...
