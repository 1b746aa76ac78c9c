"""A Celery worker outlives a restart of its broker and takes writes again once it is back.

The test owns its Redis (an embedded server on a Unix socket, with AOF, as under
`writejobs up`), so it can stop and start it; the API runs in this process, the
worker as a real process, both on that Redis. Not the machine's shared Redis.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from api_shim.app import create_app
from tests.support.servers import serve_in_thread
from tests.support.system import ChildProcess, Tenant, create_tenant, running_worker
from writejobs.cli.embedded_redis import EmbeddedRedis
from writejobs.settings import Settings

RESTARTS = 3


@pytest.fixture()
def own_redis() -> Iterator[EmbeddedRedis]:
    # A short path of its own: a Unix socket's path may not pass ~100 characters.
    directory = Path(tempfile.mkdtemp(prefix="wj-broker-"))
    server = EmbeddedRedis(directory, directory / "redis.sock")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _wait_after(worker: ChildProcess, mark: int, *texts: str, timeout_s: float = 90.0) -> None:
    """Wait until the worker prints one of `texts` in a line after its first `mark` lines."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(text in line for line in worker.lines[mark:] for text in texts):
            return
        assert worker.process.poll() is None, f"worker exited:\n{worker.output()[-3000:]}"
        time.sleep(0.1)
    pytest.fail(f"worker printed none of {texts!r}:\n{worker.output()[-3000:]}")


def _write(tenant: Tenant) -> str:
    with tenant.client() as client:
        response = client.post(
            tenant.write_path(),
            json={
                "groupRef": tenant.group_ref,
                "type": "create",
                "mode": "asynchronous",
                "record": {"email": f"b-{uuid.uuid4().hex[:12]}@example.com"},
            },
        )
    assert response.status_code == 200, response.text
    return str(response.json()["operationId"])


@pytest.mark.timeout(240)
def test_a_worker_survives_broker_restarts_and_writes_again_once_it_is_back(
    settings: Settings, own_redis: EmbeddedRedis, sandbox_url: str, heavy: None
) -> None:
    own = settings.model_copy(update={"redis_url": own_redis.url})
    with serve_in_thread(create_app(own)) as api_url, running_worker(own) as worker:
        tenant = create_tenant(own, api_url, sandbox_url)
        first = _write(tenant)
        assert tenant.wait_terminal([first])[first]["status"] == "success"

        # when the broker goes away and comes back, several times
        for _ in range(RESTARTS):
            mark = len(worker.lines)
            own_redis.stop()
            # (a worker that lost a connection just after connecting is already retrying)
            _wait_after(worker, mark, "Connection to broker lost", "Cannot connect")
            mark = len(worker.lines)
            own_redis.start()
            _wait_after(worker, mark, "Connected to")

        # then the worker is still the same process, and a new write completes
        after = _write(tenant)
        view = tenant.wait_terminal([after], timeout_s=120)[after]
        assert view["status"] == "success", view
        assert worker.process.poll() is None, worker.output()[-3000:]
        output = worker.output()
        assert "Unrecoverable error" not in output, output[-3000:]
        assert "Error on restarting" not in output, output[-3000:]
