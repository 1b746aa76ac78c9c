"""The port every stage records its metrics through, so no stage needs to know where
figures go (the runtime's `Metrics` sends them to the fleet's Redis hash)."""

from __future__ import annotations

from typing import Protocol


class Recorder(Protocol):
    """Counts events and observes values; names are `writejobs.runtime.metrics.CATALOG`'s."""

    def count(self, name: str, n: int = 1, **labels: str) -> None: ...

    def observe(self, name: str, value: float, **labels: str) -> None: ...


class NoRecorder:
    """Records nothing: for tests and tools that run a stage without the fleet's metrics."""

    def count(self, name: str, n: int = 1, **labels: str) -> None:
        return None

    def observe(self, name: str, value: float, **labels: str) -> None:
        return None
