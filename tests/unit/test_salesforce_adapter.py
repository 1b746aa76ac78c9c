"""SalesforceAdapter against canned Salesforce answers, through httpx.MockTransport."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from writejobs.errors import PermanentProviderError, RetryableProviderError
from writejobs.providers.base import WriteItem, WriteOptions
from writejobs.providers.registry import build_adapter
from writejobs.providers.salesforce import SalesforceAdapter

NOW = datetime(2025, 3, 6, 22, 9, 0, tzinfo=UTC)
PARTIAL = WriteOptions(all_or_none=False)
ALL_OR_NONE = WriteOptions(all_or_none=True)
SOBJECTS = "/services/data/v60.0/sobjects"
COLLECTIONS = "/services/data/v60.0/composite/sobjects"
ROLLED_BACK = {
    "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "message": "Record rolled back because not all records were valid and the request was "
    "using AllOrNone header",
    "fields": [],
}

Handler = Callable[[httpx.Request], httpx.Response]


class FakeSalesforce:
    """Answers each request with `handler` and keeps the requests for the assertions."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def bodies(self) -> list[Any]:
        return [json.loads(r.content) if r.content else None for r in self.requests]


MakeAdapter = Callable[[Handler], tuple[SalesforceAdapter, FakeSalesforce]]


@pytest.fixture
def make_adapter() -> Iterator[MakeAdapter]:
    clients: list[httpx.Client] = []

    def make(handler: Handler) -> tuple[SalesforceAdapter, FakeSalesforce]:
        fake = FakeSalesforce(handler)
        client = httpx.Client(
            transport=httpx.MockTransport(fake),
            base_url="https://acme.my.salesforce.com",
            headers={"Authorization": "Bearer test-token"},
        )
        clients.append(client)
        return SalesforceAdapter(client, clock=lambda: NOW), fake

    yield make
    for client in clients:
        client.close()


def salesforce_error(status: int, code: str, message: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers, json=[{"message": message, "errorCode": code}])


def saved(record_id: str) -> dict[str, Any]:
    return {"id": record_id, "success": True, "errors": []}


def not_saved(code: str, message: str, fields: list[str] | None = None) -> dict[str, Any]:
    error = {"statusCode": code, "message": message, "fields": fields or []}
    return {"success": False, "errors": [error]}


def contacts(count: int) -> list[WriteItem]:
    return [
        WriteItem(record={"LastName": f"User {i}", "Email": f"user{i}@example.com"})
        for i in range(count)
    ]


def save_every_record(request: httpx.Request) -> httpx.Response:
    """Salesforce saving every record of a collection, ids numbered from 0 in each call."""
    records = json.loads(request.content)["records"]
    return httpx.Response(200, json=[saved(f"003{i:015d}") for i in range(len(records))])


# Single-record writes


def test_single_create_posts_the_record_and_returns_its_id(make_adapter: MakeAdapter) -> None:
    adapter, fake = make_adapter(lambda r: httpx.Response(201, json=saved("003Dn00000A1b2CAAR")))

    result = adapter.write_one(
        "Contact", "create", WriteItem(record={"LastName": "Lovelace"}), PARTIAL
    )

    assert result.success and result.record_id == "003Dn00000A1b2CAAR"
    assert result.data is None
    assert (fake.requests[0].method, fake.requests[0].url.path) == ("POST", f"{SOBJECTS}/Contact")
    assert fake.bodies()[0] == {"LastName": "Lovelace"}


def test_single_update_patches_without_the_id_and_succeeds_on_204(
    make_adapter: MakeAdapter,
) -> None:
    adapter, fake = make_adapter(lambda r: httpx.Response(204))

    result = adapter.write_one(
        "Contact", "update", WriteItem(record={"id": "003A", "Title": "CTO"}), PARTIAL
    )

    assert result.success and result.record_id == "003A"
    assert (fake.requests[0].method, fake.requests[0].url.path) == (
        "PATCH",
        f"{SOBJECTS}/Contact/003A",
    )
    assert fake.bodies()[0] == {"Title": "CTO"}


