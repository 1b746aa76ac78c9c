"""Auto-batching end to end: API, scheduler processes, a Celery worker, the sandbox."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import pytest

from api_shim.app import create_app
from tests.support.servers import serve_in_thread
from tests.support.system import (
    Tenant,
    create_tenant,
    running_api,
    running_scheduler,
    running_worker,
)
from writejobs.settings import Settings


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _auto(
    tenant: Tenant,
    client: httpx.Client,
    record: dict[str, Any],
    *,
    object_name: str = "contacts",
    delay_min: int = 1,
) -> str:
    response = client.post(
        tenant.write_path(object_name),
        json={
            "groupRef": tenant.group_ref,
            "type": "create",
            "mode": "asynchronous",
            "autoBatchPolicy": {"maxDelayMinutes": delay_min},
            "record": record,
        },
    )
    assert response.status_code == 200, response.text
    return str(response.json()["operationId"])


def _logs(tenant: Tenant, client: httpx.Client, op_id: str) -> list[dict[str, Any]]:
    response = client.get(tenant.operation_path(op_id) + "/logs")
    return list(response.json())


def _stats(sandbox_url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{sandbox_url}/_sandbox/stats").json())


@pytest.fixture()
def scaled(settings: Settings) -> Settings:
    """Settings where a policy minute lasts 1.2 s, with fast recovery sweeps."""
    return settings.model_copy(
        update={
            "policy_time_scale": 0.02,
            "unsent_grace_s": 1.0,
            "orphan_grace_s": 2.0,
            "stalled_after_s": 5.0,
            "running_lease_s": 3.0,
        }
    )


@pytest.fixture()
def scaled_api(scaled: Settings) -> Iterator[str]:
    with serve_in_thread(create_app(scaled)) as url:
        yield url


@pytest.mark.load
@pytest.mark.timeout(300)
def test_250_records_become_batches_of_100_100_and_50_in_real_time(
    settings: Settings, api_url: str, own_sandbox: str, worker: object, heavy: None
) -> None:
    tenant = create_tenant(settings, api_url, own_sandbox)
    with running_scheduler(settings), tenant.client() as client:
        ids = [
            _auto(tenant, client, {"email": f"rt{i}-{uuid.uuid4().hex[:6]}@example.com"})
            for i in range(250)
        ]
        views = tenant.wait_terminal(ids, timeout_s=120)
        # Then: three provider batch calls of 100, 100 and 50
        stats = _stats(own_sandbox)
        assert stats["batch_sizes"] == [100, 100, 50]
        assert stats["calls"] == {"POST /crm/v3/objects/{objectType}/batch/create": 3}
        # every operation succeeded with a record id of its own
        assert {v["status"] for v in views.values()} == {"success"}
        record_ids = [v["metadata"]["successfulRecordIds"][0] for v in views.values()]
        assert len(set(record_ids)) == 250
        batches = Counter(
            (v["metadata"]["batch"]["id"], v["metadata"]["batch"]["flushReason"])
            for v in views.values()
        )
        assert sorted((n, reason) for (_, reason), n in batches.items()) == [
            (50, "time"),
            (100, "size"),
            (100, "size"),
        ]
        # The size flushes happened within 0.5 s of their 100th record being accepted
        for hundredth in (ids[99], ids[199]):
            accepted = _ts(views[hundredth]["createTime"])
            flushed = next(
                e
                for e in _logs(tenant, client, hundredth)
                if e["message"]["msg"].startswith("flushed in batch")
            )
            assert (_ts(flushed["timestamp"]) - accepted).total_seconds() < 0.5
        # The time flush came 60 to 62 s after the first of its records
        first_of_last = _ts(views[ids[200]]["createTime"])
        flushed = next(
            e
            for e in _logs(tenant, client, ids[200])
            if e["message"]["msg"].startswith("flushed in batch")
        )
        assert 60 <= (_ts(flushed["timestamp"]) - first_of_last).total_seconds() <= 62


@pytest.mark.load
@pytest.mark.timeout(600)
def test_two_schedulers_and_concurrent_intake_flush_every_record_exactly_once(
    scaled: Settings, own_sandbox: str, heavy: None
) -> None:
    # Given a queue, a worker, an API process and two schedulers of this test's own; no
    # process dies here, so the running lease is long: on a machine at load 20 a 3 s lease
    # lapsed under a live worker and its batch was taken over and sent again (at least
    # once is what a lapsed lease promises; this test is about the flushes racing)
    own = scaled.model_copy(
        update={
            "celery_queue": f"load-{uuid.uuid4().hex[:6]}",
            "policy_time_scale": 0.5,
            "running_lease_s": 30.0,
        }
    )
    with running_api(own) as api, running_worker(own, concurrency=2):
        tenant = create_tenant(own, api, own_sandbox)
        # and 10,000 records spread unevenly over 50 groups, sent by 16 clients at once:
        # half of them to 5 groups, which fill to 100 long before their delay ends even
        # on a loaded machine, the other half over 45 groups, most of which do not
        rng = random.Random(7)
        objects = [f"things{g}" for g in range(50)]
        weights = [9.0] * 5 + [1.0] * 45
        plan = [(rng.choices(objects, weights)[0], f"k{i}") for i in range(10_000)]

        def send(chunk: list[tuple[str, str]]) -> list[str]:
            with tenant.client() as client:
                return [_auto(tenant, client, {"key": key}, object_name=obj) for obj, key in chunk]

        with running_scheduler(own, "scheduler-a"), running_scheduler(own, "scheduler-b"):
            with ThreadPoolExecutor(16) as pool:
                chunks = [plan[i::16] for i in range(16)]
                ids = [op_id for part in pool.map(send, chunks) for op_id in part]
            views = tenant.wait_terminal(ids, timeout_s=300)
    # Then every record reached the provider exactly once
    stats = _stats(own_sandbox)
    assert sum(stats["batch_sizes"]) == 10_000
    assert stats["records_stored"] == 10_000
    assert stats["duplicate_creates"] == 0
    assert {v["status"] for v in views.values()} == {"success"}
    # and no batch mixed groups or passed 100 records
    objects_by_batch: dict[str, set[str]] = {}
    for view in views.values():
        batch_id = view["metadata"]["batch"]["id"]
        objects_by_batch.setdefault(batch_id, set()).update(view["metadata"]["objects"])
    assert all(len(objs) == 1 for objs in objects_by_batch.values())
    assert max(Counter(v["metadata"]["batch"]["id"] for v in views.values()).values()) <= 100
    reasons = Counter(v["metadata"]["batch"]["flushReason"] for v in views.values())
    assert reasons["size"] > 0 and reasons["time"] > 0  # both flush paths raced


@pytest.mark.timeout(180)
@pytest.mark.parametrize("failpoint", ["flush.after_claim", "flush.before_send"])
def test_a_scheduler_killed_between_claim_and_send_loses_nothing(
    failpoint: str,
    scaled: Settings,
    scaled_api: str,
    own_sandbox: str,
    worker: object,
    tmp_path: Any,
) -> None:
    tenant = create_tenant(scaled, scaled_api, own_sandbox)
    doomed = scaled.model_copy(update={"failpoints": failpoint, "data_dir": tmp_path})
    with tenant.client() as client:
        ids = [
            _auto(tenant, client, {"email": f"k{i}-{uuid.uuid4().hex[:6]}@example.com"})
            for i in range(10)
        ]
    with running_scheduler(doomed, "doomed-scheduler") as victim:
        victim.process.wait(timeout=30)
        assert victim.process.returncode == -9, victim.output()
    with running_scheduler(scaled, "survivor"):
        views = tenant.wait_terminal(ids, timeout_s=60)
    assert {v["status"] for v in views.values()} == {"success"}
    stats = _stats(own_sandbox)
    assert stats["records_stored"] == 10 and stats["duplicate_creates"] == 0


@pytest.mark.timeout(180)
def test_a_worker_killed_mid_batch_loses_nothing_and_duplicates_are_counted(
    scaled: Settings, scaled_api: str, own_sandbox: str, tmp_path: Any
) -> None:
    tenant = create_tenant(scaled, scaled_api, own_sandbox)
    # A queue of this test's own, so the session's worker cannot pick the batch up
    queue = f"kill-{uuid.uuid4().hex[:6]}"
    own = scaled.model_copy(update={"celery_queue": queue, "data_dir": tmp_path})
    doomed = own.model_copy(update={"failpoints": "batch.after_provider_call"})
    with serve_in_thread(create_app(own)) as api:
        tenant = create_tenant(own, api, own_sandbox)
        with tenant.client() as client:
            ids = [
                _auto(tenant, client, {"email": f"w{i}-{uuid.uuid4().hex[:6]}@example.com"})
                for i in range(10)
            ]
        with running_scheduler(own) as scheduler:
            with running_worker(doomed) as victim:
                victim.process.wait(timeout=60)  # the failpoint kills its whole process group
            assert _stats(own_sandbox)["records_stored"] == 10  # written, but not recorded
            with running_worker(own) as survivor:
                try:
                    views = tenant.wait_terminal(ids, timeout_s=90)
                except TimeoutError:
                    print(scheduler.output()[-5000:], survivor.output()[-5000:])
                    raise
            with tenant.client() as client:
                logs = [e for i in ids for e in _logs(tenant, client, i)]
    assert {v["status"] for v in views.values()} == {"success"}
    stats = _stats(own_sandbox)
    assert stats["records_stored"] == 10
    # The retry after the kill met the records the killed attempt had written:
    # the provider saw duplicates, and each one is said in the operation's logs.
    assert stats["duplicate_creates"] == 10
    duplicate_logs = [e for e in logs if "already" in e["message"]["msg"]]
    assert len(duplicate_logs) == 10
