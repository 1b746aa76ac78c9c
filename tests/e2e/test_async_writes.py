"""Asynchronous writes through a real Celery worker process, polled over HTTP."""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from typing import Any

import httpx
import pytest
import redis

from api_shim.app import create_app
from tests.support.contract import assert_platform_schema, assert_write_response
from tests.support.events import task_events
from tests.support.servers import serve_in_thread
from tests.support.system import ChildProcess, Tenant, create_tenant
from writejobs.settings import Settings

pytestmark = pytest.mark.usefixtures("worker")


def _email() -> str:
    return f"a-{uuid.uuid4().hex[:12]}@example.com"


def _sandbox_record(sandbox_url: str, record_id: str) -> dict[str, Any]:
    response = httpx.get(
        f"{sandbox_url}/crm/v3/objects/contacts/{record_id}", headers={"Authorization": "Bearer t"}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_async_single_write_reaches_success_and_the_record_is_in_the_sandbox(
    tenant: Tenant, sandbox_url: str
) -> None:
    email = _email()
    with tenant.client() as client:
        response = client.post(
            tenant.write_path(),
            json={
                "groupRef": tenant.group_ref,
                "type": "create",
                "mode": "asynchronous",
                "record": {"email": email},
            },
        )
    assert response.status_code == 200
    assert_write_response(response)
    op_id = response.json()["operationId"]
    view = tenant.wait_terminal([op_id])[op_id]
    assert view["status"] == "success" and view["state"] == "succeeded"
    assert_platform_schema(view, "Operation")
    [record_id] = view["metadata"]["successfulRecordIds"]
    assert _sandbox_record(sandbox_url, record_id)["properties"]["email"] == email
    assert view["metadata"]["retry"]["attempts"] == 1


def test_async_batch_reaches_success_with_every_record_written(
    tenant: Tenant, sandbox_url: str
) -> None:
    emails = [_email() for _ in range(50)]
    with tenant.client() as client:
        response = client.post(
            tenant.write_path(),
            json={
                "groupRef": tenant.group_ref,
                "type": "create",
                "mode": "asynchronous",
                "batch": [{"record": {"email": e}} for e in emails],
            },
        )
    op_id = response.json()["operationId"]
    view = tenant.wait_terminal([op_id])[op_id]
    assert view["status"] == "success"
    assert view["result"] == "Batch write completed (50 succeeded, 0 failed)"
    ids = view["metadata"]["successfulRecordIds"]
    assert len(ids) == 50
    stored = [_sandbox_record(sandbox_url, i)["properties"]["email"] for i in ids]
    assert stored == emails


def test_async_batch_with_every_record_rejected_ends_failure_with_reasons_in_logs(
    tenant: Tenant,
) -> None:
    with tenant.client() as client:
        op_id = client.post(
            tenant.write_path(),
            json={
                "groupRef": tenant.group_ref,
                "type": "create",
                "mode": "asynchronous",
                "batch": [{"record": {"email": "bad-1"}}, {"record": {"email": "bad-2"}}],
            },
        ).json()["operationId"]
        view = tenant.wait_terminal([op_id])[op_id]
        logs = client.get(tenant.operation_path(op_id) + "/logs").json()
    assert view["status"] == "failure" and view["failureCount"] == 2
    for entry in logs:
        assert_platform_schema(entry, "Log")
    errors = [e["message"].get("error", "") for e in logs]
    assert any("bad-1 is invalid" in e for e in errors)
    assert any("bad-2 is invalid" in e for e in errors)
    assert [e["message"]["msg"] for e in logs][0] == "write accepted"


def test_installation_operations_are_listed_in_pages(tenant: Tenant) -> None:
    with tenant.client() as client:
        ids = _async_creates(client, tenant, 5)
        path = (
            f"/v1/projects/{tenant.project_id}/integrations/{tenant.integration_id}"
            f"/installations/{tenant.installation_id}/operations"
        )
        seen: list[str] = []
        token = None
        while True:
            params: dict[str, Any] = {"pageSize": 2}
            if token:
                params["pageToken"] = token
            page = client.get(path, params=params).json()
            for op in page["results"]:
                assert_platform_schema(op, "Operation")
            assert_platform_schema(page["pagination"], "PaginationInfo")
            seen += [op["id"] for op in page["results"]]
            if page["pagination"]["done"]:
                assert "nextPageToken" not in page["pagination"]
                break
            token = page["pagination"]["nextPageToken"]
        bad = client.get(path, params={"pageToken": "garbage"})
    assert sorted(seen) == sorted(ids)
    assert bad.status_code == 400
    assert bad.headers["content-type"].startswith("application/problem+json")


def test_no_record_payload_reaches_task_arguments_or_logs(
    settings: Settings,
    sandbox_url: str,
    worker: ChildProcess,
    caplog: pytest.LogCaptureFixture,
    tenant: Tenant,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = f"secret-{uuid.uuid4().hex}@example.com"
    # 1. A queue no worker reads: the raw broker message shows exactly what Flower would.
    parked = settings.model_copy(update={"celery_queue": f"parked-{uuid.uuid4().hex[:6]}"})
    with serve_in_thread(create_app(parked)) as parked_api:
        parked_tenant = create_tenant(settings, parked_api, sandbox_url)
        with parked_tenant.client() as client:
            op_id = client.post(
                parked_tenant.write_path(),
                json={
                    "groupRef": parked_tenant.group_ref,
                    "type": "create",
                    "mode": "asynchronous",
                    "record": {"email": secret},
                },
            ).json()["operationId"]
    raw_messages = redis.Redis.from_url(settings.effective_redis_url).lrange(
        parked.celery_queue, 0, -1
    )
    assert len(raw_messages) == 1
    message = json.loads(raw_messages[0])
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert args == [op_id] and kwargs == {}
    assert secret not in raw_messages[0].decode()
    # 2. A real write through the worker: neither process logs the record.
    with tenant.client() as client:
        op_id = client.post(
            tenant.write_path(),
            json={
                "groupRef": tenant.group_ref,
                "type": "create",
                "mode": "asynchronous",
                "record": {"email": secret},
            },
        ).json()["operationId"]
    tenant.wait_terminal([op_id])
    assert op_id in worker.output()
    assert secret not in worker.output()
    assert secret not in caplog.text


def test_flower_gets_each_write_task_received_started_and_succeeded(
    tenant: Tenant, settings: Settings
) -> None:
    with task_events(settings) as events, tenant.client() as client:
        # given three asynchronous writes
        op_ids = _async_creates(client, tenant, 3)
        tenant.wait_terminal(op_ids)
        # then each task's events reach the listener (sent in batches, soon after)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            tasks = {e["uuid"]: e["args"] for e in events if e["type"] == "task-received"}
            ours = {uuid_ for uuid_, args in tasks.items() if any(i in args for i in op_ids)}
            kinds = {(e["type"], e["uuid"]) for e in events if e.get("uuid") in ours}
            if len(ours) == 3 and len(kinds) == 9:
                break
            time.sleep(0.2)
    assert len(ours) == 3, tasks
    for task_id in ours:
        for kind in ("task-received", "task-started", "task-succeeded"):
            assert (kind, task_id) in kinds, (kind, task_id, kinds)


def _async_creates(client: httpx.Client, tenant: Tenant, count: int) -> list[str]:
    """`count` asynchronous single-record creates; their operation ids."""
    body = {"groupRef": tenant.group_ref, "type": "create", "mode": "asynchronous"}
    return [
        client.post(tenant.write_path(), json={**body, "record": {"email": _email()}}).json()[
            "operationId"
        ]
        for _ in range(count)
    ]
