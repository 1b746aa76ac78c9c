"""The sandbox throttles per bearer token as the providers do, over real HTTP on loopback."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from sandbox.limits import token_hash
from writejobs.clock import utcnow
from writejobs.core.flow import Account, RateLimitObservation
from writejobs.providers import hubspot, opus, salesforce
from writejobs.providers.base import WriteItem, WriteOptions
from writejobs.providers.connect import ProviderClients
from writejobs.providers.oauth import bearer_credentials
from writejobs.settings import Settings

CONTACTS = "/crm/v3/objects/contacts"
SF_CONTACTS = "/services/data/v60.0/sobjects/Contact"
OPUS_SUBMIT = "/records/connector/records"


@pytest.fixture
def control(private_sandbox_url: str) -> Iterator[httpx.Client]:
    """The sandbox's control routes; every test starts with no limits and no records."""
    with httpx.Client(base_url=private_sandbox_url, timeout=30) as client:
        client.post("/_sandbox/reset").raise_for_status()
        yield client


def as_token(control: httpx.Client, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=control.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def set_limit(control: httpx.Client, **config: Any) -> None:
    control.post("/_sandbox/limits", json=config).raise_for_status()


def limit_stats(control: httpx.Client, provider: str, token: str) -> dict[str, Any]:
    body: dict[str, Any] = control.get("/_sandbox/limits/stats").json()
    stats: dict[str, Any] = body[f"{provider}:{token_hash(token)}"]
    return stats


def hubspot_create(client: httpx.Client) -> httpx.Response:
    email = f"{uuid.uuid4().hex[:10]}@example.com"
    return client.post(CONTACTS, json={"properties": {"email": email}})


def salesforce_create(client: httpx.Client) -> httpx.Response:
    return client.post(SF_CONTACTS, json={"LastName": "Lovelace"})


def opus_submit(client: httpx.Client) -> httpx.Response:
    body = {"id": "conn-1", "conflictOption": "Overwrite", "data": [{"rowKey": "r1"}]}
    return client.post(OPUS_SUBMIT, json=body)


def test_every_hubspot_answer_carries_the_window_and_the_day(control: httpx.Client) -> None:
    set_limit(control, provider="hubspot", token="t1", max=5, interval_ms=10_000, daily=100)

    with as_token(control, "t1") as client:
        answers = [hubspot_create(client) for _ in range(3)]

    assert [a.status_code for a in answers] == [201, 201, 201]
    assert [a.headers["X-HubSpot-RateLimit-Remaining"] for a in answers] == ["4", "3", "2"]
    last = answers[-1].headers
    assert last["X-HubSpot-RateLimit-Max"] == "5"
    assert last["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"
    assert last["X-HubSpot-RateLimit-Daily"] == "100"
    assert last["X-HubSpot-RateLimit-Daily-Remaining"] == "97"


def test_a_hubspot_call_past_the_window_is_a_ten_secondly_429_until_the_window_rolls(
    control: httpx.Client,
) -> None:
    set_limit(control, provider="hubspot", token="t1", max=2, interval_ms=1000)

    with as_token(control, "t1") as client:
        first = [hubspot_create(client).status_code for _ in range(2)]
        refused = hubspot_create(client)
        time.sleep(1.1)
        later = hubspot_create(client)

    assert first == [201, 201]
    assert refused.status_code == 429
    body = refused.json()
    assert body["errorType"] == "RATE_LIMIT"
    assert body["policyName"] == "TEN_SECONDLY_ROLLING"
    assert body["status"] == "error" and body["correlationId"]
    assert "Retry-After" not in refused.headers  # HubSpot documents none
    assert refused.headers["X-HubSpot-RateLimit-Remaining"] == "0"
    assert later.status_code == 201
    stats = limit_stats(control, "hubspot", "t1")
    assert stats["admitted"] == 3
    assert stats["refused"] == {"TEN_SECONDLY_ROLLING": 1}


def test_each_token_has_its_own_window(control: httpx.Client) -> None:
    set_limit(control, provider="hubspot", max=1, interval_ms=60_000)  # "*": every token

    with as_token(control, "portal-a") as a, as_token(control, "portal-b") as b:
        statuses = [hubspot_create(a).status_code, hubspot_create(b).status_code]
        statuses.append(hubspot_create(a).status_code)

    assert statuses == [201, 201, 429]


def test_a_spent_hubspot_day_is_a_daily_429_until_the_day_ends(control: httpx.Client) -> None:
    set_limit(control, provider="hubspot", token="t1", daily=3, daily_used=1, day_ms=1500)

    with as_token(control, "t1") as client:
        admitted = [hubspot_create(client).status_code for _ in range(2)]
        refused = hubspot_create(client)
        time.sleep(1.6)
        next_day = hubspot_create(client)

    assert admitted == [201, 201]
    assert refused.status_code == 429
    assert refused.json()["policyName"] == "DAILY"
    assert refused.json()["message"] == "You have reached your daily limit."
    assert refused.headers["X-HubSpot-RateLimit-Daily-Remaining"] == "0"
    assert next_day.status_code == 201
    assert next_day.headers["X-HubSpot-RateLimit-Daily-Remaining"] == "2"


def test_a_hubspot_oauth_app_gets_no_daily_headers(control: httpx.Client) -> None:
    set_limit(control, provider="hubspot", token="t1", max=110, daily=1000, daily_headers=False)

    with as_token(control, "t1") as client:
        answer = hubspot_create(client)

    assert answer.headers["X-HubSpot-RateLimit-Max"] == "110"
    assert "X-HubSpot-RateLimit-Daily" not in answer.headers


def test_every_salesforce_answer_carries_the_day_used_and_a_spent_day_is_refused(
    control: httpx.Client,
) -> None:
    set_limit(control, provider="salesforce", token="t1", daily=10, daily_used=8)

    with as_token(control, "t1") as client:
        answers = [salesforce_create(client) for _ in range(2)]
        refused = salesforce_create(client)
        missing = client.get(f"{SF_CONTACTS}/003000000000000AAA")

    assert [a.status_code for a in answers] == [201, 201]
    assert [a.headers["Sforce-Limit-Info"] for a in answers] == [
        "api-usage=9/10",
        "api-usage=10/10",
    ]
    assert refused.status_code == 403
    assert refused.json() == [
        {"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
    ]
    assert refused.headers["Sforce-Limit-Info"] == "api-usage=10/10"
    assert missing.status_code == 403  # every call, reads too, counts against the day


def test_a_salesforce_day_rolls_call_by_call(control: httpx.Client) -> None:
    set_limit(control, provider="salesforce", token="t1", daily=2, day_ms=1000)

    with as_token(control, "t1") as client:
        statuses = [salesforce_create(client).status_code for _ in range(3)]
        time.sleep(1.1)
        statuses.append(salesforce_create(client).status_code)

    assert statuses == [201, 201, 403, 201]


def test_salesforce_refuses_a_call_past_its_concurrent_requests(control: httpx.Client) -> None:
    set_limit(control, provider="salesforce", token="t1", concurrent=1)
    slow = {"endpoint": "POST /services/data/v60.0/sobjects/{sObject}", "latency_ms": 800}
    control.post("/_sandbox/faults", json={"rules": [slow]}).raise_for_status()
    answers: list[httpx.Response] = []

    def call() -> None:
        with as_token(control, "t1") as client:
            answers.append(salesforce_create(client))

    held = threading.Thread(target=call)
    held.start()
    time.sleep(0.3)  # the first call is in flight, sleeping in the fault's latency
    call()
    held.join()

    assert sorted(a.status_code for a in answers) == [201, 403]
    refused = next(a for a in answers if a.status_code == 403)
    assert refused.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    assert "ConcurrentRequests" in refused.json()[0]["message"]


def test_opus_past_its_limit_is_a_429_with_retry_after(control: httpx.Client) -> None:
    set_limit(control, provider="opus", token="t1", max=1, interval_ms=5000)

    with as_token(control, "t1") as client:
        admitted = opus_submit(client)
        refused = opus_submit(client)

    assert admitted.status_code == 201
    assert refused.status_code == 429
    assert 1 <= float(refused.headers["Retry-After"]) <= 5
    assert refused.json()["statusCode"] == 429


def test_a_configured_retry_after_is_the_one_opus_sends(control: httpx.Client) -> None:
    set_limit(control, provider="opus", token="t1", max=1, interval_ms=5000, retry_after_s=2)

    with as_token(control, "t1") as client:
        opus_submit(client)
        refused = opus_submit(client)

    assert refused.headers["Retry-After"] == "2"


def test_a_burst_from_many_threads_never_gets_more_than_the_limit_through_a_window(
    control: httpx.Client,
) -> None:
    set_limit(control, provider="hubspot", token="t1", max=7, interval_ms=2000)
    statuses: list[int] = []
    lock = threading.Lock()

    def hammer() -> None:
        with as_token(control, "t1") as client:
            for _ in range(12):
                status = hubspot_create(client).status_code
                with lock:
                    statuses.append(status)

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    stats = limit_stats(control, "hubspot", "t1")
    assert statuses.count(201) == stats["admitted"]
    assert statuses.count(429) == stats["refused"]["TEN_SECONDLY_ROLLING"] > 0
    assert stats["max_admitted_in_any_window"] <= 7
    assert max(stats["admitted_per_window"]) <= 7
    assert sum(stats["admitted_per_window"]) == stats["admitted"]


def test_the_stats_never_show_a_token(control: httpx.Client) -> None:
    set_limit(control, provider="hubspot", token="secret-token-123", max=3)

    with as_token(control, "secret-token-123") as client:
        hubspot_create(client)

    assert "secret-token-123" not in control.get("/_sandbox/limits/stats").text


def test_unlimited_tokens_and_a_reset_sandbox_get_no_limit_headers(control: httpx.Client) -> None:
    set_limit(control, provider="hubspot", token="t1", max=3)

    with as_token(control, "other") as other, as_token(control, "t1") as limited:
        unlimited = hubspot_create(other)
        control.post("/_sandbox/reset").raise_for_status()
        after_reset = hubspot_create(limited)

    assert "X-HubSpot-RateLimit-Max" not in unlimited.headers
    assert "X-HubSpot-RateLimit-Max" not in after_reset.headers
    assert control.get("/_sandbox/limits/stats").json() == {}


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"provider": "salesforce", "max": 5}, "no short window"),
        ({"provider": "hubspot"}, "needs max or daily"),
        ({"provider": "opus", "max": 1, "concurrent": 2}, "Salesforce's limit"),
        ({"provider": "pipedrive", "max": 1}, "provider"),
    ],
)
def test_a_limit_that_does_not_fit_its_provider_is_refused_naming_why(
    control: httpx.Client, config: dict[str, Any], problem: str
) -> None:
    answer = control.post("/_sandbox/limits", json=config)

    assert answer.status_code == 422
    assert problem in answer.text


