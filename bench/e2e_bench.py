"""End to end: writejobs against what a team would build on Celery, in one run, one table.

Each row starts its own system under test as real processes, sends N single-record
creates from 16 client threads (4 spawned client processes; the HTTP rows' clients
use httpcore, httpx's own connection layer, at half httpx's CPU per request, so
the load generator takes less of the cores the systems share), waits until every
record is written at the provider and (for writejobs) its operation is terminal,
then stops every process it started. The provider for every row is one
`writejobs sandbox` process with injected latency (50 ms per create call, single
or batch); its `/_sandbox/stats` count the calls. Rows:

* `wj-auto`: writejobs auto-batched (`autoBatchPolicy`: the API buffers, flushes
  at 100, one batch call per flush); API, scheduler and a 2-process worker.
* `wj-async`: writejobs asynchronous single writes (one task, one call per record).
* `celery`: plain Celery, one task per record (acks late, prefetch 1).
* `batches-p0`, `batches-p4`: celery-batches (flush every 100 or every 1 s) at
  prefetch 0, as its docs require, and at prefetch 4.
* `fastapi-batches`: a bare FastAPI endpoint (same uvicorn settings as writejobs'
  API) whose handler validates with pydantic and calls `apply_async` on the
  celery-batches task, with its worker at prefetch 0.

Columns: submit rate (records answered per second, first submit to last answer);
end-to-end records per second (first submit to the last record written);
provider calls; p50 and p99 accept-to-done (a record's answer to the moment it
was written: for writejobs its operation's terminal `updateTime`, for the Celery
rows the time the task stamped it after the provider answered); CPU ms per
record (user + system of every process of the system under test, children
included, from the moment the clients start to the last record, over N); then
the CPU per record of the shared services the row used but did not start
(`service_cpu.py`: PostgreSQL, split into the backends serving the row's
processes, the bench's own polling and the rest; Redis, the whole server's);
then the ratios and the targets (printed, not asserted).

Stores: Redis at `--redis-url` (default 127.0.0.1:6379 db 11; only the run's
own keys are removed) and PostgreSQL at `--database-url` (default
WRITEJOBS_DATABASE_URL, else the loopback `test` database; a throwaway schema
per writejobs row). At the defaults a run takes about half an hour: the rows at
one call per record go at ~40 records/s on 2 worker processes, and celery-batches
at prefetch 4 (8 records in flight, flushed each second) far slower.

Run: `.venv/bin/python bench/e2e_bench.py [--records N] [--rows wj-auto,celery,…]`
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from bench_support import DEFAULT_DATABASE_URL  # noqa: E402
from e2e_clients import Job, Submitted, run_client  # noqa: E402
from e2e_systems import (  # noqa: E402
    Env,
    System,
    celery_system,
    cpu_by_piece,
    free_port,
    wait_http,
    writejobs_system,
)
from service_cpu import ProcessKey, ServiceProcess, client_ports, snapshot, spent  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from tests.support.system import ChildProcess, start_child  # noqa: E402
from writejobs.settings import Settings  # noqa: E402

RowFactory = Callable[[Env], AbstractContextManager[System]]
ROWS: dict[str, tuple[str, RowFactory]] = {
    "wj-auto": (
        "writejobs auto-batched",
        lambda env: writejobs_system(env, "wj-auto", auto_batch=True),
    ),
    "wj-async": (
        "writejobs async single",
        lambda env: writejobs_system(env, "wj-async", auto_batch=False),
    ),
    "celery": (
        "plain Celery, task per record",
        lambda env: celery_system(env, "celery", task_name="e2e.write_one", prefetch=1),
    ),
    "batches-p0": (
        "celery-batches, prefetch 0",
        lambda env: celery_system(env, "batches-p0", task_name="e2e.write_batch", prefetch=0),
    ),
    "batches-p4": (
        "celery-batches, prefetch 4",
        lambda env: celery_system(env, "batches-p4", task_name="e2e.write_batch", prefetch=4),
    ),
    "fastapi-batches": (
        "FastAPI + celery-batches",
        lambda env: celery_system(
            env, "fastapi-batches", task_name="e2e.write_batch", prefetch=0, http_front=True
        ),
    ),
}
CREATE_ENDPOINTS = (
    "POST /crm/v3/objects/{objectType}",
    "POST /crm/v3/objects/{objectType}/batch/create",
)


@dataclass
class Result:
    label: str
    submitted: int = 0
    done: int = 0
    written: int = 0
    submit_rate: float = 0.0
    e2e_rate: float = 0.0
    calls: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    cpu_ms: float = float("nan")
    # CPU ms per record of each piece (api, worker, scheduler, …).
    cpu_ms_by_piece: dict[str, float] = field(default_factory=dict)
    # CPU ms per record of the shared services (bench/service_cpu.py: postgres, redis).
    service_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000, help="single-record creates per row")
    parser.add_argument(
        "--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}"
    )
    parser.add_argument("--clients", type=int, default=16, help="client threads in all")
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="worker processes per row")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="per provider call")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    parser.add_argument(
        "--database-url", default=os.environ.get("WRITEJOBS_DATABASE_URL") or DEFAULT_DATABASE_URL
    )
    parser.add_argument(
        "--stall-s",
        type=float,
        default=120.0,
        help="give a row up after this long with no progress",
    )
    args = parser.parse_args()
    rows = [name.strip() for name in args.rows.split(",") if name.strip()]
    unknown = [name for name in rows if name not in ROWS]
    if unknown or not rows:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    if args.clients < args.client_processes:
        parser.error("--clients must be at least --client-processes")

    # SIGTERM unwinds like Ctrl-C, so every `finally` stops what it started.
    def interrupted(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    run_id = uuid.uuid4().hex[:6]
    data_dir = Path(tempfile.mkdtemp(prefix="wj-e2e-bench-"))
    load = os.getloadavg()
    print(
        f"e2e bench {run_id}: {args.records:,} single-record creates per row, {args.clients} "
        f"client threads in {args.client_processes} processes, {args.workers} worker processes, "
        f"provider latency {args.latency_ms:g} ms/call; load average at start "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs",
        flush=True,
    )
    results: list[tuple[str, Result]] = []
    sandbox = start_sandbox(data_dir, args.redis_url)
    try:
        env = Env(
            run_id=run_id,
            redis_url=args.redis_url,
            database_url=args.database_url,
            sandbox_url=sandbox[1],
            concurrency=args.workers,
            data_dir=data_dir,
        )
        for name in rows:
            label, factory = ROWS[name]
            progress(f"{label}: starting")
            result = run_row(env, label, factory, args)
            results.append((name, result))
            progress(f"{label}: {result.error or 'done'}")
    except KeyboardInterrupt:
        print("\ninterrupted: every process this run started has been stopped", file=sys.stderr)
        if not results:
            return 130
    finally:
        sandbox[0].stop()
    print_table(results, args.records)
    return 0


def progress(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def start_sandbox(data_dir: Path, redis_url: str) -> tuple[ChildProcess, str]:
    port = free_port()
    settings = Settings(data_dir=data_dir / "sandbox", redis_url=redis_url, sandbox_port=port)
    child = start_child("sandbox", ["sandbox"], settings)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/_sandbox/stats", child)
    except BaseException:
        child.stop()
        raise
    return child, url


def prepare_sandbox(url: str, latency_ms: float) -> None:
    """Forget the previous row's records and counters; every create call waits `latency_ms`."""
    httpx.post(f"{url}/_sandbox/reset", timeout=10).raise_for_status()
    rules = [{"endpoint": endpoint, "latency_ms": latency_ms} for endpoint in CREATE_ENDPOINTS]
    response = httpx.post(f"{url}/_sandbox/faults", json={"seed": 1, "rules": rules}, timeout=10)
    response.raise_for_status()


