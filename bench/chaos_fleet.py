"""The chaos bench's processes: its own Redis, the sandbox, and the fleet it kills.

Every piece is a real process in a session of its own (so a SIGKILL takes a
Celery worker's pool children with it), logging to a file under the run's
directory. All of them are started from the bench's main thread, because
PR_SET_PDEATHSIG (`die_with_parent`) fires when the *thread* that forked a child
ends: nothing outlives the bench, even when the bench itself is SIGKILLed.

The bench is the supervisor: it tells the kills it made from exits it did not
(a piece that died on its own), restarts both, and counts each.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import redis

from writejobs.cli.process_utils import die_with_parent

REPO_ROOT = Path(__file__).resolve().parents[1]
REDIS_SERVER = "/usr/bin/redis-server"
SHARED_REDIS_PORT = 6379


def free_port() -> int:
    """A loopback port nothing listens on now (never the machine's shared Redis)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != SHARED_REDIS_PORT:
            return port


@dataclass
class ExitSeen:
    """A piece's process that ended without the bench killing it."""

    piece: str
    at_s: float
    returncode: int | None
    log_tail: str


@dataclass
class Piece:
    """One restartable process: its command, environment, log, and what happened to it."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    own_exits: list[ExitSeen] = field(default_factory=list)
    _log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's life
        self._log.write(f"\n=== start {self.starts + 1} at {time.time():.3f}\n".encode())
        self._log.flush()
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=REPO_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self.starts += 1

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL, timeout_s: float = 30.0) -> None:
        """Signal the whole process group and wait for the leader; SIGKILL if it lingers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.kills += 1
            _signal_group(self.process.pid, sig)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # Pool children of a Celery worker die with the group; reap any straggler too.
        _signal_group(self.process.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None

    def exited_on_its_own(self, started_at: float) -> bool:
        """Whether the process ended without a kill; if so, note it (once)."""
        if self.process is None or self.process.poll() is None:
            return False
        self.own_exits.append(
            ExitSeen(
                self.name,
                time.monotonic() - started_at,
                self.process.returncode,
                tail(self.log_path),
            )
        )
        _signal_group(self.process.pid, signal.SIGKILL)
        self.process = None
        return True

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def tail(path: Path, chars: int = 1500) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return text[-chars:]


def writejobs_piece(name: str, args: list[str], env: dict[str, str], logs: Path) -> Piece:
    return Piece(name, [sys.executable, "-m", "writejobs", *args], env, logs / f"{name}.log")


def redis_piece(port: int, data_dir: Path, appendfsync: str, logs: Path) -> Piece:
    """redis-server on 127.0.0.1:port with its AOF under data_dir (kept across restarts)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        REDIS_SERVER,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--protected-mode",
        "yes",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--appendfsync",
        appendfsync,
        "--save",
        "",
        "--daemonize",
        "no",
    ]
    return Piece("redis", argv, dict(os.environ), logs / "redis.log")


def redis_answers(url: str) -> bool:
    """PING answered (not LOADING): the AOF is read back and the server takes commands."""
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(what: str, ready: Callable[[], bool], piece: Piece, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        if not piece.running():
            raise RuntimeError(f"{piece.name} exited before {what}:\n{tail(piece.log_path)}")
        time.sleep(0.1)
    raise TimeoutError(f"{piece.name}: no {what} within {timeout_s:g} s:\n{tail(piece.log_path)}")


def log_says(piece: Piece, text: str) -> Callable[[], bool]:
    """Readiness by the piece's own words, in the log written since its last start."""

    def ready() -> bool:
        log = piece.log_text()
        return text in log[log.rfind("=== start") :]

    return ready
