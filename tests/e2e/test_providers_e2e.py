"""Salesforce and AvePoint Opus end to end: the API, a scheduler process, a Celery
worker and the sandbox over HTTP, counted at the sandbox.

The auto-batch tests buffer all 250 records before their scheduler starts. The
two size flushes happen in the API (the append that brings a group to 100 claims
it), so they do not depend on the scheduler; the time flush of the last 50 does,
and starting the scheduler only once every record is in means no slow intake can
make a group time out before its 100th record and split the batches differently.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api_shim.app import create_app
from sandbox.app import key_hash
from tests.support.servers import serve_in_thread
from tests.support.system import Tenant, create_tenant, running_scheduler
from writejobs.settings import Settings

COLLECTION_CREATE = "POST /services/data/v60.0/composite/sobjects"
OPUS_SUBMIT = "POST /records/connector/records"
# Opus takes at most 15 records a call: 100 records are 6 calls of 15 and one of 10.
# (Sorted, as the tests compare them; [5, …] sorts before [10, …].)
OPUS_CALLS_OF_100 = [10] + [15] * 6
OPUS_CALLS_OF_50 = [5, 15, 15, 15]


@pytest.fixture()
def scaled(settings: Settings) -> Settings:
    """Settings where a policy minute lasts 1.2 s, so the time flush comes in seconds."""
    return settings.model_copy(update={"policy_time_scale": 0.02})


@pytest.fixture()
def scaled_api(scaled: Settings) -> Iterator[str]:
    with serve_in_thread(create_app(scaled)) as url:
        yield url


def _salesforce_tenant(settings: Settings, api_url: str, sandbox_url: str) -> Tenant:
    # A Salesforce installation's base URL is the org's My Domain URL: the sandbox root.
    return create_tenant(settings, api_url, sandbox_url, provider="salesforce")


def _opus_tenant(settings: Settings, api_url: str, sandbox_url: str) -> Tenant:
    # An Opus installation's base URL is the region's records service, under /records.
    return create_tenant(settings, api_url, f"{sandbox_url}/records", provider="opus")


def _connection() -> str:
    """An Opus connection id: the object name that Opus writes go to."""
    return str(uuid.uuid4())


def _contact(i: int) -> dict[str, Any]:
    return {"LastName": f"Contact {i}", "Email": f"c{i}-{uuid.uuid4().hex[:6]}@example.com"}


def _opus_row(i: int) -> dict[str, Any]:
    return {
        "rowKey": f"row-{i}-{uuid.uuid4().hex[:6]}",
        "leafName": f"Contract {i}",
        "timeCreated": "2025-03-06T22:09:00Z",
    }


def _auto_batch(tenant: Tenant, object_name: str, records: list[dict[str, Any]]) -> list[str]:
    """Send each record as an auto-batched create; return their operation ids in order."""
    ids: list[str] = []
    with tenant.client() as client:
        for record in records:
            response = client.post(
                tenant.write_path(object_name),
                json={
                    "groupRef": tenant.group_ref,
                    "type": "create",
                    "mode": "asynchronous",
                    "autoBatchPolicy": {"maxDelayMinutes": 1},
                    "record": record,
                },
            )
            assert response.status_code == 200, response.text
            ids.append(str(response.json()["operationId"]))
    return ids


def _stats(sandbox_url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{sandbox_url}/_sandbox/stats").json())


def _requests(sandbox_url: str) -> list[dict[str, Any]]:
    return list(httpx.get(f"{sandbox_url}/_sandbox/requests").json())


def _batch_shapes(views: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(size, flush reason) of each batch the operations were flushed in, sorted."""
    batches = Counter(
        (v["metadata"]["batch"]["id"], v["metadata"]["batch"]["flushReason"]) for v in views
    )
    return sorted((size, reason) for (_, reason), size in batches.items())


def _flush_all(scaled: Settings, tenant: Tenant, ids: list[str]) -> list[dict[str, Any]]:
    """Run a scheduler until every operation is terminal; their views, in `ids` order."""
    with running_scheduler(scaled):
        views = tenant.wait_terminal(ids, timeout_s=60)
    return [views[i] for i in ids]


