"""The read side at scale: `GET operations/{id}` and deep list pages over 1,000,000 rows.

Seeds a throwaway PostgreSQL schema with N operation rows (default 1,000,000, one
`INSERT … SELECT generate_series`, all in one installation so the list is as deep
as it gets), starts one API process (`writejobs api`, its own process) against it,
and measures from client threads over loopback:

* `GET /v1/projects/{p}/operations/{id}` for random ids: p50 and p99, next to the
  target (p99 ≤ 20 ms);
* a page (`pageSize` 100) of the installation's operations list at several depths,
  entered with a page token that names a row that deep;

and, as the same-run baseline for the list, the SQL a page costs in PostgreSQL
itself (server-side execution time from `EXPLAIN ANALYZE`) with the keyset bound
the store uses, with the same bound written as an OR, and with OFFSET.

Run: `.venv/bin/python bench/read_bench.py [--rows N] [--gets N] [--clients N]`
(WRITEJOBS_DATABASE_URL, default the loopback `test` database; Redis from
WRITEJOBS_REDIS_URL, else an embedded one: only the API's startup touches it).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench_support import (  # noqa: E402
    DEFAULT_DATABASE_URL,
    bench_redis,
    drop_schema,
    libpq,
    own_schema,
)

from tests.support.system import Tenant, create_tenant, running_api  # noqa: E402
from writejobs.settings import Settings  # noqa: E402
from writejobs.store.migrate import migrate  # noqa: E402
from writejobs.store.operations_repo import encode_page_token  # noqa: E402

GET_P99_TARGET_MS = 20.0
PAGE_SIZE = 100
# Row i was created at T0 + i ms: a million rows span about 17 minutes.
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def op_id(i: int) -> str:
    """Row i's id, the same as the seed's `md5(i::text)::uuid`."""
    return str(uuid.UUID(hashlib.md5(str(i).encode()).hexdigest()))


def created_at(i: int) -> datetime:
    return T0 + timedelta(milliseconds=i)


def seed(conn: psycopg.Connection, tenant: Tenant, rows: int) -> float:
    """Insert `rows` finished operations in one statement; the seconds it took."""
    started = time.monotonic()
    conn.execute(
        """
        INSERT INTO operations (
            id, project_id, integration_id, installation_id, config_id, object_name,
            write_type, mode, shape, request, state, attempts, backoff_failures,
            record_count, success_count, failure_count, results, created_at, updated_at,
            last_attempt_at, deadline_at)
        SELECT md5(i::text)::uuid::text, %(project)s, %(integration)s, %(installation)s,
            'config', 'contacts', 'create', 'asynchronous', 'single',
            json_build_object('groupRef', 'org', 'type', 'create', 'mode', 'asynchronous',
                'record', json_build_object('email', 'r' || i || '@example.com')),
            'succeeded', 1, 0, 1, 1, 0,
            json_build_array(json_build_object('success', true, 'recordId', i::text)),
            %(t0)s::timestamptz + i * interval '1 millisecond',
            %(t0)s::timestamptz + i * interval '1 millisecond' + interval '80 milliseconds',
            %(t0)s::timestamptz + i * interval '1 millisecond' + interval '30 milliseconds',
            %(t0)s::timestamptz + i * interval '1 millisecond' + interval '1 hour'
        FROM generate_series(0, %(last)s) AS i
        """,
        {
            "project": tenant.project_id,
            "integration": tenant.integration_id,
            "installation": tenant.installation_id,
            "t0": T0,
            "last": rows - 1,
        },
    )
    conn.execute("ANALYZE operations")
    return time.monotonic() - started


def percentiles(samples_s: list[float]) -> tuple[float, float]:
    ordered = sorted(samples_s)
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)]
    return statistics.median(ordered) * 1000, p99 * 1000


def time_gets(tenant: Tenant, ids: list[str], clients: int) -> list[float]:
    """GET each id once, `clients` threads at a time; every latency in s."""
    latencies: list[float] = []
    lock = threading.Lock()
    parts = [ids[n::clients] for n in range(clients)]

    def loop(mine: list[str]) -> None:
        found: list[float] = []
        with tenant.client() as client:
            for one in mine:
                started = time.perf_counter()
                response = client.get(tenant.operation_path(one))
                found.append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise RuntimeError(f"GET {one}: {response.status_code} {response.text}")
        with lock:
            latencies.extend(found)

    threads = [threading.Thread(target=loop, args=(part,)) for part in parts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if len(latencies) != len(ids):
        raise RuntimeError("a client thread failed (see above)")
    return latencies


def time_page(tenant: Tenant, depth: int, rows: int, repeats: int) -> list[float]:
    """A page of the list starting `depth` rows below the newest; every latency in s."""
    path = (
        f"/v1/projects/{tenant.project_id}/integrations/{tenant.integration_id}"
        f"/installations/{tenant.installation_id}/operations"
    )
    params: dict[str, str | int] = {"pageSize": PAGE_SIZE}
    if depth:
        newest_served = rows - depth  # the row just above the page: the token names it
        params["pageToken"] = encode_page_token(created_at(newest_served), op_id(newest_served))
    latencies = []
    with tenant.client() as client:
        for _ in range(repeats):
            started = time.perf_counter()
            response = client.get(path, params=params)
            latencies.append(time.perf_counter() - started)
            body = response.json()
            if response.status_code != 200 or len(body["results"]) != min(PAGE_SIZE, rows - depth):
                raise RuntimeError(f"page at depth {depth}: {response.status_code} {body}")
            expected_first = op_id(rows - 1 - depth)
            if body["results"][0]["id"] != expected_first:
                raise RuntimeError(f"page at depth {depth} starts at the wrong row")
    return latencies


def sql_page_ms(
    conn: psycopg.Connection, tenant: Tenant, depth: int, rows: int, form: str
) -> tuple[float, str]:
    """PostgreSQL's own execution time for one page's query, and its plan's first node."""
    order = "ORDER BY created_at DESC, id DESC LIMIT %(size)s"
    base = "SELECT * FROM operations WHERE installation_id = %(inst)s"
    newest_served = rows - depth
    args: dict[str, object] = {
        "inst": tenant.installation_id,
        "size": PAGE_SIZE,
        "t": created_at(newest_served),
        "id": op_id(newest_served),
        "offset": depth,
    }
    if form == "keyset (row value)":
        sql = f"{base} AND (created_at, id) < (%(t)s, %(id)s) {order}"
    elif form == "keyset (OR)":
        sql = f"{base} AND (created_at < %(t)s OR (created_at = %(t)s AND id < %(id)s)) {order}"
    else:
        sql = f"{base} {order} OFFSET %(offset)s"
    best = float("inf")
    plan_head = ""
    for _ in range(3):
        lines = [row[0] for row in conn.execute(f"EXPLAIN (ANALYZE, TIMING OFF) {sql}", args)]
        for line in lines:
            if line.startswith("Execution Time:"):
                best = min(best, float(line.split()[2]))
        scan = next((ln.strip(" ->") for ln in lines if "Scan" in ln), lines[0])
        plan_head = scan.split("  (")[0]
    return best, plan_head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="operation rows to seed")
    parser.add_argument("--gets", type=int, default=2000, help="GET operations/{id} to time")
    parser.add_argument("--clients", type=int, default=1, help="client threads for the GETs")
    parser.add_argument("--page-repeats", type=int, default=30, help="requests per list depth")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="wj-read-bench-"))
    with bench_redis(data_dir) as redis_url:
        bench_reads(args, data_dir, redis_url)


