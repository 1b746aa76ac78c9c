"""Fleet metrics: recorded in real Redis by any process, scraped from the API's `/metrics`."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.support.system import Tenant
from writejobs.grouping.keys import Keys
from writejobs.runtime.metrics import FleetCollector, Metrics
from writejobs.settings import Settings
from writejobs.store.db import create_session_factory, create_store_engine


def scrape(api_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of `/metrics`, by (name, sorted labels)."""
    response = httpx.get(f"{api_url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_sync_write_is_counted_at_intake_and_at_the_provider(
    tenant: Tenant, api_url: str
) -> None:
    before = scrape(api_url)
    with tenant.client() as client:
        body = {
            "groupRef": tenant.group_ref,
            "type": "create",
            "record": {"email": f"m-{uuid.uuid4().hex[:8]}@example.com"},
        }
        assert client.post(tenant.write_path(), json=body).status_code == 200
    after = scrape(api_url)

    accepted = "writejobs_writes_accepted_total"
    assert value(after, accepted, shape="single") - value(before, accepted, shape="single") == 1
    calls = "writejobs_provider_calls_total"
    ok = {"provider": "hubspot", "outcome": "ok"}
    assert value(after, calls, **ok) - value(before, calls, **ok) >= 1
    timed = "writejobs_provider_call_seconds_count"
    assert value(after, timed, provider="hubspot") - value(before, timed, provider="hubspot") >= 1


def test_the_gauges_are_rendered_for_every_counted_state(api_url: str) -> None:
    samples = scrape(api_url)
    for state in ("pending", "queued", "running", "retrying", "expired"):
        assert ("writejobs_operations", (("state", state),)) in samples
    for gauge in ("auto_batch_groups_waiting", "auto_batch_unsent_claims", "retry_waits"):
        assert (f"writejobs_{gauge}", ()) in samples


def test_histograms_are_cumulative_and_counters_add_up_across_recorders(
    settings: Settings, redis_url: str
) -> None:
    # given two processes' recorders on one namespace
    client = redis.Redis.from_url(redis_url)
    keys = Keys(f"wjtest-metrics-{uuid.uuid4().hex[:8]}")
    first, second = Metrics(client, keys), Metrics(client, keys)
    for seconds in (0.01, 0.2, 0.2, 3.0, 60.0):
        first.observe("provider_call_seconds", seconds, provider="opus")
    first.count("retries_scheduled", kind="op")
    second.count("retries_scheduled", kind="op", n=2)
    first.flush()
    second.flush()

    # when they are collected
    engine = create_store_engine(settings)
    collector = FleetCollector(client, keys, create_session_factory(engine), f"{keys.namespace}:r")
    families = {family.name: family for family in collector.collect()}
    engine.dispose()

    # then buckets are cumulative, with +Inf holding every value
    buckets = {
        s.labels["le"]: s.value
        for s in families["writejobs_provider_call_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert (buckets["0.05"], buckets["0.25"], buckets["5"], buckets["30"], buckets["+Inf"]) == (
        1,
        3,
        4,
        4,
        5,
    )
    retries = [
        s for s in families["writejobs_retries_scheduled"].samples if s.name.endswith("_total")
    ]
    assert [(s.labels, s.value) for s in retries] == [({"kind": "op"}, 3.0)]
    client.delete(keys.metrics)
