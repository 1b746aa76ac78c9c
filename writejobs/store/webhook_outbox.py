"""The webhook outbox: what is owed to whom, claimed, taken, settled and replayed.

`enqueue_for` runs inside the transaction that moves operations to a terminal
state (`operations_repo.transition`), so the rows exist exactly when the write
ended: a crash before the commit leaves neither, one after it leaves both, and
the scheduler's sweep finds the rows however long the delivery workers were
away. Synchronous writes are answered in their request and notify nobody.

A row is sent by a claim (`claim_due`, the sweep: `claimed_until` keeps other
sweeps off while its task travels) and a take (`take`, the task: a
compare-and-set on `attempts`, so a task delivered twice sends once).
Nothing here commits: the caller owns the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, insert, literal, or_, select, update
from sqlalchemy.orm import Session

from writejobs.store.tables import Operation
from writejobs.store.webhook_tables import WebhookAttempt, WebhookDelivery, WebhookDestination

EVENT_PREFIX = "msg_"
EXCERPT_BYTES = 1024


def event_id(operation_id: str) -> str:
    """The `webhook-id` of an operation's notification (the same to every destination)."""
    return EVENT_PREFIX + operation_id


def enqueue_for(session: Session, operation_ids: list[str], *, now: datetime) -> None:
    """Owe every enabled destination of their projects a notification of these operations.

    Call right after they moved to a terminal state, in the same transaction. One
    INSERT … SELECT: operations with no destination cost one indexed read.
    """
    if not operation_ids:
        return
    matches = (
        select(
            WebhookDestination.id,
            Operation.id,
            literal(EVENT_PREFIX) + Operation.id,
            literal("pending"),
            literal(0),
            literal(now),
            literal(now),
        )
        .join(WebhookDestination, WebhookDestination.project_id == Operation.project_id)
        .where(
            Operation.id.in_(operation_ids),
            Operation.mode != "synchronous",
            WebhookDestination.enabled.is_(True),
            or_(
                WebhookDestination.integration_id.is_(None),
                WebhookDestination.integration_id == Operation.integration_id,
            ),
        )
    )
    columns = [
        "destination_id",
        "operation_id",
        "event_id",
        "state",
        "attempts",
        "next_attempt_at",
        "created_at",
    ]
    session.execute(insert(WebhookDelivery).from_select(columns, matches))


@dataclass(frozen=True, slots=True)
class Claimed:
    delivery_id: int
    destination_id: str


def claim_due(session: Session, *, now: datetime, hold_s: float, limit: int) -> list[Claimed]:
    """Claim pending rows whose time has come and that no task holds, oldest first."""
    due = (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.state == "pending",
            WebhookDelivery.next_attempt_at <= now,
            or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now),
        )
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
    )
    ids = list(session.scalars(due))
    if not ids:
        return []
    statement = (
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id.in_(ids),
            WebhookDelivery.state == "pending",
            or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until < now),
        )
        .values(claimed_until=now + timedelta(seconds=hold_s))
        .returning(WebhookDelivery.id, WebhookDelivery.destination_id)
    )
    rows = session.execute(statement, execution_options={"synchronize_session": False})
    return sorted((Claimed(int(i), str(d)) for i, d in rows), key=lambda c: c.delivery_id)


def take(session: Session, delivery: WebhookDelivery, *, now: datetime, hold_s: float) -> bool:
    """Start attempt `attempts + 1` of a pending, due delivery; False if another task did."""
    statement = (
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery.id,
            WebhookDelivery.state == "pending",
            WebhookDelivery.attempts == delivery.attempts,
            WebhookDelivery.next_attempt_at <= now,
        )
        .values(attempts=delivery.attempts + 1, claimed_until=now + timedelta(seconds=hold_s))
        .returning(WebhookDelivery.attempts)
    )
    taken = session.execute(statement, execution_options={"synchronize_session": False}).first()
    return taken is not None


def record_attempt(
    session: Session,
    delivery_id: int,
    *,
    at: datetime,
    status_code: int | None,
    latency_ms: int,
    excerpt: str,
) -> None:
    row = {
        "delivery_id": delivery_id,
        "at": at,
        "status_code": status_code,
        "latency_ms": latency_ms,
        "response_excerpt": excerpt[:EXCERPT_BYTES],
    }
    session.execute(insert(WebhookAttempt), [row])


def settle(
    session: Session,
    delivery_id: int,
    attempt: int,
    *,
    state: str,
    status_code: int | None,
    now: datetime,
    next_attempt_at: datetime | None = None,
) -> None:
    """End attempt `attempt`: delivered, failed, or pending again at `next_attempt_at`."""
    values: dict[str, object] = {"state": state, "claimed_until": None, "last_status": status_code}
    if state == "delivered":
        values["delivered_at"] = now
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.attempts == attempt)
        .values(**values),
        execution_options={"synchronize_session": False},
    )


def store_payload(session: Session, delivery_id: int, payload: str) -> None:
    session.execute(
        update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(payload=payload),
        execution_options={"synchronize_session": False},
    )


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
