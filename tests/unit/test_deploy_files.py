"""The deployment files against the code, not only their syntax: the Kustomize base
validates against the Kubernetes schemas, every container runs a real `writejobs`
subcommand with every variable a real setting, KEDA watches the list Celery fills,
compose and Kubernetes run the same roles, and the alert rules and dashboard are
PromQL over labels the code records. (That the metrics they name are exported by
a running system is tests/integration/test_deploy_metrics.py.)"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import typer.main
import yaml
from cryptography.fernet import Fernet

from api_shim.routes_health import router as health_router
from tests.support.deploy import (
    DEPLOY,
    K8S,
    NOT_ROLES,
    OPERATIONS,
    PENDING,
    SCRAPE,
    alert_rules,
    by_kind,
    compose_writejobs_services,
    config_values,
    containers,
    load_compose,
    metric_names,
    pod_specs,
    queries,
    render_base,
    role,
    selectors,
)
from writejobs.cli.main import app
from writejobs.core.contract import MAX_BATCH_RECORDS
from writejobs.core.operations import State
from writejobs.providers.hubspot import HubSpotAdapter
from writejobs.providers.opus import OpusAdapter
from writejobs.providers.salesforce import SalesforceAdapter
from writejobs.runtime.metrics import CATALOG
from writejobs.settings import Settings

KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
BASE = render_base()
DEPLOYMENTS = by_kind(BASE, "Deployment")
ROLES = {role(doc) for doc in BASE if doc["kind"] in ("Deployment", "Job")}


def pending(name: str) -> Any:
    """`name` as a test parameter, xfail (strict) while it is pending."""
    if name in PENDING:
        return pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=PENDING[name]))
    return name


def deployment(component: str) -> dict[str, Any]:
    return DEPLOYMENTS[f"writejobs-{component}"]


def main_container(component: str) -> dict[str, Any]:
    pod = deployment(component)["spec"]["template"]["spec"]
    (found,) = [c for c in pod["containers"] if c["name"] == component]
    return found


def configured() -> Settings:
    """The settings every writejobs pod runs with (placeholder secrets left out)."""
    values = {
        k.removeprefix("WRITEJOBS_").lower(): v
        for k, v in config_values(BASE).items()
        if k not in ("WRITEJOBS_SECRET_KEY",)
    }
    return Settings(**values)


def parse_command(args: list[str]) -> str:
    """Parse `writejobs <args>` as the command would, without running it; the
    subcommand's name, or an error naming what is wrong."""
    command: Any = typer.main.get_command(app)
    name, rest, parent = "writejobs", list(args), None
    while hasattr(command, "commands"):
        context = command.context_class(command, info_name=name, parent=parent)
        assert rest, f"`writejobs {' '.join(args)}` names no subcommand"
        name, rest, parent = rest[0], rest[1:], context
        found = command.get_command(context, name)
        assert found is not None, f"`writejobs {name}` is not a subcommand"
        command = found
    command.make_context(name, rest, parent=parent)
    return name


# ---- the Kubernetes base ------------------------------------------------------------


def test_the_rendering_here_matches_kustomizes_own() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl on this machine: render_base alone is checked")
    built = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, check=True
    ).stdout
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    theirs = sorted((d for d in yaml.safe_load_all(built) if d), key=key)
    assert theirs == sorted(BASE, key=key)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_core_resource_validates_against_the_kubernetes_schemas(version: str) -> None:
    problems = []
    for doc in BASE:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: checked against KEDA's schema below
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert problems == []
    assert {doc["kind"] for doc in BASE} >= {
        "ConfigMap",
        "Secret",
        "Job",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }


def test_one_image_runs_every_role() -> None:
    images = {c["image"] for pod in pod_specs(BASE) for c in containers(pod)}
    assert len(images) == 1, images


def test_the_roles_are_the_issues_and_the_schedulers_are_two_with_no_leader() -> None:
    assert ROLES == {"api", "scheduler", "worker", "webhooks", "flower", "migrate"}
    assert deployment("scheduler")["spec"]["replicas"] == 2
    assert deployment("api")["spec"]["replicas"] >= 2


