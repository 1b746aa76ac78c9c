"""What the API's routes share: the execution deps, how work leaves, Redis for health,
the fleet's metrics."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from writejobs.deps import ExecutionDeps
from writejobs.intake import Dispatch
from writejobs.metrics import Metrics


@dataclass(frozen=True, slots=True)
class AppState:
    deps: ExecutionDeps
    dispatch: Dispatch
    redis: redis.Redis
    metrics: Metrics
