"""The system under test, on real services: Redis, SQLite/PostgreSQL, HTTP, Celery.

Each test session gets its own Redis namespace and Celery queue, so runs never
see each other's keys or tasks; each test gets its own tenant (project, key,
integration, installation), so tests never see each other's operations.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from writejobs.clock import utcnow
from writejobs.providers.oauth import bearer_credentials
from writejobs.settings import Settings
from writejobs.store import tenants_repo
from writejobs.store.db import create_session_factory, create_store_engine
from writejobs.store.secrets import cipher_for

REPO_ROOT = Path(__file__).resolve().parents[2]


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRITEJOBS_")}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is not None:
            env[f"WRITEJOBS_{name.upper()}"] = str(value)
    # Resolved forms, so a child never falls back to an embedded default.
    env["WRITEJOBS_REDIS_URL"] = settings.effective_redis_url
    env["WRITEJOBS_DATABASE_URL"] = settings.sqlalchemy_url
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


@dataclass
class ChildProcess:
    """A real writejobs process (worker, scheduler) with its output kept for asserts."""

    name: str
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.output()[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not print {text!r}:\n{self.output()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole process group (a Celery worker and its pool children)."""
        try:
            os.killpg(self.process.pid, 9)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, 15)
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
            except ProcessLookupError:
                pass
        self.kill()


def start_child(name: str, args: list[str], settings: Settings) -> ChildProcess:
    process = subprocess.Popen(
        [sys.executable, "-m", "writejobs", *args],
        env=settings_env(settings),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    child = ChildProcess(name, process)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            child.lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return child


@contextmanager
def running_worker(settings: Settings, concurrency: int = 2) -> Iterator[ChildProcess]:
    env_settings = settings.model_copy(update={"worker_concurrency": concurrency})
    child = start_child("worker", ["worker"], env_settings)
    try:
        child.wait_for("ready.", timeout_s=60)
        yield child
    finally:
        child.stop()


@contextmanager
def running_scheduler(settings: Settings, name: str = "scheduler") -> Iterator[ChildProcess]:
    child = start_child(name, ["scheduler"], settings)
    try:
        child.wait_for("scheduler started", timeout_s=30)
        yield child
    finally:
        child.stop()


@contextmanager
def running_api(settings: Settings, workers: int = 1) -> Iterator[str]:
    """The API as a process of its own (load tests: no GIL shared with the clients);
    `workers` > 1 runs `writejobs api --workers N`."""
    with running_api_process(settings, workers) as (url, _child):
        yield url


@contextmanager
def running_api_process(settings: Settings, workers: int = 1) -> Iterator[tuple[str, ChildProcess]]:
    """The API as a process of its own, and that process (to read its memory from /proc;
    with `workers` > 1 it is uvicorn's supervisor, not a worker)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    own = settings.model_copy(update={"api_port": port, "api_host": "127.0.0.1"})
    args = ["api"] if workers == 1 else ["api", "--workers", str(workers)]
    child = start_child("api", args, own)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline or child.process.poll() is not None:
                    raise RuntimeError(f"api did not start:\n{child.output()[-3000:]}") from None
                time.sleep(0.1)
        yield url, child
    finally:
        child.stop()


@dataclass
class Tenant:
    """A project with its key, one integration and one installation on a sandbox."""

    api_url: str
    project_id: str
    project_name: str
    api_key: str
    integration_id: str
    installation_id: str
    group_ref: str

    def client(self, api_key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_url,
            headers={"X-Api-Key": api_key if api_key is not None else self.api_key},
            timeout=30.0,
        )

    def write_path(self, object_name: str = "contacts", project: str | None = None) -> str:
        return (
            f"/v1/projects/{project or self.project_id}/integrations/{self.integration_id}"
            f"/objects/{object_name}"
        )

    def operation_path(self, operation_id: str) -> str:
        return f"/v1/projects/{self.project_id}/operations/{operation_id}"

    def wait_terminal(self, operation_ids: list[str], timeout_s: float = 60.0) -> dict[str, Any]:
        """Poll until every operation is terminal; return their views by id."""
        views: dict[str, Any] = {}
        deadline = time.monotonic() + timeout_s
        with self.client() as client:
            while time.monotonic() < deadline:
                for op_id in operation_ids:
                    if views.get(op_id, {}).get("status") in ("success", "failure"):
                        continue
                    response = client.get(self.operation_path(op_id))
                    assert response.status_code == 200, response.text
                    views[op_id] = response.json()
                if all(v["status"] != "in_progress" for v in views.values()):
                    return views
                time.sleep(0.2)
        pending = [i for i, v in views.items() if v["status"] == "in_progress"]
        raise TimeoutError(f"{len(pending)} operations still in progress, e.g. {views[pending[0]]}")


def create_tenant(
    settings: Settings,
    api_url: str,
    sandbox_url: str,
    *,
    provider: str = "hubspot",
    deletable: list[str] | None = None,
    token: str = "test-token",
    rate_limit: dict[str, int] | None = None,
) -> Tenant:
    engine = create_store_engine(settings)
    try:
        with create_session_factory(engine)() as session:
            now = utcnow()
            name = f"proj-{uuid.uuid4().hex[:10]}"
            project = tenants_repo.create_project(session, name, now=now)
            key = tenants_repo.create_api_key(session, project.id, now=now)
            integration = tenants_repo.create_integration(
                session, project.id, "crm", provider, now=now
            )
            group_ref = f"org-{uuid.uuid4().hex[:8]}"
            installation = tenants_repo.create_installation(
                session,
                integration,
                group_ref,
                sandbox_url,
                now=now,
                cipher=cipher_for(settings),
                credentials=bearer_credentials(token),
                deletable_objects=deletable or [],
            )
            if rate_limit is not None:
                installation.rate_limit = rate_limit
            session.commit()
            return Tenant(
                api_url, project.id, name, key.plain_key, integration.id, installation.id, group_ref
            )
    finally:
        engine.dispose()


def operation_row(tenant: Tenant, **fields: Any) -> dict[str, Any]:
    """An asynchronous single write's operation row in `tenant`'s installation, as the
    intake would insert it, created now (for tests that insert rows themselves);
    `fields` replace or add columns."""
    now = utcnow()
    row: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "project_id": tenant.project_id,
        "integration_id": tenant.integration_id,
        "installation_id": tenant.installation_id,
        "config_id": "c",
        "object_name": "contacts",
        "write_type": "create",
        "mode": "asynchronous",
        "shape": "single",
        "request": {},
        "state": "queued",
        "created_at": now,
        "updated_at": now,
        "deadline_at": now + timedelta(hours=1),
    }
    row.update(fields)
    return row


@contextmanager
def running_webhooks(settings: Settings, name: str = "webhooks") -> Iterator[ChildProcess]:
    """`writejobs webhooks`: a Celery worker for the webhook deliveries' queue only."""
    child = start_child(name, ["webhooks"], settings)
    try:
        child.wait_for("ready.", timeout_s=60)
        yield child
    finally:
        child.stop()
