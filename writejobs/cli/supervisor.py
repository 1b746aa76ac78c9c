"""Run the pieces of writejobs as child processes, restart any that exits, stop them together.

`writejobs up` uses it: each piece is started as `python -m writejobs <piece>`
(or Celery's own command), in its own process group, and asked to die with its
parent. A piece that exits on its own (a crash, a SIGKILL, a Celery worker
that gave up on a broker) is started again after an exponential backoff
(1 s, 2 s, 4 s … capped at 30 s; back to 1 s once it has stayed up a minute),
so one piece's death no longer stops the whole system; each restart is
reported and counted. `stop_all` sends SIGTERM, waits, then SIGKILLs whatever
is left, so Ctrl-C never leaves an orphan behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from writejobs.cli.process_utils import die_with_parent
from writejobs.private_files import private_file

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0
# A piece that ran this long before exiting starts its backoff over at the base.
STABLE_AFTER_S = 60.0


def restart_delay_s(
    failures: int, *, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S
) -> float:
    """The wait before the `failures`-th restart in a row (1-based): base, 2×base, 4×base … cap."""
    if failures < 1:
        return 0.0
    return float(min(cap_s, base_s * 2 ** min(failures - 1, 30)))


@dataclass
class Child:
    """One piece: its command, its current process, and its restart history."""

    name: str
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    # Restarts so far, and exits in a row that came before STABLE_AFTER_S.
    restarts: int = 0
    failures: int = 0
    # Set while the child is dead and waiting out its backoff.
    restart_at: float | None = None
    last_exit_code: int | None = None

    def has_exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None


@dataclass
class Supervisor:
    env: dict[str, str]
    log_dir: str
    report: Callable[[str], None] = print
    backoff_base_s: float = BACKOFF_BASE_S
    backoff_cap_s: float = BACKOFF_CAP_S
    stable_after_s: float = STABLE_AFTER_S
    children: list[Child] = field(default_factory=list)
    stopping: bool = False

    def start(self, name: str, args: list[str]) -> Child:
        child = Child(name, args)
        self._spawn(child, time.monotonic())
        self.children.append(child)
        return child

    def exited(self) -> list[Child]:
        return [c for c in self.children if c.has_exited()]

    @property
    def restart_counts(self) -> dict[str, int]:
        """Restarts so far, by piece name (every piece, 0 for those never restarted)."""
        return {child.name: child.restarts for child in self.children}

    @property
    def total_restarts(self) -> int:
        return sum(child.restarts for child in self.children)

    def supervise(self, now: float | None = None) -> list[str]:
        """One pass: schedule a restart for each newly exited piece, restart those now due.

        Returns what it did, one line each (also passed to `report`).
        """
        if self.stopping:
            return []
        now = time.monotonic() if now is None else now
        events: list[str] = []
        for child in self.children:
            if child.restart_at is None and child.has_exited():
                events.append(self._schedule_restart(child, now))
            elif child.restart_at is not None and now >= child.restart_at:
                self._spawn(child, now)
                child.restarts += 1
                child.restart_at = None
                assert child.process is not None
                events.append(
                    f"{child.name} restarted (pid {child.process.pid}); "
                    f"restarts: {child.restarts} of {child.name}, {self.total_restarts} in all"
                )
        for event in events:
            self.report(event)
        return events

    def stop_all(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every child's process group (newest first), then SIGKILL stragglers."""
        self.stopping = True
        for child in self.children:
            child.restart_at = None
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

    def _schedule_restart(self, child: Child, now: float) -> str:
        assert child.process is not None
        child.last_exit_code = child.process.returncode
        # The piece's own children (a Celery worker's pool) may outlive it: end them
        # before a new piece starts beside them.
        _signal_group(child, signal.SIGKILL)
        ran_s = now - child.started_at
        child.failures = 1 if ran_s >= self.stable_after_s else child.failures + 1
        delay_s = restart_delay_s(
            child.failures, base_s=self.backoff_base_s, cap_s=self.backoff_cap_s
        )
        child.restart_at = now + delay_s
        return (
            f"{child.name} exited (code {child.last_exit_code}) after {ran_s:.0f} s; "
            f"restarting in {delay_s:g} s; see {self._log_path(child)}"
        )

    def _spawn(self, child: Child, now: float) -> None:
        log_path = private_file(Path(self._log_path(child)))
        with open(log_path, "ab") as log_file:
            if child.restart_at is not None:
                log_file.write(f"--- restarted by writejobs up at {time.ctime()}\n".encode())
                log_file.flush()
            child.process = subprocess.Popen(
                child.args,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Own process group: the terminal's Ctrl-C reaches only `up`, which
                # then stops the children in order instead of all at once.
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        child.started_at = now

    def _log_path(self, child: Child) -> str:
        return os.path.join(self.log_dir, f"{child.name}.log")


def python_module(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def _signal_group(child: Child, signum: int) -> None:
    if child.process is None:
        return
    try:
        os.killpg(child.process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
