"""The webhook outbox: what is owed to whom, claimed, taken, settled and replayed.

`enqueue_for` is called where operations move to a terminal state
(`operations_repo.transition`), and its rows are written in that transaction,
just before it commits, so they exist exactly when the write ended: a crash
before the commit leaves neither, one after it leaves both, and the scheduler's
sweep finds the rows however long the delivery workers were away. (On
PostgreSQL a single move writes them in its own statement instead, `ending`:
the same transaction, one round trip fewer.) Synchronous writes are answered
in their request and notify nobody.

A row is sent by a claim (`claim_due`, the sweep: `claimed_until` keeps other
sweeps off while its task travels) and a take (`take`, the task: `taken_until`
keeps a second delivery of the same task, or another task, off while it posts).
Nothing here commits: the caller owns the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Insert,
    Select,
    Table,
    and_,
    bindparam,
    event,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Update

from writejobs.store.tables import Operation
from writejobs.store.webhook_tables import WebhookAttempt, WebhookDelivery, WebhookDestination

EVENT_PREFIX = "msg_"
_NO_SYNC = {"synchronize_session": False}
_DELIVERIES: Table = WebhookDelivery.__table__  # type: ignore[assignment]
EXCERPT_BYTES = 1024


def event_id(operation_id: str) -> str:
    """The `webhook-id` of an operation's notification (the same to every destination)."""
    return EVENT_PREFIX + operation_id


def enqueue_for(session: Session, operation_ids: list[str], *, now: datetime) -> None:
    """Owe every enabled destination of their projects a notification of these operations.

    Call right after they moved to a terminal state, in the same session. The rows
    are written just before that transaction commits (one INSERT … SELECT for all
    the operations it ended, however many members a batch settles), and forgotten
    if it rolls back.
    """
    session.info.setdefault(_ENDED, []).extend((op_id, now) for op_id in operation_ids)


_ENDED = "writejobs.webhooks.ended"


@event.listens_for(Session, "before_commit")
def _write_owed(session: Session) -> None:
    ended: list[tuple[str, datetime]] = session.info.pop(_ENDED, [])
    by_time: dict[datetime, list[str]] = {}
    for op_id, at in ended:
        by_time.setdefault(at, []).append(op_id)
    for at, ids in by_time.items():
        _insert_owed(session, ids, at)


@event.listens_for(Session, "after_rollback")
def _forget_owed(session: Session) -> None:
    session.info.pop(_ENDED, None)


_OWED_COLUMNS = [
    "destination_id",
    "operation_id",
    "event_id",
    "state",
    "attempts",
    "next_attempt_at",
    "created_at",
]


def _owed_statement() -> Insert:
    """One INSERT … SELECT: operations with no destination cost one indexed read.

    Built once (the ids and the time are parameters): it runs at every commit that
    ends an operation, and building it cost more than running it.
    """
    now = bindparam("owed_now", type_=DateTime(timezone=True))
    matches = (
        select(
            WebhookDestination.id,
            Operation.id,
            literal(EVENT_PREFIX) + Operation.id,
            literal("pending"),
            literal(0),
            now,
            now,
        )
        .join(WebhookDestination, WebhookDestination.project_id == Operation.project_id)
        .where(
            Operation.id.in_(bindparam("owed_ids", expanding=True)),
            # A synchronous write was answered in its request.
            Operation.mode != "synchronous",
            WebhookDestination.enabled.is_(True),
            or_(
                WebhookDestination.integration_id.is_(None),
                WebhookDestination.integration_id == Operation.integration_id,
            ),
        )
    )
    return insert(_DELIVERIES).from_select(_OWED_COLUMNS, matches)


_OWED = _owed_statement()


def ending(moves: Update, *, now: datetime | ColumnElement[datetime]) -> Select[str]:
    """`moves` (an UPDATE that ends operations) as one statement that also owes their
    notifications, selecting the ids it moved: PostgreSQL runs a data-modifying CTE in
    the statement's transaction, so the rows exist exactly when the write ended, as
    `enqueue_for` makes them at the commit, one round trip fewer.
    """
    ops: Table = Operation.__table__  # type: ignore[assignment]
    moved = moves.returning(ops.c.id, ops.c.project_id, ops.c.integration_id, ops.c.mode).cte(
        "moved"
    )
    destinations: Table = WebhookDestination.__table__  # type: ignore[assignment]
    at = now if isinstance(now, ColumnElement) else literal(now, DateTime(timezone=True))
    matches = (
        select(
            destinations.c.id,
            moved.c.id,
            literal(EVENT_PREFIX) + moved.c.id,
            literal("pending"),
            literal(0),
            at,
            at,
        )
        .select_from(moved.join(destinations, destinations.c.project_id == moved.c.project_id))
        .where(
            moved.c.mode != "synchronous",
            destinations.c.enabled.is_(True),
            or_(
                destinations.c.integration_id.is_(None),
                destinations.c.integration_id == moved.c.integration_id,
            ),
        )
    )
    owed = insert(_DELIVERIES).from_select(_OWED_COLUMNS, matches).cte("owed")
    return select(moved.c.id).add_cte(owed)


def _insert_owed(session: Session, operation_ids: list[str], now: datetime) -> None:
    session.execute(_OWED, {"owed_ids": operation_ids, "owed_now": now})


@dataclass(frozen=True, slots=True)
class Claimed:
    delivery_id: int
    destination_id: str


