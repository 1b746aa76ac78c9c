"""Operator controls through real processes: a pause outlives a restart of the worker,
the scheduler and the API, and a resume lets the held writes finish; a replay
writes only the failed records, and the sandbox sees exactly those."""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from tests.support.system import (
    Tenant,
    create_tenant,
    running_api,
    running_scheduler,
    running_worker,
    settings_env,
)
from writejobs.cli.main import app
from writejobs.settings import Settings


@pytest.fixture()
def fleet(settings: Settings, tmp_path: Path) -> Settings:
    """An API, worker and scheduler of the test's own (queue, namespace), looking at a
    paused installation's writes every second."""
    run = uuid.uuid4().hex[:6]
    return settings.model_copy(
        update={
            "celery_queue": f"controls-{run}",
            "redis_namespace": f"wjctl-{run}",
            "data_dir": tmp_path,
            "pause_recheck_s": 1.0,
        }
    )


def admin(settings: Settings, *args: str) -> str:
    result = CliRunner().invoke(app, ["admin", *args], env=settings_env(settings))
    assert result.exit_code == 0, result.output
    return result.output


def write(client: httpx.Client, tenant: Tenant, body: dict[str, Any]) -> httpx.Response:
    return client.post(tenant.write_path(), json={"groupRef": tenant.group_ref, **body})


def async_ids(tenant: Tenant) -> list[str]:
    ids = []
    with tenant.client() as client:
        for n in range(3):
            body = {"type": "create", "mode": "asynchronous", "record": {"email": f"s{n}@x.io"}}
            ids.append(write(client, tenant, body).json()["operationId"])
        batch = [{"record": {"email": f"b{n}@x.io"}} for n in range(2)]
        body = {"type": "create", "mode": "asynchronous", "batch": batch}
        ids.append(write(client, tenant, body).json()["operationId"])
    return ids


def sync_answer(tenant: Tenant) -> httpx.Response:
    with tenant.client() as client:
        return write(client, tenant, {"type": "create", "record": {"email": "sync@x.io"}})


