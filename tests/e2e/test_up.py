"""`writejobs up --demo` on embedded defaults, exactly as `make run` starts it on a fresh machine.

A real `up` process in an empty directory, with no `WRITEJOBS_*` variable but
ports and a fast policy clock: embedded Redis, SQLite, API, worker, scheduler,
Flower and sandbox as real child processes. The demo must finish every
operation, and a Ctrl-C (SIGINT) or a SIGTERM sent to `up` alone must leave no
process of it behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.system import REPO_ROOT

# Printed by `up` once the demo has been followed to its end.
RUNNING_LINE = "writejobs is running."
DEMO_KEYS = {
    "api_url",
    "api_key",
    "project",
    "integration",
    "group_ref",
    "object",
    "sandbox_url",
    "flower_url",
    "bulk_integration",
    "bulk_object",
}
POLICY_TIME_SCALE = "0.1"
# The demo runs every kind of write to its end before it says it is running; a
# loaded 2-core machine took over 50 s (21 processes on its cores at once).
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
# The two Celery workers `up` starts, told apart by the queue each reads.
WRITE_WORKER = "--queues writejobs --hostname"
WEBHOOKS_WORKER = "--queues writejobs-webhooks --hostname"
# The pieces `up` starts, each recognisable in its command line.
PIECES = (
    "redis-server",
    "writejobs sandbox",
    "writejobs api",
    WRITE_WORKER,
    WEBHOOKS_WORKER,
    "writejobs scheduler",
    "worker.app flower",
)


@dataclass
class UpRun:
    """A running `writejobs up --demo` with its output read by a thread."""

    process: subprocess.Popen[str]
    workdir: Path
    ports: dict[str, int]
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(
            f"`up` did not print {text!r} (exit code {self.process.poll()}):\n{self.diagnostics()}"
        )

    def diagnostics(self) -> str:
        """The output's tail and every piece's log, for a failure message."""
        parts = [self.output()[-6000:]]
        for log in sorted((self.workdir / ".writejobs").glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _embedded_env(ports: dict[str, int]) -> dict[str, str]:
    """The caller's environment without any WRITEJOBS_* setting, plus ports and a fast clock."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRITEJOBS_")}
    env.update(
        WRITEJOBS_API_PORT=str(ports["api"]),
        WRITEJOBS_SANDBOX_PORT=str(ports["sandbox"]),
        WRITEJOBS_FLOWER_PORT=str(ports["flower"]),
        # The demo's one-minute auto-batch delay becomes 6 s. Not less: the demo posts
        # its 250 records one by one (~60-80/s on a busy 2-core machine), and each group
        # of 100 must fill before its first record's delay ends to flush by size.
        WRITEJOBS_POLICY_TIME_SCALE=POLICY_TIME_SCALE,
        PYTHONPATH=str(REPO_ROOT),
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    return env


def _alive(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _describe(process: psutil.Process) -> str:
    try:
        return f"{process.pid} {' '.join(process.cmdline())}"
    except psutil.Error:
        return str(process.pid)


def _redis_servers_under(directory: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "redis-server" in f"{process.info['name']} {cmdline}" and str(directory) in cmdline:
            if _alive(process):
                found.append(process)
    return found


@contextmanager
def running_up(
    workdir: Path, *, demo: bool = True, env: dict[str, str] | None = None
) -> Iterator[UpRun]:
    """Start `up --demo` (or `up`) in `workdir`, with `env` added to the embedded defaults;
    whatever the test does, stop it and all it started."""
    ports = dict(zip(("api", "sandbox", "flower"), _free_ports(3), strict=True))
    process = subprocess.Popen(
        [sys.executable, "-m", "writejobs", "up", *(["--demo"] if demo else [])],
        cwd=workdir,
        env=_embedded_env(ports) | (env or {}),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    run = UpRun(process, workdir, ports)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            run.lines.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    descendants: list[psutil.Process] = []
    try:
        yield run
    finally:
        # Only reached with work to do when the test failed before stopping `up`.
        if process.poll() is None:
            try:
                descendants = psutil.Process(process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for child in descendants:
            if _alive(child):
                child.kill()
        reader.join(timeout=5)
        if process.stdout is not None:
            process.stdout.close()


def _stop_and_assert_nothing_left(run: UpRun, signum: signal.Signals) -> None:
    """Send `signum` to `up` only, as a terminal sends Ctrl-C to its foreground process."""
    descendants = psutil.Process(run.process.pid).children(recursive=True)
    cmdlines = " | ".join(_describe(p) for p in descendants)
    for piece in PIECES:
        assert piece in cmdlines, f"{piece!r} is not among `up`'s processes: {cmdlines}"

    os.kill(run.process.pid, signum)
    try:
        exit_code = run.process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"`up` still running {STOP_TIMEOUT_S}s after {signum.name}:\n{run.diagnostics()}"
        )

    assert exit_code is not None
    assert "stopped." in run.output(), run.diagnostics()
    left = [_describe(p) for p in descendants if _alive(p)]
    assert left == [], f"processes left after {signum.name}: {left}"
    servers = [_describe(p) for p in _redis_servers_under(run.workdir)]
    assert servers == [], f"embedded Redis left after {signum.name}: {servers}"


def _auto_batches(output: str) -> list[tuple[int, str]]:
    """(records, flush reason) of each row of the demo's auto-batches table."""
    row = re.compile(
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
        r"\s*[│|]\s*(\d+)\s*[│|]\s*(\w+)"
    )
    table = output.split("auto-batches", 1)[1] if "auto-batches" in output else ""
    return [(int(records), reason) for records, reason in row.findall(table)]


@pytest.mark.timeout(240)
def test_up_demo_finishes_every_operation_and_ctrl_c_leaves_no_process(tmp_path: Path) -> None:
    # given a fresh directory and no WRITEJOBS_* configuration
    workdir = tmp_path.resolve()
    with running_up(workdir) as run:
        # when the demo has run to its end
        run.wait_for(RUNNING_LINE, timeout_s=START_TIMEOUT_S)
        output = run.output()

        # then the URL table names every piece on its port
        assert "writejobs is up" in output, run.diagnostics()
        for port in run.ports.values():
            assert f"http://127.0.0.1:{port}" in output, run.diagnostics()
        # and every operation finished, with the 250 auto-batched records in 100 + 100 + 50
        finished = re.search(r"(\d+) of (\d+) operations finished", output)
        assert finished is not None, run.diagnostics()
        assert int(finished.group(1)) == int(finished.group(2)) > 0, finished.group(0)
        assert sorted(_auto_batches(output)) == [(50, "time"), (100, "size"), (100, "size")], (
            run.diagnostics()
        )
        # and both bulk CSV upserts reached Salesforce (the sandbox) with their invalid rows
        assert "Bulk upsert completed (99 succeeded, 1 failed)" in output, run.diagnostics()
        assert "Bulk upsert completed (9998 succeeded, 2 failed)" in output, run.diagnostics()
        # and the demo's details are where the README says
        details = json.loads((workdir / ".writejobs" / "demo.json").read_text())
        assert DEMO_KEYS <= details.keys()
        assert details["api_url"] == f"http://127.0.0.1:{run.ports['api']}"

        # when Ctrl-C reaches `up`, then it stops everything it started
        _stop_and_assert_nothing_left(run, signal.SIGINT)


@pytest.mark.timeout(240)
def test_up_stopped_by_sigterm_leaves_no_process(tmp_path: Path) -> None:
    # given a running `up --demo` on embedded defaults
    workdir = tmp_path.resolve()
    with running_up(workdir) as run:
        run.wait_for(RUNNING_LINE, timeout_s=START_TIMEOUT_S)

        # when SIGTERM (a service manager's stop) reaches `up`, then nothing is left
        _stop_and_assert_nothing_left(run, signal.SIGTERM)


def _piece(run: UpRun, marker: str, timeout_s: float = 30.0) -> psutil.Process:
    """The child of `up` whose command line holds `marker` (the piece itself, not its pool);
    waited for, since a piece started as `python -m writejobs worker` execs into Celery."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [p for p in psutil.Process(run.process.pid).children() if marker in _cmdline(p)]
        if len(found) == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(found) == 1, run.diagnostics()
    return found[0]


def _cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline()) if _alive(process) else ""
    except psutil.Error:
        return ""


def _async_write(details: dict[str, str], email: str = "after-restart@example.com") -> str:
    path = (
        f"/v1/projects/{details['project']}/integrations/{details['integration']}"
        f"/objects/{details['object']}"
    )
    with httpx.Client(
        base_url=details["api_url"], headers={"X-Api-Key": details["api_key"]}, timeout=30
    ) as client:
        response = client.post(
            path,
            json={
                "groupRef": details["group_ref"],
                "type": "create",
                "mode": "asynchronous",
                "record": {"email": email},
            },
        )
    assert response.status_code == 200, response.text
    return str(response.json()["operationId"])


def _wait_ready(api_url: str, timeout_s: float = 60.0) -> None:
    """Wait until the API's /readyz answers 200 (its database and Redis answer)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api_url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{api_url}/readyz never answered 200")


def _wait_success(details: dict[str, str], operation_id: str, timeout_s: float = 90.0) -> None:
    path = f"/v1/projects/{details['project']}/operations/{operation_id}"
    headers = {"X-Api-Key": details["api_key"]}
    deadline = time.monotonic() + timeout_s
    view: dict[str, object] = {}
    while time.monotonic() < deadline:
        view = httpx.get(details["api_url"] + path, headers=headers, timeout=10).json()
        if view["status"] != "in_progress":
            break
        time.sleep(0.3)
    assert view.get("status") == "success", view


@pytest.mark.timeout(240)
def test_up_starts_a_killed_worker_again_and_a_write_then_completes(tmp_path: Path) -> None:
    # given a running `up` on embedded defaults
    workdir = tmp_path.resolve()
    with running_up(workdir, demo=False) as run:
        run.wait_for(RUNNING_LINE, timeout_s=START_TIMEOUT_S)
        details = json.loads((workdir / ".writejobs" / "demo.json").read_text())
        worker = _piece(run, WRITE_WORKER)
        pool = worker.children()

        # when the worker's main process is SIGKILLed (as the OOM killer would)
        worker.kill()

        # then `up` says so, ends the orphaned pool, and starts a new worker
        run.wait_for("worker restarted", timeout_s=60)
        assert "worker exited (code -9)" in run.output(), run.diagnostics()
        assert [_describe(p) for p in pool if _alive(p)] == []
        assert _piece(run, WRITE_WORKER).pid != worker.pid
        # and the other pieces kept running
        assert "api exited" not in run.output() and "scheduler exited" not in run.output()
        # and a write sent now completes on the new worker
        _wait_success(details, _async_write(details))

        # and SIGTERM still stops everything, counting the restart on the way out
        _stop_and_assert_nothing_left(run, signal.SIGTERM)
        assert "restarts this run: worker 1" in run.output(), run.diagnostics()


@pytest.mark.timeout(240)
def test_up_starts_a_killed_embedded_redis_again_and_writes_then_complete(tmp_path: Path) -> None:
    # given a running `up` on embedded defaults
    workdir = tmp_path.resolve()
    with running_up(workdir, demo=False) as run:
        run.wait_for(RUNNING_LINE, timeout_s=START_TIMEOUT_S)
        details = json.loads((workdir / ".writejobs" / "demo.json").read_text())
        worker = _piece(run, WRITE_WORKER)

        # when the embedded Redis is SIGKILLed
        _piece(run, "redis-server").kill()

        # then `up` starts it again, and the worker (the same process) writes again
        run.wait_for("embedded Redis exited; starting it again", timeout_s=30)
        _wait_ready(details["api_url"])
        _wait_success(details, _async_write(details, "after-redis@example.com"))
        assert _alive(worker), run.diagnostics()

        _stop_and_assert_nothing_left(run, signal.SIGTERM)
        assert "restarts this run: redis 1" in run.output(), run.diagnostics()


@pytest.mark.timeout(240)
def test_up_keeps_its_data_dir_private_and_flower_behind_the_demo_login(tmp_path: Path) -> None:
    workdir = tmp_path.resolve()
    with running_up(workdir, demo=False) as run:
        run.wait_for(RUNNING_LINE, timeout_s=START_TIMEOUT_S)
        data_dir = workdir / ".writejobs"
        details = json.loads((data_dir / "demo.json").read_text())

        # Flower's pages need the login demo.json names
        flower = details["flower_url"] + "/"
        login = (details["flower_user"], details["flower_password"])
        assert httpx.get(flower, timeout=10).status_code == 401
        assert httpx.get(flower, auth=login, timeout=10).status_code == 200

        # and the data dir is 0700, every file in it 0600 (store, WAL, key, AOF, logs …)
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data_dir.iterdir() if p.is_file()}
        expected = {"writejobs.db", "secret.key", "demo.json", "flower.auth", "worker.log"}
        assert expected <= files.keys(), files
        assert {name: mode for name, mode in files.items() if mode != 0o600} == {}

        _stop_and_assert_nothing_left(run, signal.SIGINT)
