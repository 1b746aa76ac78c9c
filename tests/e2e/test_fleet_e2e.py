"""The fleet as in production: 2 API processes, 2 schedulers and 3 workers on the
loopback Redis and the store, 20,000 records of every kind from concurrent clients.

Every operation ends, the provider holds each record exactly once, and Flower's
API lists the three workers. Runs once (on PostgreSQL when it is configured).
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tests.support.system import (
    Tenant,
    create_tenant,
    running_api,
    running_scheduler,
    running_worker,
    start_child,
)
from writejobs.core.operations import TERMINAL
from writejobs.settings import Settings
from writejobs.store.db import create_session_factory, create_store_engine
from writejobs.store.tables import Operation

pytestmark = [pytest.mark.usefixtures("heavy"), pytest.mark.timeout(600), pytest.mark.load]

RECORDS = 20_000
CLIENTS = 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bodies(group_ref: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(records, body): 40 % async single, 20 % async batches of 10, 40 % auto-batched."""
    for n in itertools.count():
        kind = n % 5
        if kind in (0, 1):
            yield 1, {"mode": "asynchronous", "record": {"domain": f"s{uuid.uuid4().hex}.test"}}
        elif kind == 2:
            batch = [{"record": {"domain": f"b{uuid.uuid4().hex}.test"}} for _ in range(10)]
            yield 10, {"mode": "asynchronous", "batch": batch}
        else:
            record = {"domain": f"a{uuid.uuid4().hex}.test"}
            yield (
                1,
                {
                    "mode": "asynchronous",
                    "autoBatchPolicy": {"maxDelayMinutes": 1},
                    "record": record,
                },
            )


def _send_all(tenants: list[Tenant], group_ref: str) -> tuple[list[str], set[str]]:
    """Send RECORDS records round-robin to the API processes; the accepted ids and keys."""
    lock = threading.Lock()
    bodies = _bodies(group_ref)
    sent = 0
    accepted: list[str] = []
    domains: set[str] = set()
    failures: list[str] = []

    def client(index: int) -> None:
        nonlocal sent
        tenant = tenants[index % len(tenants)]
        with tenant.client() as http:
            while True:
                with lock:
                    if sent >= RECORDS:
                        return
                    records, body = next(bodies)
                    sent += records
                body = {"groupRef": group_ref, "type": "create", **body}
                response = http.post(tenant.write_path("companies"), json=body)
                with lock:
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text[:200]}")
                        continue
                    accepted.append(response.json()["operationId"])
                    items = body.get("batch") or [{"record": body.get("record")}]
                    domains.update(item["record"]["domain"] for item in items)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]
    return accepted, domains


def _wait_all_terminal(settings: Settings, ids: list[str], timeout_s: float) -> Counter[str]:
    engine = create_store_engine(settings)
    sessions = create_session_factory(engine)
    terminal = [s.value for s in TERMINAL]
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            with sessions() as session:
                rows = session.execute(
                    select(Operation.state, func.count())
                    .where(Operation.id.in_(ids))
                    .group_by(Operation.state)
                ).all()
            states = Counter({state: n for state, n in rows})
            if sum(n for s, n in states.items() if s in terminal) == len(ids):
                return states
            if time.monotonic() > deadline:
                raise TimeoutError(f"not every operation ended: {dict(states)}")
            time.sleep(1.0)
    finally:
        engine.dispose()


def test_two_apis_two_schedulers_three_workers_write_20000_records_exactly_once(
    settings: Settings, own_sandbox: str
) -> None:
    flower_port = _free_port()
    # A queue of the fleet's own: the broker is shared with this session's other workers.
    queue = f"fleet-{uuid.uuid4().hex[:8]}"
    fleet = settings.model_copy(
        update={
            "flower_port": flower_port,
            "flower_basic_auth": "ops:fleet-test",
            "celery_queue": queue,
            # A policy minute lasts 15 s: the last auto-batch group, short of 100, flushes
            # 15 s after its first record instead of a minute (groups of 100 fill within a
            # second or two at this intake). Deadlines, at 15 min, stay past the test's
            # own timeout.
            "policy_time_scale": 0.25,
        }
    )
    with ExitStack() as stack:
        apis = [stack.enter_context(running_api(fleet)) for _ in range(2)]
        for name in ("scheduler-1", "scheduler-2"):
            stack.enter_context(running_scheduler(fleet, name=name))
        for _ in range(3):
            stack.enter_context(running_worker(fleet))
        flower = start_child("flower", ["flower"], fleet)
        stack.callback(flower.stop)
        # given one installation (its rate limit out of the way) reached through both APIs
        first = create_tenant(
            fleet, apis[0], own_sandbox, rate_limit={"max": 100_000, "interval_ms": 1000}
        )
        tenants = [first, Tenant(**{**first.__dict__, "api_url": apis[1]})]

        # when concurrent clients send 20,000 records of every kind
        accepted, domains = _send_all(tenants, first.group_ref)

        # then every operation ends, successfully
        states = _wait_all_terminal(fleet, accepted, timeout_s=300)
        assert states == Counter({"succeeded": len(accepted)}), states
        # and the provider holds each record exactly once
        stored = httpx.get(
            f"{own_sandbox}/_sandbox/records/hubspot/companies/keys", params={"field": "domain"}
        ).json()
        hashes = Counter(stored["keys"])
        assert len(domains) >= RECORDS  # the last batch of 10 may pass the mark
        assert stored["records"] == len(domains), stored["records"]
        assert len(hashes) == len(domains) and all(n == 1 for n in hashes.values())
        # and Flower's API lists the three workers
        auth = ("ops", "fleet-test")
        deadline = time.monotonic() + 60
        workers: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                response = httpx.get(
                    f"http://127.0.0.1:{flower_port}/api/workers", auth=auth, timeout=10
                )
                if response.status_code == 200:
                    workers = {
                        name: info
                        for name, info in response.json().items()
                        if any(q.get("name") == queue for q in info.get("active_queues") or [])
                    }
                    if len(workers) >= 3:
                        break
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        assert len(workers) == 3, list(workers)
