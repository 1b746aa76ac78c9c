"""The deployment files as data, for tests that check them against the code: the
Kustomize base rendered (its `resources` and `images`, all the base uses), the
compose file, and the PromQL of the alert rules and the Grafana dashboard.

A few pieces named by the files belong to work not merged yet; `PENDING` lists
them with the reason, and the tests mark those cases xfail (strict), so a pending
name that starts to exist fails until it is taken off the list.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import yaml

from tests.support.system import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
SCRAPE = DEPLOY / "prometheus" / "scrape.yml"
DASHBOARD = DEPLOY / "grafana" / "writejobs-dashboard.json"
OPERATIONS = REPO_ROOT / "docs" / "operations.md"

# Names the files use that another branch adds: name -> why it is pending.
PENDING: dict[str, str] = {}

# Compose services that are not writejobs roles: the data stores, and the sandbox
# provider (development only; a deployment writes to the real providers).
NOT_ROLES = {"redis", "postgres", "sandbox"}


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def render_base(directory: Path = K8S) -> list[dict[str, Any]]:
    """The base as `kustomize build` gives it: every resource file's documents, with
    the `images` transform applied. Fails on any kustomization field it does not know,
    so the base cannot start using one that this renderer would silently ignore."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "resources", "images"}
    unknown = set(kustomization) - known
    assert not unknown, f"the test renderer does not apply {sorted(unknown)}"
    images = {image["name"]: image for image in kustomization.get("images", [])}
    documents: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        documents.extend(load_yaml_documents(directory / resource))
    for pod in pod_specs(documents):
        for container in containers(pod):
            image = images.get(container["image"])
            if image is not None:
                container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return documents


def pod_specs(documents: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for doc in documents:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc["spec"]["template"]["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def by_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in documents if doc["kind"] == kind}


def role(doc: dict[str, Any]) -> str:
    component: str = doc["metadata"]["labels"]["app.kubernetes.io/component"]
    return component


def config_values(documents: list[dict[str, Any]]) -> dict[str, str]:
    """The ConfigMap's and the main Secret's keys: what every writejobs pod is given."""
    values = dict(by_kind(documents, "ConfigMap")["writejobs-config"]["data"])
    values.update(by_kind(documents, "Secret")["writejobs"]["stringData"])
    return values


def load_compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return compose


def compose_writejobs_services() -> dict[str, dict[str, Any]]:
    """The compose services that run the writejobs image."""
    services: dict[str, dict[str, Any]] = load_compose()["services"]
    return {name: s for name, s in services.items() if s.get("image") == "writejobs:local"}


@dataclass(frozen=True)
class Query:
    where: str  # an alert's name, or a dashboard panel's title
    expr: str


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def queries() -> list[Query]:
    """Every PromQL expression of the alert rules and the dashboard."""
    found = [Query(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append(Query(f"panel {panel['title']!r}", target["expr"]))
    return found


@dataclass(frozen=True)
class Selector:
    name: str
    labels: dict[str, str]  # the equality matchers


def selectors(expr: str) -> list[Selector]:
    """The series an expression selects, from its parsed syntax tree. Grafana's
    `$__rate_interval` is replaced by a duration first (it is not PromQL)."""
    tree = promql_parser.parse(expr.replace("$__rate_interval", "5m"))
    found: list[Selector] = []
    _walk(tree, found)
    return found


def _walk(node: Any, found: list[Selector]) -> None:
    if isinstance(node, promql_parser.VectorSelector):
        labels = {
            m.name: m.value
            for m in node.matchers.matchers
            if m.op == promql_parser.MatchOp.Equal and m.name != "__name__"
        }
        found.append(Selector(node.name, labels))
    elif isinstance(node, promql_parser.MatrixSelector):
        _walk(node.vector_selector, found)
    elif isinstance(node, promql_parser.BinaryExpr):
        _walk(node.lhs, found)
        _walk(node.rhs, found)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            _walk(arg, found)
    elif isinstance(node, promql_parser.AggregateExpr):
        _walk(node.expr, found)
        if node.param is not None:
            _walk(node.param, found)
    elif isinstance(
        node,
        promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr,
    ):
        _walk(node.expr, found)


def metric_names() -> dict[str, list[str]]:
    """Every metric name the alerts and the dashboard select -> where it is used."""
    names: dict[str, list[str]] = {}
    for query in queries():
        for selector in selectors(query.expr):
            names.setdefault(selector.name, []).append(query.where)
    return names
