"""The webhook pieces that do no I/O: retry times, disabling, the payload and its cap."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from tests.support.contract import assert_notification_schema
from writejobs.core.webhook_payload import Finished, render
from writejobs.core.webhook_policy import RetryPolicy, next_delivery_at, should_disable
from writejobs.execution.fetch_guard import UnsafeUrl
from writejobs.execution.webhook_http import check_destination_url, signed_headers
from writejobs.store.webhook_destinations import new_secret

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAY = RetryPolicy()


@pytest.mark.parametrize(
    "attempts, low_s, high_s",
    [(1, 2.5, 5.0), (2, 5.0, 10.0), (3, 10.0, 20.0), (10, 1280.0, 2560.0), (12, 1800.0, 3600.0)],
)
def test_the_wait_after_a_failed_attempt_doubles_with_jitter_up_to_the_cap(
    attempts: int, low_s: float, high_s: float
) -> None:
    rng = random.Random(1)
    for _ in range(50):
        at = next_delivery_at(attempts, T0, T0, DAY, rng)
        assert at is not None
        assert low_s <= (at - T0).total_seconds() <= high_s


def test_retries_cover_the_whole_window_and_the_last_is_at_its_end() -> None:
    rng = random.Random(2)
    now, attempts, times = T0, 1, []
    while (at := next_delivery_at(attempts, T0, now, DAY, rng)) is not None:
        times.append(at)
        now, attempts = at, attempts + 1
    assert times[-1] == T0 + timedelta(hours=24)
    assert times == sorted(times) and len(times) < 60


def test_a_destination_is_disabled_after_its_failing_run_or_n_failures_in_a_row() -> None:
    five_days = 5 * 86400.0
    assert not should_disable(
        500, T0, T0 + timedelta(days=4), disable_after_s=five_days, disable_after_failures=0
    )
    assert should_disable(
        2, T0, T0 + timedelta(days=5), disable_after_s=five_days, disable_after_failures=0
    )
    assert should_disable(3, T0, T0, disable_after_s=five_days, disable_after_failures=3)
    assert not should_disable(2, T0, T0, disable_after_s=five_days, disable_after_failures=3)


def _finished(n: int, **overrides: Any) -> Finished:
    results: list[dict[str, Any]] = [
        {"success": True, "recordId": str(1000 + i)}
        if i % 2 == 0
        else {"success": False, "error": "Email address is invalid " + "x" * 100}
        for i in range(n)
    ]
    values: dict[str, Any] = {
        "operation_id": "op-1",
        "project_id": "p-1",
        "provider": "hubspot",
        "integration_id": "i-1",
        "integration_name": "crm",
        "installation_id": "inst-1",
        "group_ref": "org-1",
        "object_name": "contacts",
        "state": "partially_succeeded" if n > 1 else "succeeded",
        "status": "success",
        "shape": "batch",
        "write_type": "create",
        "record_count": n,
        "success_count": (n + 1) // 2,
        "failure_count": n // 2,
        "results": results,
        "errors": [f"record {i}: {r['error']}" for i, r in enumerate(results) if "error" in r],
        "finished_at": "2026-12-01T12:00:00Z",
        **overrides,
    }
    return Finished(**values)


def test_the_payload_is_the_contracts_plus_the_operation_and_its_records() -> None:
    body = json.loads(render(_finished(2), "http://api/v1/projects/p-1/operations/op-1"))
    assert_notification_schema(body, "WriteAsyncDoneNotificationPayload")
    data = body["data"]
    assert data["success"] is False  # a partial failure, with both lists filled
    assert data["successfulRecordIds"] == ["1000"] and len(data["errors"]) == 1
    assert data["records"] == [
        {"index": 0, "success": True, "recordId": "1000"},
        {"index": 1, "success": False, "error": "Email address is invalid " + "x" * 100},
    ]
    assert data["operationId"] == "op-1" and "truncated" not in data


@pytest.mark.parametrize("n, dropped", [(1500, {"records"}), (5000, {"records", "errors"})])
def test_a_payload_over_the_cap_keeps_counts_and_links_the_operation(
    n: int, dropped: set[str]
) -> None:
    url = "https://api.example.com/v1/projects/p-1/operations/op-1"
    text = render(_finished(n), url, max_bytes=100_000)
    assert len(text.encode()) <= 100_000
    body = json.loads(text)
    assert_notification_schema(body, "WriteAsyncDoneNotificationPayload")
    data = body["data"]
    assert data["truncated"] is True and data["operationURL"] == url
    assert data["recordCount"] == n and data["failureCount"] == n // 2
    assert not dropped & set(data)


def test_the_signature_verifies_with_the_standard_webhooks_verifier() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    body = '{"notificationType":"write.async.done","data":{}}'
    headers = signed_headers(secret, "msg_1", body, datetime.now(UTC))
    assert Webhook(secret).verify(body, headers) == json.loads(body)
    with pytest.raises(Exception, match="signature"):
        Webhook(new_secret()).verify(body, headers)


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://example.com/hook", "https://"),
        ("https://127.0.0.1/hook", "loopback"),
        ("https://10.1.2.3/hook", "private"),
        ("https://169.254.169.254/latest", "link-local"),
        ("ftp://example.com/hook", "https://"),
        ("https://[::1]/hook", "loopback"),
    ],
)
def test_a_destination_url_to_our_own_network_is_refused(url: str, why: str) -> None:
    with pytest.raises(UnsafeUrl, match=why):
        check_destination_url(url, frozenset({"localhost"}))


def test_plain_http_is_allowed_only_for_the_listed_hosts() -> None:
    assert check_destination_url("http://localhost:9/hook", frozenset({"localhost"})) is None
    with pytest.raises(UnsafeUrl):
        check_destination_url("http://localhost:9/hook", frozenset())
