"""Accepting a write: route it to an installation, record it, then run, queue or buffer it.

The API's write route is a thin edge over `accept_write`. Every accepted write
is an operation row committed before anything else happens, so an id the
client holds always names a real row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.orm import Session

from writejobs.core.contract import WriteRequest, check_target_names
from writejobs.core.ids import new_id
from writejobs.core.json_input import shown
from writejobs.core.operations import NewOperation, Routed, State
from writejobs.errors import ContractError, InstallationPaused, NotFound, ProviderError
from writejobs.execution.crash import end_crashed
from writejobs.execution.deps import ExecutionDeps
from writejobs.execution.gate import admit_sync
from writejobs.execution.run import attempt_write, request_items, write_options
from writejobs.execution.settle import settle
from writejobs.intake.directory import TenantDirectory
from writejobs.intake.handoff import HandOffs, hand_off, recording
from writejobs.intake.idempotency import KeyClaim, accepted_answer
from writejobs.providers.base import BatchOutcome
from writejobs.store import idempotency_repo, operations_repo
from writejobs.store.tables import Installation, Operation, Project

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WriteTarget:
    """Where a write goes, from the request path and the caller's project."""

    project: Project
    integration_id_or_name: str
    object_name: str


@dataclass(frozen=True, slots=True)
class Accepted:
    """What the API answers from: the operation, and for sync writes what happened."""

    operation: Routed
    outcome: BatchOutcome | None = None
    provider_error: ProviderError | None = None


class AsyncRecorder(Protocol):
    """await record(operation row, its log rows): committed once it returns."""

    async def __call__(self, operation: dict[str, Any], logs: list[dict[str, Any]]) -> None: ...


