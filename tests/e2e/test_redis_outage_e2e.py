"""A Redis restart under load, end to end: writes arriving while Redis is down are
accepted (their rows are committed in SQL) and are delivered by the hand-off sweep
once Redis is back, by a real worker and scheduler.

The test owns its Redis (an embedded server on a Unix socket of its own), so it can
stop and start it; the machine's shared Redis is never touched. The stalled-work
sweep is left at its 300 s default, so an operation that ends within the wait
below was sent by the hand-off sweep, not by that slow fallback.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api_shim.app import create_app
from tests.support.servers import serve_in_thread
from tests.support.system import Tenant, create_tenant, running_scheduler, running_worker
from writejobs.cli.embedded_redis import EmbeddedRedis
from writejobs.settings import Settings

HANDED_OFF = "queue available again: handing the write off"


@pytest.fixture()
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis", tmp_path / "redis" / "redis.sock")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def outage_settings(settings: Settings, own_redis: EmbeddedRedis) -> Settings:
    run = uuid.uuid4().hex[:8]
    return settings.model_copy(
        update={
            "redis_url": own_redis.url,
            "redis_namespace": f"wjout-{run}",
            "celery_queue": f"outage-{run}",
            # A policy minute lasts 1.2 s, so the auto-batched write flushes soon.
            "policy_time_scale": 0.02,
            "stalled_after_s": 300.0,
        }
    )


def logs(tenant: Tenant, op_id: str) -> list[dict[str, Any]]:
    with tenant.client() as client:
        return list(client.get(tenant.operation_path(op_id) + "/logs").json())


def accepted_id(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["operationId"])


@pytest.mark.timeout(300)
def test_writes_accepted_while_redis_is_down_are_delivered_once_it_is_back(
    outage_settings: Settings, own_redis: EmbeddedRedis, own_sandbox: str
) -> None:
    settings = outage_settings
    with (
        serve_in_thread(create_app(settings)) as api_url,
        running_worker(settings),
        running_scheduler(settings),
    ):
        hubspot = create_tenant(settings, api_url, own_sandbox)
        salesforce = create_tenant(settings, api_url, own_sandbox, provider="salesforce")
        tag = uuid.uuid4().hex[:8]
        async_write = {"groupRef": hubspot.group_ref, "type": "create", "mode": "asynchronous"}

        own_redis.stop()
        with hubspot.client() as client, salesforce.client() as sf_client:
            ids = {
                "single": accepted_id(
                    client.post(
                        hubspot.write_path(),
                        json={**async_write, "record": {"email": f"one-{tag}@example.com"}},
                    )
                ),
                "batch": accepted_id(
                    client.post(
                        hubspot.write_path(),
                        json={
                            **async_write,
                            "batch": [
                                {"record": {"email": f"b{i}-{tag}@example.com"}} for i in range(3)
                            ],
                        },
                    )
                ),
                "auto_batch": accepted_id(
                    client.post(
                        hubspot.write_path(),
                        json={
                            **async_write,
                            "autoBatchPolicy": {"maxDelayMinutes": 1},
                            "record": {"email": f"auto-{tag}@example.com"},
                        },
                    )
                ),
                "bulk": accepted_id(
                    sf_client.put(
                        salesforce.write_path("Contact") + ":async",
                        json={
                            "groupRef": salesforce.group_ref,
                            "primaryKey": "External_Id__c",
                            "recordsCSV": f"External_Id__c,LastName\nx-{tag},Ada\n",
                        },
                    )
                ),
            }
            # While Redis is down they wait, in progress, in SQL.
            for op_id in ids.values():
                view = client.get(hubspot.operation_path(op_id))
                if view.status_code == 404:  # the bulk write is the other project's
                    view = sf_client.get(salesforce.operation_path(op_id))
                assert view.json()["status"] == "in_progress"
        own_redis.start()

        views = hubspot.wait_terminal([ids["single"], ids["batch"], ids["auto_batch"]], 90)
        views |= salesforce.wait_terminal([ids["bulk"]], 90)

        assert {shape: views[op_id]["status"] for shape, op_id in ids.items()} == dict.fromkeys(
            ids, "success"
        )
        for shape, op_id in ids.items():
            tenant = salesforce if shape == "bulk" else hubspot
            messages = [entry["message"]["msg"] for entry in logs(tenant, op_id)]
            assert HANDED_OFF in messages, (shape, messages)
