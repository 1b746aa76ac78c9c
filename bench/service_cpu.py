"""CPU of the shared services a bench row leans on but did not start: PostgreSQL and Redis.

Their processes are not the row's children, so `e2e_systems.cpu_by_piece` never sees
them; on a machine whose cores the services share with the system under test they
are part of where the CPU goes. Read from /proc (psutil) at the start and the end of
a row: the user + system seconds of every process named `postgres` (the postmaster
and every server process it forked) and `redis-server`, keyed by (pid, start time) so
a reused pid is not mistaken for the same process. A process that exits during the
row takes its CPU with it (a pooled connection lives for the row, so little is lost).

PostgreSQL's share is split by whom each server process served, read from the
backend's title (`postgres: 15/main: user db 127.0.0.1(PORT) idle`): a backend whose
client port is a connection of one of the row's processes serves the system; the
bench's own polling connection is named by its backend pid; anything else (the
checkpointer, the WAL writer, other sessions on a shared server) is `other`. Redis
is one process shared by whoever uses it, so its figure is the whole server's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psutil

_PORT_IN_TITLE = re.compile(r"\((\d+)\)")
_NAMES = ("postgres", "redis-server")

ProcessKey = tuple[int, float]


@dataclass(frozen=True)
class ServiceProcess:
    name: str  # "postgres" | "redis-server"
    title: str  # the command line as the process shows it
    cpu_s: float


def snapshot() -> dict[ProcessKey, ServiceProcess]:
    """Every PostgreSQL and Redis server process now, with its CPU so far."""
    found: dict[ProcessKey, ServiceProcess] = {}
    attrs = ["pid", "name", "create_time", "cmdline", "cpu_times"]
    for process in psutil.process_iter(attrs):
        info = process.info
        if info["name"] not in _NAMES or info["cpu_times"] is None:
            continue
        times = info["cpu_times"]
        title = " ".join(info["cmdline"] or ())
        key = (info["pid"], info["create_time"])
        found[key] = ServiceProcess(info["name"], title, times.user + times.system)
    return found


def client_ports(root_pids: list[int], server_port: int) -> set[int]:
    """The local ports of the TCP connections to `server_port` held by these processes
    or their descendants (their PostgreSQL backends' client ports)."""
    ports: set[int] = set()
    for pid in root_pids:
        try:
            root = psutil.Process(pid)
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for member in members:
            try:
                connections = member.net_connections(kind="tcp")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            ports.update(
                c.laddr.port for c in connections if c.raddr and c.raddr.port == server_port
            )
    return ports


def spent(
    start: dict[ProcessKey, ServiceProcess],
    end: dict[ProcessKey, ServiceProcess],
    *,
    system_ports: set[int],
    poll_backend_pid: int | None,
) -> dict[str, float]:
    """CPU seconds each service spent between the snapshots: `postgres` (all of it),
    `postgres system`, `postgres bench polling`, `postgres other`, and `redis`."""
    totals = dict.fromkeys(
        ("postgres", "postgres system", "postgres bench polling", "postgres other", "redis"), 0.0
    )
    for key, process in end.items():
        before = start.get(key)
        delta = process.cpu_s - (before.cpu_s if before is not None else 0.0)
        if process.name == "redis-server":
            totals["redis"] += delta
            continue
        totals["postgres"] += delta
        totals[f"postgres {_served(key[0], process.title, system_ports, poll_backend_pid)}"] += (
            delta
        )
    return totals


def _served(pid: int, title: str, system_ports: set[int], poll_backend_pid: int | None) -> str:
    if pid == poll_backend_pid:
        return "bench polling"
    port = _PORT_IN_TITLE.search(title)
    if port is not None and int(port.group(1)) in system_ports:
        return "system"
    return "other"
