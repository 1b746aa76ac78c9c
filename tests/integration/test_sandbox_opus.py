"""OpusAdapter over real HTTP against the sandbox's AvePoint Opus, served on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sandbox.app import create_app
from sandbox.state import SandboxState
from tests.support.servers import serve_in_thread
from writejobs.errors import PermanentProviderError
from writejobs.providers.base import WriteItem, WriteOptions
from writejobs.providers.opus import OpusAdapter

OPTIONS = WriteOptions()
CONNECTION = "4f1c2e8a-0000-4000-8000-00000000c0de"
SUBMIT = "POST /records/connector/records"


@pytest.fixture(scope="module")
def state() -> SandboxState:
    """Held by the tests, to read back what Opus stored (Opus has no read API here)."""
    return SandboxState()


@pytest.fixture(scope="module")
def sandbox_url(state: SandboxState) -> Iterator[str]:
    with serve_in_thread(create_app(state)) as url:
        yield url


@pytest.fixture
def sandbox(sandbox_url: str) -> Iterator[httpx.Client]:
    """A client for the sandbox's Opus records service; the sandbox starts each test empty."""
    with httpx.Client(
        base_url=f"{sandbox_url}/records",
        headers={"Authorization": "Bearer sandbox-token"},
        timeout=10,
    ) as client:
        client.post(f"{sandbox_url}/_sandbox/reset").raise_for_status()
        yield client


@pytest.fixture
def adapter(sandbox: httpx.Client) -> OpusAdapter:
    return OpusAdapter(sandbox, connection_id=CONNECTION)


def stats(sandbox: httpx.Client) -> dict[str, Any]:
    # The client's base URL is the records service; the control routes sit at the root.
    response = sandbox.get(sandbox.base_url.copy_with(path="/_sandbox/stats"))
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def stored(state: SandboxState, row_key: str) -> dict[str, Any] | None:
    with state.lock:
        record = state.objects("opus", CONNECTION).get(row_key)
        return None if record is None else dict(record.properties)


def rows(count: int, start: int = 0, **fields: Any) -> list[WriteItem]:
    return [
        WriteItem(
            record={
                "rowKey": f"row-{i}",
                "leafName": f"Contract {i}",
                "timeCreated": "2025-03-06T22:09:00Z",
                "timeModified": "2025-03-06T22:09:00Z",
                "createdBy": "ada@example.com",
                "modifiedBy": "ada@example.com",
            }
            | fields
        )
        for i in range(start, start + count)
    ]


def test_create_skips_an_existing_row_and_update_overwrites_it(
    adapter: OpusAdapter, sandbox: httpx.Client, state: SandboxState
) -> None:
    (first,) = rows(1, leafName="First")
    (again,) = rows(1, leafName="Again")

    created = adapter.write_one("contracts", "create", first, OPTIONS)
    skipped = adapter.write_one("contracts", "create", again, OPTIONS)
    assert (created.success, created.record_id) == (True, "row-0")
    assert skipped.success
    assert (stored(state, "row-0") or {})["leafName"] == "First"
    assert stats(sandbox)["duplicate_creates"] == 1

    updated = adapter.write_one("contracts", "update", again, OPTIONS)

    assert (updated.success, updated.record_id) == (True, "row-0")
    assert (stored(state, "row-0") or {})["leafName"] == "Again"
    assert stats(sandbox)["duplicate_creates"] == 1


def test_a_delete_is_refused_without_a_call(adapter: OpusAdapter, sandbox: httpx.Client) -> None:
    result = adapter.write_one("contracts", "delete", rows(1)[0], OPTIONS)

    assert not result.success and result.error is not None and "delete" in result.error
    assert stats(sandbox)["calls"] == {}


