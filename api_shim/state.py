"""What the API's routes share: the execution deps, how work leaves, Redis for health."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from writejobs.deps import ExecutionDeps
from writejobs.intake import Dispatch


@dataclass(frozen=True, slots=True)
class AppState:
    deps: ExecutionDeps
    dispatch: Dispatch
    redis: redis.Redis
