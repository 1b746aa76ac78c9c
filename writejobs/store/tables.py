"""The store's tables (SQLAlchemy 2.0, typed mappings).

SQL is the source of truth: every accepted write is an `Operation` row before
the client sees its id, and every attempt, decision and provider error is an
`OperationLog` row. Redis only ever holds ids that can be rebuilt from here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime]


class ApiKey(Base):
    """An API key, stored as its SHA-256: the plain key is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime]


class Integration(Base):
    __tablename__ = "integrations"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[datetime]


class Installation(Base):
    """One customer's instance of an integration, found by (project, integration, groupRef)."""

    __tablename__ = "installations"
    __table_args__ = (UniqueConstraint("project_id", "integration_id", "group_ref"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    integration_id: Mapped[str] = mapped_column(ForeignKey("integrations.id"))
    group_ref: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str] = mapped_column(String(50))
    base_url: Mapped[str] = mapped_column(String(500))
    # The credentials JSON as a Fernet token (writejobs/secrets.py); older rows hold plain JSON.
    credentials: Mapped[str] = mapped_column(Text, default="{}")
    deletable_objects: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Its own provider rate limit, `{"max": N, "interval_ms": M}` (core.flow.RateLimit);
    # None: the provider kind's default (writejobs/grouping/limiter.py).
    rate_limit: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Per object, the field whose value names one record at the provider (a natural
    # key: `{"contacts": "email", "Account": "External_Id__c"}`), so a create that
    # carries it is written as an upsert and a repeated attempt cannot duplicate it.
    natural_keys: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Set while an operator holds its writes back (`writejobs admin pause-installation`):
    # synchronous writes are refused (409), asynchronous ones are accepted and wait.
    paused_at: Mapped[datetime | None] = mapped_column(default=None)
    paused_reason: Mapped[str | None] = mapped_column(Text, default=None)
    config_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime]


# The states `ix_operations_state` holds on PostgreSQL: those its readers ask for.
STATE_INDEXED: tuple[str, ...] = ("pending", "queued", "running", "retrying", "expired")
# The predicate of the indexes by state and creation time (PostgreSQL): every state
# but `running`, which `ix_operations_state` holds (it is in STATE_INDEXED).
NOT_RUNNING = text("state <> 'running'")


class Operation(Base):
    """One accepted write and everything known about its outcome."""

    __tablename__ = "operations"
    # Every move of state is an UPDATE of an indexed column, so never a HOT update: each
    # adds an entry to every index whose predicate the new row meets. Indexes that serve
    # a small part of the table are partial, so the common moves skip them.
    __table_args__ = (
        Index("ix_operations_installation_created", "installation_id", "created_at", "id"),
        # The sweeps, the watchdog, the fleet's counts and the state metric read it, and
        # each asks for unfinished states (the metric for `expired` too): on PostgreSQL it
        # holds only those, so the move that ends an operation well, nearly every one,
        # adds no entry. SQLite keeps it whole: its planner takes a partial index only
        # for a term it finds written in the predicate, and `state IN (…)` is none.
        Index(
            "ix_operations_state",
            "state",
            postgresql_where=text(f"state IN ({', '.join(repr(s) for s in STATE_INDEXED)})"),
        ),
        # The console's filters (store/console_queries.py): one keyset range per state.
        # On PostgreSQL these three hold no `running` row (NOT_RUNNING), so the take,
        # the move every attempt makes, adds no entry to them: the few running rows
        # (the attempts in flight) are found by `ix_operations_state` and filtered.
        # SQLite keeps them whole (its planner would not prove `state = 'x'` meets
        # `state <> 'running'`).
        Index(
            "ix_operations_installation_state_created",
            "installation_id",
            "state",
            "created_at",
            "id",
            postgresql_where=NOT_RUNNING,
        ),
        Index(
            "ix_operations_installation_object_state_created",
            "installation_id",
            "object_name",
            "state",
            "created_at",
            "id",
            postgresql_where=NOT_RUNNING,
        ),
        # Only the few operations whose hand-off failed are in it (see store.handoffs).
        Index(
            "ix_operations_handoff_failed",
            "handoff_failed_at",
            postgresql_where=text("handoff_failed_at IS NOT NULL"),
            sqlite_where=text("handoff_failed_at IS NOT NULL"),
        ),
        # Dead letters across a project's installations (store/dead_letters.py).
        Index(
            "ix_operations_project_state_created",
            "project_id",
            "state",
            "created_at",
            "id",
            postgresql_where=NOT_RUNNING,
        ),
        # Both are looked up by value only (a batch's members, an original's replay), so
        # the operations without one, most of them, are left out.
        Index(
            "ix_operations_replay_of",
            "replay_of",
            unique=True,
            postgresql_where=text("replay_of IS NOT NULL"),
            sqlite_where=text("replay_of IS NOT NULL"),
        ),
        Index(
            "ix_operations_batch_id",
            "batch_id",
            postgresql_where=text("batch_id IS NOT NULL"),
            sqlite_where=text("batch_id IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    integration_id: Mapped[str] = mapped_column(ForeignKey("integrations.id"))
    installation_id: Mapped[str] = mapped_column(ForeignKey("installations.id"))
    config_id: Mapped[str] = mapped_column(String(36))
    object_name: Mapped[str] = mapped_column(String(200))
    write_type: Mapped[str] = mapped_column(String(10))
    mode: Mapped[str] = mapped_column(String(20))
    # single | batch | auto_batch | bulk
    shape: Mapped[str] = mapped_column(String(20))
    # The request as accepted (records included): needed to perform the write later.
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(30))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    record_count: Mapped[int] = mapped_column(Integer, default=1)
    success_count: Mapped[int] = mapped_column(Integer, default=0)
    failure_count: Mapped[int] = mapped_column(Integer, default=0)
    # Per-record outcomes in input order: [{success, recordId?, error?, data?}].
    results: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    errors: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    result_summary: Mapped[str | None] = mapped_column(Text, default=None)
    batch_id: Mapped[str | None] = mapped_column(String(36), default=None)
    flush_reason: Mapped[str | None] = mapped_column(String(10), default=None)
    # Every operation has one: after it the watchdog ends whatever is unfinished.
    deadline_at: Mapped[datetime]
    max_delay_s: Mapped[float | None] = mapped_column(default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    # Failed attempts that grow the backoff (a Retry-After wait does not).
    backoff_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    last_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    # The provider's own job for a bulk write (a Salesforce ingest job id), kept so a
    # repeated attempt follows the job that is running instead of starting another.
    provider_job_id: Mapped[str | None] = mapped_column(String(100), default=None)
    # When the intake could not hand the committed operation to Redis (its task not
    # sent, or its buffer append failed); the hand-off sweep sends it and clears this.
    handoff_failed_at: Mapped[datetime | None] = mapped_column(default=None)
    # Why it waits without an attempt (execution/gate.py: "installation paused"), and
    # since when; cleared when an attempt starts.
    waiting_reason: Mapped[str | None] = mapped_column(String(100), default=None)
    waiting_since: Mapped[datetime | None] = mapped_column(default=None)
    # A cancel that found it running: its attempt finishes, then it ends `cancelled`
    # instead of retrying (execution/cancel.py).
    cancel_requested_at: Mapped[datetime | None] = mapped_column(default=None)
    # The operation whose failed records this one writes again (intake/replay.py);
    # unique, so an original is replayed once (replay the replay to try again).
    replay_of: Mapped[str | None] = mapped_column(String(36), default=None)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class OperationPayload(Base):
    """A bulk write's inline CSV, apart from the operation row that is read on every poll.

    Committed with its operation, so an accepted CSV is as durable as the id the
    client holds; deleted once the operation ends.
    """

    __tablename__ = "operation_payloads"

    operation_id: Mapped[str] = mapped_column(ForeignKey("operations.id"), primary_key=True)
    content: Mapped[bytes] = mapped_column(LargeBinary)


class OperationLog(Base):
    """One line of an operation's story: an attempt, a decision, a provider error."""

    __tablename__ = "operation_logs"
    __table_args__ = (Index("ix_operation_logs_operation", "operation_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # No foreign key: its check cost each line about what the insert did, and guarded
    # nothing a reader sees. A line is read only through its operation (found first,
    # in the caller's project), is written by code holding that operation, and
    # operations are never deleted (migration 0013).
    operation_id: Mapped[str] = mapped_column(String(36))
    timestamp: Mapped[datetime]
    severity: Mapped[str] = mapped_column(String(10))
    msg: Mapped[str] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class IdempotencyKey(Base):
    """A client's `Idempotency-Key`, scoped to its project, and the answer it stands for.

    Inserted in the same transaction as the operation it names, so "the write is
    recorded" and "the key is taken" cannot diverge. `in_flight` while a
    synchronous write runs; `done` once its answer is stored (an asynchronous
    write's answer is known at commit, so it starts `done`). Purged after `expires_at`.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_expires_at", "expires_at"),)

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    # SHA-256 (hex) of the method, the path and the body: the same key must mean the same request.
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(10))
    operation_id: Mapped[str] = mapped_column(String(36))
    # The API's answer (a JSON document), replayed byte for byte.
    response_status: Mapped[int | None] = mapped_column(Integer, default=None)
    response_body: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
