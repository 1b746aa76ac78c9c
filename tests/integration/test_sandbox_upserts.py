"""Creates by a natural key, sent again, over real HTTP against the sandbox on loopback:
one record each, updated in place; without a natural key the repeat duplicates."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from sandbox.app import create_app
from sandbox.state import SandboxState
from tests.support.sandbox_client import stats
from tests.support.servers import serve_in_thread
from writejobs.providers.base import WriteItem, WriteOptions
from writejobs.providers.hubspot import HubSpotAdapter
from writejobs.providers.opus import OpusAdapter
from writejobs.providers.salesforce import SalesforceAdapter

SOBJECTS = "/services/data/v60.0/sobjects"
CONNECTION = "4f1c2e8a-0000-4000-8000-00000000c0de"


@pytest.fixture(scope="module")
def state() -> SandboxState:
    """Held by the tests, to read back what Opus stored (Opus has no read API here)."""
    return SandboxState()


@pytest.fixture(scope="module")
def url(state: SandboxState) -> Iterator[str]:
    with serve_in_thread(create_app(state)) as served:
        yield served


@pytest.fixture
def sandbox(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=url, headers={"Authorization": "Bearer sandbox-token"}, timeout=30
    ) as client:
        client.post("/_sandbox/reset").raise_for_status()
        yield client


def test_a_hubspot_contact_created_twice_by_email_is_one_record_holding_the_latest_values(
    sandbox: httpx.Client,
) -> None:
    adapter = HubSpotAdapter(sandbox)
    options = WriteOptions(natural_key="email")
    first = adapter.write_batch(
        "contacts", "create", [WriteItem({"email": "ada@example.com", "firstname": "Ada"})], options
    )
    again = adapter.write_batch(
        "contacts", "create", [WriteItem({"email": "Ada@example.com", "firstname": "A."})], options
    )

    assert first.results[0].success and again.results[0].success
    assert first.results[0].record_id == again.results[0].record_id
    counters = stats(sandbox)
    assert counters["records_stored"] == 1 and counters["duplicate_creates"] == 0
    assert counters["calls"]["POST /crm/v3/objects/{objectType}/batch/upsert"] == 2
    stored = sandbox.get(f"/crm/v3/objects/contacts/{first.results[0].record_id}").json()
    assert stored["properties"]["firstname"] == "A."


def test_hubspot_companies_repeated_by_a_unique_property_are_not_created_twice(
    sandbox: httpx.Client,
) -> None:
    adapter = HubSpotAdapter(sandbox)
    items = [WriteItem({"domain": f"co{i}.example.com", "name": f"Co {i}"}) for i in range(3)]

    first = adapter.write_batch("companies", "create", items, WriteOptions(natural_key="domain"))
    again = adapter.write_batch("companies", "create", items, WriteOptions(natural_key="domain"))

    assert [r.record_id for r in first.results] == [r.record_id for r in again.results]
    assert stats(sandbox)["records_by_object"] == {"companies": 3}


def test_hubspot_companies_repeated_without_a_natural_key_are_created_twice(
    sandbox: httpx.Client,
) -> None:
    # the problem natural keys solve: HubSpot has nothing to recognise the repeat by
    adapter = HubSpotAdapter(sandbox)
    items = [WriteItem({"domain": f"co{i}.example.com"}) for i in range(3)]

    adapter.write_batch("companies", "create", items, WriteOptions())
    adapter.write_batch("companies", "create", items, WriteOptions())

    assert stats(sandbox)["records_by_object"] == {"companies": 6}


def test_a_hubspot_all_or_none_upsert_with_a_bad_record_writes_nothing(
    sandbox: httpx.Client,
) -> None:
    items = [WriteItem({"email": "ok@example.com"}), WriteItem({"email": "not-an-email"})]
    options = WriteOptions(all_or_none=True, natural_key="email")

    outcome = HubSpotAdapter(sandbox).write_batch("contacts", "create", items, options)

    assert outcome.success_count == 0
    assert stats(sandbox)["records_stored"] == 0


def test_a_salesforce_account_upserted_twice_by_external_id_is_one_record(
    sandbox: httpx.Client,
) -> None:
    adapter = SalesforceAdapter(sandbox)
    options = WriteOptions(natural_key="External_Id__c")
    item = WriteItem({"Name": "Acme", "External_Id__c": "ACME-1"})

    first = adapter.write_one("Account", "create", item, options)
    again = adapter.write_one(
        "Account", "create", WriteItem({"Name": "Acme Inc", "External_Id__c": "acme-1"}), options
    )

    assert first.success and again.success and first.record_id == again.record_id
    assert stats(sandbox)["records_stored"] == 1
    stored = sandbox.get(f"{SOBJECTS}/Account/{first.record_id}").json()
    assert stored["Name"] == "Acme Inc"


def test_a_salesforce_collection_sent_again_by_external_id_updates_the_same_records(
    sandbox: httpx.Client,
) -> None:
    adapter = SalesforceAdapter(sandbox)
    options = WriteOptions(natural_key="External_Id__c")
    items = [WriteItem({"LastName": f"User {i}", "External_Id__c": f"U-{i}"}) for i in range(250)]

    first = adapter.write_batch("Contact", "create", items, options)
    again = adapter.write_batch("Contact", "create", items, options)

    assert first.success_count == 250 and again.success_count == 250
    assert [r.record_id for r in first.results] == [r.record_id for r in again.results]
    counters = stats(sandbox)
    assert counters["records_stored"] == 250
    # chunks of 200, as for creates
    assert counters["batch_sizes"] == [200, 50, 200, 50]


def test_a_salesforce_external_id_held_by_two_records_refuses_the_upsert(
    sandbox: httpx.Client,
) -> None:
    adapter = SalesforceAdapter(sandbox)
    twin = WriteItem({"Name": "Twin", "External_Id__c": "T-1"})
    adapter.write_batch("Account", "create", [twin, twin], WriteOptions())
    options = WriteOptions(natural_key="External_Id__c")

    single = adapter.write_one("Account", "create", twin, options)
    collection = adapter.write_batch("Account", "create", [twin], options)

    assert not single.success and single.status_code == 300
    assert not collection.results[0].success
    assert collection.results[0].error is not None
    assert collection.results[0].error.startswith("DUPLICATE_EXTERNAL_ID")
    assert stats(sandbox)["records_stored"] == 2


def test_a_salesforce_all_or_none_upsert_with_a_bad_record_writes_nothing(
    sandbox: httpx.Client,
) -> None:
    items = [
        WriteItem({"LastName": "Good", "External_Id__c": "G-1"}),
        WriteItem({"External_Id__c": "G-2"}),  # no LastName
    ]
    options = WriteOptions(all_or_none=True, natural_key="External_Id__c")

    outcome = SalesforceAdapter(sandbox).write_batch("Contact", "create", items, options)

    assert outcome.success_count == 0
    assert outcome.results[1].error is not None
    assert outcome.results[1].error.startswith("REQUIRED_FIELD_MISSING")
    assert stats(sandbox)["records_stored"] == 0


def test_an_opus_record_sent_again_by_row_key_is_overwritten_not_duplicated(
    url: str, state: SandboxState
) -> None:
    with httpx.Client(
        base_url=f"{url}/records", headers={"Authorization": "Bearer t"}, timeout=30
    ) as client:
        client.post(f"{url}/_sandbox/reset").raise_for_status()
        adapter = OpusAdapter(client)
        by_key = WriteOptions(natural_key="rowKey")
        adapter.write_one("c1", "create", WriteItem({"rowKey": "r-1", "leafName": "v1"}), by_key)
        adapter.write_one("c1", "create", WriteItem({"rowKey": "r-1", "leafName": "v2"}), by_key)
        # without a natural key the repeat is skipped: still one record, the first values
        adapter.write_one(
            "c1", "create", WriteItem({"rowKey": "r-2", "leafName": "v1"}), WriteOptions()
        )
        adapter.write_one(
            "c1", "create", WriteItem({"rowKey": "r-2", "leafName": "v2"}), WriteOptions()
        )
        counters = httpx.get(f"{url}/_sandbox/stats").json()

    with state.lock:
        rows = state.objects("opus", "c1")
        assert rows["r-1"].properties["leafName"] == "v2"
        assert rows["r-2"].properties["leafName"] == "v1"
    assert counters["records_stored"] == 2
    # only the skipped repeat counts as a duplicate create the provider saw
    assert counters["duplicate_creates"] == 1
