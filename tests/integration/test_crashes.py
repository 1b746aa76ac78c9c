"""When our own code raises during a write (here the `UnicodeEncodeError` httpx raises
for a header it cannot encode), the operation ends `failed` once, with a sanitized
reason, and no sweep ever sends it again; the record's values appear nowhere."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta

import pytest

from api_shim.app import create_app
from tests.support.core import Core, ScriptedProvider, core
from tests.support.servers import serve_in_thread
from tests.support.system import create_tenant
from writejobs.core.operations import State
from writejobs.errors import WriteCrashed
from writejobs.execution.run import run_operation
from writejobs.grouping.recovery import expire_overdue, requeue_stalled
from writejobs.intake.write import new_operation
from writejobs.providers.base import ProviderAdapter
from writejobs.runtime.wiring import wire
from writejobs.settings import Settings
from writejobs.store import operations_repo
from writejobs.store.tables import Installation
from writejobs.task_names import WRITE_OPERATION

REASON = "internal error (UnicodeEncodeError); the write was not completed"


@pytest.fixture()
def c(settings: Settings) -> Iterator[Core]:
    with core(settings) as built:
        yield built


@pytest.fixture()
def marker() -> str:
    return f"MARKER-{uuid.uuid4().hex}"


def sweep(c: Core, hours: float) -> tuple[list[str], list[str]]:
    """Both recovery sweeps, `hours` from now: what they re-sent and what they expired
    (other tests' leftovers in the shared store among them)."""
    later = c.clock() + timedelta(hours=hours)
    settings = c.settings
    sent = requeue_stalled(
        c.deps.sessions,
        c.sender.send_operation,
        c.sender.send_batch,
        now=later,
        stalled_after_s=settings.stalled_after_s,
    )
    expired = expire_overdue(c.deps.sessions, now=later, grace_s=settings.watchdog_grace_s)
    return sent, expired


def assert_nowhere(c: Core, op_id: str, marker: str, caplog: pytest.LogCaptureFixture) -> None:
    op = c.operation(op_id)
    stored = [op.result_summary, *(op.errors or []), op.last_error]
    stored += [f"{e.msg} {e.error} {e.details}" for e in c.logs(op_id)]
    assert not [text for text in stored if text and marker in text]
    assert marker not in caplog.text


def test_a_synchronous_write_that_crashed_ends_failed_and_no_sweep_sends_it(
    c: Core, marker: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    record = {"email": "s@example.com", "outcome": "crash", "marker": marker}

    with pytest.raises(WriteCrashed) as raised:
        c.accept({"record": record})

    assert str(raised.value) == REASON and marker not in repr(raised.value)
    assert raised.value.__suppress_context__ and raised.value.__cause__ is None
    [op] = operations_repo.list_installation_operations(
        c.deps.sessions(), c.tenant.installation_id, page_size=5, page_token=None
    ).operations
    assert (op.state, op.errors, op.attempts) == (State.FAILED.value, [REASON], 1)
    sent, expired = sweep(c, hours=3)
    assert op.id not in sent + expired and c.operation(op.id).state == State.FAILED.value
    assert (WRITE_OPERATION, op.id) not in c.sender.sent and c.provider.calls == 1
    assert_nowhere(c, op.id, marker, caplog)


def test_a_synchronous_write_its_api_process_left_running_is_never_run_elsewhere(
    c: Core,
) -> None:
    # given a sync write whose API process died mid-call: running, its lease lapsed
    installation = c.dispatch.directory.installation(c.tenant.integration_id, c.tenant.group_ref)
    assert installation is not None
    accepted_at = c.clock()
    lease_s = c.settings.sync_lease_s
    op = new_operation(
        c.target(),
        installation,
        accepted_at,
        write_type="create",
        mode="synchronous",
        shape="single",
        request={"groupRef": c.tenant.group_ref, "type": "create", "record": {"email": "x"}},
        state=State.RUNNING.value,
        attempts=1,
        lease_expires_at=accepted_at + timedelta(seconds=lease_s),
        deadline_at=accepted_at + timedelta(seconds=lease_s),
    )
    with c.deps.sessions() as session:
        operations_repo.insert_operation(session, op)
        session.commit()

    # then a stray task does not write it, and once it counts as stalled (its lease
    # lapsed, untouched for longer than the stalled sweep waits) the stalled sweep
    # leaves it to the watchdog, which ends it
    assert run_operation(op.id, c.deps) is None and c.provider.calls == 0
    settings = c.settings
    later_s = max(settings.stalled_after_s, lease_s + settings.watchdog_grace_s) + 1
    sent, expired = sweep(c, hours=later_s / 3600)
    assert op.id not in sent and op.id in expired
    assert c.operation(op.id).state == State.EXPIRED.value
    assert (WRITE_OPERATION, op.id) not in c.sender.sent


def test_a_poison_task_ends_its_operation_failed_once_and_is_not_retried(
    c: Core, marker: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    record = {"email": "p@example.com", "outcome": "crash", "marker": marker}
    op_id = c.accept({"mode": "asynchronous", "record": record}).operation.id

    [crashed] = c.deliver()

    assert isinstance(crashed, WriteCrashed) and str(crashed) == REASON
    op = c.operation(op_id)
    assert (op.state, op.errors) == (State.FAILED.value, [REASON])
    assert c.sender.waits == []
    # a redelivered task, and every sweep after, finds nothing to do
    c.sender.send_operation(op_id)
    assert c.deliver() == [None]
    sent, expired = sweep(c, hours=3)
    assert op_id not in sent + expired and c.operation(op_id).state == State.FAILED.value
    assert (WRITE_OPERATION, op_id) not in c.sender.sent
    assert c.provider.calls == 1
    assert ["write crashed: ended failed, not retried"] == [
        e.msg for e in c.logs(op_id) if e.msg.startswith("write crashed")
    ]
    assert_nowhere(c, op_id, marker, caplog)


def test_an_auto_batch_that_crashed_ends_the_members_it_held_failed(
    c: Core, marker: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    policy = {"mode": "asynchronous", "autoBatchPolicy": {"maxDelayMinutes": 1}}
    poison = {"email": "p@example.com", "outcome": "crash", "marker": marker}
    ids = [
        c.accept({**policy, "record": poison}).operation.id,
        c.accept({**policy, "record": {"email": "ok@example.com"}}).operation.id,
    ]
    assert c.sender.buffered == ids
    with c.deps.sessions() as session:
        operations_repo.assign_batch(session, ids, "batch-1", "time", now=c.clock())
        session.commit()
    c.sender.send_batch("batch-1")

    [crashed] = c.deliver()

    assert isinstance(crashed, WriteCrashed)
    assert [c.operation(i).state for i in ids] == [State.FAILED.value] * 2
    sent, expired = sweep(c, hours=3)
    assert "batch-1" not in sent and not set(ids) & set(expired)
    assert [c.operation(i).state for i in ids] == [State.FAILED.value] * 2
    for op_id in ids:
        assert_nowhere(c, op_id, marker, caplog)


def test_the_api_answers_500_only_once_the_crashed_sync_write_is_failed(
    settings: Settings, marker: str
) -> None:
    # given the real API over a provider whose call crashes on this record
    provider = ScriptedProvider()

    @contextmanager
    def open_adapter(_installation: Installation, _settings: Settings) -> Iterator[ProviderAdapter]:
        yield provider

    wiring = wire(settings)
    wiring = replace(wiring, deps=replace(wiring.deps, open_adapter=open_adapter))
    with serve_in_thread(create_app(settings, wiring=wiring)) as api_url:
        tenant = create_tenant(settings, api_url, "http://provider.invalid")
        body = {
            "groupRef": tenant.group_ref,
            "type": "create",
            "record": {"email": "s@example.com", "outcome": "crash", "marker": marker},
        }

        # when a synchronous write is sent
        with tenant.client() as client:
            response = client.post(tenant.write_path(), json=body)

    # then the answer is a 500 that names nothing of the record, and by then the
    # operation has ended failed
    assert response.status_code == 500 and marker not in response.text
    with wiring.deps.sessions() as session:
        [op] = operations_repo.list_installation_operations(
            session, tenant.installation_id, page_size=5, page_token=None
        ).operations
    assert (op.state, op.errors) == (State.FAILED.value, [REASON])
    assert provider.calls == 1
    wiring.close()