def test_the_adapters_read_the_sandbox_answers_as_the_providers(control: httpx.Client) -> None:
    set_limit(control, provider="hubspot", token="t1", max=1, interval_ms=60_000, daily=50)
    set_limit(control, provider="salesforce", token="t1", daily=1)
    set_limit(control, provider="opus", token="t1", max=1, interval_ms=60_000)

    with as_token(control, "t1") as client:
        hubspot_answers = [hubspot_create(client), hubspot_create(client)]
        salesforce_answers = [salesforce_create(client), salesforce_create(client)]
        opus_answers = [opus_submit(client), opus_submit(client)]

    heard = [hubspot.read_rate_limit(a, utcnow()) for a in hubspot_answers]
    assert [(o.max, o.remaining, o.interval_s, o.policy) for o in heard if o] == [
        (1, 0, 60.0, None),
        (1, 0, 60.0, "rolling"),
    ]
    assert [o.daily_remaining for o in heard if o] == [49, 49]
    heard = [salesforce.read_rate_limit(a, utcnow()) for a in salesforce_answers]
    assert [(o.daily_max, o.daily_remaining, o.policy) for o in heard if o] == [
        (1, 0, None),
        (1, 0, "daily"),
    ]
    heard = [opus.read_rate_limit(a, utcnow()) for a in opus_answers]
    assert heard[0] is None
    assert heard[1] is not None and heard[1].policy == "rolling"
    assert heard[1].retry_after_s is not None and heard[1].retry_after_s > 0


