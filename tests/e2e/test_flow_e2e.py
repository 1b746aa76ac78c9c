"""The throttled path end to end: real workers and a scheduler against a sandbox that
limits like HubSpot and says so only in its headers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.system import create_tenant, running_api, running_scheduler, running_worker
from writejobs.settings import Settings

WAITING = "waiting for the provider's rate limit"


@pytest.fixture()
def fleet(settings: Settings, tmp_path: Any) -> Iterator[tuple[Settings, str]]:
    own = settings.model_copy(
        update={"celery_queue": f"flow-{uuid.uuid4().hex[:6]}", "data_dir": tmp_path}
    )
    with running_api(own) as api_url:
        yield own, api_url


@pytest.mark.timeout(240)
def test_writes_past_a_limit_said_only_in_headers_wait_their_turn_and_all_succeed(
    fleet: tuple[Settings, str], own_sandbox: str
) -> None:
    # Given HubSpot allowing 5 calls per 2 s, said only in its headers
    own, api_url = fleet
    httpx.post(
        f"{own_sandbox}/_sandbox/limits",
        json={"provider": "hubspot", "max": 5, "interval_ms": 2000},
    ).raise_for_status()
    tenant = create_tenant(own, api_url, own_sandbox)

    def send(i: int) -> str:
        body = {
            "groupRef": tenant.group_ref,
            "type": "create",
            "mode": "asynchronous",
            "record": {"email": f"flow-{i}-{uuid.uuid4().hex[:8]}@example.com"},
        }
        with tenant.client() as client:
            response = client.post(tenant.write_path(), json=body)
        assert response.status_code == 200, response.text
        return str(response.json()["operationId"])

    # When 30 asynchronous creates arrive at once, with two workers and a scheduler
    with running_worker(own), running_scheduler(own):
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(send, range(30)))
        views = tenant.wait_terminal(ids, timeout_s=150)
        with tenant.client() as client:
            logs = {
                op_id: client.get(tenant.operation_path(op_id) + "/logs").json() for op_id in ids
            }
    # Then every one succeeded
    assert {v["status"] for v in views.values()} == {"success"}
    # and the provider never admitted more than its limit in any window, refusing at
    # most the few calls made before its first answer taught the limiter
    stats = httpx.get(f"{own_sandbox}/_sandbox/limits/stats").json()
    bucket = next(iter(stats.values()))
    assert bucket["admitted"] == 30
    assert bucket["max_admitted_in_any_window"] <= 5
    assert sum(bucket["refused"].values()) <= 2
    # and those that waited for budget say so, and waiting was not an attempt
    messages = [e["message"]["msg"] for entries in logs.values() for e in entries]
    assert WAITING in messages
    retried = [v for v in views.values() if v["metadata"]["retry"]["attempts"] > 1]
    assert len(retried) <= sum(bucket["refused"].values())
