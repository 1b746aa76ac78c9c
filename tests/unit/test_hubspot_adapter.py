"""HubSpotAdapter against canned HubSpot answers, through httpx.MockTransport."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from writejobs.errors import ContractError, PermanentProviderError, RetryableProviderError
from writejobs.providers.base import WriteItem, WriteOptions
from writejobs.providers.hubspot import HubSpotAdapter, parse_retry_after
from writejobs.providers.registry import build_adapter

NOW = datetime(2025, 3, 6, 22, 9, 0, tzinfo=UTC)
PARTIAL = WriteOptions(all_or_none=False)
ALL_OR_NONE = WriteOptions(all_or_none=True)
INVALID_EMAIL = (
    'Property values were not valid: [{"isValid":false,"message":"Email address nope is '
    'invalid","error":"INVALID_EMAIL","name":"email"}]'
)

Handler = Callable[[httpx.Request], httpx.Response]


class FakeHubSpot:
    """Answers each request with `handler` and keeps the requests for the assertions."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]


MakeAdapter = Callable[[Handler], tuple[HubSpotAdapter, FakeHubSpot]]


@pytest.fixture
def make_adapter() -> Iterator[MakeAdapter]:
    clients: list[httpx.Client] = []

    def make(handler: Handler) -> tuple[HubSpotAdapter, FakeHubSpot]:
        fake = FakeHubSpot(handler)
        client = httpx.Client(
            transport=httpx.MockTransport(fake),
            base_url="https://api.hubapi.com",
            headers={"Authorization": "Bearer test-token"},
        )
        clients.append(client)
        return HubSpotAdapter(client, clock=lambda: NOW), fake

    yield make
    for client in clients:
        client.close()


def record(record_id: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": record_id,
        "properties": properties | {"hs_object_id": record_id},
        "createdAt": "2025-03-06T22:09:00.000Z",
        "updatedAt": "2025-03-06T22:09:00.000Z",
        "archived": False,
    } | extra


def hubspot_error(status: int, category: str, message: str) -> httpx.Response:
    body = {"status": "error", "message": message, "category": category, "correlationId": "c-1"}
    return httpx.Response(status, json=body)


def items(count: int) -> list[WriteItem]:
    return [WriteItem(record={"email": f"user{i}@example.com"}) for i in range(count)]


def echo_batch_create(request: httpx.Request) -> httpx.Response:
    """HubSpot creating every input, answering in reverse order to prove matching."""
    inputs = json.loads(request.content)["inputs"]
    results = [
        record(str(1000 + i), entry["properties"], objectWriteTraceId=entry["objectWriteTraceId"])
        for i, entry in enumerate(inputs)
    ]
    return httpx.Response(201, json={"status": "COMPLETE", "results": results[::-1]})


# Single-record writes


def test_single_create_posts_properties_and_associations_and_returns_the_record(
    make_adapter: MakeAdapter,
) -> None:
    association = {"to": {"id": "18417469260"}, "types": [{"associationTypeId": 279}]}
    adapter, fake = make_adapter(
        lambda request: httpx.Response(201, json=record("51", {"email": "a@example.com"}))
    )

    result = adapter.write_one(
        "contacts",
        "create",
        WriteItem(record={"email": "a@example.com"}, associations=[association]),
        PARTIAL,
    )

    assert result.success and result.record_id == "51"
    assert result.data == {"email": "a@example.com", "hs_object_id": "51"}
    assert fake.requests[0].method == "POST"
    assert fake.requests[0].url.path == "/crm/v3/objects/contacts"
    assert fake.bodies()[0] == {
        "properties": {"email": "a@example.com"},
        "associations": [association],
    }


def test_single_create_with_an_invalid_email_is_a_failed_record_not_an_exception(
    make_adapter: MakeAdapter,
) -> None:
    adapter, _ = make_adapter(lambda r: hubspot_error(400, "VALIDATION_ERROR", INVALID_EMAIL))

    result = adapter.write_one("contacts", "create", WriteItem(record={"email": "nope"}), PARTIAL)

    assert not result.success and not result.retryable
    assert result.error == INVALID_EMAIL
    assert result.status_code == 400


def test_update_of_an_unknown_id_is_a_failed_record_and_the_id_goes_in_the_path(
    make_adapter: MakeAdapter,
) -> None:
    adapter, fake = make_adapter(
        lambda r: hubspot_error(404, "OBJECT_NOT_FOUND", "resource not found")
    )

    result = adapter.write_one(
        "contacts", "update", WriteItem(record={"id": "123", "firstname": "Ada"}), PARTIAL
    )

    assert not result.success
    assert (result.error, result.status_code) == ("resource not found", 404)
    assert fake.requests[0].method == "PATCH"
    assert fake.requests[0].url.path == "/crm/v3/objects/contacts/123"
    assert fake.bodies()[0] == {"properties": {"firstname": "Ada"}}