@dataclass(frozen=True)
class BearerInstallation:
    """An installation as `ProviderClients` sees one (the store's row has these fields)."""

    id: str
    provider: str
    base_url: str
    credentials: str = "bearer"


class BearerVault:
    """A `CredentialVault` holding one bearer token, in memory."""

    def __init__(self, token: str) -> None:
        self.token = token

    def decrypt(self, encrypted: str) -> dict[str, Any]:
        return bearer_credentials(self.token)

    def load_latest(self, installation_id: str) -> dict[str, Any] | None:
        return None

    def store(self, installation_id: str, credentials: dict[str, Any]) -> None:
        return None


def test_an_installation_client_hands_every_limit_it_hears_to_the_listener(
    control: httpx.Client,
) -> None:
    set_limit(control, provider="hubspot", token="t1", max=2, interval_ms=60_000)
    heard: list[tuple[Account, RateLimitObservation]] = []
    clients = ProviderClients(BearerVault("t1"), on_rate_limit=lambda a, o: heard.append((a, o)))
    installation = BearerInstallation("inst-1", "hubspot", str(control.base_url).rstrip("/"))
    items = [WriteItem({"email": f"{uuid.uuid4().hex[:8]}@example.com"}) for _ in range(3)]

    with clients.open_adapter(installation, Settings()) as adapter:
        outcome = adapter.write_batch("contacts", "create", items[:1], WriteOptions())
        for item in items[1:]:
            adapter.write_batch("contacts", "create", [item], WriteOptions())

    assert outcome.success_count == 1
    assert {account for account, _ in heard} == {Account("hubspot", "inst-1")}
    assert [(o.remaining, o.policy) for _, o in heard] == [(1, None), (0, None), (0, "rolling")]
