"""Twenty clients, one `Idempotency-Key`, two API processes: one operation, one provider write."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import redis
from sqlalchemy import func, select

from tests.support.system import Tenant, create_tenant, running_api
from writejobs.settings import Settings
from writejobs.store.db import create_session_factory, create_store_engine
from writejobs.store.tables import Operation

CLIENTS = 20


def _operations(settings: Settings, project_id: str) -> int:
    engine = create_store_engine(settings)
    try:
        with create_session_factory(engine)() as session:
            statement = select(func.count()).select_from(Operation)
            return int(session.scalar(statement.where(Operation.project_id == project_id)) or 0)
    finally:
        engine.dispose()


def _race(tenants: list[Tenant], body: dict[str, Any], key: str) -> list[httpx.Response]:
    """CLIENTS clients at once, alternating between the API processes, each sending
    again while told 409 (in flight), as a well-behaved client does."""
    barrier = threading.Barrier(CLIENTS)
    conflicts: list[int] = []

    def send(i: int) -> httpx.Response:
        tenant = tenants[i % len(tenants)]
        with tenant.client() as client:
            barrier.wait()
            for _ in range(200):
                response = client.post(
                    tenant.write_path(), json=body, headers={"Idempotency-Key": key}
                )
                if response.status_code != 409:
                    return response
                assert response.json()["retryable"] is True
                conflicts.append(i)
                time.sleep(0.1)
        raise AssertionError("the key stayed in flight")

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(send, range(CLIENTS)))


def test_twenty_concurrent_sync_writes_with_one_key_over_two_apis_write_once(
    settings: Settings, own_sandbox: str
) -> None:
    # Given two API processes on one store, and a provider slow enough that
    # the first write is still in flight when the others arrive
    httpx.post(
        f"{own_sandbox}/_sandbox/faults", json={"rules": [{"endpoint": "*", "latency_ms": 500}]}
    ).raise_for_status()
    with running_api(settings) as first_api, running_api(settings) as second_api:
        tenant = create_tenant(settings, first_api, own_sandbox)
        via_second = Tenant(**{**tenant.__dict__, "api_url": second_api})
        body = {
            "groupRef": tenant.group_ref,
            "type": "create",
            "record": {"email": f"race-{uuid.uuid4().hex[:10]}@example.com"},
        }
        # When twenty clients send the same synchronous create with one key
        responses = _race([tenant, via_second], body, key=f"race-{uuid.uuid4()}")
    # Then all of them get the one answer, from one operation and one provider write
    assert {r.status_code for r in responses} == {200}, [r.text for r in responses]
    assert len({r.content for r in responses}) == 1
    assert responses[0].json()["result"]["success"] is True
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == CLIENTS - 1
    assert _operations(settings, tenant.project_id) == 1
    stats = httpx.get(f"{own_sandbox}/_sandbox/stats").json()
    assert stats["calls"] == {"POST /crm/v3/objects/{objectType}": 1}
    assert stats["records_stored"] == 1


def test_twenty_concurrent_async_writes_with_one_key_over_two_apis_make_one_operation(
    settings: Settings, own_sandbox: str
) -> None:
    # A queue no worker reads: the one task sent is counted, then dropped.
    own = settings.model_copy(update={"celery_queue": f"idem-{uuid.uuid4().hex[:8]}"})
    with running_api(own) as first_api, running_api(own) as second_api:
        tenant = create_tenant(settings, first_api, own_sandbox)
        via_second = Tenant(**{**tenant.__dict__, "api_url": second_api})
        body = {
            "groupRef": tenant.group_ref,
            "type": "create",
            "mode": "asynchronous",
            "record": {"email": f"race-{uuid.uuid4().hex[:10]}@example.com"},
        }
        responses = _race([tenant, via_second], body, key=str(uuid.uuid4()))
    queue = redis.Redis.from_url(own.effective_redis_url)
    sent = queue.llen(own.celery_queue)
    queue.delete(own.celery_queue)
    assert {r.status_code for r in responses} == {200}, [r.text for r in responses]
    assert len({r.json()["operationId"] for r in responses}) == 1
    assert _operations(own, tenant.project_id) == 1
    assert sent == 1
