"""OpusAdapter against canned AvePoint Opus answers, through httpx.MockTransport."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from writejobs.errors import PermanentProviderError, RetryableProviderError
from writejobs.providers.base import WriteItem, WriteOptions
from writejobs.providers.opus import OpusAdapter
from writejobs.providers.registry import build_adapter

NOW = datetime(2025, 3, 6, 22, 9, 0, tzinfo=UTC)
OPTIONS = WriteOptions()
CONNECTION = "4f1c2e8a-0000-4000-8000-00000000c0de"
SUBMITTED = {"statusCode": 201, "message": None}

Handler = Callable[[httpx.Request], httpx.Response]


class FakeOpus:
    """Answers each request with `handler` and keeps the requests for the assertions."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]


MakeAdapter = Callable[..., tuple[OpusAdapter, FakeOpus]]


@pytest.fixture
def make_adapter() -> Iterator[MakeAdapter]:
    clients: list[httpx.Client] = []

    def make(handler: Handler, **kwargs: Any) -> tuple[OpusAdapter, FakeOpus]:
        fake = FakeOpus(handler)
        client = httpx.Client(
            transport=httpx.MockTransport(fake),
            base_url="https://graph-us.avepointonlineservices.com/records",
            headers={"Authorization": "Bearer test-token"},
        )
        clients.append(client)
        return OpusAdapter(client, clock=lambda: NOW, **kwargs), fake

    yield make
    for client in clients:
        client.close()


def submitted(request: httpx.Request) -> httpx.Response:
    return httpx.Response(201, json=SUBMITTED)


def rows(count: int, start: int = 0) -> list[WriteItem]:
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
        )
        for i in range(start, start + count)
    ]


def test_a_create_submits_to_the_connection_with_skip(make_adapter: MakeAdapter) -> None:
    adapter, fake = make_adapter(submitted, connection_id=CONNECTION)
    item = rows(1)[0]

    result = adapter.write_one("contracts", "create", item, OPTIONS)

    assert result.success and result.record_id == "row-0"
    assert result.data is None
    request = fake.requests[0]
    assert request.method == "POST"
    assert request.url.path == "/records/connector/records"
    assert fake.bodies()[0] == {"id": CONNECTION, "conflictOption": "Skip", "data": [item.record]}


def test_an_update_submits_with_overwrite(make_adapter: MakeAdapter) -> None:
    adapter, fake = make_adapter(submitted, connection_id=CONNECTION)

    result = adapter.write_one("contracts", "update", rows(1)[0], OPTIONS)

    assert result.success
    assert fake.bodies()[0]["conflictOption"] == "Overwrite"


def test_conflict_options_can_be_configured(make_adapter: MakeAdapter) -> None:
    adapter, fake = make_adapter(
        submitted, create_conflict_option="Overwrite", update_conflict_option="Skip"
    )

    adapter.write_batch("contracts", "create", rows(1), OPTIONS)
    adapter.write_batch("contracts", "update", rows(1), OPTIONS)

    assert [b["conflictOption"] for b in fake.bodies()] == ["Overwrite", "Skip"]


def test_an_unknown_conflict_option_is_refused() -> None:
    with httpx.Client() as client, pytest.raises(ValueError, match="Replace"):
        OpusAdapter(client, create_conflict_option="Replace")


def test_without_a_connection_id_the_object_name_is_the_connection(
    make_adapter: MakeAdapter,
) -> None:
    adapter, fake = make_adapter(submitted)

    adapter.write_one(CONNECTION, "create", rows(1)[0], OPTIONS)

    assert fake.bodies()[0]["id"] == CONNECTION


def test_a_delete_fails_without_a_call(make_adapter: MakeAdapter) -> None:
    adapter, fake = make_adapter(submitted)

    result = adapter.write_one("contracts", "delete", WriteItem(record={"rowKey": "r"}), OPTIONS)

    assert not result.success and result.record_id == "r"
    assert result.error is not None and "cannot delete" in result.error
    assert fake.requests == []


def test_a_record_without_a_row_key_fails_without_a_call(make_adapter: MakeAdapter) -> None:
    adapter, fake = make_adapter(submitted)

    result = adapter.write_one("contracts", "create", WriteItem(record={"a": 1}), OPTIONS)

    assert not result.success and result.error == "an Opus record needs rowKey"
    assert fake.requests == []


def test_failed_items_are_matched_back_by_row_key(make_adapter: MakeAdapter) -> None:
    items = rows(3)
    failed = items[1].record | {"errorMessage": "The value of timeCreated is not a valid DateTime"}
    adapter, _ = make_adapter(
        lambda r: httpx.Response(
            201,
            json={
                "statusCode": 201,
                "message": "1 of 3 records failed to be submitted.",
                "failedItems": [failed],
            },
        )
    )

    outcome = adapter.write_batch("contracts", "create", items, OPTIONS)

    assert [(r.success, r.record_id) for r in outcome.results] == [
        (True, "row-0"),
        (False, "row-1"),
        (True, "row-2"),
    ]
    assert outcome.results[1].error == "The value of timeCreated is not a valid DateTime"
    assert not outcome.results[1].retryable
    assert outcome.errors == []


