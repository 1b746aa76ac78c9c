"""The core without Celery: a recording sender, a scripted provider and a fixed clock.

`RecordingSender` stands where the dispatch sends tasks (the role dramatiq's
`StubBroker` plays): it records each task as (task name, id) instead of sending
it, records retry waits instead of queueing them, and delivers what it holds
when the test says so, to the same plain functions the worker's tasks call
(`run_operation`, `run_batch`). `ScriptedProvider` is a provider adapter whose
answer for each record is named in the record itself. With the real store
underneath, a test runs an operation, a batch or a settle in milliseconds.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from tests.support.system import Tenant, create_tenant
from writejobs import task_names
from writejobs.core.contract import parse_write_request
from writejobs.errors import RetryableProviderError
from writejobs.execution.batch import run_batch
from writejobs.execution.deps import ExecutionDeps
from writejobs.execution.run import run_operation
from writejobs.intake.directory import TenantDirectory
from writejobs.intake.write import Accepted, Dispatch, WriteTarget, accept_write
from writejobs.providers.base import (
    BatchOutcome,
    ProviderAdapter,
    RecordResult,
    WriteItem,
    WriteOptions,
    WriteType,
)
from writejobs.settings import Settings
from writejobs.store import operations_repo, webhook_destinations
from writejobs.store.db import create_session_factory, create_store_engine
from writejobs.store.secrets import cipher_for
from writejobs.store.tables import Installation, Operation, OperationLog, Project

SEED = 20261201


class FixedClock:
    """A clock that stands still until the test moves it."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@dataclass
class RecordingSender:
    """Records sent tasks and retry waits; delivers them like a worker and a scheduler."""

    sent: list[tuple[str, str]] = field(default_factory=list)
    waits: list[tuple[str, str, datetime]] = field(default_factory=list)
    buffered: list[str] = field(default_factory=list)

    def send_operation(self, operation_id: str) -> None:
        self.sent.append((task_names.WRITE_OPERATION, operation_id))

    def send_batch(self, batch_id: str) -> None:
        self.sent.append((task_names.WRITE_BATCH, batch_id))

    def schedule_retry(self, kind: str, target_id: str, at: datetime) -> None:
        self.waits.append((kind, target_id, at))

    def buffer_operations(self, operations: Sequence[Operation]) -> None:
        self.buffered.extend(op.id for op in operations)

    def release_due(self, now: datetime) -> None:
        """Send the task of every wait that is due (what `RetryQueue.release_due` does)."""
        for wait in [w for w in self.waits if w[2] <= now]:
            self.waits.remove(wait)
            kind, target_id, _at = wait
            (self.send_operation if kind == "op" else self.send_batch)(target_id)

    def deliver(self, deps: ExecutionDeps) -> list[object]:
        """Run every recorded task once, oldest first, as a worker would; their results.

        An exception a task raised is returned in its place, as the worker's log would show it.
        """
        results: list[object] = []
        while self.sent:
            name, target_id = self.sent.pop(0)
            try:
                if name == task_names.WRITE_OPERATION:
                    results.append(run_operation(target_id, deps))
                else:
                    results.append(run_batch(target_id, deps))
            except Exception as exc:
                results.append(exc)
        return results


Outcome = Literal["ok", "reject", "retry", "crash"]