@pytest.mark.parametrize("component", [pending(c) for c in sorted(ROLES)])
def test_every_container_runs_a_real_writejobs_subcommand(component: str) -> None:
    docs = [d for d in BASE if d["kind"] in ("Deployment", "Job") and role(d) == component]
    assert docs
    for doc in docs:
        for container in containers(doc["spec"]["template"]["spec"]):
            # the image's entrypoint is `writejobs`; a `command` would replace it
            assert "command" not in container, container["name"]
            parse_command(container["args"])
            if container["name"] == component:
                assert container["args"][0] == component


def test_every_pod_that_uses_the_store_waits_for_this_releases_schema() -> None:
    for component in ("api", "scheduler", "worker", "webhooks"):
        pod = deployment(component)["spec"]["template"]["spec"]
        (init,) = pod["initContainers"]
        assert init["args"][:2] == ["migrate", "--check"], component
    job = by_kind(BASE, "Job")["writejobs-migrate"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")


def environment_names(documents: list[dict[str, Any]]) -> dict[str, str]:
    """Every variable a container is given -> where, through env and envFrom."""
    configmaps, secrets = by_kind(documents, "ConfigMap"), by_kind(documents, "Secret")
    found: dict[str, str] = {}
    for pod in pod_specs(documents):
        for container in containers(pod):
            for entry in container.get("env", []):
                found[entry["name"]] = container["name"]
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    keys = configmaps[source["configMapRef"]["name"]]["data"]
                else:
                    keys = secrets[source["secretRef"]["name"]]["stringData"]
                for key in keys:
                    found[key] = f"{container['name']} (from {next(iter(source.values()))})"
    return found


@pytest.mark.parametrize("variable", [pending(v) for v in sorted(environment_names(BASE))])
def test_every_kubernetes_variable_is_a_setting(variable: str) -> None:
    assert variable.startswith("WRITEJOBS_")
    assert variable.removeprefix("WRITEJOBS_").lower() in Settings.model_fields


def test_the_configured_values_are_valid_settings_and_agree_with_the_pods() -> None:
    settings = configured()
    # the API and Flower listen where the pods and Services expect them
    assert settings.api_host == "0.0.0.0"
    api_ports = {p["name"]: p["containerPort"] for p in main_container("api")["ports"]}
    assert api_ports == {"http": settings.api_port}
    flower_ports = {p["name"]: p["containerPort"] for p in main_container("flower")["ports"]}
    assert flower_ports == {"http": settings.flower_port}
    assert settings.flower_host == "0.0.0.0"
    # the data dir is a writable volume in every pod (the root filesystem is read-only)
    for pod in pod_specs(BASE):
        for container in containers(pod):
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {str(settings.data_dir), "/tmp"} <= mounts, container["name"]


def test_the_base_ships_no_usable_secret() -> None:
    values = config_values(BASE)
    with pytest.raises(ValueError):
        Fernet(values["WRITEJOBS_SECRET_KEY"])
    assert "REPLACE-ME" in values["WRITEJOBS_DATABASE_URL"]
    flower = by_kind(BASE, "Secret")["writejobs-flower"]["stringData"]
    assert all("REPLACE-ME" in v for v in flower.values())


def test_the_api_is_probed_on_its_own_health_routes() -> None:
    routes = {route.path for route in health_router.routes}  # type: ignore[attr-defined]
    api = main_container("api")
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {"/healthz", "/readyz"} <= routes


def test_flower_is_probed_on_its_healthcheck_and_gets_its_basic_auth() -> None:
    from flower.urls import handlers

    flower = main_container("flower")
    assert flower["livenessProbe"]["httpGet"]["path"] == "/healthcheck"
    paths = {h[0] if isinstance(h, tuple) else h.regex.pattern.rstrip("$") for h in handlers}
    assert "/healthcheck" in paths
    refs = {s.get("secretRef", {}).get("name") for s in flower["envFrom"]}
    assert "writejobs-flower" in refs
    # no other pod is given Flower's password
    for component in ROLES - {"flower", "migrate"}:
        pod = deployment(component)["spec"]["template"]["spec"]
        for container in containers(pod):
            names = {s.get("secretRef", {}).get("name") for s in container["envFrom"]}
            assert "writejobs-flower" not in names


def longest_task_s(settings: Settings) -> float:
    """A write task's provider calls at worst: the contract's largest batch in the
    smallest chunks an adapter takes, plus a token fetch, each at the timeout."""
    smallest = min(a.max_batch_size for a in (HubSpotAdapter, SalesforceAdapter, OpusAdapter))
    calls = math.ceil(MAX_BATCH_RECORDS / smallest) + 1
    return calls * settings.provider_timeout_s


def test_a_worker_is_given_longer_to_stop_than_its_longest_task() -> None:
    settings = configured()
    pod = deployment("worker")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > longest_task_s(settings)
    assert pod["terminationGracePeriodSeconds"] > settings.provider_timeout_s
    # and compose gives its workers the same time
    grace = load_compose()["services"]["worker"]["stop_grace_period"]
    assert int(grace.removesuffix("s")) == pod["terminationGracePeriodSeconds"]


def test_a_webhooks_worker_is_given_longer_to_stop_than_a_delivery() -> None:
    timeout_s = configured().webhook_timeout_s
    pod = deployment("webhooks")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > timeout_s


def test_every_pod_runs_as_the_images_user_with_a_read_only_root_and_requests() -> None:
    uid = int(re.search(r"--uid (\d+)", (DEPLOY / "Dockerfile").read_text()).group(1))  # type: ignore[union-attr]
    for pod in pod_specs(BASE):
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == uid
        for container in containers(pod):
            own = container["securityContext"]
            assert own["readOnlyRootFilesystem"] is True, container["name"]
            assert own["allowPrivilegeEscalation"] is False, container["name"]
            assert own["capabilities"]["drop"] == ["ALL"], container["name"]
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])