def test_delete_succeeds_on_any_2xx(make_adapter: MakeAdapter) -> None:
    adapter, fake = make_adapter(lambda r: httpx.Response(204))

    result = adapter.write_one("Contact", "delete", WriteItem(record={"Id": "003B"}), PARTIAL)

    assert result.success and result.record_id == "003B"
    assert (fake.requests[0].method, fake.requests[0].url.path) == (
        "DELETE",
        f"{SOBJECTS}/Contact/003B",
    )


def test_an_invalid_email_is_a_failed_record_prefixed_with_its_error_code(
    make_adapter: MakeAdapter,
) -> None:
    adapter, _ = make_adapter(
        lambda r: httpx.Response(
            400,
            json=[
                {
                    "message": "Email: invalid email address: x",
                    "errorCode": "INVALID_EMAIL_ADDRESS",
                    "fields": ["Email"],
                }
            ],
        )
    )

    result = adapter.write_one(
        "Contact", "create", WriteItem(record={"LastName": "X", "Email": "x"}), PARTIAL
    )

    assert not result.success and not result.retryable
    assert result.error == "INVALID_EMAIL_ADDRESS: Email: invalid email address: x"
    assert result.status_code == 400


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("NOT_FOUND", "The requested resource does not exist"),
        ("ENTITY_IS_DELETED", "entity is deleted"),
    ],
)
def test_update_of_a_missing_record_is_a_failed_record(
    make_adapter: MakeAdapter, code: str, message: str
) -> None:
    adapter, _ = make_adapter(lambda r: salesforce_error(404, code, message))

    result = adapter.write_one("Contact", "update", WriteItem(record={"id": "003Z"}), PARTIAL)

    assert (result.success, result.error, result.status_code) == (False, f"{code}: {message}", 404)


def test_an_update_without_an_id_fails_without_a_call(make_adapter: MakeAdapter) -> None:
    adapter, fake = make_adapter(lambda r: httpx.Response(204))

    result = adapter.write_one("Contact", "update", WriteItem(record={"Title": "CTO"}), PARTIAL)

    assert not result.success and result.error == "a Salesforce update needs record.id"
    assert fake.requests == []


def test_an_expired_session_raises_a_permanent_error(make_adapter: MakeAdapter) -> None:
    adapter, _ = make_adapter(
        lambda r: salesforce_error(401, "INVALID_SESSION_ID", "Session expired or invalid")
    )

    with pytest.raises(PermanentProviderError) as raised:
        adapter.write_one("Contact", "create", contacts(1)[0], PARTIAL)

    assert raised.value.status_code == 401 and raised.value.provider == "salesforce"
    assert raised.value.message == "INVALID_SESSION_ID: Session expired or invalid"


def test_a_403_raises_a_permanent_error(make_adapter: MakeAdapter) -> None:
    adapter, _ = make_adapter(
        lambda r: salesforce_error(
            403, "INSUFFICIENT_ACCESS_OR_READONLY", "insufficient access rights on object id"
        )
    )

    with pytest.raises(PermanentProviderError) as raised:
        adapter.write_one("Contact", "delete", WriteItem(record={"id": "003A"}), PARTIAL)

    assert raised.value.status_code == 403


def test_request_limit_exceeded_is_retryable_even_with_a_403(make_adapter: MakeAdapter) -> None:
    adapter, _ = make_adapter(
        lambda r: salesforce_error(
            403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.", **{"Retry-After": "30"}
        )
    )

    with pytest.raises(RetryableProviderError) as raised:
        adapter.write_one("Contact", "create", contacts(1)[0], PARTIAL)

    assert raised.value.retry_after_s == 30.0
    assert raised.value.message == "REQUEST_LIMIT_EXCEEDED: TotalRequests Limit exceeded."


@pytest.mark.parametrize(
    ("status", "code"), [(400, "UNABLE_TO_LOCK_ROW"), (503, "SERVER_UNAVAILABLE")]
)
def test_lock_and_availability_errors_are_retryable(
    make_adapter: MakeAdapter, status: int, code: str
) -> None:
    adapter, _ = make_adapter(lambda r: salesforce_error(status, code, "try again"))

    with pytest.raises(RetryableProviderError) as raised:
        adapter.write_one("Contact", "update", WriteItem(record={"id": "003A"}), PARTIAL)

    assert raised.value.status_code == status