def test_delete_succeeds_on_204_with_the_given_id(make_adapter: MakeAdapter) -> None:
    adapter, fake = make_adapter(lambda r: httpx.Response(204))

    result = adapter.write_one("contacts", "delete", WriteItem(record={"id": "77"}), PARTIAL)

    assert result.success and result.record_id == "77"
    assert (fake.requests[0].method, fake.requests[0].url.path) == (
        "DELETE",
        "/crm/v3/objects/contacts/77",
    )


def test_single_write_raises_permanent_error_on_bad_credentials(make_adapter: MakeAdapter) -> None:
    adapter, _ = make_adapter(
        lambda r: hubspot_error(
            401, "INVALID_AUTHENTICATION", "Authentication credentials not found."
        )
    )

    with pytest.raises(PermanentProviderError) as raised:
        adapter.write_one("contacts", "create", WriteItem(record={}), PARTIAL)

    assert raised.value.status_code == 401 and raised.value.provider == "hubspot"


def test_single_write_raises_retryable_error_on_429_with_retry_after_seconds(
    make_adapter: MakeAdapter,
) -> None:
    adapter, _ = make_adapter(
        lambda r: httpx.Response(
            429, headers={"Retry-After": "7"}, json={"message": "You have reached your limit."}
        )
    )

    with pytest.raises(RetryableProviderError) as raised:
        adapter.write_one("contacts", "create", WriteItem(record={}), PARTIAL)

    assert raised.value.retry_after_s == 7.0
    assert raised.value.message == "You have reached your limit."


def test_connection_error_is_retryable(make_adapter: MakeAdapter) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    adapter, _ = make_adapter(refuse)

    with pytest.raises(RetryableProviderError) as raised:
        adapter.write_one("contacts", "create", WriteItem(record={}), PARTIAL)

    assert raised.value.status_code is None


# Batches


def test_batch_create_results_come_back_in_input_order(make_adapter: MakeAdapter) -> None:
    adapter, fake = make_adapter(echo_batch_create)

    outcome = adapter.write_batch("contacts", "create", items(3), PARTIAL)

    assert [r.record_id for r in outcome.results] == ["1000", "1001", "1002"]
    assert outcome.success_count == 3 and outcome.errors == []
    assert fake.requests[0].url.path == "/crm/v3/objects/contacts/batch/create"
    assert [i["objectWriteTraceId"] for i in fake.bodies()[0]["inputs"]] == ["0", "1", "2"]


def test_partial_batch_results_are_matched_by_trace_id(make_adapter: MakeAdapter) -> None:
    body = {
        "status": "COMPLETE",
        "results": [
            record("12", {"email": "user2@example.com"}, objectWriteTraceId="2"),
            record("10", {"email": "user0@example.com"}, objectWriteTraceId="0"),
        ],
        "numErrors": 1,
        "errors": [
            {
                "status": "error",
                "category": "VALIDATION_ERROR",
                "message": INVALID_EMAIL,
                "context": {"objectWriteTraceId": ["1"]},
            }
        ],
    }
    adapter, _ = make_adapter(lambda r: httpx.Response(207, json=body))

    outcome = adapter.write_batch("contacts", "create", items(3), PARTIAL)

    first, second, third = outcome.results
    assert (first.success, first.record_id) == (True, "10")
    assert (second.success, second.error, second.status_code) == (False, INVALID_EMAIL, 400)
    assert not second.retryable
    assert (third.success, third.record_id) == (True, "12")


def test_all_or_none_sends_no_trace_ids_and_a_400_fails_the_whole_chunk(
    make_adapter: MakeAdapter,
) -> None:
    adapter, fake = make_adapter(lambda r: hubspot_error(400, "VALIDATION_ERROR", INVALID_EMAIL))

    outcome = adapter.write_batch("contacts", "create", items(3), ALL_OR_NONE)

    assert all("objectWriteTraceId" not in i for i in fake.bodies()[0]["inputs"])
    assert outcome.failure_count == 3
    assert {(r.error, r.status_code, r.retryable) for r in outcome.results} == {
        (INVALID_EMAIL, 400, False)
    }
    assert outcome.retry_after_s is None


