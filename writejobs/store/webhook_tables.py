"""The webhook tables: where notifications go, what is owed to each, and every try.

A `WebhookDestination` is a project's receiver (optionally for one integration
only), with its signing secret encrypted at rest. A `WebhookDelivery` is the
outbox: one row per (terminal operation, enabled destination), inserted in the
transaction that ends the operation, so a notification exists exactly when the
write ended. A `WebhookAttempt` records each HTTP try of a delivery.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from writejobs.store.tables import Base


class WebhookDestination(Base):
    __tablename__ = "webhook_destinations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    # None: every integration of the project.
    integration_id: Mapped[str | None] = mapped_column(ForeignKey("integrations.id"), default=None)
    url: Mapped[str] = mapped_column(String(2000))
    # `{"secret": "whsec_…"}` as a Fernet token (writejobs/store/secrets.py).
    secret: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text, default=None)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    # The first failed attempt since the last success: a run of failures starts here.
    first_failure_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime]


class WebhookDelivery(Base):
    """One notification owed to one destination: pending, delivered, failed or abandoned.

    `failed`: the retry window passed without a 2xx; `abandoned`: its destination
    was disabled or removed first.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
        Index("ix_webhook_deliveries_operation", "operation_id"),
        Index("ix_webhook_deliveries_destination_created", "destination_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    destination_id: Mapped[str] = mapped_column(ForeignKey("webhook_destinations.id"))
    operation_id: Mapped[str] = mapped_column(ForeignKey("operations.id"))
    # The `webhook-id` header: one per event, the same on every retry and replay.
    event_id: Mapped[str] = mapped_column(String(64))
    # The JSON body, made at the first attempt (the operation no longer changes) and
    # kept, so every retry sends the same bytes.
    payload: Mapped[str | None] = mapped_column(Text, default=None)
    state: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    # Set by the sweep while the row's task is on its way, and by the task while it
    # posts (`taken_until`): no other sweep or task sends the row till then.
    claimed_until: Mapped[datetime | None] = mapped_column(default=None)
    taken_until: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)
    last_status: Mapped[int | None] = mapped_column(Integer, default=None)


class WebhookAttempt(Base):
    """One HTTP try: when, the status (None: no answer), how long, what the receiver said."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("webhook_deliveries.id"))
    at: Mapped[datetime]
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    latency_ms: Mapped[int] = mapped_column(Integer)
    # The first 1 KB of the response body, or why there was none ("connection refused").
    response_excerpt: Mapped[str] = mapped_column(Text, default="")