def test_a_timeout_is_retryable(make_adapter: MakeAdapter) -> None:
    def time_out(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    adapter, _ = make_adapter(time_out)

    with pytest.raises(RetryableProviderError) as raised:
        adapter.write_one("Contact", "create", contacts(1)[0], PARTIAL)

    assert raised.value.status_code is None
    assert raised.value.message == "Salesforce unreachable: timed out"


def test_request_headers_are_forwarded_and_override_the_clients(
    make_adapter: MakeAdapter,
) -> None:
    adapter, fake = make_adapter(lambda r: httpx.Response(201, json=saved("003A")))
    options = WriteOptions(
        headers=[
            ("Sforce-Duplicate-Rule-Header", "allowSave=true"),
            ("Authorization", "Bearer someone-elses-token"),
        ]
    )

    adapter.write_one("Contact", "create", contacts(1)[0], options)
    adapter.write_one("Contact", "update", WriteItem(record={"id": "003A"}), options)
    adapter.write_batch("Contact", "create", contacts(1), options)

    for request in fake.requests:
        assert request.headers["Sforce-Duplicate-Rule-Header"] == "allowSave=true"
        # The installation's credentials are never the caller's to replace.
        assert request.headers["Authorization"] == "Bearer test-token"


def test_only_the_request_headers_salesforce_defines_are_forwarded(
    make_adapter: MakeAdapter,
) -> None:
    adapter, fake = make_adapter(lambda r: httpx.Response(201, json=saved("003A")))
    defined = [
        ("Sforce-Auto-Assign", "FALSE"),
        ("sforce-call-options", "client=acme"),
        ("Sforce-Mru", "updateMru=true"),
        ("Sforce-Query-Options", "batchSize=1000"),
        ("If-Unmodified-Since", "Tue, 10 Aug 2026 00:00:00 GMT"),
        ("If-Match", '"abc"'),
        ("x-sfdc-packageversion-acme", "1.0"),
    ]
    foreign = [
        ("Cookie", "sid=stolen"),
        ("Proxy-Authorization", "Basic eDp5"),
        ("Connection", "close"),
        ("Expect", "100-continue"),
        ("Host", "evil.example"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("Content-Type", "text/plain"),
    ]

    adapter.write_one("Contact", "create", contacts(1)[0], WriteOptions(headers=defined + foreign))

    sent = fake.requests[0].headers
    for name, value in defined:
        assert sent[name] == value
    assert "cookie" not in sent and "proxy-authorization" not in sent and "expect" not in sent
    assert sent.get("connection") != "close" and "x-forwarded-for" not in sent
    assert sent["host"] != "evil.example" and sent["content-type"] == "application/json"


# sObject Collections


def test_a_collection_create_sends_attributes_and_reads_results_by_position(
    make_adapter: MakeAdapter,
) -> None:
    adapter, fake = make_adapter(
        lambda r: httpx.Response(
            200,
            json=[
                saved("003A"),
                not_saved("INVALID_EMAIL_ADDRESS", "Email: invalid email address: nope", ["Email"]),
                saved("003C"),
            ],
        )
    )

    outcome = adapter.write_batch("Contact", "create", contacts(3), PARTIAL)

    assert (fake.requests[0].method, fake.requests[0].url.path) == ("POST", COLLECTIONS)
    body = fake.bodies()[0]
    assert body["allOrNone"] is False
    assert body["records"][0] == {
        "LastName": "User 0",
        "Email": "user0@example.com",
        "attributes": {"type": "Contact"},
    }
    first, second, third = outcome.results
    assert (first.success, first.record_id) == (True, "003A")
    assert (second.success, second.retryable) == (False, False)
    assert second.error == "INVALID_EMAIL_ADDRESS: Email: invalid email address: nope"
    assert (third.success, third.record_id) == (True, "003C")
    assert outcome.errors == []


def test_a_collection_update_patches_records_with_their_ids(make_adapter: MakeAdapter) -> None:
    adapter, fake = make_adapter(lambda r: httpx.Response(200, json=[saved("003A")]))

    outcome = adapter.write_batch(
        "Contact", "update", [WriteItem(record={"id": "003A", "Title": "CTO"})], PARTIAL
    )

    assert outcome.success_count == 1
    assert (fake.requests[0].method, fake.requests[0].url.path) == ("PATCH", COLLECTIONS)
    assert fake.bodies()[0]["records"] == [
        {"Title": "CTO", "id": "003A", "attributes": {"type": "Contact"}}
    ]


def test_all_or_none_rollback_fails_every_record_and_none_is_retryable(
    make_adapter: MakeAdapter,
) -> None:
    adapter, fake = make_adapter(
        lambda r: httpx.Response(
            200,
            json=[
                not_saved("REQUIRED_FIELD_MISSING", "Required fields are missing: [LastName]"),
                {"success": False, "errors": [ROLLED_BACK]},
            ],
        )
    )

    outcome = adapter.write_batch(
        "Contact", "create", [WriteItem(record={}), contacts(1)[0]], ALL_OR_NONE
    )

    assert fake.bodies()[0]["allOrNone"] is True
    assert outcome.failure_count == 2
    assert outcome.results[0].error == (
        "REQUIRED_FIELD_MISSING: Required fields are missing: [LastName]"
    )
    rolled_back = outcome.results[1]
    assert rolled_back.error is not None and "rolled back" in rolled_back.error
    assert rolled_back.error.startswith("ALL_OR_NONE_OPERATION_ROLLED_BACK: ")
    assert not any(r.retryable for r in outcome.results)


def test_a_400_with_save_results_is_read_as_results(make_adapter: MakeAdapter) -> None:
    adapter, _ = make_adapter(
        lambda r: httpx.Response(
            400,
            json=[
                not_saved("INVALID_FIELD", "No such column 'Nope' on sobject of type Contact"),
                {"success": False, "errors": [ROLLED_BACK]},
            ],
        )
    )

    outcome = adapter.write_batch("Contact", "create", contacts(2), ALL_OR_NONE)

    assert [r.error.split(":")[0] for r in outcome.results if r.error] == [
        "INVALID_FIELD",
        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    ]
    assert {r.status_code for r in outcome.results} == {None}


def test_a_locked_row_in_a_collection_marks_that_record_retryable(
    make_adapter: MakeAdapter,
) -> None:
    adapter, _ = make_adapter(
        lambda r: httpx.Response(
            200,
            json=[
                saved("003A"),
                not_saved("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record"),
            ],
        )
    )

    outcome = adapter.write_batch(
        "Contact",
        "update",
        [WriteItem(record={"id": "003A"}), WriteItem(record={"id": "003B"})],
        PARTIAL,
    )

    assert [(r.success, r.retryable) for r in outcome.results] == [(True, False), (False, True)]


def test_a_missing_save_result_fails_its_record_and_is_reported(
    make_adapter: MakeAdapter,
) -> None:
    adapter, _ = make_adapter(lambda r: httpx.Response(200, json=[saved("003A")]))

    outcome = adapter.write_batch("Contact", "create", contacts(2), PARTIAL)

    assert [r.success for r in outcome.results] == [True, False]
    assert outcome.results[1].error == "Salesforce returned no result for this record"
    assert outcome.errors == ["Salesforce returned 1 results for 2 records"]


def test_a_collection_error_fails_the_whole_chunk(make_adapter: MakeAdapter) -> None:
    adapter, _ = make_adapter(
        lambda r: salesforce_error(
            400,
            "EXCEEDED_ID_LIMIT",
            "record limit reached. cannot submit more than 200 records into this call",
        )
    )

    outcome = adapter.write_batch("Contact", "create", contacts(2), PARTIAL)

    assert outcome.failure_count == 2
    assert {(r.status_code, r.retryable) for r in outcome.results} == {(400, False)}
    assert outcome.results[0].error is not None
    assert outcome.results[0].error.startswith("EXCEEDED_ID_LIMIT: ")


def test_an_expired_session_fails_the_chunk_without_raising(make_adapter: MakeAdapter) -> None:
    adapter, _ = make_adapter(
        lambda r: salesforce_error(401, "INVALID_SESSION_ID", "Session expired or invalid")
    )

    outcome = adapter.write_batch("Contact", "create", contacts(3), PARTIAL)

    assert outcome.failure_count == 3
    assert {(r.status_code, r.retryable, r.error) for r in outcome.results} == {
        (401, False, "INVALID_SESSION_ID: Session expired or invalid")
    }
    assert outcome.retry_after_s is None


def test_a_rate_limited_chunk_is_retryable_and_keeps_the_other_chunks_results(
    make_adapter: MakeAdapter,
) -> None:
    calls = iter(["ok", "limited"])

    def answer(request: httpx.Request) -> httpx.Response:
        if next(calls) == "ok":
            return save_every_record(request)
        return salesforce_error(
            403,
            "REQUEST_LIMIT_EXCEEDED",
            "TotalRequests Limit exceeded.",
            **{"Retry-After": "Thu, 06 Mar 2025 22:10:00 GMT"},
        )

    adapter, _ = make_adapter(answer)

    outcome = adapter.write_batch("Contact", "create", contacts(250), PARTIAL)

    assert outcome.success_count == 200
    assert all(r.retryable and r.status_code == 403 for r in outcome.results[200:])
    assert outcome.retry_after_s == 60.0


def test_a_429_chunk_carries_retry_after_seconds(make_adapter: MakeAdapter) -> None:
    adapter, _ = make_adapter(
        lambda r: httpx.Response(429, headers={"Retry-After": "12"}, text="Too Many Requests")
    )

    outcome = adapter.write_batch("Contact", "create", contacts(2), PARTIAL)

    assert all(r.retryable and r.error == "Too Many Requests" for r in outcome.results)
    assert outcome.retry_after_s == 12.0


def test_250_records_become_two_calls_of_200_and_50(make_adapter: MakeAdapter) -> None:
    adapter, fake = make_adapter(save_every_record)

    outcome = adapter.write_batch("Contact", "create", contacts(250), PARTIAL)

    assert [len(b["records"]) for b in fake.bodies()] == [200, 50]
    assert outcome.success_count == 250
    assert outcome.results[200].record_id == "003000000000000000"


def test_an_update_without_an_id_fails_alone_when_partial(make_adapter: MakeAdapter) -> None:
    adapter, fake = make_adapter(lambda r: httpx.Response(200, json=[saved("003B")]))

    outcome = adapter.write_batch(
        "Contact", "update", [WriteItem(record={"x": 1}), WriteItem(record={"id": "003B"})], PARTIAL
    )

    assert [r.success for r in outcome.results] == [False, True]
    assert [r["id"] for r in fake.bodies()[0]["records"]] == ["003B"]


def test_an_all_or_none_update_with_a_record_lacking_an_id_sends_nothing(
    make_adapter: MakeAdapter,
) -> None:
    adapter, fake = make_adapter(lambda r: httpx.Response(200, json=[saved("003B")]))

    outcome = adapter.write_batch(
        "Contact",
        "update",
        [WriteItem(record={"x": 1}), WriteItem(record={"id": "003B"})],
        ALL_OR_NONE,
    )

    assert outcome.failure_count == 2
    assert fake.requests == []


def test_an_unreadable_2xx_fails_the_chunk_permanently(make_adapter: MakeAdapter) -> None:
    adapter, _ = make_adapter(lambda r: httpx.Response(200, text="<html>maintenance</html>"))

    outcome = adapter.write_batch("Contact", "create", contacts(1), PARTIAL)

    assert not outcome.results[0].success and not outcome.results[0].retryable


def test_registry_builds_the_salesforce_adapter() -> None:
    with httpx.Client() as client:
        adapter = build_adapter("salesforce", client)

    assert isinstance(adapter, SalesforceAdapter)
    assert adapter.max_batch_size == 200