def test_a_batch_with_rejected_records_stores_the_others(
    adapter: OpusAdapter, sandbox: httpx.Client, state: SandboxState
) -> None:
    items = rows(4)
    items[1] = rows(1, start=1, timeCreated="yesterday")[0]
    items[2] = WriteItem(record={"leafName": "no key"})

    outcome = adapter.write_batch("contracts", "create", items, OPTIONS)

    assert [(r.success, r.record_id) for r in outcome.results] == [
        (True, "row-0"),
        (False, "row-1"),
        (False, None),
        (True, "row-3"),
    ]
    assert outcome.results[1].error == "The value of timeCreated is not a valid DateTime: yesterday"
    assert outcome.results[2].error == "an Opus record needs rowKey"
    assert outcome.errors == []
    assert stats(sandbox)["records_by_object"] == {CONNECTION: 2}
    assert stored(state, "row-1") is None


def test_a_record_without_a_row_key_is_a_failed_item(sandbox: httpx.Client) -> None:
    body = {"id": CONNECTION, "conflictOption": "Skip", "data": [{"leafName": "x"}]}

    response = sandbox.post("/connector/records", json=body)

    assert response.status_code == 201
    answer = response.json()
    assert answer["failedItems"] == [
        {"leafName": "x", "errorMessage": "The rowKey of the record is required."}
    ]
    assert stats(sandbox)["records_stored"] == 0


def test_more_than_15_records_in_one_call_are_refused(sandbox: httpx.Client) -> None:
    body = {
        "id": CONNECTION,
        "conflictOption": "Skip",
        "data": [r.record for r in rows(16)],
    }

    response = sandbox.post("/connector/records", json=body)

    assert response.status_code == 400
    assert response.json() == {
        "statusCode": 400,
        "message": "You can submit up to 15 records to AvePoint Opus at a time.",
    }
    assert stats(sandbox)["records_stored"] == 0


def test_an_unknown_conflict_option_is_a_400_in_opus_shape(sandbox: httpx.Client) -> None:
    body = {"id": CONNECTION, "conflictOption": "Replace", "data": []}

    response = sandbox.post("/connector/records", json=body)

    assert response.status_code == 400
    assert response.json()["statusCode"] == 400


def test_a_batch_of_100_becomes_seven_calls(adapter: OpusAdapter, sandbox: httpx.Client) -> None:
    outcome = adapter.write_batch("contracts", "create", rows(100), OPTIONS)

    assert outcome.success_count == 100
    seen = stats(sandbox)
    assert seen["calls"] == {SUBMIT: 7}
    assert seen["batch_sizes"] == [15] * 6 + [10]
    assert seen["records_by_object"] == {CONNECTION: 100}


def test_auto_batch_sized_loads_become_eighteen_calls(
    adapter: OpusAdapter, sandbox: httpx.Client
) -> None:
    outcomes = [
        adapter.write_batch("contracts", "create", rows(size, start), OPTIONS)
        for size, start in [(100, 0), (100, 100), (50, 200)]
    ]

    assert [o.success_count for o in outcomes] == [100, 100, 50]
    seen = stats(sandbox)
    assert seen["calls"] == {SUBMIT: 7 + 7 + 4}
    assert seen["batch_sizes"] == [15] * 6 + [10] + [15] * 6 + [10] + [15, 15, 15, 5]
    assert (seen["records_stored"], seen["duplicate_creates"]) == (250, 0)


def test_the_registry_adapter_uses_the_object_name_as_the_connection(
    sandbox: httpx.Client,
) -> None:
    adapter = OpusAdapter(sandbox)

    result = adapter.write_one(CONNECTION, "create", rows(1)[0], OPTIONS)

    assert result.success
    assert stats(sandbox)["records_by_object"] == {CONNECTION: 1}


def test_a_missing_bearer_token_is_a_permanent_error(sandbox_url: str) -> None:
    with httpx.Client(base_url=f"{sandbox_url}/records", timeout=10) as client:
        adapter = OpusAdapter(client, connection_id=CONNECTION)

        with pytest.raises(PermanentProviderError) as raised:
            adapter.write_one("contracts", "create", rows(1)[0], OPTIONS)
        outcome = adapter.write_batch("contracts", "create", rows(3), OPTIONS)

    assert (raised.value.status_code, raised.value.message) == (401, "Unauthorized")
    assert {(r.status_code, r.retryable) for r in outcome.results} == {(401, False)}