def pod_labels(doc: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = doc["spec"]["template"]["metadata"]["labels"]
    return labels


def test_services_and_disruption_budgets_select_the_pods_they_mean() -> None:
    for service in by_kind(BASE, "Service").values():
        target = deployment(role(service))
        assert service["spec"]["selector"].items() <= pod_labels(target).items()
        ports = {p["name"] for p in main_container(role(service))["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    budgets = by_kind(BASE, "PodDisruptionBudget")
    assert {role(b) for b in budgets.values()} == {"api", "scheduler", "worker", "webhooks"}
    for budget in budgets.values():
        selected = budget["spec"]["selector"]["matchLabels"]
        assert selected.items() <= pod_labels(deployment(role(budget))).items()


# ---- KEDA ---------------------------------------------------------------------------

# KEDA's documented fields (ScaledObject spec, the redis lists trigger), keda.sh/docs.
SCALED_OBJECT_SPEC = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}
REDIS_TRIGGER = {
    "address",
    "addressFromEnv",
    "host",
    "hostFromEnv",
    "port",
    "portFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "listName",
    "listLength",
    "activationListLength",
    "enableTLS",
    "unsafeSsl",
    "databaseIndex",
}


def scaled_objects() -> dict[str, dict[str, Any]]:
    return {
        name: doc
        for name, doc in by_kind(BASE, "ScaledObject").items()
        if doc["apiVersion"] == "keda.sh/v1alpha1"
    }


def expected_list(component: str, settings: Settings) -> str:
    if component == "worker":
        return settings.celery_queue
    return settings.effective_webhook_queue


@pytest.mark.parametrize("component", ["worker", pending("webhooks")])
def test_keda_scales_the_workers_on_the_list_celery_fills(component: str) -> None:
    settings = configured()
    scaled = scaled_objects()[f"writejobs-{component}"]
    spec = scaled["spec"]
    assert set(spec) <= SCALED_OBJECT_SPEC
    assert spec["scaleTargetRef"]["name"] == f"writejobs-{component}"
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    # KEDA owns the replica count: the Deployment sets none to fight it
    assert "replicas" not in deployment(component)["spec"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis"
    metadata = trigger["metadata"]
    assert set(metadata) <= REDIS_TRIGGER
    assert all(isinstance(v, str) for v in metadata.values())  # KEDA's metadata is strings
    assert metadata["listName"] == expected_list(component, settings)
    # the Redis KEDA reads is the one the pods send their tasks to
    url = urlsplit(settings.broker_url)
    assert metadata["address"] == f"{url.hostname}:{url.port or 6379}"
    assert metadata["databaseIndex"] == (url.path.lstrip("/") or "0")
    assert int(metadata["listLength"]) >= 1


def test_keda_authenticates_with_a_secret_the_base_has() -> None:
    secrets = by_kind(BASE, "Secret")
    auths = by_kind(BASE, "TriggerAuthentication")
    for scaled in scaled_objects().values():
        for trigger in scaled["spec"]["triggers"]:
            auth = auths[trigger["authenticationRef"]["name"]]
            for ref in auth["spec"]["secretTargetRef"]:
                assert ref["parameter"] == "password"
                assert ref["key"] in secrets[ref["name"]]["stringData"]


# ---- compose ------------------------------------------------------------------------


def test_compose_and_kubernetes_run_the_same_roles() -> None:
    services = load_compose()["services"]
    assert set(compose_writejobs_services()) == set(services) - {"redis", "postgres"}
    assert set(compose_writejobs_services()) - NOT_ROLES == ROLES


@pytest.mark.parametrize("service", [pending(s) for s in sorted(compose_writejobs_services())])
def test_every_compose_service_runs_a_real_writejobs_subcommand(service: str) -> None:
    spec = compose_writejobs_services()[service]
    assert "entrypoint" not in spec
    assert parse_command(spec["command"]) == service


def compose_variables() -> list[str]:
    names: set[str] = set()
    for spec in compose_writejobs_services().values():
        names.update(spec.get("environment") or {})
    return sorted(names)


@pytest.mark.parametrize("variable", [pending(v) for v in compose_variables()])
def test_every_compose_variable_is_a_setting(variable: str) -> None:
    assert variable.startswith("WRITEJOBS_")
    assert variable.removeprefix("WRITEJOBS_").lower() in Settings.model_fields


# ---- Prometheus and Grafana ---------------------------------------------------------


def test_every_query_is_promql_over_writejobs_or_kube_state_metrics_series() -> None:
    names = metric_names()  # parses every expression; a syntax error raises
    assert len(queries()) >= 20
    others = {n for n in names if not n.startswith("writejobs_")}
    assert others == {"kube_pod_container_status_restarts_total", "up"}


def family_of(name: str) -> tuple[str, str] | None:
    """The catalog family a selected series belongs to, and the series' part."""
    bare = name.removeprefix("writejobs_")
    for suffix, kind in (
        ("_total", "counter"),
        ("_bucket", "histogram"),
        ("_sum", "histogram"),
        ("_count", "histogram"),
    ):
        base = bare.removesuffix(suffix)
        if bare.endswith(suffix) and base in CATALOG and CATALOG[base].kind == kind:
            return base, suffix
    return None


def test_label_matchers_name_labels_and_values_the_code_records() -> None:
    queue = configured().celery_queue
    states = {s.value for s in State}
    for query in queries():
        for selector in selectors(query.expr):
            found = family_of(selector.name)
            if found is not None:
                family, part = found
                allowed = set(CATALOG[family].labels) | ({"le"} if part == "_bucket" else set())
                assert set(selector.labels) <= allowed, (query.where, selector)
            if "state" in selector.labels:
                assert selector.labels["state"] in states, query.where
            if selector.name == "writejobs_celery_queue_length" and "queue" in selector.labels:
                assert selector.labels["queue"] == queue, query.where
            if selector.name == "up":
                scrape = yaml.safe_load(SCRAPE.read_text())
                assert selector.labels["job"] in {j["job_name"] for j in scrape["scrape_configs"]}


def test_restarts_are_watched_for_every_writejobs_container() -> None:
    names = {c["name"] for pod in pod_specs(BASE) for c in containers(pod)} - {"migrate"}
    for query in queries():
        if "kube_pod_container_status_restarts_total" in query.expr:
            (pattern,) = re.findall(r'container=~"([^"]+)"', query.expr)
            assert set(pattern.split("|")) == names, query.where


def test_prometheus_scrapes_the_api_service_and_loads_the_rules() -> None:
    scrape = yaml.safe_load(SCRAPE.read_text())
    assert scrape["rule_files"] == ["alerts.yml"]
    (job,) = scrape["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (target,) = job["static_configs"][0]["targets"]
    service = by_kind(BASE, "Service")["writejobs-api"]
    host, port = target.rsplit(":", 1)
    assert host.split(".")[0] == service["metadata"]["name"]
    assert int(port) == service["spec"]["ports"][0]["port"]


def test_every_alert_has_a_runbook_section_in_the_operations_guide() -> None:
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("#")
    }
    for rule in alert_rules():
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor == rule["alert"].lower()
        assert anchor in headings, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
