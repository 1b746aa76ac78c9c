"""The supervisor of `writejobs up`: a piece that exits is started again, with backoff, counted.

Real child processes; time is passed in (`supervise(now)`), so the backoff is
driven by the test rather than waited for.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from writejobs.cli.supervisor import Supervisor, restart_delay_s

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]
QUITTER = [sys.executable, "-c", "raise SystemExit(3)"]


@pytest.mark.parametrize(
    ("failures", "delay_s"),
    [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (40, 30.0)],
)
def test_the_restart_delay_doubles_from_one_second_up_to_thirty(
    failures: int, delay_s: float
) -> None:
    assert restart_delay_s(failures) == delay_s


@pytest.fixture()
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    reported: list[str] = []
    built = Supervisor(env=dict(os.environ), log_dir=str(tmp_path), report=reported.append)
    try:
        yield built
    finally:
        built.stop_all(timeout_s=5)


def _wait_exit(supervisor: Supervisor, name: str) -> None:
    [child] = [c for c in supervisor.children if c.name == name]
    assert child.process is not None
    child.process.wait(timeout=30)


def test_a_killed_piece_is_started_again_after_its_backoff_and_counted(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    child = supervisor.start("sleeper", SLEEPER)
    other = supervisor.start("other", SLEEPER)
    assert child.process is not None
    first_pid = child.process.pid

    # when the piece is SIGKILLed
    os.kill(first_pid, signal.SIGKILL)
    _wait_exit(supervisor, "sleeper")
    now = child.started_at + 5.0

    # then the next pass reports the exit and schedules a restart a second later
    [exited] = supervisor.supervise(now)
    assert "sleeper exited (code -9)" in exited and "restarting in 1 s" in exited
    assert child.restart_at == now + 1.0
    # and nothing happens before the backoff is over
    assert supervisor.supervise(now + 0.5) == []

    # when the backoff is over, then it runs again as a new process, and is counted
    [restarted] = supervisor.supervise(now + 1.0)
    assert child.process.pid != first_pid and child.process.poll() is None
    assert "sleeper restarted" in restarted and "1 in all" in restarted
    assert supervisor.restart_counts == {"sleeper": 1, "other": 0}
    assert supervisor.total_restarts == 1
    # and the other piece was never touched
    assert other.process is not None and other.process.poll() is None
    # and its log says where the restart happened
    assert "restarted by writejobs up" in (tmp_path / "sleeper.log").read_text()


def test_a_piece_that_keeps_exiting_waits_twice_as_long_each_time_up_to_the_cap(
    supervisor: Supervisor,
) -> None:
    child = supervisor.start("quitter", QUITTER)
    delays = []
    for _ in range(7):
        _wait_exit(supervisor, "quitter")
        now = child.started_at + 0.1  # each run ended at once
        supervisor.supervise(now)
        assert child.restart_at is not None
        delays.append(child.restart_at - now)
        supervisor.supervise(child.restart_at)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert child.restarts == 7
    assert child.last_exit_code == 3


def test_a_piece_that_stayed_up_a_while_starts_its_backoff_over(
    supervisor: Supervisor,
) -> None:
    child = supervisor.start("quitter", QUITTER)
    for _ in range(3):
        _wait_exit(supervisor, "quitter")
        supervisor.supervise(child.started_at + 0.1)
        assert child.restart_at is not None
        supervisor.supervise(child.restart_at)
    assert child.failures == 3

    # when its latest run lasted longer than stable_after_s, then the next wait is 1 s again
    _wait_exit(supervisor, "quitter")
    now = child.started_at + supervisor.stable_after_s + 1
    supervisor.supervise(now)
    assert child.restart_at == now + 1.0


def test_stopping_during_a_backoff_starts_nothing_and_leaves_no_process(
    supervisor: Supervisor,
) -> None:
    child = supervisor.start("sleeper", SLEEPER)
    running = supervisor.start("running", SLEEPER)
    assert child.process is not None and running.process is not None
    os.kill(child.process.pid, signal.SIGKILL)
    _wait_exit(supervisor, "sleeper")
    supervisor.supervise(child.started_at + 1)
    pids = [child.process.pid, running.process.pid]

    supervisor.stop_all(timeout_s=5)

    # then a later pass restarts nothing
    assert supervisor.supervise(child.started_at + 1000) == []
    assert not [pid for pid in pids if psutil.pid_exists(pid) and _alive(pid)]
    assert child.restarts == 0


def test_a_restart_ends_what_the_dead_piece_left_in_its_process_group(
    supervisor: Supervisor,
) -> None:
    # given a piece with a child of its own (as a Celery worker has its pool)
    parent = [
        sys.executable,
        "-c",
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "time.sleep(120)",
    ]
    child = supervisor.start("parent", parent)
    assert child.process is not None
    leader = psutil.Process(child.process.pid)
    for _ in range(100):
        if leader.children():
            break
        time.sleep(0.05)
    [grandchild] = leader.children()

    # when the piece alone is killed, then its exit is noticed and its pool is ended too
    os.kill(child.process.pid, signal.SIGKILL)
    _wait_exit(supervisor, "parent")
    supervisor.supervise(child.started_at + 1)
    grandchild.wait(timeout=10)
    assert not _alive(grandchild.pid)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