def answered_ok_within(tenant: Tenant, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sync_answer(tenant).status_code == 200:
            return True
        time.sleep(0.5)
    return False


def views(tenant: Tenant, ids: list[str]) -> list[dict[str, Any]]:
    with tenant.client() as client:
        return [client.get(tenant.operation_path(i)).json() for i in ids]


def waiting_msgs(tenant: Tenant, op_id: str) -> list[str]:
    with tenant.client() as client:
        logs = client.get(tenant.operation_path(op_id) + "/logs").json()
    return [e["message"]["msg"] for e in logs if e["message"]["msg"].startswith("waiting:")]


def wait_until_held(tenant: Tenant, ids: list[str], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(v["metadata"].get("waiting") for v in views(tenant, ids)):
            return
        time.sleep(0.2)
    raise TimeoutError(f"not all held: {views(tenant, ids)}")


def stored(sandbox_url: str) -> int:
    return int(httpx.get(f"{sandbox_url}/_sandbox/stats").json()["records_stored"])


@pytest.mark.timeout(300)
def test_a_pause_holds_async_writes_through_a_restart_and_a_resume_lets_them_finish(
    fleet: Settings, own_sandbox: str
) -> None:
    with running_api(fleet) as api, running_worker(fleet), running_scheduler(fleet):
        tenant = create_tenant(fleet, api, own_sandbox)
        names = (tenant.project_name, "crm", tenant.group_ref)
        admin(fleet, "pause-installation", *names, "--reason", "customer migration")
        ids = async_ids(tenant)
        refused = sync_answer(tenant)
        assert refused.status_code == 409 and refused.json()["retryable"] is True
        wait_until_held(tenant, ids)
        time.sleep(3)  # several looks at them, a second apart at first
        for view in views(tenant, ids):
            assert view["status"] == "in_progress" and view["metadata"]["retry"]["attempts"] == 0
            assert view["metadata"]["waiting"]["reason"] == "installation paused"
        assert [waiting_msgs(tenant, i) for i in ids] == [["waiting: installation paused"]] * 4
        assert stored(own_sandbox) == 0

    # Everything stopped; a new worker, scheduler and API on the same store and Redis.
    with running_api(fleet) as api, running_worker(fleet), running_scheduler(fleet):
        tenant = dataclasses.replace(tenant, api_url=api)
        assert sync_answer(tenant).status_code == 409  # still paused
        time.sleep(3)
        assert {v["status"] for v in views(tenant, ids)} == {"in_progress"}
        assert stored(own_sandbox) == 0

        output = admin(fleet, "resume-installation", *names)
        assert "4 operation(s) released" in output
        done = tenant.wait_terminal(ids, timeout_s=60)
        assert {v["state"] for v in done.values()} == {"succeeded"}
        assert stored(own_sandbox) == 5
        assert answered_ok_within(tenant, 10.0)  # each API process caches for 5 s
        assert [waiting_msgs(tenant, i) for i in ids] == [["waiting: installation paused"]] * 4


@pytest.mark.timeout(300)
def test_a_replay_writes_only_the_failed_records_and_the_sandbox_sees_only_those(
    fleet: Settings, own_sandbox: str
) -> None:
    httpx.post(
        f"{own_sandbox}/_sandbox/faults",
        json={
            "rules": [
                {
                    "endpoint": "*",
                    "reject_field": "email",
                    "reject_contains": "refused",
                }
            ]
        },
    ).raise_for_status()
    emails = ["ok1@x.io", "refused-1@x.io", "ok2@x.io", "refused-2@x.io"]
    with running_api(fleet) as api, running_worker(fleet):
        tenant = create_tenant(fleet, api, own_sandbox)
        with tenant.client() as client:
            batch = [{"record": {"email": e}} for e in emails]
            body = {"type": "create", "mode": "asynchronous", "batch": batch}
            batch_id = write(client, tenant, body).json()["operationId"]
            body = {"type": "create", "mode": "asynchronous", "record": {"email": "refused-3@x.io"}}
            single_id = write(client, tenant, body).json()["operationId"]
            first = tenant.wait_terminal([batch_id, single_id])
            assert first[batch_id]["state"] == "partially_succeeded"
            assert first[single_id]["status"] == "failure"
            letters = client.get(
                f"/v1/projects/{tenant.project_id}/operations", params={"status": "failure"}
            ).json()["results"]
            assert [v["id"] for v in letters] == [single_id]
            assert "refused" in letters[0]["lastError"]
            httpx.delete(f"{own_sandbox}/_sandbox/faults").raise_for_status()
            assert stored(own_sandbox) == 2
            seen = len(httpx.get(f"{own_sandbox}/_sandbox/requests").json())

            replayed = client.post(
                f"/v1/projects/{tenant.project_id}/operations:replay",
                json={"operationIds": [batch_id, single_id]},
            )
            assert replayed.status_code == 200, replayed.text
            results = {r["operationId"]: r for r in replayed.json()["results"]}
            assert results[batch_id]["records"] == [1, 3] and results[single_id]["records"] == [0]
            new_ids = [results[i]["replayOperationId"] for i in (batch_id, single_id)]
            done = tenant.wait_terminal(new_ids)

    new_batch, new_single = (done[i] for i in new_ids)
    assert (new_batch["state"], new_batch["recordCount"]) == ("succeeded", 2)
    assert new_batch["metadata"]["replayOf"] == batch_id
    assert (new_single["state"], new_single["metadata"]["replayOf"]) == ("succeeded", single_id)
    assert stored(own_sandbox) == 5  # 2 first, then only the 3 that had failed
    calls = httpx.get(f"{own_sandbox}/_sandbox/requests").json()[seen:]
    assert sorted(c["inputs"] for c in calls) == [1, 2]
    written = [
        httpx.get(
            f"{own_sandbox}/crm/v3/objects/contacts/{record_id}",
            headers={"Authorization": "Bearer t"},
        ).json()["properties"]["email"]
        for view in (new_batch, new_single)
        for record_id in view["metadata"]["successfulRecordIds"]
    ]
    assert written == ["refused-1@x.io", "refused-2@x.io", "refused-3@x.io"]
