"""The operations console's reads: installations, filtered pages of operations, bounded
counts, an operation's batch and logs. Read-only, and none commits.

Every read is a keyset range of an index, never an OFFSET or a COUNT(*) over the
table, so a page costs the same on a million operations as on a hundred:

* no filter: `ix_operations_installation_created` (installation, created_at, id);
* a state filter: `ix_operations_installation_state_created`, one range per state
  (a public status such as `failure` is two states), merged newest first here;
* an object filter (with or without states): `ix_operations_installation_object_state_created`,
  again one range per state.

Each range is `(created_at, id) < (:t, :id)` as one row-value comparison, which
both PostgreSQL and SQLite seek to, optionally bounded by a time window.
Counts stop at a cap: the console shows "1,000+" rather than scanning.

`project_id=None` means an operator, who sees every project; otherwise every
query is confined to that project, and a foreign id reads as an unknown one.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select, tuple_
from sqlalchemy.orm import Session

from writejobs.clock import as_utc
from writejobs.core.operations import State
from writejobs.store.tables import (
    ApiKey,
    Installation,
    Integration,
    Operation,
    OperationLog,
    Project,
)
from writejobs.store.tenants_repo import hash_api_key
from writejobs.store.webhook_tables import WebhookAttempt, WebhookDelivery, WebhookDestination

ALL_STATES: tuple[str, ...] = tuple(s.value for s in State)


@dataclass(frozen=True, slots=True)
class OperationFilter:
    """What the console's operations page asks for. `states` None: any state."""

    states: tuple[str, ...] | None = None
    object_name: str | None = None
    since: datetime | None = None  # created_at >= since
    until: datetime | None = None  # created_at < until


@dataclass(frozen=True, slots=True)
class OperationPage:
    operations: list[Operation]
    # (created_at, id) of the last row shown, when older rows exist.
    next_before: tuple[datetime, str] | None


@dataclass(frozen=True, slots=True)
class InstallationRow:
    installation: Installation
    project_name: str
    integration_name: str


def key_login(session: Session, plain_key: str) -> ApiKey | None:
    """The active API key with this plain value, if any (for the console's login)."""
    statement = select(ApiKey).where(
        ApiKey.key_hash == hash_api_key(plain_key), ApiKey.active.is_(True)
    )
    return session.scalars(statement).first()


def project_of_active_key(session: Session, key_id: str) -> Project | None:
    """The project of API key `key_id` while the key is active (a session dies with its key)."""
    statement = (
        select(Project)
        .join(ApiKey, ApiKey.project_id == Project.id)
        .where(ApiKey.id == key_id, ApiKey.active.is_(True))
    )
    return session.scalars(statement).first()


def list_projects(session: Session, *, limit: int) -> list[Project]:
    return list(session.scalars(select(Project).order_by(Project.name).limit(limit)))


def list_installations(
    session: Session,
    project_id: str | None,
    *,
    limit: int,
    after: tuple[str, str, str] | None = None,
) -> tuple[list[InstallationRow], tuple[str, str, str] | None]:
    """Installations in (project, integration, groupRef) order, `limit` at a time, with
    the key to pass as `after` for the next ones (None at the end)."""
    order = (Installation.project_id, Installation.integration_id, Installation.group_ref)
    statement = (
        select(Installation, Project.name, Integration.name)
        .join(Project, Project.id == Installation.project_id)
        .join(Integration, Integration.id == Installation.integration_id)
    )
    if project_id is not None:
        statement = statement.where(Installation.project_id == project_id)
    if after is not None:
        statement = statement.where(tuple_(*order) > tuple_(*after))
    rows = session.execute(statement.order_by(*order).limit(limit + 1)).all()
    found = [InstallationRow(i, p, n) for i, p, n in rows[:limit]]
    if len(rows) <= limit:
        return found, None
    last = found[-1].installation
    return found, (last.project_id, last.integration_id, last.group_ref)


def get_installation(
    session: Session, project_id: str | None, installation_id: str
) -> InstallationRow | None:
    statement = (
        select(Installation, Project.name, Integration.name)
        .join(Project, Project.id == Installation.project_id)
        .join(Integration, Integration.id == Installation.integration_id)
        .where(Installation.id == installation_id)
    )
    if project_id is not None:
        statement = statement.where(Installation.project_id == project_id)
    row = session.execute(statement).first()
    return None if row is None else InstallationRow(row[0], row[1], row[2])


def get_operation(session: Session, project_id: str | None, operation_id: str) -> Operation | None:
    op = session.get(Operation, operation_id)
    if op is None or (project_id is not None and op.project_id != project_id):
        return None
    return op


