"""How many writes per second one API process accepts, next to its bare HTTP ceiling.

Starts `writejobs api` as a process of its own (one uvicorn worker) and drives it
from client processes over loopback for a fixed time: first `GET /healthz` (the
baseline: what the same server and clients do with no work behind the route),
then auto-batched single-record creates (an operation row committed, a Redis
append), then asynchronous single-record creates (an operation row, a Celery
task sent). No worker runs; nothing is written to a provider. Prints requests
per second, median and 95th-percentile latency, and the API process's CPU per request
(user + system, from /proc: steady when the machine is busy, unlike the rates), then
each write's rate against the target of half the `/healthz` rate.

Run: `.venv/bin/python bench/intake_bench.py [seconds] [clients]` (defaults 10 and
16; uses WRITEJOBS_REDIS_URL and WRITEJOBS_DATABASE_URL when set, else an embedded
Redis and a throwaway SQLite store).
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench_support import bench_redis, drop_schema, own_schema  # noqa: E402

from tests.support.system import create_tenant, running_api_process  # noqa: E402
from writejobs.settings import Settings  # noqa: E402
from writejobs.store.migrate import migrate  # noqa: E402

CLIENT_PROCESSES = 4


def drive(args: tuple[str, str, dict[str, Any] | None, int, float]) -> list[float]:
    """One client process: `threads` threads sending for `seconds`; every latency in s."""
    url, key, body, threads, seconds = args
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def loop() -> None:
        mine: list[float] = []
        with httpx.Client(headers={"X-Api-Key": key}, timeout=30) as client:
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                started = time.monotonic()
                if body is None:
                    response = client.get(url)
                else:
                    record = {"email": f"b-{uuid.uuid4().hex}@example.com"}
                    response = client.post(url, json={**body, "record": record})
                response.raise_for_status()
                mine.append(time.monotonic() - started)
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return latencies


def measure(
    url: str, key: str, body: dict[str, Any] | None, clients: int, seconds: float
) -> tuple[float, float, float]:
    threads = max(1, clients // CLIENT_PROCESSES)
    jobs = [(url, key, body, threads, seconds)] * CLIENT_PROCESSES
    with multiprocessing.get_context("spawn").Pool(CLIENT_PROCESSES) as pool:
        results = pool.map(drive, jobs)
    latencies = sorted(x for part in results for x in part)
    p95 = latencies[int(len(latencies) * 0.95) - 1]
    return len(latencies) / seconds, statistics.median(latencies) * 1000, p95 * 1000


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    clients = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    data_dir = Path(tempfile.mkdtemp(prefix="wj-intake-bench-"))
    with bench_redis(data_dir) as redis_url:
        bench_intake(seconds, clients, data_dir, redis_url)


def bench_intake(seconds: float, clients: int, data_dir: Path, redis_url: str) -> None:
    run_id = uuid.uuid4().hex[:8]
    database_url = os.environ.get("WRITEJOBS_DATABASE_URL")
    schema = f"wjbench_{run_id}"
    if database_url:
        database_url = own_schema(database_url, schema)
    settings = Settings(
        data_dir=data_dir,
        redis_url=redis_url,
        database_url=database_url,
        redis_namespace=f"wjbench-{run_id}",
        celery_queue=f"writejobs-bench-{run_id}",
        log_level="WARNING",
    )
    migrate(settings)
    store = "PostgreSQL" if settings.database_url else "SQLite (WAL)"
    try:
        with running_api_process(settings) as (api_url, api):
            tenant = create_tenant(settings, api_url, "http://127.0.0.1:9")
            write = f"{api_url}{tenant.write_path()}"
            base = {"groupRef": tenant.group_ref, "type": "create", "mode": "asynchronous"}
            cases = {
                "GET /healthz (baseline)": (f"{api_url}/healthz", None),
                "auto-batched create": (
                    write,
                    {**base, "autoBatchPolicy": {"maxDelayMinutes": 60}},
                ),
                "async create": (write, base),
            }
            print(
                f"one API process, {clients} clients in {CLIENT_PROCESSES} processes, "
                f"{seconds:g} s each; store {store}; API pid {api.process.pid} (to profile)",
                flush=True,
            )
            print(
                f"{'request':<26} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'API CPU ms/req':>15}"
            )
            rates: dict[str, float] = {}
            for name, (url, body) in cases.items():
                cpu_before = process_cpu_s(api.process.pid)
                rate, p50, p95 = measure(url, tenant.api_key, body, clients, seconds)
                cpu_ms = (process_cpu_s(api.process.pid) - cpu_before) * 1000 / (rate * seconds)
                rates[name] = rate
                print(f"{name:<26} {rate:>8.0f} {p50:>8.1f} {p95:>8.1f} {cpu_ms:>15.2f}")
            baseline = rates["GET /healthz (baseline)"]
            for name in ("auto-batched create", "async create"):
                verdict = "meets" if rates[name] >= 0.5 * baseline else "misses"
                print(
                    f"  {name} / GET /healthz: {rates[name] / baseline:.2f}x "
                    f"(target >= 0.5x: {verdict})"
                )
    finally:
        # The queued tasks and buffered ids of this run, from a Redis that outlives it.
        client = redis.Redis.from_url(redis_url)
        client.delete(settings.celery_queue)
        for key in client.scan_iter(f"{settings.redis_namespace}:*"):
            client.delete(key)
        client.close()
        if database_url:
            drop_schema(os.environ["WRITEJOBS_DATABASE_URL"], schema)


if __name__ == "__main__":
    main()
