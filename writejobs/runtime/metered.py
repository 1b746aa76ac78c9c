"""Provider adapters that count their calls and time them (`writejobs.runtime.metrics`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal, TypeVar

from writejobs.errors import ProviderError
from writejobs.execution.deps import AdapterOpener
from writejobs.providers.base import (
    BatchOutcome,
    ProviderAdapter,
    RecordResult,
    WriteItem,
    WriteOptions,
    WriteType,
)
from writejobs.runtime.metrics import Metrics
from writejobs.settings import Settings
from writejobs.store.tables import Installation

T = TypeVar("T")


def metered(open_adapter: AdapterOpener, metrics: Metrics) -> AdapterOpener:
    """`open_adapter`, with every adapter it opens counted and timed."""

    @contextmanager
    def open_metered(installation: Installation, settings: Settings) -> Iterator[ProviderAdapter]:
        with open_adapter(installation, settings) as adapter:
            yield MeteredAdapter(adapter, metrics)

    return open_metered


class MeteredAdapter:
    """Passes calls through; records `provider_calls` by outcome and `provider_call_seconds`."""

    def __init__(self, adapter: ProviderAdapter, metrics: Metrics) -> None:
        self._adapter = adapter
        self._metrics = metrics
        self.provider = adapter.provider
        self.max_batch_size = adapter.max_batch_size

    def write_one(
        self, object_name: str, write_type: WriteType, item: WriteItem, options: WriteOptions
    ) -> RecordResult:
        return self._timed(
            lambda: self._adapter.write_one(object_name, write_type, item, options),
            lambda result: [result],
        )

    def write_batch(
        self,
        object_name: str,
        write_type: Literal["create", "update"],
        items: list[WriteItem],
        options: WriteOptions,
    ) -> BatchOutcome:
        return self._timed(
            lambda: self._adapter.write_batch(object_name, write_type, items, options),
            lambda outcome: outcome.results,
        )

    def _timed(self, call: Callable[[], T], results_of: Callable[[T], list[RecordResult]]) -> T:
        """Run `call`, then record its duration and outcome (raised, or from its results)."""
        started = time.monotonic()
        try:
            value = call()
        except ProviderError as exc:
            self._record(started, "retryable" if exc.retryable else "permanent")
            raise
        self._record(started, _outcome(results_of(value)))
        return value

    def _record(self, started: float, outcome: str) -> None:
        provider = self.provider
        self._metrics.count("provider_calls", provider=provider, outcome=outcome)
        self._metrics.observe(
            "provider_call_seconds", time.monotonic() - started, provider=provider
        )


def _outcome(results: list[RecordResult]) -> str:
    """ok when any record was written (or none failed); else why they all failed."""
    if any(r.success for r in results) or not results:
        return "ok"
    return "retryable" if any(r.retryable for r in results) else "permanent"
