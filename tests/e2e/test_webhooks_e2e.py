"""Webhooks end to end: real write worker, webhooks worker and scheduler processes,
the API, the sandbox, and a receiver on loopback."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from api_shim.app import create_app
from tests.support.contract import assert_notification_schema
from tests.support.receiver import Receiver
from tests.support.servers import serve_in_thread
from tests.support.system import (
    Tenant,
    create_tenant,
    running_scheduler,
    running_webhooks,
    running_worker,
    start_child,
)
from writejobs.clock import utcnow
from writejobs.settings import Settings
from writejobs.store import webhook_destinations
from writejobs.store.db import create_session_factory, create_store_engine
from writejobs.store.secrets import cipher_for, key_file, load_or_create_key
from writejobs.store.webhook_tables import WebhookDelivery


@pytest.fixture()
def fast(settings: Settings) -> Settings:
    """A policy minute in 1.2 s; webhook retries and resends in seconds; one key everywhere."""
    return settings.model_copy(
        update={
            "celery_queue": f"hooks-{uuid.uuid4().hex[:6]}",
            "policy_time_scale": 0.02,
            "webhook_retry_base_s": 0.5,
            "webhook_retry_max_delay_s": 2.0,
            "webhook_timeout_s": 2.0,
            "webhook_resend_after_s": 3.0,
            "secret_key": load_or_create_key(key_file(settings)).decode(),
        }
    )


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture()
def api(fast: Settings) -> Iterator[str]:
    with serve_in_thread(create_app(fast)) as url:
        yield url


def _destination(settings: Settings, tenant: Tenant, url: str) -> str:
    engine = create_store_engine(settings)
    try:
        with create_session_factory(engine)() as session:
            _, secret = webhook_destinations.add(
                session, tenant.project_id, url, cipher=cipher_for(settings), now=utcnow()
            )
            session.commit()
            return secret
    finally:
        engine.dispose()


def _writes(tenant: Tenant) -> list[str]:
    """One of each asynchronous shape: single, batch, and three auto-batched records."""
    tag = uuid.uuid4().hex[:8]
    bodies: list[dict[str, Any]] = [
        {"type": "create", "mode": "asynchronous", "record": {"email": f"s-{tag}@example.com"}},
        {
            "type": "create",
            "mode": "asynchronous",
            "batch": [{"record": {"email": f"b{i}-{tag}@example.com"}} for i in range(3)],
        },
    ] + [
        {
            "type": "create",
            "mode": "asynchronous",
            "autoBatchPolicy": {"maxDelayMinutes": 1},
            "record": {"email": f"a{i}-{tag}@example.com"},
        }
        for i in range(3)
    ]
    ids = []
    with tenant.client() as client:
        for body in bodies:
            response = client.post(tenant.write_path(), json={"groupRef": tenant.group_ref, **body})
            assert response.status_code == 200, response.text
            ids.append(str(response.json()["operationId"]))
    return ids


def _wait_received(receiver: Receiver, n: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(receiver.received) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(receiver.received) >= n, f"{len(receiver.received)} of {n} received"


def _operation_ids(receiver: Receiver, secret: str) -> Counter[str]:
    ids: Counter[str] = Counter()
    for got in receiver.received:
        payload = Webhook(secret).verify(got.body, got.headers)
        assert_notification_schema(payload, "WriteAsyncDoneNotificationPayload")
        ids[payload["data"]["operationId"]] += 1
    return ids


@pytest.mark.timeout(240)
def test_every_asynchronous_shape_is_notified_once_by_the_webhooks_worker(
    fast: Settings, api: str, sandbox_url: str, receiver: Receiver
) -> None:
    tenant = create_tenant(fast, api, sandbox_url)
    secret = _destination(fast, tenant, receiver.url)
    with running_worker(fast), running_webhooks(fast), running_scheduler(fast):
        ids = _writes(tenant)
        views = tenant.wait_terminal(ids, timeout_s=60)
        _wait_received(receiver, len(ids))
        time.sleep(1.0)  # a duplicate would arrive by now
    assert {v["status"] for v in views.values()} == {"success"}
    assert _operation_ids(receiver, secret) == Counter({op_id: 1 for op_id in ids})
    auto = [Webhook(secret).verify(r.body, r.headers)["data"] for r in receiver.received]
    batched = [d for d in auto if d["shape"] == "auto_batch"]
    assert len(batched) == 3 and all(d["batch"]["id"] for d in batched)


@pytest.mark.timeout(240)
def test_a_webhooks_worker_killed_before_it_posts_loses_no_notification(
    fast: Settings, api: str, sandbox_url: str, receiver: Receiver, tmp_path: Path
) -> None:
    tenant = create_tenant(fast, api, sandbox_url)
    secret = _destination(fast, tenant, receiver.url)
    with running_worker(fast), running_scheduler(fast):
        # Given writes that ended while no webhooks worker was running
        ids = _writes(tenant)
        tenant.wait_terminal(ids, timeout_s=60)
        time.sleep(1.0)
        assert receiver.received == []
        # When the webhooks worker that takes their task is killed before posting
        # (one process: a second one could be mid-POST when the group is killed, and a
        # notification posted but not recorded is sent again: at least once, by design)
        doomed = fast.model_copy(
            update={
                "failpoints": "webhook.before_send",
                "data_dir": tmp_path,
                "webhook_concurrency": 1,
            }
        )
        victim = start_child("doomed-webhooks", ["webhooks"], doomed)
        victim.process.wait(timeout=60)
        assert victim.process.returncode == -9, victim.output()
        assert receiver.received == []
        # Then once a worker is back, every notification arrives, once
        with running_webhooks(fast):
            _wait_received(receiver, len(ids))
            time.sleep(1.0)
    assert _operation_ids(receiver, secret) == Counter({op_id: 1 for op_id in ids})
    engine = create_store_engine(fast)
    try:
        with create_session_factory(engine)() as session:
            rows = session.scalars(
                select(WebhookDelivery).where(WebhookDelivery.operation_id.in_(ids))
            ).all()
            assert {r.state for r in rows} == {"delivered"} and len(rows) == len(ids)
    finally:
        engine.dispose()