def run_row(env: Env, label: str, factory: RowFactory, args: argparse.Namespace) -> Result:
    """Start the row's system, drive it, wait for the last record, measure, stop it."""
    result = Result(label)
    try:
        with factory(env) as system:
            prepare_sandbox(env.sandbox_url, args.latency_ms)
            measure(env, system, args, result)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one row failing still leaves the others' figures
        result.error = f"failed: {type(exc).__name__}: {exc}"[:400]
    return result


def measure(env: Env, system: System, args: argparse.Namespace, result: Result) -> None:
    n = args.records
    tag = f"{env.run_id}{uuid.uuid4().hex[:4]}"
    submitted, cpu_start, services_start = submit_all(system, args, tag=tag)
    accepted = {key: at for part in submitted for key, at in part.answered}
    errors = [error for part in submitted for error in part.errors]
    first_start = min(part.first_start for part in submitted)
    last_answer = max(part.last_answer for part in submitted)
    result.submitted = len(accepted)
    result.submit_rate = len(accepted) / max(last_answer - first_start, 1e-9)
    progress(f"{result.label}: {len(accepted):,} accepted; waiting for the writes")

    done, last_change = system.done_count(), time.monotonic()
    while done < len(accepted):
        if time.monotonic() - last_change > args.stall_s:
            break
        time.sleep(0.25)
        now_done = system.done_count()
        if now_done != done:
            done, last_change = now_done, time.monotonic()
    cpu_now = cpu_by_piece(system.processes)
    services_now = snapshot()
    cpu_used = sum(cpu_now.values()) - sum(cpu_start.values())
    server_port = make_url(env.database_url).port or 5432
    services = spent(
        services_start,
        services_now,
        system_ports=client_ports([p.process.pid for p in system.processes], server_port),
        poll_backend_pid=system.poll_backend_pid,
    )

    times = system.done_times()
    latencies = sorted(times[key] - at for key, at in accepted.items() if key in times)
    stats = httpx.get(f"{env.sandbox_url}/_sandbox/stats", timeout=10).json()
    result.done = len(latencies)
    result.written = int(stats["records_stored"])
    result.calls = sum(int(stats["calls"].get(endpoint, 0)) for endpoint in CREATE_ENDPOINTS)
    if latencies:
        last_done = max(times[key] for key in accepted if key in times)
        result.e2e_rate = len(latencies) / max(last_done - first_start, 1e-9)
        result.p50_ms = statistics.median(latencies) * 1000
        result.p99_ms = latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000
        result.cpu_ms = cpu_used * 1000 / len(latencies)
        result.cpu_ms_by_piece = {
            name: (seconds - cpu_start.get(name, 0.0)) * 1000 / len(latencies)
            for name, seconds in cpu_now.items()
        }
        result.service_ms = {
            name: seconds * 1000 / len(latencies) for name, seconds in services.items()
        }
    problems = []
    if errors:
        problems.append(f"{len(errors)} client thread(s) stopped: {errors[0]}")
    if result.done < n or result.written < n:
        problems.append(f"only {result.done:,} of {n:,} done, {result.written:,} written")
    if problems:
        result.error = "; ".join(problems)


