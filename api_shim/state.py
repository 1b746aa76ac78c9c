"""What the API's routes share: the execution deps, how work leaves, Redis for health,
the fleet's metrics."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from writejobs.execution.deps import ExecutionDeps
from writejobs.grouping.quota import IntakeQuota
from writejobs.intake.handoff import HandOffs
from writejobs.intake.write import Dispatch
from writejobs.runtime.metrics import Metrics
from writejobs.store.group_commit import GroupCommitter


@dataclass(frozen=True, slots=True)
class AppState:
    deps: ExecutionDeps
    dispatch: Dispatch
    redis: redis.Redis
    metrics: Metrics
    # The per-project intake quota, checked before a write's body is read.
    quota: IntakeQuota
    # Asynchronous writes on the event loop: their rows' group commit, their hand-off.
    committer: GroupCommitter
    hand_offs: HandOffs
