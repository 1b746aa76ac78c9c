"""Flow control as the API's clients see it: 429 problem+json with Retry-After."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from api_shim.app import create_app
from tests.support.servers import serve_in_thread
from tests.support.system import Tenant, create_tenant
from writejobs.clock import utcnow
from writejobs.core.flow import Account, RateLimitObservation
from writejobs.grouping.keys import Keys
from writejobs.grouping.limiter import RedisRateLimiter
from writejobs.settings import Settings


@pytest.fixture
def quota_api(settings: Settings) -> Iterator[str]:
    """An API whose projects may send 2 writes at once, then one every 10 s."""
    limited = settings.model_copy(update={"intake_quota_rps": 0.1, "intake_quota_burst": 2})
    with serve_in_thread(create_app(limited)) as url:
        yield url


def test_a_synchronous_write_the_rate_limit_has_no_room_for_is_a_429_with_retry_after(
    settings: Settings, api_url: str, sandbox_url: str, redis_url: str
) -> None:
    # Given an installation whose account's window is full for a minute
    tenant = create_tenant(settings, api_url, sandbox_url)
    client = redis.Redis.from_url(redis_url)
    limiter = RedisRateLimiter(client, Keys(settings.redis_namespace))
    limiter.learn(
        Account("hubspot", tenant.installation_id),
        RateLimitObservation(max=10, remaining=0, interval_s=60),
        utcnow(),
    )
    client.close()
    # When a synchronous write comes
    with tenant.client() as api:
        response = api.post(
            tenant.write_path(),
            json={"groupRef": tenant.group_ref, "type": "create", "record": {"email": "a@b.c"}},
        )
    # Then it is refused, retryable, saying when to send it again
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/problem+json"
    assert 55 <= int(response.headers["retry-after"]) <= 61
    body = response.json()
    assert body["retryable"] is True and body["subsystem"] == "provider"
    assert "rate limit" in body["detail"] and "retryAfter" in body


def test_a_project_past_its_intake_quota_is_answered_429_and_others_are_not(
    settings: Settings, quota_api: str, sandbox_url: str
) -> None:
    # Given two projects on an API with an intake quota of bursts of 2
    first = create_tenant(settings, quota_api, sandbox_url)
    second = create_tenant(settings, quota_api, sandbox_url)

    def write(api: httpx.Client, tenant: Tenant) -> int:
        body = {
            "groupRef": tenant.group_ref,
            "type": "create",
            "mode": "asynchronous",
            "record": {"email": f"q-{uuid.uuid4().hex[:6]}@example.com"},
        }
        return api.post(tenant.write_path(), json=body).status_code

    # When the first sends three writes at once
    with first.client() as api:
        statuses = [write(api, first) for _ in range(3)]
        refused = api.post(first.write_path(), json={})
    # Then two are accepted and the third is refused with a Retry-After
    assert statuses == [200, 200, 429]
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 10
    assert refused.json()["subsystem"] == "api" and refused.json()["retryable"] is True
    # and another project's writes are not held back by it
    with second.client() as api:
        assert write(api, second) == 200
