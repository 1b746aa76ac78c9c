"""`writejobs api --workers N`: N API processes on one port, each wired on its own."""

from __future__ import annotations

import uuid

import httpx
import psutil

from tests.support.system import create_tenant, running_api
from writejobs.settings import Settings


def _server_processes(port: int) -> list[psutil.Process]:
    """uvicorn's worker processes (spawned children) of the `writejobs api` on `port`."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        try:
            if "spawn_main" in cmdline and proc.environ().get("WRITEJOBS_API_PORT") == str(port):
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
    return found


def test_api_with_two_workers_serves_writes_from_two_processes(
    settings: Settings, sandbox_url: str
) -> None:
    with running_api(settings, workers=2) as url:
        tenant = create_tenant(settings, url, sandbox_url)
        with tenant.client() as client:
            for _ in range(20):
                record = {"email": f"w-{uuid.uuid4().hex[:10]}@example.com"}
                body = {"groupRef": tenant.group_ref, "type": "create", "record": record}
                response = client.post(tenant.write_path(), json=body)
                assert response.status_code == 200, response.text
                assert response.json()["result"]["success"] is True
        servers = _server_processes(int(url.rsplit(":", 1)[1]))
        assert len(servers) == 2
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
