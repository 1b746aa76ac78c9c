"""`writejobs sandbox` and `writejobs flower` listen where WRITEJOBS_SANDBOX_HOST and
WRITEJOBS_FLOWER_HOST say (loopback by default), so a container can run the real
subcommands on 0.0.0.0 instead of their apps' own commands."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.system import ChildProcess, start_child
from writejobs.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening_on(child: ChildProcess, url: str, port: int) -> set[str]:
    """The addresses the child listens on at `port`, once `url` answers."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or child.process.poll() is not None:
            raise RuntimeError(f"{child.name} did not start:\n{child.output()[-3000:]}")
        time.sleep(0.2)
    process = psutil.Process(child.process.pid)
    connections = process.net_connections(kind="tcp")
    return {
        c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


@pytest.mark.parametrize(("host", "expected"), [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")])
def test_the_sandbox_listens_on_its_host_setting(
    host: str | None, expected: str, tmp_path: Path
) -> None:
    port = free_port()
    update = {"sandbox_host": host} if host else {}
    settings = Settings(data_dir=tmp_path, sandbox_port=port, **update)  # type: ignore[arg-type]
    child = start_child("sandbox", ["sandbox"], settings)
    try:
        url = f"http://127.0.0.1:{port}/_sandbox/stats"
        assert listening_on(child, url, port) == {expected}
    finally:
        child.stop()


def test_flower_listens_on_its_host_setting(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    settings = Settings(
        data_dir=tmp_path,
        redis_url=redis_url,
        flower_port=port,
        flower_host="0.0.0.0",
        flower_basic_auth="ops:a-password",
    )
    child = start_child("flower", ["flower"], settings)
    try:
        url = f"http://127.0.0.1:{port}/healthcheck"
        assert listening_on(child, url, port) == {"0.0.0.0"}
    finally:
        child.stop()