class Recorder(Protocol):
    """record(operation row, its log rows, its idempotency-key rows): durable once it
    returns (see store.group_commit)."""

    def __call__(
        self,
        operation: dict[str, Any],
        logs: list[dict[str, Any]],
        keys: Sequence[dict[str, Any]] = (),
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Dispatch:
    """How accepted asynchronous work is recorded and leaves the intake (injected:
    the group committer, Celery, Redis). Without a `record`, each write commits alone."""

    send_operation: Callable[[str], None]
    buffer_operations: Callable[[Sequence[Routed]], object]
    directory: TenantDirectory
    record: Recorder | None = None
    # submit(operation): hand an accepted operation to the fair-share admission, which
    # knows its route from the row (grouping/admission.py); unset, `send_operation`.
    submit: Callable[[Routed], object] | None = None

    def send(self, op: Routed) -> None:
        """Hand an accepted asynchronous operation on towards a worker."""
        if self.submit is not None:
            self.submit(op)
        else:
            self.send_operation(op.id)


def accept_write(
    target: WriteTarget,
    request: WriteRequest,
    deps: ExecutionDeps,
    dispatch: Dispatch,
    claim: KeyClaim | None = None,
    *,
    replay_of: str | None = None,
) -> Accepted:
    """Validate routing, commit the operation row, then execute, enqueue or buffer it.

    With a `claim`, its idempotency key is committed with the operation row
    (`in_flight` for a synchronous write, `done` otherwise; see intake.idempotency),
    and a key already taken raises `IntegrityError` with nothing recorded.

    `replay_of` names the operation whose failed records this write replays
    (`intake.replay`); the new operation's `metadata.replayOf` says so.

    Raises `NotFound` for an unknown integration, `ContractError` for a request
    the installation cannot take, `InstallationPaused` for a synchronous write
    to a paused installation (asynchronous ones are accepted and wait),
    `RateLimited` for a synchronous write the provider account has no budget for
    (nothing recorded), and `StoreUnavailable` when the row cannot be committed.
    Redis being down is no error here: a committed write is accepted and the
    hand-off sweep sends it later (see `writejobs.intake.handoff`).
    """
    installation, row, accepted = _prepare(target, request, deps, dispatch, replay_of)
    op = Operation(**row)
    if not request.is_async:
        # Before the row: a write the rate limit refuses (429) leaves nothing behind.
        admit_sync(deps, installation, op.record_count)
        keys = [] if claim is None else [claim.row(op.id, op.created_at, None)]
        with deps.sessions() as session:
            with recording():
                _record_alone(session, op, accepted, keys)
            return _run_inline(session, op, installation, request, deps)
    keys = [] if claim is None else [claim.row(op.id, op.created_at, accepted_answer(op.id))]
    with recording():
        if dispatch.record is not None:
            dispatch.record(row, [accepted], keys)
        else:
            with deps.sessions() as session:
                _record_alone(session, op, accepted, keys)
    hand_off(op, dispatch, deps)
    return Accepted(op)


async def accept_async_write(
    target: WriteTarget,
    request: WriteRequest,
    deps: ExecutionDeps,
    dispatch: Dispatch,
    committer: AsyncRecorder,
    hand_offs: HandOffs,
) -> Accepted:
    """`accept_write` for an asynchronous write, on the event loop: no request thread
    waits for the group commit, and the hand-off to Redis happens after the answer,
    pooled with other requests' (`HandOffs`). The client still hears the operation's id
    only once its row is committed.

    Only for a route the directory already holds (`TenantDirectory.knows`): a lookup
    would query SQL on the loop. Raises what `accept_write` raises.
    """
    if not request.is_async:
        raise ValueError("accept_async_write takes asynchronous writes only")
    _installation, row, accepted = _prepare(target, request, deps, dispatch, None)
    op = NewOperation(row)
    with recording():
        await committer(row, [accepted])
    hand_offs.put(op)
    return Accepted(op)


def _prepare(
    target: WriteTarget,
    request: WriteRequest,
    deps: ExecutionDeps,
    dispatch: Dispatch,
    replay_of: str | None,
) -> tuple[Installation, dict[str, Any], dict[str, Any]]:
    """Route the write and check what the installation allows; the new operation's
    INSERT values and its first log row, nothing recorded yet."""
    with recording():
        installation = find_installation(target, request.group_ref, dispatch.directory)
    if not request.is_async and installation.paused_at is not None:
        # Nothing is recorded: the client sends it again once the installation is resumed.
        raise InstallationPaused(installation.id, installation.paused_reason)
    if request.type == "delete" and target.object_name not in installation.deletable_objects:
        raise ContractError(
            f"deletion is not enabled for object {shown(target.object_name)} in this installation"
        )
    row = _new_operation(target, request, installation, deps)
    details: dict[str, Any] = {
        "mode": request.mode,
        "type": request.type,
        "shape": row["shape"],
        "records": row["record_count"],
    }
    if replay_of is not None:
        row["replay_of"] = replay_of
        details["replay_of"] = replay_of
    accepted = operations_repo.log_row(
        row["id"], "write accepted", now=row["created_at"], details=details
    )
    return installation, row, accepted


def _record_alone(
    session: Session, op: Operation, accepted: dict[str, Any], keys: list[dict[str, Any]]
) -> None:
    idempotency_repo.insert_keys(session, keys)
    operations_repo.insert_operation(session, op)
    operations_repo.add_logs(session, [accepted])
    session.commit()


def find_installation(
    target: WriteTarget, group_ref: str, directory: TenantDirectory
) -> Installation:
    """The installation a write goes to; `NotFound` for an unknown integration,
    `ContractError` for a groupRef without an installation of it, or for path
    names too long or not one path segment (checked before any lookup is cached)."""
    check_target_names(target.integration_id_or_name, target.object_name)
    integration = directory.integration(target.project.id, target.integration_id_or_name)
    if integration is None:
        raise NotFound(f"integration {shown(target.integration_id_or_name)} not found")
    installation = directory.installation(integration.id, group_ref)
    if installation is None:
        raise ContractError(
            f"groupRef {shown(group_ref)} has no installation of integration {integration.name!r}"
        )
    return installation


def _run_inline(
    session: Session,
    op: Operation,
    installation: Installation,
    request: WriteRequest,
    deps: ExecutionDeps,
) -> Accepted:
    """A synchronous write: the provider is called inside the request, once.

    If our own code raises on the way, the operation ends `failed` before the API
    answers 500, and a sanitized `WriteCrashed` is raised instead: the client
    may send the write again, so nothing may run this one later.
    """
    try:
        items = dict(enumerate(request_items(request)))
        attempt = attempt_write(
            deps, installation, op, write_options(request), items, single=request.batch is None
        )
        settle(session, op, attempt, now=deps.clock(), may_retry=False, rng=deps.rng)
        session.commit()
    except Exception as exc:
        raise end_crashed(session, [op.id], exc, now=deps.clock()) from None
    outcome = BatchOutcome([attempt.results[i] for i in range(len(items))], attempt.errors)
    return Accepted(op, outcome=outcome, provider_error=attempt.call_error)


# The state a new operation starts in, by how it runs: auto-batched, asynchronous, or
# synchronous (which runs at once, in its request, as its first attempt).
_PENDING, _QUEUED, _RUNNING = State.PENDING.value, State.QUEUED.value, State.RUNNING.value


def _new_operation(
    target: WriteTarget,
    request: WriteRequest,
    installation: Installation,
    deps: ExecutionDeps,
) -> dict[str, Any]:
    """The new operation's INSERT values (`new_operation_row`'s, built in one go: this
    runs once per write on the API's event loop)."""
    now = deps.clock()
    settings = deps.settings
    scale = settings.policy_time_scale
    is_async = request.is_async
    batch = request.batch
    policy = request.auto_batch_policy
    row: dict[str, Any] = _base_row(target, installation, now)
    if policy is not None:
        max_delay_s = policy.max_delay_minutes * 60 * scale
        # The retry window opens at the flush, which comes at the latest when the
        # record's delay ends: so the deadline counts from there, not from arrival.
        retry_s = policy.retry_deadline_hours * 3600 * scale
        row["deadline_at"] = now + timedelta(seconds=max_delay_s + retry_s)
        row["max_delay_s"] = max_delay_s
        row["shape"] = "auto_batch"
        row["state"] = _PENDING
    else:
        if is_async:
            hours = request.retry_policy.deadline_hours if request.retry_policy else 1
            row["deadline_at"] = now + timedelta(hours=hours * scale)
            row["state"] = _QUEUED
        else:
            # Tried once, in this request, under a lease: if the API process dies holding
            # it, nobody else may write it, and the watchdog ends it after this.
            lease_expires_at = now + timedelta(seconds=settings.sync_lease_s)
            row["deadline_at"] = lease_expires_at
            row["lease_expires_at"] = lease_expires_at
            row["last_attempt_at"] = now
            row["attempts"] = 1
            row["state"] = _RUNNING
        row["shape"] = "single" if batch is None else "batch"
    row["write_type"] = request.type
    row["mode"] = request.mode
    row["request"] = request.model_dump(mode="json", by_alias=True, exclude_none=True)
    row["record_count"] = 1 if batch is None else len(batch)
    return row


def new_operation(
    target: WriteTarget, installation: Installation, now: datetime, **fields: Any
) -> Operation:
    """A new operation routed to `installation`, with nothing done yet; `fields` say
    what kind of write it is (type, mode, shape, request, state, deadline, …)."""
    return Operation(**new_operation_row(target, installation, now, **fields))


def new_operation_row(
    target: WriteTarget, installation: Installation, now: datetime, **fields: Any
) -> dict[str, Any]:
    """`new_operation` as its INSERT's values, with no ORM object. Unset fields are
    left out, so the columns' own defaults apply (a JSON column is SQL NULL, not null)."""
    row = _base_row(target, installation, now)
    row.update(fields)
    return {key: value for key, value in row.items() if value is not None}


def _base_row(target: WriteTarget, installation: Installation, now: datetime) -> dict[str, Any]:
    """What every new operation's row holds before its kind of write is said."""
    row = {
        "id": new_id(),
        "project_id": target.project.id,
        "integration_id": installation.integration_id,
        "installation_id": installation.id,
        "config_id": installation.config_id,
        "object_name": target.object_name,
        "created_at": now,
        "updated_at": now,
        "attempts": 0,
        "backoff_failures": 0,
        "success_count": 0,
        "failure_count": 0,
    }
    if row["config_id"] is None:
        del row["config_id"]  # unset, as new_operation_row leaves every None out
    return row
