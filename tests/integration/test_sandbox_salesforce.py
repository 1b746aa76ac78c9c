"""SalesforceAdapter over real HTTP against the sandbox's Salesforce, served on loopback."""

from __future__ import annotations

import httpx
import pytest

from tests.support.sandbox_client import stats
from writejobs.errors import PermanentProviderError
from writejobs.providers.base import WriteItem, WriteOptions
from writejobs.providers.salesforce import SalesforceAdapter

PARTIAL = WriteOptions(all_or_none=False)
ALL_OR_NONE = WriteOptions(all_or_none=True)
SOBJECTS = "/services/data/v60.0/sobjects"
COLLECTIONS = "/services/data/v60.0/composite/sobjects"
COLLECTION_CREATE = f"POST {COLLECTIONS}"


@pytest.fixture
def adapter(sandbox: httpx.Client) -> SalesforceAdapter:
    return SalesforceAdapter(sandbox)


def contacts(count: int, start: int = 0) -> list[WriteItem]:
    return [
        WriteItem(record={"LastName": f"User {i}", "Email": f"user{i}@example.com"})
        for i in range(start, start + count)
    ]


def test_single_create_update_and_delete_land_in_the_sandbox(
    adapter: SalesforceAdapter, sandbox: httpx.Client
) -> None:
    created = adapter.write_one(
        "Contact", "create", WriteItem(record={"LastName": "Lovelace"}), PARTIAL
    )
    assert created.success and created.record_id is not None
    assert created.record_id.startswith("003") and len(created.record_id) == 18

    updated = adapter.write_one(
        "Contact", "update", WriteItem(record={"id": created.record_id, "Title": "CTO"}), PARTIAL
    )
    assert updated.success and updated.record_id == created.record_id
    stored = sandbox.get(f"{SOBJECTS}/Contact/{created.record_id}").json()
    assert (stored["Id"], stored["LastName"], stored["Title"]) == (
        created.record_id,
        "Lovelace",
        "CTO",
    )

    deleted = adapter.write_one(
        "Contact", "delete", WriteItem(record={"id": created.record_id}), PARTIAL
    )
    assert deleted.success
    assert sandbox.get(f"{SOBJECTS}/Contact/{created.record_id}").status_code == 404

    again = adapter.write_one(
        "Contact", "update", WriteItem(record={"id": created.record_id, "Title": "X"}), PARTIAL
    )
    assert (again.success, again.status_code) == (False, 404)
    assert again.error == "ENTITY_IS_DELETED: entity is deleted"


def test_update_of_an_unknown_id_is_not_found(adapter: SalesforceAdapter) -> None:
    result = adapter.write_one(
        "Contact", "update", WriteItem(record={"id": "003000000000999999AAA"}), PARTIAL
    )

    assert (result.success, result.status_code) == (False, 404)
    assert result.error == "NOT_FOUND: The requested resource does not exist"


def test_a_single_create_with_an_invalid_email_is_a_failed_record(
    adapter: SalesforceAdapter, sandbox: httpx.Client
) -> None:
    result = adapter.write_one(
        "Contact", "create", WriteItem(record={"LastName": "X", "Email": "x"}), PARTIAL
    )

    assert (result.success, result.status_code) == (False, 400)
    assert result.error == "INVALID_EMAIL_ADDRESS: Email: invalid email address: x"
    assert stats(sandbox)["records_stored"] == 0


def test_a_batch_with_one_rejected_record_saves_the_others(
    adapter: SalesforceAdapter, sandbox: httpx.Client
) -> None:
    items = contacts(3)
    items[1] = WriteItem(record={"Email": "second@example.com"})

    outcome = adapter.write_batch("Contact", "create", items, PARTIAL)

    assert [r.success for r in outcome.results] == [True, False, True]
    assert outcome.results[1].error == (
        "REQUIRED_FIELD_MISSING: Required fields are missing: [LastName]"
    )
    assert not outcome.results[1].retryable
    assert stats(sandbox)["records_by_object"] == {"Contact": 2}


def test_an_all_or_none_batch_with_one_bad_record_rolls_back_the_rest(
    adapter: SalesforceAdapter, sandbox: httpx.Client
) -> None:
    items = contacts(3) + [WriteItem(record={"LastName": "Bad", "Email": "not-an-email"})]

    outcome = adapter.write_batch("Contact", "create", items, ALL_OR_NONE)

    assert outcome.failure_count == 4
    assert outcome.results[3].error == (
        "INVALID_EMAIL_ADDRESS: Email: invalid email address: not-an-email"
    )
    assert all(
        (r.error or "").startswith("ALL_OR_NONE_OPERATION_ROLLED_BACK: Record rolled back")
        for r in outcome.results[:3]
    )
    assert not any(r.retryable for r in outcome.results)
    assert stats(sandbox)["records_stored"] == 0


