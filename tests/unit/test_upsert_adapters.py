"""Creates by a natural key are upserts: each adapter against the provider's documented
request and response, through httpx.MockTransport.

HubSpot: `POST /crm/v3/objects/{objectType}/batch/upsert`, inputs `{idProperty, id,
properties, objectWriteTraceId}`, results with `new`. Salesforce: `PATCH
/sobjects/{SObject}/{Field}/{value}` (201/200 `{id, success, errors, created}`) and
`PATCH /composite/sobjects/{SObject}/{Field}` (UpsertResults in input order). Opus:
`conflictOption: Overwrite` for a create by `rowKey`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from writejobs.errors import RetryableProviderError
from writejobs.providers.base import WriteItem, WriteOptions
from writejobs.providers.hubspot import HubSpotAdapter
from writejobs.providers.natural_keys import check_natural_key, key_value
from writejobs.providers.opus import OpusAdapter
from writejobs.providers.salesforce import SalesforceAdapter

Handler = Callable[[httpx.Request], httpx.Response]
BY_EMAIL = WriteOptions(natural_key="email")
BY_EXTERNAL_ID = WriteOptions(natural_key="External_Id__c")
SF = "/services/data/v60.0"


class Recorded:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.url.path) for r in self.requests]

    def body(self, index: int = 0) -> Any:
        return json.loads(self.requests[index].content)


@pytest.fixture
def client_for() -> Iterator[Callable[[Handler, str], tuple[httpx.Client, Recorded]]]:
    clients: list[httpx.Client] = []

    def make(handler: Handler, base_url: str) -> tuple[httpx.Client, Recorded]:
        recorded = Recorded(handler)
        client = httpx.Client(transport=httpx.MockTransport(recorded), base_url=base_url)
        clients.append(client)
        return client, recorded

    yield make
    for client in clients:
        client.close()


def _hubspot_result(record_id: str, trace_id: str, *, new: bool, email: str) -> dict[str, Any]:
    return {
        "id": record_id,
        "properties": {"email": email, "hs_object_id": record_id},
        "createdAt": "2025-03-06T22:09:00.000Z",
        "updatedAt": "2025-03-06T22:09:00.000Z",
        "archived": False,
        "new": new,
        "objectWriteTraceId": trace_id,
    }


def test_a_hubspot_batch_create_by_email_is_one_upsert_call_with_results_in_input_order(
    client_for: Callable[[Handler, str], tuple[httpx.Client, Recorded]],
) -> None:
    # given: HubSpot answers out of order; the second record already existed (new: false)
    def handler(request: httpx.Request) -> httpx.Response:
        results = [
            _hubspot_result("202", "1", new=False, email="b@example.com"),
            _hubspot_result("101", "0", new=True, email="a@example.com"),
        ]
        body = {"status": "COMPLETE", "results": results, "startedAt": "x", "completedAt": "y"}
        return httpx.Response(200, json=body)

    client, hubspot = client_for(handler, "https://api.hubapi.com")
    items = [
        WriteItem({"email": "a@example.com", "firstname": "A"}),
        WriteItem({"email": "b@example.com", "firstname": "B"}),
    ]

    outcome = HubSpotAdapter(client).write_batch("contacts", "create", items, BY_EMAIL)

    assert hubspot.calls() == [("POST", "/crm/v3/objects/contacts/batch/upsert")]
    assert hubspot.body() == {
        "inputs": [
            {
                "idProperty": "email",
                "id": "a@example.com",
                "properties": {"email": "a@example.com", "firstname": "A"},
                "objectWriteTraceId": "0",
            },
            {
                "idProperty": "email",
                "id": "b@example.com",
                "properties": {"email": "b@example.com", "firstname": "B"},
                "objectWriteTraceId": "1",
            },
        ]
    }
    # an upsert that updated an existing record is a success with that record's id
    assert [(r.success, r.record_id) for r in outcome.results] == [(True, "101"), (True, "202")]


def test_a_hubspot_batch_with_and_without_the_key_sends_upserts_and_creates_keeping_order(
    client_for: Callable[[Handler, str], tuple[httpx.Client, Recorded]],
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        inputs = json.loads(request.content)["inputs"]
        prefix = "u" if request.url.path.endswith("/upsert") else "c"
        results = [
            {"id": f"{prefix}{i['objectWriteTraceId']}", "properties": {}, "new": True}
            | {"objectWriteTraceId": i["objectWriteTraceId"]}
            for i in inputs
        ]
        return httpx.Response(201, json={"status": "COMPLETE", "results": results})

    client, hubspot = client_for(handler, "https://api.hubapi.com")
    items = [
        WriteItem({"email": "a@example.com"}),
        WriteItem({"firstname": "no email"}),
        WriteItem({"email": "c@example.com"}),
    ]

    outcome = HubSpotAdapter(client).write_batch("contacts", "create", items, BY_EMAIL)

    assert hubspot.calls() == [
        ("POST", "/crm/v3/objects/contacts/batch/upsert"),
        ("POST", "/crm/v3/objects/contacts/batch/create"),
    ]
    # upserts were positions 0 and 2 (trace ids 0, 1 of their call); the create position 1
    assert [r.record_id for r in outcome.results] == ["u0", "c0", "u1"]


def test_a_hubspot_upsert_error_fails_only_the_record_it_names(
    client_for: Callable[[Handler, str], tuple[httpx.Client, Recorded]],
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {
            "status": "COMPLETE",
            "results": [_hubspot_result("7", "0", new=True, email="a@example.com")],
            "numErrors": 1,
            "errors": [
                {
                    "status": "error",
                    "category": "VALIDATION_ERROR",
                    "message": "Property values were not valid",
                    "context": {"objectWriteTraceId": ["1"]},
                }
            ],
        }
        return httpx.Response(207, json=body)

    client, _ = client_for(handler, "https://api.hubapi.com")
    items = [WriteItem({"email": "a@example.com"}), WriteItem({"email": "bad@"})]

    outcome = HubSpotAdapter(client).write_batch("contacts", "create", items, BY_EMAIL)

    assert outcome.results[0].success and outcome.results[0].record_id == "7"
    assert not outcome.results[1].success
    assert outcome.results[1].error == "Property values were not valid"
    assert outcome.results[1].status_code == 400


def test_a_hubspot_single_create_by_email_goes_through_the_batch_upsert(
    client_for: Callable[[Handler, str], tuple[httpx.Client, Recorded]],
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        result = _hubspot_result("55", "0", new=False, email="a@example.com")
        return httpx.Response(200, json={"status": "COMPLETE", "results": [result]})

    client, hubspot = client_for(handler, "https://api.hubapi.com")

    result = HubSpotAdapter(client).write_one(
        "contacts", "create", WriteItem({"email": "a@example.com"}), BY_EMAIL
    )

    assert hubspot.calls() == [("POST", "/crm/v3/objects/contacts/batch/upsert")]
    assert result.success and result.record_id == "55"


def test_a_hubspot_single_upsert_that_hits_a_503_raises_as_a_create_would(
    client_for: Callable[[Handler, str], tuple[httpx.Client, Recorded]],
) -> None:
    client, _ = client_for(
        lambda r: httpx.Response(503, json={"message": "busy"}), "https://api.hubapi.com"
    )
    with pytest.raises(RetryableProviderError):
        HubSpotAdapter(client).write_one(
            "contacts", "create", WriteItem({"email": "a@example.com"}), BY_EMAIL
        )


def test_hubspot_records_with_associations_are_created_since_upserts_take_none(
    client_for: Callable[[Handler, str], tuple[httpx.Client, Recorded]],
) -> None:
    client, hubspot = client_for(
        lambda r: httpx.Response(201, json={"id": "9", "properties": {}}), "https://api.hubapi.com"
    )
    association = {"to": {"id": "1"}, "types": [{"associationTypeId": 1}]}
    item = WriteItem({"email": "a@example.com"}, [association])

    result = HubSpotAdapter(client).write_one("contacts", "create", item, BY_EMAIL)

    assert hubspot.calls() == [("POST", "/crm/v3/objects/contacts")]
    assert result.success and result.record_id == "9"


def test_a_salesforce_single_create_by_external_id_patches_the_value_and_reads_created(
    client_for: Callable[[Handler, str], tuple[httpx.Client, Recorded]],
) -> None:
    answers = iter(
        [
            httpx.Response(
                201, json={"id": "001A", "success": True, "errors": [], "created": True}
            ),
            httpx.Response(
                200, json={"id": "001A", "success": True, "errors": [], "created": False}
            ),
        ]
    )
    client, salesforce = client_for(lambda r: next(answers), "https://acme.my.salesforce.com")
    adapter = SalesforceAdapter(client)
    item = WriteItem({"Name": "Acme", "External_Id__c": "ACME/1"})

    first = adapter.write_one("Account", "create", item, BY_EXTERNAL_ID)
    again = adapter.write_one("Account", "create", item, BY_EXTERNAL_ID)

    # the value is quoted into the path; the field rides in the path, not the body
    assert salesforce.requests[0].method == "PATCH"
    assert salesforce.requests[0].url.raw_path == (
        f"{SF}/sobjects/Account/External_Id__c/ACME%2F1".encode()
    )
    assert salesforce.body() == {"Name": "Acme"}
    assert (first.success, first.record_id) == (True, "001A")
    assert (again.success, again.record_id) == (True, "001A")


def test_a_salesforce_value_held_by_several_records_fails_that_record(
    client_for: Callable[[Handler, str], tuple[httpx.Client, Recorded]],
) -> None:
    urls = [f"{SF}/sobjects/Account/001A", f"{SF}/sobjects/Account/001B"]
    client, _ = client_for(
        lambda r: httpx.Response(300, json=urls), "https://acme.my.salesforce.com"
    )

    result = SalesforceAdapter(client).write_one(
        "Account", "create", WriteItem({"Name": "A", "External_Id__c": "X"}), BY_EXTERNAL_ID
    )

    assert not result.success and result.status_code == 300
    assert result.error is not None and "more than one record" in result.error


def test_a_salesforce_batch_create_by_external_id_is_a_collection_upsert_in_input_order(
    client_for: Callable[[Handler, str], tuple[httpx.Client, Recorded]],
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/composite/sobjects"):
            return httpx.Response(200, json=[{"id": "001C", "success": True, "errors": []}])
        return httpx.Response(
            200,
            json=[
                {"id": "001A", "success": True, "errors": [], "created": False},
                {
                    "success": False,
                    "errors": [
                        {
                            "statusCode": "DUPLICATE_EXTERNAL_ID",
                            "message": "more than one record found",
                            "fields": [],
                        }
                    ],
                },
            ],
        )

    client, salesforce = client_for(handler, "https://acme.my.salesforce.com")
    items = [
        WriteItem({"Name": "A", "External_Id__c": "A-1"}),
        WriteItem({"Name": "no key"}),
        WriteItem({"Name": "B", "External_Id__c": "B-1"}),
    ]

    outcome = SalesforceAdapter(client).write_batch("Account", "create", items, BY_EXTERNAL_ID)

    assert salesforce.calls() == [
        ("PATCH", f"{SF}/composite/sobjects/Account/External_Id__c"),
        ("POST", f"{SF}/composite/sobjects"),
    ]
    assert salesforce.body(0) == {
        "allOrNone": False,
        "records": [
            {"Name": "A", "External_Id__c": "A-1", "attributes": {"type": "Account"}},
            {"Name": "B", "External_Id__c": "B-1", "attributes": {"type": "Account"}},
        ],
    }
    assert [(r.success, r.record_id) for r in outcome.results] == [
        (True, "001A"),
        (True, "001C"),
        (False, None),
    ]
    assert outcome.results[2].error == "DUPLICATE_EXTERNAL_ID: more than one record found"


def test_an_all_or_none_batch_mixing_keyed_and_unkeyed_records_is_one_create_call(
    client_for: Callable[[Handler, str], tuple[httpx.Client, Recorded]],
) -> None:
    saved = [{"id": f"001{i}", "success": True, "errors": []} for i in range(2)]
    client, salesforce = client_for(
        lambda r: httpx.Response(200, json=saved), "https://acme.my.salesforce.com"
    )
    items = [WriteItem({"Name": "A", "External_Id__c": "A-1"}), WriteItem({"Name": "B"})]
    options = WriteOptions(all_or_none=True, natural_key="External_Id__c")

    outcome = SalesforceAdapter(client).write_batch("Account", "create", items, options)

    # two calls could not be all or none together
    assert salesforce.calls() == [("POST", f"{SF}/composite/sobjects")]
    assert outcome.success_count == 2


def test_an_opus_create_by_row_key_submits_with_overwrite_and_without_one_with_skip(
    client_for: Callable[[Handler, str], tuple[httpx.Client, Recorded]],
) -> None:
    client, opus = client_for(
        lambda r: httpx.Response(201, json={"statusCode": 201, "message": None}),
        "https://graph-us.avepointonlineservices.com/records",
    )
    adapter = OpusAdapter(client)
    item = WriteItem({"rowKey": "r-1", "leafName": "Contract"})

    by_key = adapter.write_one("conn-1", "create", item, WriteOptions(natural_key="rowKey"))
    plain = adapter.write_one("conn-1", "create", item, WriteOptions())

    assert opus.body(0)["conflictOption"] == "Overwrite"
    assert opus.body(1)["conflictOption"] == "Skip"
    assert (by_key.success, by_key.record_id) == (True, "r-1")
    assert (plain.success, plain.record_id) == (True, "r-1")


def test_updates_are_never_upserts_even_with_a_natural_key(
    client_for: Callable[[Handler, str], tuple[httpx.Client, Recorded]],
) -> None:
    client, hubspot = client_for(
        lambda r: httpx.Response(200, json={"status": "COMPLETE", "results": [{"id": "1"}]}),
        "https://api.hubapi.com",
    )
    HubSpotAdapter(client).write_batch(
        "contacts", "update", [WriteItem({"id": "1", "email": "a@example.com"})], BY_EMAIL
    )
    assert hubspot.calls() == [("POST", "/crm/v3/objects/contacts/batch/update")]


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"email": "a@example.com"}, "a@example.com"),
        ({"email": " padded "}, "padded"),
        ({"email": 42}, "42"),
        ({"email": ""}, None),
        ({"email": None}, None),
        ({"email": True}, None),
        ({"email": {"nested": 1}}, None),
        ({}, None),
    ],
)
def test_only_a_non_empty_string_or_a_number_names_a_record(
    record: dict[str, Any], expected: str | None
) -> None:
    assert key_value(record, "email") == expected


@pytest.mark.parametrize(
    ("provider", "field", "problem"),
    [
        ("hubspot", "email", None),
        ("salesforce", "External_Id__c", None),
        ("opus", "rowKey", None),
        ("opus", "email", "rowKey only"),
        ("hubspot", "", "a field name"),
        ("salesforce", "Bad/Field", "a field name"),
        ("hubspot", "9lives", "a field name"),
    ],
)
def test_a_natural_key_is_a_field_name_and_for_opus_only_row_key(
    provider: str, field: str, problem: str | None
) -> None:
    if problem is None:
        assert check_natural_key(provider, field) == field
    else:
        with pytest.raises(ValueError, match=problem):
            check_natural_key(provider, field)