def bench_reads(args: argparse.Namespace, data_dir: Path, redis_url: str) -> None:
    run_id = uuid.uuid4().hex[:8]
    root_url = os.environ.get("WRITEJOBS_DATABASE_URL") or DEFAULT_DATABASE_URL
    schema = f"wjread_{run_id}"
    database_url = own_schema(root_url, schema)
    try:
        settings = Settings(
            data_dir=data_dir,
            redis_url=redis_url,
            database_url=database_url,
            redis_namespace=f"wjread-{run_id}",
            celery_queue=f"writejobs-read-{run_id}",
            log_level="WARNING",
        )
        migrate(settings)
        tenant = create_tenant(settings, "http://api.invalid", "http://127.0.0.1:9")
        with psycopg.connect(libpq(settings.sqlalchemy_url), autocommit=True) as conn:
            seconds = seed(conn, tenant, args.rows)
            print(f"seeded {args.rows:,} operation rows in {seconds:.1f} s (schema {schema})")
            with running_api(settings) as api_url:
                tenant.api_url = api_url
                report(conn, tenant, args)
    finally:
        drop_schema(root_url, schema)


def report(conn: psycopg.Connection, tenant: Tenant, args: argparse.Namespace) -> None:
    rows = args.rows
    rng = random.Random(7)
    time_gets(tenant, [op_id(rng.randrange(rows)) for _ in range(200)], args.clients)  # warm-up
    ids = [op_id(rng.randrange(rows)) for _ in range(args.gets)]
    started = time.monotonic()
    latencies = time_gets(tenant, ids, args.clients)
    rate = len(ids) / (time.monotonic() - started)
    p50, p99 = percentiles(latencies)
    verdict = "meets" if p99 <= GET_P99_TARGET_MS else "MISSES"
    print(
        f"\nGET operations/{{id}}: {len(ids):,} random ids of {rows:,}, "
        f"{args.clients} client thread(s), one API process"
    )
    print(f"{'':<28} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}   target")
    print(
        f"{'GET operations/{id}':<28} {p50:>8.1f} {p99:>8.1f} {rate:>8.0f}   "
        f"p99 <= {GET_P99_TARGET_MS:g} ms: {verdict}"
    )

    depths = sorted({d for d in (0, 10_000, rows // 2, rows - PAGE_SIZE) if 0 <= d < rows})
    print(f"\nlist page (pageSize {PAGE_SIZE}) by depth, {args.page_repeats} requests each")
    print(f"{'depth (rows above the page)':<28} {'p50 ms':>8} {'p99 ms':>8}")
    for depth in depths:
        time_page(tenant, depth, rows, 2)  # warm-up
        page_p50, page_p99 = percentiles(time_page(tenant, depth, rows, args.page_repeats))
        print(f"{depth:<28,} {page_p50:>8.1f} {page_p99:>8.1f}")

    forms = ["keyset (row value)", "keyset (OR)", "OFFSET"]
    print("\nthe page's SQL in PostgreSQL (execution ms, best of 3; the store uses the first)")
    print(f"{'depth':<12}" + "".join(f"{form:>20}" for form in forms))
    plans: dict[str, str] = {}
    for depth in depths:
        cells = []
        for form in forms:
            ms, plan = sql_page_ms(conn, tenant, depth, rows, form)
            if depth == rows // 2 or form not in plans:
                plans[form] = plan
            cells.append(f"{ms:>20.2f}")
        print(f"{depth:<12,}" + "".join(cells))
    for form, plan in plans.items():
        print(f"  plan at depth {rows // 2:,}, {form}: {plan}")


if __name__ == "__main__":
    main()