def claim_due(session: Session, *, now: datetime, hold_s: float, limit: int) -> list[Claimed]:
    """Claim pending rows whose time has come and that no task holds, oldest first."""
    free = and_(
        or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now),
        or_(WebhookDelivery.taken_until.is_(None), WebhookDelivery.taken_until < now),
    )
    due = (
        select(WebhookDelivery.id)
        .where(WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= now, free)
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
    )
    ids = list(session.scalars(due))
    if not ids:
        return []
    statement = (
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(ids), WebhookDelivery.state == "pending", free)
        .values(claimed_until=now + timedelta(seconds=hold_s))
        .returning(WebhookDelivery.id, WebhookDelivery.destination_id)
    )
    rows = session.execute(statement, execution_options=_NO_SYNC)
    return sorted((Claimed(int(i), str(d)) for i, d in rows), key=lambda c: c.delivery_id)


def take(
    session: Session, delivery_ids: list[int], *, now: datetime, hold_s: float
) -> dict[int, int]:
    """Start the next attempt of those rows that are pending, due and held by no other
    task, for `hold_s`; return {delivery id: its attempt number} of those taken."""
    if not delivery_ids:
        return {}
    statement = (
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id.in_(delivery_ids),
            WebhookDelivery.state == "pending",
            WebhookDelivery.next_attempt_at <= now,
            or_(WebhookDelivery.taken_until.is_(None), WebhookDelivery.taken_until < now),
        )
        .values(
            attempts=WebhookDelivery.attempts + 1,
            taken_until=now + timedelta(seconds=hold_s),
        )
        .returning(WebhookDelivery.id, WebhookDelivery.attempts)
    )
    rows = session.execute(statement, execution_options=_NO_SYNC)
    return {int(i): int(n) for i, n in rows}


def abandon(session: Session, delivery_ids: list[int]) -> None:
    """Give up pending rows (their destination is off or gone)."""
    if delivery_ids:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(delivery_ids), WebhookDelivery.state == "pending")
            .values(state="abandoned", claimed_until=None, taken_until=None),
            execution_options=_NO_SYNC,
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """How attempt `attempt` of a delivery ended: `state` delivered, pending (again at
    `next_attempt_at`) or failed."""

    delivery_id: int
    attempt: int
    state: str
    at: datetime
    status_code: int | None
    latency_ms: int
    excerpt: str
    next_attempt_at: datetime | None = None


_SETTLE = (
    update(_DELIVERIES)
    .where(
        _DELIVERIES.c.id == bindparam("b_id"),
        _DELIVERIES.c.attempts == bindparam("b_attempt"),
    )
    .values(
        state=bindparam("b_state"),
        last_status=bindparam("b_status"),
        delivered_at=bindparam("b_delivered_at"),
        next_attempt_at=bindparam("b_next_attempt_at"),
        claimed_until=None,
        taken_until=None,
    )
)


def settle(session: Session, outcomes: list[Outcome]) -> None:
    """Record each attempt and end it; a row another task took since is left alone."""
    if not outcomes:
        return
    session.execute(
        insert(WebhookAttempt),
        [
            {
                "delivery_id": o.delivery_id,
                "at": o.at,
                "status_code": o.status_code,
                "latency_ms": o.latency_ms,
                "response_excerpt": o.excerpt[:EXCERPT_BYTES],
            }
            for o in outcomes
        ],
    )
    session.execute(
        _SETTLE,
        [
            {
                "b_id": o.delivery_id,
                "b_attempt": o.attempt,
                "b_state": o.state,
                "b_status": o.status_code,
                "b_delivered_at": o.at if o.state == "delivered" else None,
                "b_next_attempt_at": o.next_attempt_at or o.at,
            }
            for o in outcomes
        ],
    )


def store_payloads(session: Session, payloads: dict[int, str]) -> None:
    if payloads:
        statement = (
            update(_DELIVERIES)
            .where(_DELIVERIES.c.id == bindparam("b_id"))
            .values(payload=bindparam("b_payload"))
        )
        session.execute(statement, [{"b_id": i, "b_payload": p} for i, p in payloads.items()])


def load(session: Session, delivery_ids: list[int]) -> list[WebhookDelivery]:
    statement = (
        select(WebhookDelivery)
        .where(WebhookDelivery.id.in_(delivery_ids))
        .order_by(WebhookDelivery.id)
    )
    return list(session.scalars(statement))


def attempts_of(session: Session, delivery_id: int) -> list[WebhookAttempt]:
    statement = (
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id == delivery_id)
        .order_by(WebhookAttempt.id)
    )
    return list(session.scalars(statement))


def replay(
    session: Session,
    project_id: str,
    *,
    since: datetime,
    now: datetime,
    operation_id: str | None = None,
) -> int:
    """Owe again, to each enabled destination, the notifications first owed since `since`.

    New rows carry the same event id and body as the originals (a receiver that
    keeps ids sees the same event), and start pending now; returns how many.
    """
    first = (
        select(WebhookDelivery)
        .join(WebhookDestination, WebhookDestination.id == WebhookDelivery.destination_id)
        .where(
            WebhookDestination.project_id == project_id,
            WebhookDestination.enabled.is_(True),
            WebhookDelivery.created_at >= since,
        )
        .order_by(WebhookDelivery.id)
    )
    if operation_id is not None:
        first = first.where(WebhookDelivery.operation_id == operation_id)
    seen: set[tuple[str, str]] = set()
    rows = []
    for delivery in session.scalars(first):
        key = (delivery.destination_id, delivery.operation_id)
        if key in seen:
            continue
        seen.add(key)
        rows.append(
            {
                "destination_id": delivery.destination_id,
                "operation_id": delivery.operation_id,
                "event_id": delivery.event_id,
                "payload": delivery.payload,
                "state": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
        )
    if rows:
        session.execute(insert(WebhookDelivery), rows)
    return len(rows)


def count_pending(session: Session) -> int:
    statement = select(func.count()).where(WebhookDelivery.state == "pending")
    return int(session.scalar(statement) or 0)
