"""What a worker's task reads before it takes its work: the operation or the batch's
members, with their installation, in as few statements as the gate allows.

A task's first look decides whether it may start (`execution.gate`) and what it
takes over; each statement here is a round trip every task pays, so each reads
what the gate and the take need at once (an operation with its installation;
a batch's members that may run, as light rows, not ORM objects). Like every
repository, it never commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from writejobs.core.operations import State
from writejobs.store.operation_moves import _may_enter
from writejobs.store.tables import Installation, Operation

# `operation_with_installation`'s statement, built once with its id a parameter: every
# task reads with it, and building it (its clauses, then its cache key, which a
# statement object memoizes) cost more of a task's CPU than running it.
_OPERATION_WITH_INSTALLATION = (
    select(Operation, Installation)
    .join(Installation, Installation.id == Operation.installation_id)
    .where(Operation.id == bindparam("operation_id"))
)


def operation_with_installation(
    session: Session, operation_id: str
) -> tuple[Operation, Installation] | None:
    """An operation and its installation, read in one statement."""
    row = session.execute(_OPERATION_WITH_INSTALLATION, {"operation_id": operation_id}).first()
    return None if row is None else (row[0], row[1])


def batch_installation(session: Session, batch_id: str) -> Installation | None:
    """The installation of a batch's members (they share one), or None for no members."""
    statement = (
        select(Installation)
        .join(Operation, Operation.installation_id == Installation.id)
        .where(Operation.batch_id == batch_id)
        .limit(1)
    )
    return session.scalars(statement).first()


@dataclass(frozen=True, slots=True)
class Candidate:
    """A member of a batch that may move into `running` now: what the gate looks at."""

    id: str
    state: str
    deadline_at: datetime
    waiting_since: datetime | None

    @property
    def taken_over(self) -> bool:
        """Left `running` under a lapsed lease: a delivery took it, began its provider
        call and never settled (its worker died)."""
        return self.state == State.RUNNING.value


def candidates(session: Session, batch_id: str, *, now: datetime) -> list[Candidate]:
    """The members of a batch that `take_batch` would take at `now`, without taking
    them: queued, retrying and due, or running under a lapsed lease.

    Read with the `now` the take then uses, so the caller knows which members it
    takes over (`taken_over`) rather than starts afresh.
    """
    statement = (
        select(Operation.id, Operation.state, Operation.deadline_at, Operation.waiting_since)
        .where(Operation.batch_id == batch_id, _may_enter(State.RUNNING, now, None))
        .order_by(Operation.created_at)
    )
    return [Candidate(*row) for row in session.execute(statement)]


def operations(session: Session, operation_ids: list[str]) -> list[Operation]:
    """These operations as rows (the members a gate's deferral holds back), oldest first."""
    statement = select(Operation).where(Operation.id.in_(operation_ids))
    return list(session.scalars(statement.order_by(Operation.created_at)))