def test_250_auto_batched_salesforce_creates_become_three_collection_calls(
    scaled: Settings, scaled_api: str, own_sandbox: str, worker: object
) -> None:
    tenant = _salesforce_tenant(scaled, scaled_api, own_sandbox)
    records = [_contact(i) for i in range(250)]

    views = _flush_all(scaled, tenant, _auto_batch(tenant, "Contact", records))

    # Then the batches were 100 and 100 (full) and 50 (due), one collection call each
    assert _batch_shapes(views) == [(50, "time"), (100, "size"), (100, "size")]
    stats = _stats(own_sandbox)
    assert stats["calls"] == {COLLECTION_CREATE: 3}
    assert sorted(stats["batch_sizes"]) == [50, 100, 100]
    assert (stats["records_by_object"], stats["duplicate_creates"]) == ({"Contact": 250}, 0)
    # and every operation succeeded with a Salesforce Contact id of its own
    assert {v["status"] for v in views} == {"success"}
    record_ids = [v["metadata"]["successfulRecordIds"] for v in views]
    assert all(len(ids) == 1 and ids[0].startswith("003") for ids in record_ids)
    assert len({ids[0] for ids in record_ids}) == 250
    # that names the very record the operation sent (results are matched by position)
    with httpx.Client(base_url=own_sandbox, headers={"Authorization": "Bearer t"}) as sandbox:
        for record, [record_id] in zip(records, record_ids, strict=True):
            stored = sandbox.get(f"/services/data/v60.0/sobjects/Contact/{record_id}").json()
            assert (stored["LastName"], stored["Email"]) == (record["LastName"], record["Email"])


def test_250_auto_batched_opus_creates_become_eighteen_calls_of_at_most_15(
    scaled: Settings, scaled_api: str, own_sandbox: str, worker: object
) -> None:
    tenant = _opus_tenant(scaled, scaled_api, own_sandbox)
    connection = _connection()
    records = [_opus_row(i) for i in range(250)]

    views = _flush_all(scaled, tenant, _auto_batch(tenant, connection, records))

    # Then the batches were 100, 100 and 50 records, as for any provider
    assert _batch_shapes(views) == [(50, "time"), (100, "size"), (100, "size")]
    # and Opus, taking 15 a call, saw 7 + 7 + 4 calls, all into the named connection
    stats = _stats(own_sandbox)
    assert stats["calls"] == {OPUS_SUBMIT: 18}
    assert max(stats["batch_sizes"]) == 15
    assert (stats["records_by_object"], stats["duplicate_creates"]) == ({connection: 250}, 0)
    # each call carried records of one batch only: 7 calls per 100 and 4 for the 50
    batch_of = {
        key_hash(r["rowKey"]): v["metadata"]["batch"]["id"]
        for r, v in zip(records, views, strict=True)
    }
    calls_by_batch: dict[str, list[int]] = {}
    for call in _requests(own_sandbox):
        assert (call["path"], call["status"]) == ("/records/connector/records", 201)
        [batch_id] = {batch_of[key] for key in call["keys"]}
        calls_by_batch.setdefault(batch_id, []).append(call["inputs"])
    assert sorted(sorted(sizes) for sizes in calls_by_batch.values()) == [
        OPUS_CALLS_OF_50,
        OPUS_CALLS_OF_100,
        OPUS_CALLS_OF_100,
    ]
    # and every operation succeeded, its record id being the rowKey it sent
    assert {v["status"] for v in views} == {"success"}
    sent_keys = [[r["rowKey"]] for r in records]
    assert [v["metadata"]["successfulRecordIds"] for v in views] == sent_keys


def test_a_synchronous_batch_of_100_to_opus_becomes_seven_calls_and_answers_200(
    settings: Settings, api_url: str, own_sandbox: str
) -> None:
    tenant = _opus_tenant(settings, api_url, own_sandbox)
    connection = _connection()
    records = [_opus_row(i) for i in range(100)]

    with tenant.client() as client:
        response = client.post(
            tenant.write_path(connection),
            json={
                "groupRef": tenant.group_ref,
                "type": "create",
                "batch": [{"record": r} for r in records],
            },
        )
        assert response.status_code == 200, response.text
        body = response.json()
        view = client.get(tenant.operation_path(body["operationId"])).json()

    # Then the API answered once every record was written
    assert (body["successCount"], body["failureCount"]) == (100, 0)
    assert [r["recordId"] for r in body["results"]] == [r["rowKey"] for r in records]
    assert (view["status"], view["state"], view["shape"]) == ("success", "succeeded", "batch")
    # through seven Opus calls made in the request, in order: six of 15 and one of 10
    stats = _stats(own_sandbox)
    assert stats["calls"] == {OPUS_SUBMIT: 7}
    assert stats["batch_sizes"] == [15] * 6 + [10]
    assert stats["records_by_object"] == {connection: 100}
