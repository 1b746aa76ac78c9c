"""Run the pieces of writejobs as child processes, and stop them all together.

`writejobs up` uses it: each piece is started as `python -m writejobs <piece>`
(or Celery's own command), in its own process group, and asked to die with its
parent. `stop_all` sends SIGTERM, waits, then SIGKILLs whatever is left, so
Ctrl-C never leaves an orphan behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from writejobs.cli.process_utils import die_with_parent


@dataclass
class Child:
    name: str
    args: list[str]
    process: subprocess.Popen[bytes] | None = None


@dataclass
class Supervisor:
    env: dict[str, str]
    log_dir: str
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, args: list[str]) -> Child:
        child = Child(name, args)
        log_file = open(os.path.join(self.log_dir, f"{name}.log"), "ab")  # noqa: SIM115
        child.process = subprocess.Popen(
            args,
            env=self.env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Own process group: the terminal's Ctrl-C reaches only `up`, which
            # then stops the children in order instead of all at once.
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        log_file.close()
        self.children.append(child)
        return child

    def exited(self) -> list[Child]:
        return [c for c in self.children if c.process is not None and c.process.poll() is not None]

    def stop_all(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every child's process group (newest first), then SIGKILL stragglers."""
        for child in reversed(self.children):
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in reversed(self.children):
            assert child.process is not None
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                _signal_group(child, signal.SIGKILL)
                child.process.wait()
        # A child's own children (Celery's pool) share its group: make sure they are gone.
        for child in self.children:
            _signal_group(child, signal.SIGKILL)


def python_module(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def _signal_group(child: Child, signum: int) -> None:
    if child.process is None:
        return
    try:
        os.killpg(child.process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