def test_a_batch_update_reports_unknown_and_deleted_ids_per_record(
    adapter: SalesforceAdapter, sandbox: httpx.Client
) -> None:
    first, second = adapter.write_batch("Contact", "create", contacts(2), PARTIAL).results
    assert first.record_id is not None and second.record_id is not None
    adapter.write_one("Contact", "delete", WriteItem(record={"id": second.record_id}), PARTIAL)
    updates = [
        WriteItem(record={"id": first.record_id, "Title": "CEO"}),
        WriteItem(record={"id": "003000000000999999AAA", "Title": "?"}),
        WriteItem(record={"id": second.record_id, "Title": "?"}),
    ]

    outcome = adapter.write_batch("Contact", "update", updates, PARTIAL)

    assert [(r.success, r.error) for r in outcome.results] == [
        (True, None),
        (False, "NOT_FOUND: The requested resource does not exist"),
        (False, "ENTITY_IS_DELETED: entity is deleted"),
    ]
    assert sandbox.get(f"{SOBJECTS}/Contact/{first.record_id}").json()["Title"] == "CEO"


def test_an_all_or_none_update_with_one_bad_record_changes_nothing(
    adapter: SalesforceAdapter, sandbox: httpx.Client
) -> None:
    (created,) = adapter.write_batch("Contact", "create", contacts(1), PARTIAL).results
    updates = [
        WriteItem(record={"id": created.record_id, "Title": "CEO"}),
        WriteItem(record={"id": created.record_id, "Email": "bad"}),
    ]

    outcome = adapter.write_batch("Contact", "update", updates, ALL_OR_NONE)

    assert [r.success for r in outcome.results] == [False, False]
    assert "Title" not in sandbox.get(f"{SOBJECTS}/Contact/{created.record_id}").json()


def test_auto_batch_sized_loads_take_one_collection_call_each(
    adapter: SalesforceAdapter, sandbox: httpx.Client
) -> None:
    outcomes = [
        adapter.write_batch("Contact", "create", contacts(size, start), PARTIAL)
        for size, start in [(100, 0), (100, 100), (50, 200)]
    ]

    assert [o.success_count for o in outcomes] == [100, 100, 50]
    record_ids = {r.record_id for o in outcomes for r in o.results}
    assert len(record_ids) == 250
    seen = stats(sandbox)
    assert seen["calls"] == {COLLECTION_CREATE: 3}
    assert seen["batch_sizes"] == [100, 100, 50]
    assert seen["records_by_object"] == {"Contact": 250}


def test_a_batch_of_250_becomes_calls_of_200_and_50(
    adapter: SalesforceAdapter, sandbox: httpx.Client
) -> None:
    outcome = adapter.write_batch("Contact", "create", contacts(250), PARTIAL)

    assert outcome.success_count == 250
    assert stats(sandbox)["batch_sizes"] == [200, 50]


def test_a_collection_over_200_records_is_refused(sandbox: httpx.Client) -> None:
    records = [{"attributes": {"type": "Contact"}, "LastName": str(i)} for i in range(201)]

    response = sandbox.post(COLLECTIONS, json={"allOrNone": False, "records": records})

    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    assert stats(sandbox)["records_stored"] == 0


def test_a_duplicate_contact_email_is_saved_and_counted(
    adapter: SalesforceAdapter, sandbox: httpx.Client
) -> None:
    item = WriteItem(record={"LastName": "Twice", "Email": "Twice@example.com"})
    first = adapter.write_one("Contact", "create", item, PARTIAL)

    second = adapter.write_one("Contact", "create", item, PARTIAL)

    assert first.success and second.success and first.record_id != second.record_id
    seen = stats(sandbox)
    assert (seen["duplicate_creates"], seen["records_stored"]) == (1, 2)


def test_a_malformed_collection_body_is_a_json_parser_error(sandbox: httpx.Client) -> None:
    response = sandbox.post(COLLECTIONS, json={"records": "nope"})

    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "JSON_PARSER_ERROR"


def test_a_missing_bearer_token_is_a_permanent_error(private_sandbox_url: str) -> None:
    with httpx.Client(base_url=private_sandbox_url, timeout=10) as client:
        adapter = SalesforceAdapter(client)

        with pytest.raises(PermanentProviderError) as raised:
            adapter.write_one("Contact", "create", contacts(1)[0], PARTIAL)
        outcome = adapter.write_batch("Contact", "create", contacts(2), PARTIAL)

    assert raised.value.status_code == 401
    assert raised.value.message == "INVALID_SESSION_ID: Session expired or invalid"
    assert {(r.status_code, r.retryable) for r in outcome.results} == {(401, False)}
