"""Each provider's `read_rate_limit`, on answers shaped as the providers document them.

HubSpot: "API usage guidelines and limits" (the `X-HubSpot-RateLimit-*` headers,
the 429 body with `policyName`); Salesforce: REST API Developer Guide, "Response
Headers" (`Sforce-Limit-Info`) and the 403 `REQUEST_LIMIT_EXCEEDED` body; AvePoint
Opus: no published limits, a 429 with `Retry-After`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from writejobs.core.flow import RateLimitObservation
from writejobs.providers import hubspot, opus, salesforce
from writejobs.providers.http_common import rate_limit_hook
from writejobs.providers.registry import rate_limit_reader

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
HUBSPOT_HEADERS = {
    "X-HubSpot-RateLimit-Max": "190",
    "X-HubSpot-RateLimit-Remaining": "187",
    "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
    "X-HubSpot-RateLimit-Daily": "625000",
    "X-HubSpot-RateLimit-Daily-Remaining": "624321",
}


def answer(status: int, headers: dict[str, str], body: Any = None) -> httpx.Response:
    request = httpx.Request("POST", "https://api.example.com/x")
    if body is None:
        return httpx.Response(status, headers=headers, request=request)
    return httpx.Response(status, headers=headers, json=body, request=request)


def hubspot_429(policy_name: str, message: str) -> dict[str, Any]:
    return {
        "status": "error",
        "message": message,
        "errorType": "RATE_LIMIT",
        "correlationId": "c033cdaa-2c40-4a64-ae48-b4cec88dad24",
        "policyName": policy_name,
        "requestId": "3d3e35b7-0dae-4b9f-a6e3-9c230cbcf8dd",
    }


def test_a_hubspot_private_app_answer_gives_the_window_and_the_day() -> None:
    observation = hubspot.read_rate_limit(answer(201, HUBSPOT_HEADERS, {"id": "1"}), NOW)

    assert observation == RateLimitObservation(
        max=190, remaining=187, interval_s=10.0, daily_max=625000, daily_remaining=624321
    )
    assert not observation.refused


def test_a_hubspot_oauth_answer_has_no_daily_headers() -> None:
    headers = {k: v for k, v in HUBSPOT_HEADERS.items() if "Daily" not in k}
    headers["X-HubSpot-RateLimit-Max"] = "110"

    observation = hubspot.read_rate_limit(answer(200, headers, {}), NOW)

    assert observation is not None
    assert (observation.max, observation.interval_s) == (110, 10.0)
    assert observation.daily_max is None and observation.daily_remaining is None


def test_a_hubspot_ten_secondly_429_is_the_rolling_window_free_after_one_interval() -> None:
    headers = HUBSPOT_HEADERS | {"X-HubSpot-RateLimit-Remaining": "0"}
    body = hubspot_429("TEN_SECONDLY_ROLLING", "You have reached your ten_secondly_rolling limit.")

    observation = hubspot.read_rate_limit(answer(429, headers, body), NOW)

    assert observation is not None
    assert observation.policy == "rolling"
    assert observation.remaining == 0
    assert observation.reset_after_s == 10.0
    assert observation.retry_after_s is None  # HubSpot documents none


def test_a_hubspot_daily_429_is_the_day_with_no_reset_hint() -> None:
    headers = HUBSPOT_HEADERS | {"X-HubSpot-RateLimit-Daily-Remaining": "0"}
    body = hubspot_429("DAILY", "You have reached your daily limit.")

    observation = hubspot.read_rate_limit(answer(429, headers, body), NOW)

    assert observation is not None
    assert observation.policy == "daily"
    assert observation.daily_remaining == 0
    assert observation.reset_after_s is None


def test_a_hubspot_429_without_a_body_is_taken_as_the_rolling_window() -> None:
    observation = hubspot.read_rate_limit(answer(429, {"Retry-After": "3"}), NOW)

    assert observation == RateLimitObservation(policy="rolling", retry_after_s=3.0)


def test_hubspot_secondly_headers_stand_for_a_one_second_window() -> None:
    headers = {"X-HubSpot-RateLimit-Secondly": "10", "X-HubSpot-RateLimit-Secondly-Remaining": "9"}

    observation = hubspot.read_rate_limit(answer(200, headers, {}), NOW)

    assert observation is not None
    assert (observation.max, observation.remaining, observation.interval_s) == (10, 9, 1.0)


@pytest.mark.parametrize("value", ["", "many", "-3", "1.5", "inf"])
def test_an_unreadable_hubspot_header_is_left_out(value: str) -> None:
    headers = HUBSPOT_HEADERS | {"X-HubSpot-RateLimit-Max": value}

    observation = hubspot.read_rate_limit(answer(200, headers, {}), NOW)

    assert observation is not None
    assert observation.max is None
    assert observation.remaining == 187


def test_an_answer_without_limit_headers_says_nothing() -> None:
    assert hubspot.read_rate_limit(answer(200, {}, {}), NOW) is None
    assert salesforce.read_rate_limit(answer(201, {}, {"id": "x"}), NOW) is None
    assert opus.read_rate_limit(answer(201, {}, {"statusCode": 201}), NOW) is None


def test_salesforce_limit_info_is_the_org_day_left() -> None:
    headers = {"Sforce-Limit-Info": "api-usage=18/5000"}

    observation = salesforce.read_rate_limit(answer(201, headers, {"id": "003"}), NOW)

    assert observation == RateLimitObservation(daily_max=5000, daily_remaining=4982)


def test_salesforce_limit_info_finds_the_org_pair_among_per_app_usage() -> None:
    headers = {"Sforce-Limit-Info": "api-usage=25/5000, per-app-api-usage=17/250(appName=sample)"}

    observation = salesforce.read_rate_limit(answer(200, headers, []), NOW)

    assert observation is not None
    assert (observation.daily_max, observation.daily_remaining) == (5000, 4975)


def test_a_salesforce_total_requests_refusal_is_the_spent_day() -> None:
    headers = {"Sforce-Limit-Info": "api-usage=5001/5000"}
    body = [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]

    observation = salesforce.read_rate_limit(answer(403, headers, body), NOW)

    assert observation is not None
    assert observation.policy == "daily"
    assert observation.daily_remaining == 0
    assert observation.reset_after_s is None


def test_a_salesforce_concurrent_requests_refusal_is_not_the_day() -> None:
    message = "ConcurrentRequests (Concurrent API Requests) Limit exceeded."
    body = [{"message": message, "errorCode": "REQUEST_LIMIT_EXCEEDED"}]

    observation = salesforce.read_rate_limit(answer(403, {}, body), NOW)

    assert observation == RateLimitObservation(policy="concurrent")


def test_another_salesforce_403_is_no_limit() -> None:
    body = [{"message": "insufficient access rights", "errorCode": "INSUFFICIENT_ACCESS"}]

    assert salesforce.read_rate_limit(answer(403, {}, body), NOW) is None


def test_an_opus_429_waits_its_retry_after_in_seconds_or_as_a_date() -> None:
    by_seconds = opus.read_rate_limit(answer(429, {"Retry-After": "7"}), NOW)
    by_date = opus.read_rate_limit(
        answer(429, {"Retry-After": "Mon, 23 Nov 2026 12:00:30 GMT"}), NOW
    )

    expected = RateLimitObservation(policy="rolling", reset_after_s=7.0, retry_after_s=7.0)
    assert by_seconds == expected
    assert by_date is not None and by_date.retry_after_s == 30.0


def test_an_opus_429_without_retry_after_is_still_a_refusal() -> None:
    observation = opus.read_rate_limit(answer(429, {}, {"statusCode": 429, "message": "slow"}), NOW)

    assert observation == RateLimitObservation(policy="rolling")


def test_every_provider_has_a_reader_and_an_unknown_one_none() -> None:
    assert rate_limit_reader("hubspot") is hubspot.read_rate_limit
    assert rate_limit_reader("salesforce") is salesforce.read_rate_limit
    assert rate_limit_reader("opus") is opus.read_rate_limit
    assert rate_limit_reader("pipedrive") is None


def test_the_response_hook_hands_on_a_429s_policy_read_from_its_body() -> None:
    heard: list[RateLimitObservation] = []
    body = hubspot_429("DAILY", "You have reached your daily limit.")

    def provider(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers=HUBSPOT_HEADERS, json=body)

    hook = rate_limit_hook(hubspot.read_rate_limit, heard.append, clock=lambda: NOW)
    with httpx.Client(
        transport=httpx.MockTransport(provider), event_hooks={"response": [hook]}
    ) as client:
        response = client.post("https://api.example.com/crm/v3/objects/contacts", json={})

    assert response.json()["policyName"] == "DAILY"  # the body is still the caller's
    assert [o.policy for o in heard] == ["daily"]
    assert heard[0].daily_max == 625000


def test_a_hubspot_ten_secondly_429_keeps_a_retry_after_it_carries() -> None:
    headers = HUBSPOT_HEADERS | {"X-HubSpot-RateLimit-Remaining": "0", "Retry-After": "2"}
    body = hubspot_429("TEN_SECONDLY_ROLLING", "You have reached your ten_secondly_rolling limit.")

    observation = hubspot.read_rate_limit(answer(429, headers, body), NOW)

    assert observation is not None
    assert (observation.policy, observation.remaining) == ("rolling", 0)
    assert observation.retry_after_s == 2.0  # the limiter pauses this long, not a window
