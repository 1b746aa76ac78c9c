"""The operation state machine: states, allowed moves, and the public status.

    pending ──▶ queued ──▶ running ──▶ succeeded | partially_succeeded | failed | expired
                  ▲           │  ▲
                  │           ▼  │
                  └──────── retrying

    pending | queued | retrying ──▶ cancelled ◀── running (once its attempt settles)

`pending` is an auto-batched record waiting in its group's buffer. A move is a
compare-and-set in SQL (see `store.operations_repo.transition`), so a task that
is delivered twice can never run a finished operation again. `cancelled` is an
operator's (or the project's) decision: a waiting operation enters it at once; a
running one is only marked, and enters it when its attempt settles with records
left to retry (see `execution.cancel`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol


class State(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    PARTIALLY_SUCCEEDED = "partially_succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


TERMINAL: frozenset[State] = frozenset(
    {State.SUCCEEDED, State.PARTIALLY_SUCCEEDED, State.FAILED, State.EXPIRED, State.CANCELLED}
)
# The contract's `failure`: the operations an operator lists as dead letters.
FAILURES: tuple[State, ...] = (State.FAILED, State.EXPIRED, State.CANCELLED)

# Which states each state may be entered from. Two moves into `running` are
# guarded: from `retrying` only once the wait is over, and from `running` only
# when the previous holder's lease has lapsed (a dead worker); the repository's
# one compare-and-set adds those conditions (`store.operations_repo._may_enter`).
ALLOWED_FROM: dict[State, frozenset[State]] = {
    State.PENDING: frozenset(),
    State.QUEUED: frozenset({State.PENDING, State.RETRYING}),
    State.RUNNING: frozenset({State.QUEUED, State.RETRYING, State.RUNNING}),
    State.RETRYING: frozenset({State.RUNNING}),
    State.SUCCEEDED: frozenset({State.RUNNING}),
    State.PARTIALLY_SUCCEEDED: frozenset({State.RUNNING}),
    State.FAILED: frozenset({State.RUNNING, State.QUEUED, State.PENDING, State.RETRYING}),
    State.EXPIRED: frozenset({State.RUNNING, State.QUEUED, State.PENDING, State.RETRYING}),
    State.CANCELLED: frozenset({State.RUNNING, State.QUEUED, State.PENDING, State.RETRYING}),
}


def public_status(state: str) -> str:
    """The contract's `status`: `in_progress` until terminal, then `success` or `failure`.

    A partially successful batch is `success`, as the contract says of batches.
    """
    if state in (State.SUCCEEDED, State.PARTIALLY_SUCCEEDED):
        return "success"
    if state in FAILURES:
        return "failure"
    return "in_progress"


def outcome_state(success_count: int, failure_count: int) -> State:
    """The terminal state for a finished write with these record counts."""
    if failure_count == 0:
        return State.SUCCEEDED
    if success_count == 0:
        return State.FAILED
    return State.PARTIALLY_SUCCEEDED


class Routed(Protocol):
    """What handing an accepted operation on reads of it: a stored `Operation` row or
    a just-accepted `NewOperation` (the intake's, before any ORM object exists)."""

    @property
    def id(self) -> str: ...
    @property
    def shape(self) -> str: ...
    @property
    def project_id(self) -> str: ...
    @property
    def installation_id(self) -> str: ...
    @property
    def object_name(self) -> str: ...
    @property
    def write_type(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def max_delay_s(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class NewOperation:
    """An operation the intake just accepted, as its INSERT's values (`row`): building
    an ORM object per write cost more CPU than recording it."""

    row: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.row["id"])

    @property
    def shape(self) -> str:
        return str(self.row["shape"])

    @property
    def project_id(self) -> str:
        return str(self.row["project_id"])

    @property
    def installation_id(self) -> str:
        return str(self.row["installation_id"])

    @property
    def object_name(self) -> str:
        return str(self.row["object_name"])

    @property
    def write_type(self) -> str:
        return str(self.row["write_type"])

    @property
    def created_at(self) -> datetime:
        created: datetime = self.row["created_at"]
        return created

    @property
    def max_delay_s(self) -> float | None:
        delay: float | None = self.row.get("max_delay_s")
        return delay
