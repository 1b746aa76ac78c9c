"""An attempt cut off after its provider call, taken over once its lease lapsed, run
in-process against the sandbox over real HTTP, the real store and real Redis.

The cut-off is a failpoint that raises where a real one SIGKILLs the worker
(`batch.after_provider_call`, `operation.after_provider_call`): the records reached
the provider, their results were never committed, and the rows stay `running`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from tests.support.parked import Parked, parked_system
from writejobs.clock import utcnow
from writejobs.execution.batch import run_batch
from writejobs.execution.deps import ExecutionDeps
from writejobs.execution.repeats import POSSIBLE_DUPLICATE
from writejobs.execution.run import run_operation
from writejobs.settings import Settings
from writejobs.store import operations_repo, tenants_repo
from writejobs.store.tables import Operation


class Killed(BaseException):
    """Stands for the SIGKILL a real failpoint sends: a BaseException, so that, like the
    signal, nothing in the attempt handles it (its catch-all takes `Exception`s)."""


class Counted:
    """A `Recorder` that keeps what it was told."""

    def __init__(self) -> None:
        self.counts: list[tuple[str, int, dict[str, str]]] = []

    def count(self, name: str, n: int = 1, **labels: str) -> None:
        self.counts.append((name, n, labels))

    def observe(self, name: str, value: float, **labels: str) -> None:
        return None

    def total(self, name: str) -> int:
        return sum(n for counted, n, _labels in self.counts if counted == name)


@pytest.fixture()
def system(settings: Settings, own_sandbox: str) -> Iterator[Parked]:
    yield from parked_system(settings, own_sandbox)


def _deps(system: Parked, recorder: Counted, *, kill_at: str | None = None) -> ExecutionDeps:
    def failpoint(name: str) -> None:
        if name == kill_at:
            raise Killed(name)

    return dataclasses.replace(
        system.wiring.deps,
        recorder=recorder,
        failpoint=failpoint,
        schedule_retry=lambda kind, target, at: None,
    )


def _lapse(system: Parked, ids: list[str]) -> None:
    """The killed worker's lease runs out."""
    with system.wiring.deps.sessions() as session:
        session.execute(
            update(Operation)
            .where(Operation.id.in_(ids))
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()


def _logs(system: Parked, op_id: str) -> list[tuple[str, dict[str, Any]]]:
    with system.wiring.deps.sessions() as session:
        return [(e.msg, e.details) for e in operations_repo.list_logs(session, op_id)]


def _set_natural_key(system: Parked, object_name: str, field: str) -> None:
    with system.wiring.deps.sessions() as session:
        tenants_repo.set_natural_key(session, system.tenant.installation_id, object_name, field)
        session.commit()


def _stored(system: Parked, sandbox_url: str) -> dict[str, int]:
    return dict(httpx.get(f"{sandbox_url}/_sandbox/stats").json()["records_by_object"])


def _batch_cut_off_after_its_call(system: Parked, object_name: str, records: int) -> list[str]:
    """Auto-batched creates, flushed and written once by a worker killed before settling."""
    ids = [
        system.write({"domain": f"co{i}.example.com"}, object_name=object_name)
        for i in range(records)
    ]
    [claim] = system.wiring.batcher.flush_due(utcnow() + timedelta(minutes=1.05)).flushed
    with pytest.raises(Killed):
        run_batch(claim.batch_id, _deps(system, Counted(), kill_at="batch.after_provider_call"))
    assert {op.state for op in system.ops(ids)} == {"running"}
    return ids


def test_a_batch_taken_over_without_a_natural_key_says_possible_duplicate_and_counts_it(
    system: Parked, own_sandbox: str
) -> None:
    ids = _batch_cut_off_after_its_call(system, "companies", 3)
    assert not any(msg == POSSIBLE_DUPLICATE for i in ids for msg, _ in _logs(system, i))
    _lapse(system, ids)
    recorder = Counted()

    [op] = system.ops(ids[:1])
    counts = run_batch(str(op.batch_id), _deps(system, recorder))

    assert counts == {"succeeded": 3}
    for op_id in ids:
        said = [details for msg, details in _logs(system, op_id) if msg == POSSIBLE_DUPLICATE]
        assert said == [{"attempt": "2", "records": "1"}]
    assert recorder.counts == [("possible_duplicates", 1, {"provider": "hubspot"})] * 3
    # and it was true: nothing let HubSpot recognise the companies sent again
    assert _stored(system, own_sandbox) == {"companies": 6}


def test_a_batch_taken_over_with_a_natural_key_is_upserted_and_creates_nothing_twice(
    system: Parked, own_sandbox: str
) -> None:
    _set_natural_key(system, "companies", "domain")
    ids = _batch_cut_off_after_its_call(system, "companies", 3)
    assert _stored(system, own_sandbox) == {"companies": 3}
    _lapse(system, ids)
    recorder = Counted()

    [op] = system.ops(ids[:1])
    counts = run_batch(str(op.batch_id), _deps(system, recorder))

    assert counts == {"succeeded": 3}
    assert _stored(system, own_sandbox) == {"companies": 3}
    for op_id in ids:
        messages = [msg for msg, _ in _logs(system, op_id)]
        assert "repeat written as an upsert by domain" in messages
        assert POSSIBLE_DUPLICATE not in messages
    assert recorder.total("possible_duplicates") == 0


def test_a_batch_whose_holder_still_has_its_lease_is_not_taken_and_says_nothing(
    system: Parked,
) -> None:
    ids = _batch_cut_off_after_its_call(system, "companies", 2)
    recorder = Counted()

    [op] = system.ops(ids[:1])
    assert run_batch(str(op.batch_id), _deps(system, recorder)) == {}

    assert recorder.counts == []
    assert not any(msg == POSSIBLE_DUPLICATE for i in ids for msg, _ in _logs(system, i))


def test_an_operation_taken_over_counts_only_its_records_without_the_key(
    system: Parked, own_sandbox: str
) -> None:
    _set_natural_key(system, "contacts", "email")
    tenant = system.tenant
    body = {
        "groupRef": tenant.group_ref,
        "type": "create",
        "mode": "asynchronous",
        "batch": [
            {"record": {"email": "keyed@example.com"}},
            {"record": {"firstname": "no email"}},
            {"record": {"email": "also-keyed@example.com"}},
        ],
    }
    with tenant.client() as client:
        response = client.post(tenant.write_path("contacts"), json=body)
    assert response.status_code == 200, response.text
    op_id = str(response.json()["operationId"])
    with pytest.raises(Killed):
        run_operation(op_id, _deps(system, Counted(), kill_at="operation.after_provider_call"))
    _lapse(system, [op_id])
    recorder = Counted()

    state = run_operation(op_id, _deps(system, recorder))

    assert state is not None and state.value == "succeeded"
    logs = _logs(system, op_id)
    assert (POSSIBLE_DUPLICATE, {"attempt": "2", "records": "1"}) in logs
    assert ("repeat written as an upsert by email", {"attempt": "2", "records": "2"}) in logs
    assert recorder.counts == [("possible_duplicates", 1, {"provider": "hubspot"})]
    # the two keyed contacts exist once; the one without an email was created twice
    assert _stored(system, own_sandbox) == {"contacts": 4}
