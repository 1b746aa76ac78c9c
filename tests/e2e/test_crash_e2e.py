"""A task our own code crashes on, through a real Celery worker: a header value httpx
cannot encode (its `UnicodeEncodeError` carries the value). The operation ends failed
once, and a marker in the record and the header is in no worker log line, no task
event Flower would show, and no Redis key.

The API refuses such a header now (a 400), so the test accepts the write in-process,
past the contract's rules, as a bug anywhere before the worker would let it through,
and sends its task with the real Celery sender."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import redis

from tests.support.events import task_events
from tests.support.system import ChildProcess, Tenant, create_tenant
from writejobs.core.contract import WriteRequest
from writejobs.intake.write import WriteTarget, accept_write
from writejobs.runtime.wiring import wire
from writejobs.settings import Settings
from writejobs.store.tables import Project

REASON = "internal error (UnicodeEncodeError); the write was not completed"


def failures_of(events: list[dict[str, Any]], operation_id: str) -> list[dict[str, Any]]:
    """The `task-failed` events of the tasks received for `operation_id` (its id is their
    argument): the listener hears every worker on the broker's database, another test
    session's too."""
    tasks = {
        e.get("uuid")
        for e in events
        if e.get("type") == "task-received" and operation_id in str(e.get("args"))
    }
    return [e for e in events if e.get("type") == "task-failed" and e.get("uuid") in tasks]


def redis_values(url: str) -> Iterator[str]:
    """Every key and value in the Redis database, as text."""
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        values: Any = None
        if kind == "string":
            values = client.get(key)
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "hash":
            values = client.hgetall(key)
        elif kind == "set":
            values = client.smembers(key)
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        yield f"{key!r} {values!r}"


def plant(settings: Settings, tenant: Tenant, body: dict[str, Any]) -> str:
    """Accept `body` as the intake does, skipping only the contract's rules; its id."""
    wiring = wire(settings)
    try:
        with wiring.deps.sessions() as session:
            project = session.get(Project, tenant.project_id)
            assert project is not None
            session.expunge(project)
        target = WriteTarget(project, tenant.integration_id, "Contact")
        request = WriteRequest.model_validate(body)
        return accept_write(target, request, wiring.deps, wiring.dispatch).operation.id
    finally:
        wiring.close()


def test_a_poison_task_ends_failed_once_and_its_record_is_in_no_log_event_or_key(
    worker: ChildProcess, settings: Settings, api_url: str, sandbox_url: str
) -> None:
    tenant = create_tenant(settings, api_url, sandbox_url, provider="salesforce")
    marker = f"MARKER-{uuid.uuid4().hex}"
    body = {
        "groupRef": tenant.group_ref,
        "type": "create",
        "mode": "asynchronous",
        "record": {"LastName": marker, "Email": f"{marker}@example.com"},
        "headers": [{"key": "Sforce-Duplicate-Rule-Header", "value": f"{marker} \u00e9"}],
    }

    with task_events(settings) as events:
        op_id = plant(settings, tenant, body)
        view = tenant.wait_terminal([op_id])[op_id]
        deadline = time.monotonic() + 10
        while not failures_of(events, op_id):
            assert time.monotonic() < deadline, "no task-failed event"
            time.sleep(0.1)

    assert (view["status"], view["state"]) == ("failure", "failed")
    assert [e["message"] for e in view["errors"]] == [REASON]
    assert view["metadata"]["retry"]["attempts"] == 1
    with tenant.client() as client:
        logs = client.get(tenant.operation_path(op_id) + "/logs").json()
    assert marker not in json.dumps(logs)
    failed = failures_of(events, op_id)
    assert any("WriteCrashed" in e.get("exception", "") for e in failed), failed
    assert marker not in json.dumps(events, default=str)
    assert "UnicodeEncodeError" in worker.output()  # the log names what happened...
    assert marker not in worker.output()  # ...but never the value
    assert not [v for v in redis_values(settings.effective_redis_url) if marker in v]