class ScriptedProvider:
    """A provider adapter that answers each record as its `outcome` field says.

    `ok` writes it, `reject` refuses it (a validation error), `retry` fails it
    retryably (a 503) until the provider is `healed`, `crash` raises the
    `UnicodeEncodeError` httpx raises for a header it cannot encode, carrying the
    record's `marker`. An all-or-none call with a `retry` record fails as a whole.
    `calls` counts provider calls; `seen` lists the records of each.
    """

    provider = "hubspot"
    max_batch_size = 100

    def __init__(self) -> None:
        self.calls = 0
        self.seen: list[list[dict[str, Any]]] = []
        self.healed = False

    def write_one(
        self, object_name: str, write_type: WriteType, item: WriteItem, options: WriteOptions
    ) -> RecordResult:
        return self.write_batch(object_name, "create", [item], options).results[0]

    def write_batch(
        self,
        object_name: str,
        write_type: Literal["create", "update"],
        items: list[WriteItem],
        options: WriteOptions,
    ) -> BatchOutcome:
        self.calls += 1
        self.seen.append([i.record for i in items])
        for item in items:
            if item.record.get("outcome") == "crash":
                f"{item.record.get('marker', '')}\u00e9".encode("ascii")
        down = not self.healed and any(i.record.get("outcome") == "retry" for i in items)
        if options.all_or_none and down:
            raise RetryableProviderError(
                "503 Service Unavailable", provider="hubspot", status_code=503
            )
        return BatchOutcome([self._answer(i.record, n) for n, i in enumerate(items)])

    def _answer(self, record: dict[str, Any], n: int) -> RecordResult:
        outcome = record.get("outcome", "ok")
        if outcome == "reject":
            return RecordResult(
                success=False, error="INVALID_EMAIL: email is invalid", status_code=400
            )
        if outcome == "retry" and not self.healed:
            return RecordResult(
                success=False, error="503 Service Unavailable", retryable=True, status_code=503
            )
        return RecordResult(success=True, record_id=f"id-{self.calls}-{n}", status_code=201)


@dataclass
class Core:
    """The execution core on the real store, with its edges replaced by recorders."""

    settings: Settings
    clock: FixedClock
    provider: ScriptedProvider
    sender: RecordingSender
    deps: ExecutionDeps
    dispatch: Dispatch
    tenant: Tenant

    def target(self) -> WriteTarget:
        with self.deps.sessions() as session:
            project = session.get(Project, self.tenant.project_id)
            assert project is not None
            session.expunge(project)
        return WriteTarget(project, self.tenant.integration_id, "contacts")

    def accept(self, body: dict[str, Any]) -> Accepted:
        """Accept a write as the API does: `groupRef` is filled in."""
        full = {"groupRef": self.tenant.group_ref, "type": "create", **body}
        request = parse_write_request(json.dumps(full).encode())
        return accept_write(self.target(), request, self.deps, self.dispatch)

    def deliver(self) -> list[object]:
        return self.sender.deliver(self.deps)

    def operation(self, operation_id: str) -> Operation:
        with self.deps.sessions() as session:
            op = operations_repo.get_operation(session, operation_id)
            assert op is not None
            return op

    def logs(self, operation_id: str) -> list[OperationLog]:
        with self.deps.sessions() as session:
            return operations_repo.list_logs(session, operation_id)

    def add_webhook_destination(self, url: str) -> str:
        """A webhook destination of the tenant's project, committed; its id."""
        with self.deps.sessions() as session:
            destination, _secret = webhook_destinations.add(
                session,
                self.tenant.project_id,
                url,
                cipher=cipher_for(self.settings),
                now=self.clock(),
            )
            session.commit()
            return destination.id


@contextmanager
def core(settings: Settings, *, seed: int = SEED) -> Iterator[Core]:
    """A `Core` on `settings`' store, with a tenant of its own."""
    engine = create_store_engine(settings)
    sessions = create_session_factory(engine)
    clock = FixedClock()
    provider = ScriptedProvider()
    sender = RecordingSender()

    @contextmanager
    def open_adapter(_installation: Installation, _settings: Settings) -> Iterator[ProviderAdapter]:
        yield provider

    deps = ExecutionDeps(
        settings=settings,
        sessions=sessions,
        open_adapter=open_adapter,
        clock=clock,
        schedule_retry=sender.schedule_retry,
        rng=random.Random(seed),
    )
    dispatch = Dispatch(sender.send_operation, sender.buffer_operations, TenantDirectory(sessions))
    tenant = create_tenant(settings, "http://api.invalid", "http://provider.invalid")
    try:
        yield Core(settings, clock, provider, sender, deps, dispatch, tenant)
    finally:
        engine.dispose()
