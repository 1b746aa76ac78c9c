"""A SIGKILLed worker's operation is taken over a lease later; a live worker on a slow
provider call keeps its operation, however long the call (real workers, a real
scheduler, the sandbox with added latency).

The stalled-work window stays at its 300 s default: an operation taken over within
the waits below was found by its lapsed, heartbeat-kept lease.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api_shim.app import create_app
from tests.support.servers import serve_in_thread
from tests.support.system import (
    Tenant,
    create_tenant,
    running_scheduler,
    running_worker,
    start_child,
)
from writejobs.settings import Settings

RESENT = "task sent again: the operation stalled"


@pytest.fixture()
def fleet(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "celery_queue": f"takeover-{uuid.uuid4().hex[:6]}",
            "running_lease_s": 2.0,
            "stalled_after_s": 300.0,
        }
    )


@pytest.fixture()
def fleet_api(fleet: Settings) -> Iterator[str]:
    with serve_in_thread(create_app(fleet)) as url:
        yield url


def _latency(sandbox_url: str, latency_ms: float) -> None:
    rules = [{"endpoint": "*", "latency_ms": latency_ms}] if latency_ms else []
    response = httpx.post(f"{sandbox_url}/_sandbox/faults", json={"rules": rules, "seed": 1})
    assert response.status_code == 204, response.text


def _write(tenant: Tenant) -> str:
    with tenant.client() as client:
        response = client.post(
            tenant.write_path(),
            json={
                "groupRef": tenant.group_ref,
                "type": "create",
                "mode": "asynchronous",
                "record": {"email": f"k-{uuid.uuid4().hex[:10]}@example.com"},
            },
        )
    assert response.status_code == 200, response.text
    return str(response.json()["operationId"])


def _view(tenant: Tenant, op_id: str) -> dict[str, Any]:
    with tenant.client() as client:
        return dict(client.get(tenant.operation_path(op_id)).json())


def _messages(tenant: Tenant, op_id: str) -> list[str]:
    with tenant.client() as client:
        entries = client.get(tenant.operation_path(op_id) + "/logs").json()
    return [entry["message"]["msg"] for entry in entries]


def _wait_running(tenant: Tenant, op_id: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while _view(tenant, op_id)["state"] != "running":
        assert time.monotonic() < deadline, "the worker never started the operation"
        time.sleep(0.1)


@pytest.mark.timeout(240)
def test_an_operation_of_a_sigkilled_worker_is_taken_over_a_lease_later(
    fleet: Settings, fleet_api: str, own_sandbox: str
) -> None:
    tenant = create_tenant(fleet, fleet_api, own_sandbox)
    _latency(own_sandbox, 4000)
    with running_scheduler(fleet):
        victim = start_child(
            "worker", ["worker"], fleet.model_copy(update={"worker_concurrency": 1})
        )
        try:
            victim.wait_for("ready.", timeout_s=60)
            op_id = _write(tenant)
            _wait_running(tenant, op_id)
        finally:
            os.killpg(victim.process.pid, signal.SIGKILL)
            victim.process.wait(timeout=10)
        _latency(own_sandbox, 0)
        with running_worker(fleet, concurrency=1):
            view = tenant.wait_terminal([op_id], timeout_s=90)[op_id]
            messages = _messages(tenant, op_id)
    assert view["status"] == "success", view
    assert RESENT in messages
    assert view["metadata"]["retry"]["attempts"] == 2


@pytest.mark.timeout(240)
def test_a_live_worker_on_a_call_longer_than_the_lease_keeps_its_operation(
    fleet: Settings, fleet_api: str, own_sandbox: str
) -> None:
    tenant = create_tenant(fleet, fleet_api, own_sandbox)
    # Each call takes 6 s, three leases; a second pool process is free to take over.
    _latency(own_sandbox, 6000)
    with running_scheduler(fleet), running_worker(fleet, concurrency=2):
        op_id = _write(tenant)
        view = tenant.wait_terminal([op_id], timeout_s=90)[op_id]
        messages = _messages(tenant, op_id)
    _latency(own_sandbox, 0)
    assert view["status"] == "success", view
    assert RESENT not in messages
    assert view["metadata"]["retry"]["attempts"] == 1
