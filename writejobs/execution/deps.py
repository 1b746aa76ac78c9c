"""What executing a write needs (`ExecutionDeps`), injected so tests can drive each part."""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from writejobs.clock import Clock
from writejobs.core.flow import Account, NoRateLimiter, RateLimiter
from writejobs.core.recorder import NoRecorder, Recorder
from writejobs.failpoints import no_failpoint
from writejobs.providers.base import ProviderAdapter
from writejobs.providers.salesforce_bulk import SalesforceBulkIngest
from writejobs.settings import Settings
from writejobs.store.tables import Installation

AdapterOpener = Callable[[Installation, Settings], AbstractContextManager[ProviderAdapter]]
BulkOpener = Callable[[Installation, Settings], AbstractContextManager[SalesforceBulkIngest]]
# schedule_retry(kind, id, at): kind is "op" or "batch" (see writejobs.grouping.retry_waits).
RetryScheduler = Callable[[str, str, datetime], None]
# arrived(kind, id, installation id): a task reached its worker (the fair-share
# admission's reservation for it ends; see writejobs.grouping.admission).
Arrival = Callable[[str, str, str], None]
# acquire_arriving(kind, id, installation id, account, now, calls): the limiter's
# `acquire` for a task that just reached its worker, which also ends its admission
# reservation, in one Redis step (`arrived` is then not called); unset, the gate
# asks `limiter` and calls `arrived` after.
ArrivingAcquire = Callable[[str, str, str, Account, datetime, int], float]


def _no_arrivals(kind: str, target_id: str, installation_id: str) -> None:
    return None


def _no_retries(kind: str, target_id: str, at: datetime) -> None:
    raise RuntimeError(f"no retry queue wired: cannot wait for {kind} {target_id}")


def _no_bulk(
    installation: Installation, settings: Settings
) -> AbstractContextManager[SalesforceBulkIngest]:
    raise RuntimeError("no bulk ingest wired: cannot run a bulk write")


@dataclass(frozen=True, slots=True)
class ExecutionDeps:
    """What executing a write needs, injected so tests can drive each part."""

    settings: Settings
    sessions: sessionmaker[Session]
    open_adapter: AdapterOpener
    clock: Clock
    failpoint: Callable[[str], None] = no_failpoint
    schedule_retry: RetryScheduler = _no_retries
    open_bulk: BulkOpener = _no_bulk
    rng: random.Random = field(default_factory=random.Random)
    # Where execution counts what it sees (possible duplicates); the fleet's metrics when wired.
    recorder: Recorder = field(default_factory=NoRecorder)
    # The fleet's rate limiter every provider call asks first (execution.gate).
    limiter: RateLimiter = field(default_factory=NoRateLimiter)
    arrived: Arrival = _no_arrivals
    acquire_arriving: ArrivingAcquire | None = None