def _ranges(
    installation_id: str, flt: OperationFilter, before: tuple[datetime, str] | None
) -> list[Select[Operation]]:
    """One index range per state the filter names (or one range for no filter)."""
    base = select(Operation).where(Operation.installation_id == installation_id)
    if flt.since is not None:
        base = base.where(Operation.created_at >= flt.since)
    if flt.until is not None:
        base = base.where(Operation.created_at < flt.until)
    if before is not None:
        base = base.where(tuple_(Operation.created_at, Operation.id) < tuple_(*before))
    if flt.object_name is not None:
        base = base.where(Operation.object_name == flt.object_name)
    elif flt.states is None:
        return [base]
    return [base.where(Operation.state == state) for state in flt.states or ALL_STATES]


def list_operations(
    session: Session,
    installation_id: str,
    flt: OperationFilter,
    *,
    page_size: int,
    before: tuple[datetime, str] | None = None,
) -> OperationPage:
    """The installation's operations that match `flt`, newest first, older than `before`."""
    newest_first = (Operation.created_at.desc(), Operation.id.desc())
    runs = [
        list(session.scalars(q.order_by(*newest_first).limit(page_size + 1)))
        for q in _ranges(installation_id, flt, before)
    ]
    merged = list(heapq.merge(*runs, key=_sort_key, reverse=True))[: page_size + 1]
    if len(merged) <= page_size:
        return OperationPage(merged, None)
    last = merged[page_size - 1]
    return OperationPage(merged[:page_size], (as_utc(last.created_at), last.id))


def _sort_key(op: Operation) -> tuple[datetime, str]:
    return (as_utc(op.created_at), op.id)


def count_by_state(
    session: Session, installation_id: str, flt: OperationFilter, *, cap: int
) -> dict[str, int]:
    """How many of the installation's operations match `flt`, per state, each counted up to
    `cap + 1` (a value above `cap` means "more than cap")."""
    counts: dict[str, int] = {}
    states = flt.states or ALL_STATES
    per_state = OperationFilter(states, flt.object_name, flt.since, flt.until)
    for state, query in zip(states, _ranges(installation_id, per_state, None), strict=True):
        bounded = query.with_only_columns(Operation.id).limit(cap + 1).subquery()
        counts[state] = int(session.scalar(select(func.count()).select_from(bounded)) or 0)
    return counts


def batch_members(
    session: Session, project_id: str | None, batch_id: str, *, limit: int
) -> list[Operation]:
    """The operations of one auto-batch (at most 100 by construction), oldest first."""
    statement = select(Operation).where(Operation.batch_id == batch_id)
    if project_id is not None:
        statement = statement.where(Operation.project_id == project_id)
    statement = statement.order_by(Operation.created_at, Operation.id).limit(limit)
    return list(session.scalars(statement))


def operation_logs(session: Session, operation_id: str, *, limit: int) -> list[OperationLog]:
    """The first `limit` lines of an operation's story (a bulk job may log a thousand)."""
    statement = (
        select(OperationLog)
        .where(OperationLog.operation_id == operation_id)
        .order_by(OperationLog.id)
        .limit(limit)
    )
    return list(session.scalars(statement))


def count_fleet_states(session: Session, states: tuple[str, ...], *, cap: int) -> dict[str, int]:
    """Operations in each of `states` across the fleet, each counted up to `cap + 1`
    (one range of `ix_operations_state` per state)."""
    counts: dict[str, int] = {}
    for state in states:
        bounded = select(Operation.id).where(Operation.state == state).limit(cap + 1).subquery()
        counts[state] = int(session.scalar(select(func.count()).select_from(bounded)) or 0)
    return counts


def webhook_deliveries(session: Session, operation_id: str, *, limit: int) -> list[dict[str, Any]]:
    """The operation's webhook deliveries, oldest first, each with its destination's URL
    and its attempts (newest first, at most five): what the console's operation page shows."""
    statement = (
        select(WebhookDelivery, WebhookDestination.url)
        .join(WebhookDestination, WebhookDestination.id == WebhookDelivery.destination_id)
        .where(WebhookDelivery.operation_id == operation_id)
        .order_by(WebhookDelivery.id)
        .limit(limit)
    )
    found: list[dict[str, Any]] = []
    for delivery, url in session.execute(statement):
        attempts = session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id == delivery.id)
            .order_by(WebhookAttempt.id.desc())
            .limit(5)
        )
        found.append({"delivery": delivery, "url": url, "attempts": list(attempts)})
    return found