def test_batch_update_is_matched_by_context_ids(make_adapter: MakeAdapter) -> None:
    body = {
        "status": "COMPLETE",
        "results": [record("3", {"firstname": "C"}), record("1", {"firstname": "A"})],
        "numErrors": 1,
        "errors": [
            {
                "status": "error",
                "category": "OBJECT_NOT_FOUND",
                "message": "Could not get some CONTACT objects, they may be deleted or not exist.",
                "context": {"ids": ["2"]},
            }
        ],
    }
    adapter, fake = make_adapter(lambda r: httpx.Response(207, json=body))
    updates = [
        WriteItem(record={"id": str(i), "firstname": name})
        for i, name in [(1, "A"), (2, "B"), (3, "C")]
    ]

    outcome = adapter.write_batch("contacts", "update", updates, PARTIAL)

    assert [(r.success, r.record_id, r.status_code) for r in outcome.results] == [
        (True, "1", None),
        (False, None, 404),
        (True, "3", None),
    ]
    assert fake.requests[0].url.path == "/crm/v3/objects/contacts/batch/update"
    assert fake.bodies()[0]["inputs"][0] == {"id": "1", "properties": {"firstname": "A"}}


def test_batch_429_marks_records_retryable_with_retry_after_from_seconds(
    make_adapter: MakeAdapter,
) -> None:
    adapter, _ = make_adapter(
        lambda r: httpx.Response(429, headers={"Retry-After": "10"}, json={"message": "limit"})
    )

    outcome = adapter.write_batch("contacts", "create", items(2), PARTIAL)

    assert all(r.retryable and r.status_code == 429 and r.error == "limit" for r in outcome.results)
    assert outcome.retry_after_s == 10.0


def test_batch_429_with_retry_after_as_http_date_waits_until_that_time(
    make_adapter: MakeAdapter,
) -> None:
    adapter, _ = make_adapter(
        lambda r: httpx.Response(
            429, headers={"Retry-After": "Thu, 06 Mar 2025 22:09:49 GMT"}, json={"message": "x"}
        )
    )

    outcome = adapter.write_batch("contacts", "create", items(1), PARTIAL)

    assert outcome.retry_after_s == 49.0
    assert outcome.results[0].retryable


def test_503_marks_its_chunk_retryable_and_keeps_the_other_chunks_results(
    make_adapter: MakeAdapter,
) -> None:
    calls = iter(["ok", "unavailable", "ok"])

    def answer(request: httpx.Request) -> httpx.Response:
        if next(calls) == "ok":
            return echo_batch_create(request)
        return httpx.Response(503, headers={"Retry-After": "3"}, text="Service Unavailable")

    adapter, _ = make_adapter(answer)

    outcome = adapter.write_batch("contacts", "create", items(250), PARTIAL)

    assert len(outcome.results) == 250
    assert all(r.success for r in outcome.results[:100] + outcome.results[200:])
    assert all(r.retryable and r.status_code == 503 for r in outcome.results[100:200])
    assert outcome.results[100].error == "Service Unavailable"
    assert outcome.retry_after_s == 3.0


def test_250_records_become_three_calls_of_100_100_and_50(make_adapter: MakeAdapter) -> None:
    adapter, fake = make_adapter(echo_batch_create)

    outcome = adapter.write_batch("contacts", "create", items(250), PARTIAL)

    assert [len(b["inputs"]) for b in fake.bodies()] == [100, 100, 50]
    # Trace ids are positions within each chunk, so each call starts again at "0".
    assert [b["inputs"][0]["objectWriteTraceId"] for b in fake.bodies()] == ["0", "0", "0"]
    assert outcome.success_count == 250
    assert outcome.results[249].record_id == "1049"


def test_update_without_an_id_fails_alone_and_is_not_sent(make_adapter: MakeAdapter) -> None:
    adapter, fake = make_adapter(
        lambda r: httpx.Response(200, json={"status": "COMPLETE", "results": [record("5", {})]})
    )

    outcome = adapter.write_batch(
        "contacts", "update", [WriteItem(record={"x": 1}), WriteItem(record={"id": "5"})], PARTIAL
    )

    assert [r.success for r in outcome.results] == [False, True]
    assert [i["id"] for i in fake.bodies()[0]["inputs"]] == ["5"]


# Pure helpers


@pytest.mark.parametrize(
    ("header", "expected_s"),
    [
        (None, None),
        ("", None),
        ("0", 0.0),
        ("2.5", 2.5),
        ("-4", 0.0),
        ("Thu, 06 Mar 2025 22:10:00 GMT", 60.0),
        ("Thu, 06 Mar 2025 22:08:00 GMT", 0.0),
        ("soon", None),
    ],
)
def test_retry_after_is_read_as_seconds_or_http_date(
    header: str | None, expected_s: float | None
) -> None:
    assert parse_retry_after(header, now=NOW) == expected_s


def test_unknown_provider_is_a_contract_error() -> None:
    with httpx.Client() as client, pytest.raises(ContractError, match="nosuchcrm"):
        build_adapter("nosuchcrm", client)


def test_registry_builds_the_hubspot_adapter() -> None:
    with httpx.Client() as client:
        assert isinstance(build_adapter("hubspot", client), HubSpotAdapter)
