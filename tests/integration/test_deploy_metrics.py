"""Every writejobs metric the alert rules and the Grafana dashboard name is exported
by a running system's `/metrics` (the API on real Redis and SQL), as a family of the
type the name implies. Only `writejobs_*` names are checked: `up` is Prometheus'
own and `kube_pod_container_status_restarts_total` comes from kube-state-metrics."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.deploy import PENDING, metric_names

NAMES = sorted(n for n in metric_names() if n.startswith("writejobs_"))


@pytest.fixture(scope="module")
def exported(api_url: str) -> dict[str, str]:
    """Family name -> type, from the HELP and TYPE lines: a counter or histogram no
    event has touched yet is still described, with no samples."""
    response = httpx.get(f"{api_url}/metrics")
    assert response.status_code == 200
    return {f.name: f.type for f in text_string_to_metric_families(response.text)}


def family(series: str) -> tuple[str, set[str]]:
    """The family a selected series belongs to, and the types that give it that name."""
    for suffix, types in (
        ("_total", {"counter"}),
        ("_bucket", {"histogram"}),
        ("_sum", {"histogram", "summary"}),
        ("_count", {"histogram", "summary"}),
    ):
        if series.endswith(suffix):
            return series.removesuffix(suffix), types
    return series, {"gauge"}


def pending_name(series: str) -> str | None:
    return next((PENDING[n] for n in (series, family(series)[0]) if n in PENDING), None)


@pytest.mark.parametrize(
    "series",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=pending_name(n)))
        if pending_name(n)
        else n
        for n in NAMES
    ],
)
def test_every_metric_the_alerts_and_dashboard_name_is_exported(
    series: str, exported: dict[str, str]
) -> None:
    name, types = family(series)
    assert name in exported, f"{series}: no family {name} at /metrics"
    assert exported[name] in types, f"{series}: {name} is a {exported[name]}"