def submit_all(
    system: System, args: argparse.Namespace, tag: str
) -> tuple[list[Submitted], dict[str, float], dict[ProcessKey, ServiceProcess]]:
    """Every record submitted by the client processes; and the system's CPU and the
    shared services' at the start."""
    ctx = multiprocessing.get_context("spawn")
    threads = [list(range(t, args.records, args.clients)) for t in range(args.clients)]
    per_process = [threads[p :: args.client_processes] for p in range(args.client_processes)]
    ready, go, results = ctx.Queue(), ctx.Event(), ctx.Queue()
    clients = [
        ctx.Process(target=client_main, args=(Job(system.spec, part, tag), ready, go, results))
        for part in per_process
    ]
    try:
        for client in clients:
            client.start()
        for _ in clients:
            ready.get(timeout=120)
        cpu_start = cpu_by_piece(system.processes)
        services_start = snapshot()
        go.set()
        collected: list[Submitted] = []
        while len(collected) < len(clients):
            try:
                collected.append(results.get(timeout=5))
            except Exception:  # queue.Empty: check that the clients are still there
                if not any(client.is_alive() for client in clients):
                    raise RuntimeError("a client process died before reporting") from None
        return collected, cpu_start, services_start
    finally:
        for client in clients:
            if client.is_alive():
                client.terminate()
            client.join(timeout=10)


def client_main(job: Job, ready: Any, go: Any, results: Any) -> None:
    """A client process: say it is ready, wait for the start, submit, report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bench itself decides when to stop
    results.put(run_client(job, lambda: (ready.put(os.getpid()), go.wait())))


def print_table(results: list[tuple[str, Result]], n: int) -> None:
    print(
        f"\n{'system':<32} {'submit/s':>9} {'e2e rec/s':>10} {'provider calls':>15} "
        f"{'p50 ms':>9} {'p99 ms':>9} {'CPU ms/rec':>11}"
    )
    for _name, r in results:
        print(
            f"{r.label:<32} {r.submit_rate:>9.0f} {r.e2e_rate:>10.1f} {r.calls:>15,} "
            f"{r.p50_ms:>9.0f} {r.p99_ms:>9.0f} {r.cpu_ms:>11.2f}"
        )
        if r.error:
            print(f"{'':<4}! {r.error}")
    print("\nCPU ms per record by process (children included)")
    for _name, r in results:
        pieces = ", ".join(f"{piece} {ms:.2f}" for piece, ms in sorted(r.cpu_ms_by_piece.items()))
        print(f"  {r.label:<32} {pieces}")
    print(
        "\nCPU ms per record of the shared services (not the row's children; PostgreSQL by "
        "whom each server process served, Redis the whole server's)"
    )
    for _name, r in results:
        if r.service_ms:
            print(f"  {r.label:<32} {service_line(r.service_ms)}")
    by_name = dict(results)
    print(f"\nratios of end-to-end records/s (targets printed, not asserted; N = {n:,})")
    checks = [
        ("wj-auto", "fastapi-batches", 1.5),
        ("wj-auto", "batches-p0", 1.0),
        ("wj-auto", "celery", 50.0),
        ("wj-async", "celery", 0.95),
    ]
    for top, bottom, target in checks:
        if top in by_name and bottom in by_name and by_name[bottom].e2e_rate > 0:
            ratio = by_name[top].e2e_rate / by_name[bottom].e2e_rate
            verdict = "meets" if ratio >= target else "misses"
            print(
                f"  {by_name[top].label} / {by_name[bottom].label}: {ratio:.2f}x "
                f"(target >= {target:g}x: {verdict})"
            )
    if "wj-auto" in by_name:
        cpu = by_name["wj-auto"].cpu_ms
        verdict = "meets" if cpu <= 0.6 else "misses"
        print(
            f"  {by_name['wj-auto'].label} CPU per record: {cpu:.2f} ms "
            f"(target <= 0.6 ms: {verdict})"
        )


def service_line(ms: dict[str, float]) -> str:
    parts = ", ".join(
        f"{who} {ms[f'postgres {who}']:.2f}" for who in ("system", "bench polling", "other")
    )
    return f"postgres {ms['postgres']:.2f} ({parts}), redis {ms['redis']:.2f}"


if __name__ == "__main__":
    sys.exit(main())
