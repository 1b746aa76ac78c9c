"""HubSpotAdapter over real HTTP against the sandbox's HubSpot, served on loopback."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.sandbox_client import stats
from writejobs.errors import PermanentProviderError
from writejobs.providers.base import WriteItem, WriteOptions
from writejobs.providers.hubspot import HubSpotAdapter

PARTIAL = WriteOptions(all_or_none=False)
BATCH_CREATE = "POST /crm/v3/objects/{objectType}/batch/create"


@pytest.fixture
def adapter(sandbox: httpx.Client) -> HubSpotAdapter:
    return HubSpotAdapter(sandbox)


def contacts(count: int) -> list[WriteItem]:
    return [WriteItem(record={"email": f"user{i}@example.com"}) for i in range(count)]


def test_single_create_update_and_delete_land_in_the_sandbox(
    adapter: HubSpotAdapter, sandbox: httpx.Client
) -> None:
    created = adapter.write_one(
        "contacts", "create", WriteItem(record={"email": "ada@example.com"}), PARTIAL
    )
    assert created.success and created.record_id is not None
    assert created.data is not None and created.data["email"] == "ada@example.com"

    updated = adapter.write_one(
        "contacts",
        "update",
        WriteItem(record={"id": created.record_id, "firstname": "Ada"}),
        PARTIAL,
    )
    assert updated.success and updated.record_id == created.record_id
    stored = sandbox.get(f"/crm/v3/objects/contacts/{created.record_id}").json()
    assert stored["properties"]["firstname"] == "Ada"

    deleted = adapter.write_one(
        "contacts", "delete", WriteItem(record={"id": created.record_id}), PARTIAL
    )
    assert deleted.success
    assert sandbox.get(f"/crm/v3/objects/contacts/{created.record_id}").status_code == 404


def test_update_of_an_unknown_id_is_a_failed_record(adapter: HubSpotAdapter) -> None:
    result = adapter.write_one(
        "contacts", "update", WriteItem(record={"id": "999999", "firstname": "X"}), PARTIAL
    )

    assert not result.success
    assert (result.status_code, result.error) == (404, "resource not found")


def test_a_batch_of_250_becomes_three_calls(adapter: HubSpotAdapter, sandbox: httpx.Client) -> None:
    outcome = adapter.write_batch("contacts", "create", contacts(250), PARTIAL)

    assert outcome.success_count == 250
    assert len({r.record_id for r in outcome.results}) == 250
    seen = stats(sandbox)
    assert seen["calls"][BATCH_CREATE] == 3
    assert seen["batch_sizes"] == [100, 100, 50]
    assert seen["records_by_object"] == {"contacts": 250}


def test_a_batch_with_one_invalid_email_gives_per_record_results(
    adapter: HubSpotAdapter, sandbox: httpx.Client
) -> None:
    items = contacts(3)
    items[1] = WriteItem(record={"email": "not-an-email"})

    outcome = adapter.write_batch("contacts", "create", items, PARTIAL)

    assert [r.success for r in outcome.results] == [True, False, True]
    failed = outcome.results[1]
    assert failed.status_code == 400 and not failed.retryable
    assert failed.error is not None and "INVALID_EMAIL" in failed.error
    assert stats(sandbox)["records_stored"] == 2


def test_an_all_or_none_batch_with_one_invalid_email_stores_nothing(
    adapter: HubSpotAdapter, sandbox: httpx.Client
) -> None:
    items = contacts(3) + [WriteItem(record={"email": "not-an-email"})]

    outcome = adapter.write_batch("contacts", "create", items, WriteOptions(all_or_none=True))

    assert outcome.failure_count == 4
    assert all("INVALID_EMAIL" in (r.error or "") for r in outcome.results)
    assert stats(sandbox)["records_stored"] == 0


def test_batch_update_reports_unknown_ids_per_record(
    adapter: HubSpotAdapter, sandbox: httpx.Client
) -> None:
    created = adapter.write_batch("contacts", "create", contacts(2), PARTIAL).results
    updates = [
        WriteItem(record={"id": created[0].record_id, "firstname": "A"}),
        WriteItem(record={"id": "999999", "firstname": "B"}),
        WriteItem(record={"id": created[1].record_id, "email": "bad"}),
    ]

    outcome = adapter.write_batch("contacts", "update", updates, PARTIAL)

    assert [(r.success, r.status_code) for r in outcome.results] == [
        (True, None),
        (False, 404),
        (False, 400),
    ]
    assert outcome.results[0].data is not None and outcome.results[0].data["firstname"] == "A"


def test_a_duplicate_contact_create_is_refused_and_counted(
    adapter: HubSpotAdapter, sandbox: httpx.Client
) -> None:
    item = WriteItem(record={"email": "twice@example.com"})
    first = adapter.write_one("contacts", "create", item, PARTIAL)

    second = adapter.write_one("contacts", "create", item, PARTIAL)

    assert not second.success and second.status_code == 409
    assert second.error == f"Contact already exists. Existing ID: {first.record_id}"
    assert stats(sandbox)["duplicate_creates"] == 1


def test_a_missing_bearer_token_is_a_permanent_error(private_sandbox_url: str) -> None:
    with httpx.Client(base_url=private_sandbox_url, timeout=10) as client:
        adapter = HubSpotAdapter(client)

        with pytest.raises(PermanentProviderError) as raised:
            adapter.write_one("contacts", "create", contacts(1)[0], PARTIAL)

    assert raised.value.status_code == 401
    assert raised.value.message == "Authentication credentials not found."


def test_concurrent_creates_get_distinct_ids(
    adapter: HubSpotAdapter, sandbox: httpx.Client
) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(
            pool.map(
                lambda item: adapter.write_one("contacts", "create", item, PARTIAL), contacts(40)
            )
        )

    assert all(r.success for r in results)
    assert len({r.record_id for r in results}) == 40
    assert stats(sandbox)["records_stored"] == 40


def test_the_request_log_keeps_counts_not_bodies(
    adapter: HubSpotAdapter, sandbox: httpx.Client
) -> None:
    adapter.write_batch("contacts", "create", contacts(5), PARTIAL)

    logged = sandbox.get("/_sandbox/requests").json()

    assert len(logged) == 1
    assert logged[0]["method"] == "POST"
    assert logged[0]["path"] == "/crm/v3/objects/contacts/batch/create"
    assert (logged[0]["status"], logged[0]["inputs"]) == (201, 5)
    assert set(logged[0]) == {"at", "method", "path", "status", "inputs", "keys", "retry_after"}
