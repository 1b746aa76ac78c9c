"""A worker's peak memory while it upserts a 100 MiB CSV from a `recordsURL`.

Starts the sandbox (its file host makes the CSV on the fly, its Bulk API 2.0
takes the upload) and a real Celery worker (`writejobs worker`, one pool
process), each a process of its own, and the API in this process. As a
baseline measured in the same run, the worker first runs a 1 KiB bulk upsert,
so imports, connections and the first job's costs are in the baseline; then the
100 MiB one. It prints each worker process's peak RSS (the kernel's `VmHWM`)
after each, next to the file size, and fails when the pool process that ran the
job peaked over 200 MiB or the counts are wrong.

Run: `.venv/bin/python bench/bulk_memory_bench.py [MiB]` (default 100; uses
WRITEJOBS_REDIS_URL, or an embedded Redis; a throwaway SQLite store).
"""

from __future__ import annotations

import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench_support import bench_redis  # noqa: E402

from api_shim.app import create_app  # noqa: E402
from tests.support.servers import serve_in_thread  # noqa: E402
from tests.support.system import ChildProcess, Tenant, create_tenant, start_child  # noqa: E402
from writejobs.settings import Settings  # noqa: E402
from writejobs.store.migrate import migrate  # noqa: E402

LIMIT_MIB = 200
PAD = 200  # Description characters per row: ~270-byte rows, ~390,000 of them in 100 MiB
MIB = 1024 * 1024


def rows_for(size_bytes: int) -> tuple[int, int]:
    """How many generated rows make at least `size_bytes`, and their exact size."""
    total = len("External_Id__c,LastName,Email,Description\n")
    rows = 0
    while total < size_bytes:
        total += len(f"bulk-{rows},Bulk {rows},bulk{rows}@example.com,") + PAD + 1
        rows += 1
    return rows, total


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size so far, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def worker_processes(worker: ChildProcess) -> dict[str, int]:
    main = psutil.Process(worker.process.pid)
    found = {"celery main": main.pid}
    for i, child in enumerate(main.children(recursive=True)):
        found[f"pool process {i + 1}"] = child.pid
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def upsert(tenant: Tenant, url: str) -> dict[str, object]:
    body = {"groupRef": tenant.group_ref, "primaryKey": "External_Id__c", "recordsURL": url}
    with tenant.client() as client:
        response = client.put(tenant.write_path("Contact") + ":async", json=body)
        response.raise_for_status()
        op_id = response.json()["operationId"]
    view: dict[str, object] = tenant.wait_terminal([op_id], timeout_s=900)[op_id]
    return view


def main() -> int:
    target_mib = float(sys.argv[1]) if len(sys.argv) > 1 else 100.0
    data_dir = Path(tempfile.mkdtemp(prefix="wj-bulk-bench-"))
    with bench_redis(data_dir) as redis_url:
        return bench_bulk(target_mib, data_dir, redis_url)


def bench_bulk(target_mib: float, data_dir: Path, redis_url: str) -> int:
    run_id = uuid.uuid4().hex[:8]
    settings = Settings(
        data_dir=data_dir,
        redis_url=redis_url,
        redis_namespace=f"wjbench-{run_id}",
        celery_queue=f"writejobs-bench-{run_id}",
        worker_concurrency=1,
        fetch_allowed_http_hosts="localhost",
        sandbox_port=free_port(),
    )
    migrate(settings)
    sandbox = start_child("sandbox", ["sandbox"], settings)
    worker = start_child("worker", ["worker"], settings)
    try:
        sandbox_url = f"http://127.0.0.1:{settings.sandbox_port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{sandbox_url}/_sandbox/stats").raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        worker.wait_for("ready.", timeout_s=60)
        files = f"http://localhost:{settings.sandbox_port}/_sandbox/generated/contacts.csv"
        with serve_in_thread(create_app(settings)) as api_url:
            tenant = create_tenant(settings, api_url, sandbox_url, provider="salesforce")
            small_rows, small_bytes = rows_for(1024)
            small = upsert(tenant, f"{files}?rows={small_rows}&pad={PAD}")
            baseline = {name: peak_rss_mib(pid) for name, pid in worker_processes(worker).items()}

            rows, size = rows_for(int(target_mib * MIB))
            started = time.monotonic()
            view = upsert(tenant, f"{files}?rows={rows}&pad={PAD}")
            elapsed = time.monotonic() - started
            after = {name: peak_rss_mib(pid) for name, pid in worker_processes(worker).items()}
    finally:
        worker.stop()
        sandbox.stop()

    print(f"baseline: {small_bytes:,} bytes ({small_rows} rows) -> {small['status']}")
    print(
        f"file: {size / MIB:.1f} MiB ({size:,} bytes, {rows:,} rows) via recordsURL -> "
        f"{view['status']}: {view['successCount']:,} written, {view['failureCount']} failed, "
        f"{elapsed:.1f} s"
    )
    after_label = f"after {size / MIB:.0f} MiB"
    print(f"{'worker process':<16} {'peak RSS after 1 KiB':>21} {after_label:>12}")
    for name, peak in after.items():
        print(f"{name:<16} {baseline.get(name, float('nan')):>17.1f} MiB {peak:>8.1f} MiB")
    pool_peak = max(peak for name, peak in after.items() if name.startswith("pool"))
    counts_ok = view["status"] == "success" and view["successCount"] == rows
    verdict = "PASS" if pool_peak < LIMIT_MIB and counts_ok else "FAIL"
    counts = "right" if counts_ok else "WRONG"
    print(
        f"{verdict}: the pool process peaked at {pool_peak:.1f} MiB (limit {LIMIT_MIB} MiB) "
        f"for a {size / MIB:.1f} MiB file; counts {counts}"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
