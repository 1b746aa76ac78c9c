"""`writejobs flower` serves its pages only to a user with the basic-auth password.

A real Flower process on loopback, on the session's Redis. Its pages show every
task, traceback and the broker's URL; only `/healthcheck` (what `writejobs up`
polls) stays open.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

from tests.support.system import start_child
from writejobs.cli.flower_auth import auth_file, first_user, flower_basic_auth
from writejobs.settings import Settings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_flower(settings: Settings) -> Iterator[tuple[str, int]]:
    """`writejobs flower` on a port of its own; yields its URL and pid once it answers."""
    child = start_child("flower", ["flower"], settings)
    url = f"http://127.0.0.1:{settings.flower_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthcheck", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or child.process.poll() is not None:
                raise RuntimeError(f"flower did not start:\n{child.output()[-3000:]}")
            time.sleep(0.2)
        yield url, child.process.pid
    finally:
        child.stop()


def _own_settings(redis_url: str, data_dir: Path, **update: object) -> Settings:
    return Settings(data_dir=data_dir, redis_url=redis_url, flower_port=_free_port(), **update)


def test_flower_pages_need_the_configured_user_and_password(redis_url: str, tmp_path: Path) -> None:
    settings = _own_settings(redis_url, tmp_path, flower_basic_auth="ops:pw-from-settings")

    with running_flower(settings) as (url, pid):
        # without credentials, or with a wrong password, the pages are refused
        assert httpx.get(f"{url}/", timeout=10).status_code == 401
        assert httpx.get(f"{url}/tasks", timeout=10).status_code == 401
        assert httpx.get(f"{url}/", auth=("ops", "wrong"), timeout=10).status_code == 401
        # with them, they are served
        assert httpx.get(f"{url}/", auth=("ops", "pw-from-settings"), timeout=10).status_code == 200
        # and the password is in no process's command line (`ps` shows those to everyone)
        cmdlines = [" ".join(psutil.Process(pid).cmdline())]
        cmdlines += [" ".join(p.cmdline()) for p in psutil.Process(pid).children(recursive=True)]
        assert not [line for line in cmdlines if "pw-from-settings" in line]


def test_without_a_setting_flower_makes_a_login_in_the_data_dir_and_keeps_it(
    redis_url: str, tmp_path: Path
) -> None:
    settings = _own_settings(redis_url, tmp_path)

    with running_flower(settings) as (url, _pid):
        user, password = first_user(auth_file(settings).read_text().strip())
        assert httpx.get(f"{url}/", timeout=10).status_code == 401
        assert httpx.get(f"{url}/", auth=(user, password), timeout=10).status_code == 200

    # the next start (here, `writejobs up` reading it for demo.json) finds the same login
    assert first_user(flower_basic_auth(settings)) == (user, password)