def test_a_failed_item_without_its_own_message_takes_the_responses(
    make_adapter: MakeAdapter,
) -> None:
    adapter, _ = make_adapter(
        lambda r: httpx.Response(
            201, json={"statusCode": 201, "message": "Some failed.", "failedItems": ["row-0"]}
        )
    )

    result = adapter.write_one("contracts", "create", rows(1)[0], OPTIONS)

    assert (result.success, result.error) == (False, "Some failed.")


def test_a_failed_item_naming_no_input_is_reported_at_the_top(make_adapter: MakeAdapter) -> None:
    adapter, _ = make_adapter(
        lambda r: httpx.Response(
            201,
            json={"statusCode": 201, "failedItems": [{"leafName": "?", "errorMessage": "bad"}]},
        )
    )

    outcome = adapter.write_batch("contracts", "create", rows(2), OPTIONS)

    assert outcome.success_count == 2
    assert outcome.errors == ["failed item (no rowKey): bad"]


def test_a_record_without_a_row_key_fails_alone_in_a_batch(make_adapter: MakeAdapter) -> None:
    adapter, fake = make_adapter(submitted)
    items = rows(2)
    items.insert(1, WriteItem(record={"leafName": "no key"}))

    outcome = adapter.write_batch("contracts", "create", items, OPTIONS)

    assert [r.success for r in outcome.results] == [True, False, True]
    assert [d["rowKey"] for d in fake.bodies()[0]["data"]] == ["row-0", "row-1"]


def test_an_expired_token_raises_from_write_one_and_fails_the_chunk_in_a_batch(
    make_adapter: MakeAdapter,
) -> None:
    adapter, _ = make_adapter(
        lambda r: httpx.Response(401, json={"statusCode": 401, "message": "Unauthorized"})
    )

    with pytest.raises(PermanentProviderError) as raised:
        adapter.write_one("contracts", "create", rows(1)[0], OPTIONS)
    outcome = adapter.write_batch("contracts", "create", rows(3), OPTIONS)

    assert (raised.value.status_code, raised.value.message) == (401, "Unauthorized")
    assert {(r.success, r.status_code, r.retryable) for r in outcome.results} == {
        (False, 401, False)
    }


def test_a_400_on_a_single_write_is_the_records_rejection(make_adapter: MakeAdapter) -> None:
    adapter, _ = make_adapter(
        lambda r: httpx.Response(400, json={"statusCode": 400, "message": "Invalid column value."})
    )

    result = adapter.write_one("contracts", "create", rows(1)[0], OPTIONS)

    assert (result.success, result.status_code, result.error) == (
        False,
        400,
        "Invalid column value.",
    )
    assert result.record_id == "row-0"


def test_a_429_raises_retryable_with_retry_after(make_adapter: MakeAdapter) -> None:
    adapter, _ = make_adapter(
        lambda r: httpx.Response(
            429,
            headers={"Retry-After": "20"},
            json={"statusCode": 429, "message": "Too many requests."},
        )
    )

    with pytest.raises(RetryableProviderError) as raised:
        adapter.write_one("contracts", "update", rows(1)[0], OPTIONS)

    assert raised.value.retry_after_s == 20.0


def test_a_rate_limited_chunk_is_retryable_and_keeps_the_other_chunks_results(
    make_adapter: MakeAdapter,
) -> None:
    answers = iter([201, 429, 503])

    def answer(request: httpx.Request) -> httpx.Response:
        status = next(answers)
        if status == 201:
            return submitted(request)
        return httpx.Response(
            status, headers={"Retry-After": str(status // 100)}, json={"message": "later"}
        )

    adapter, _ = make_adapter(answer)

    outcome = adapter.write_batch("contracts", "create", rows(40), OPTIONS)

    assert all(r.success for r in outcome.results[:15])
    assert all(r.retryable and r.status_code == 429 for r in outcome.results[15:30])
    assert all(r.retryable and r.status_code == 503 for r in outcome.results[30:])
    assert outcome.retry_after_s == 5.0


def test_100_records_become_seven_calls(make_adapter: MakeAdapter) -> None:
    adapter, fake = make_adapter(submitted)

    outcome = adapter.write_batch("contracts", "create", rows(100), OPTIONS)

    assert [len(b["data"]) for b in fake.bodies()] == [15] * 6 + [10]
    assert outcome.success_count == 100
    assert [r.record_id for r in outcome.results] == [f"row-{i}" for i in range(100)]


def test_registry_builds_the_opus_adapter() -> None:
    with httpx.Client() as client:
        adapter = build_adapter("opus", client)

    assert isinstance(adapter, OpusAdapter)
    assert adapter.max_batch_size == 15
