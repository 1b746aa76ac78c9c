"""How long after an operation ends its `write.async.done` notification arrives.

Starts the real pieces as processes of their own (API, sandbox, write worker,
webhooks worker, scheduler), adds one webhook destination (a receiver on
loopback in this process), then sends N auto-batched creates (default 10,000)
from client processes. Every operation's lag is the receiver's arrival time of
its first delivery minus the moment the operation ended (its outbox row's
`created_at`, set in the transaction that ended it). Prints the lag's
percentiles, and fails unless every operation was notified exactly once with a
p99 of at most 5 s.

Run: `.venv/bin/python bench/webhook_lag_bench.py [records]` (uses
WRITEJOBS_REDIS_URL and WRITEJOBS_DATABASE_URL when set, else an embedded Redis
and a throwaway SQLite store).
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import redis

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench_support import bench_redis  # noqa: E402
from bench_support import drop_schema as _drop_schema  # noqa: E402
from bench_support import own_schema as _own_schema  # noqa: E402
from sqlalchemy import select  # noqa: E402

from tests.support.receiver import Receiver  # noqa: E402
from tests.support.system import (  # noqa: E402
    create_tenant,
    running_api,
    running_scheduler,
    running_webhooks,
    running_worker,
    start_child,
)
from writejobs.clock import as_utc, utcnow  # noqa: E402
from writejobs.settings import Settings  # noqa: E402
from writejobs.store import webhook_destinations  # noqa: E402
from writejobs.store.db import create_session_factory, create_store_engine  # noqa: E402
from writejobs.store.migrate import migrate  # noqa: E402
from writejobs.store.secrets import cipher_for  # noqa: E402
from writejobs.store.webhook_tables import WebhookDelivery  # noqa: E402

CLIENT_PROCESSES = 4
THREADS_PER_PROCESS = 4
P99_LIMIT_S = 5.0


def send(args: tuple[str, str, str, int]) -> int:
    """One client process: `n` auto-batched creates from a few threads."""
    url, key, group_ref, n = args
    per_thread = [n // THREADS_PER_PROCESS] * THREADS_PER_PROCESS
    per_thread[0] += n - sum(per_thread)

    def loop(count: int) -> None:
        with httpx.Client(headers={"X-Api-Key": key}, timeout=60) as client:
            for _ in range(count):
                body = {
                    "groupRef": group_ref,
                    "type": "create",
                    "mode": "asynchronous",
                    "autoBatchPolicy": {"maxDelayMinutes": 1},
                    "record": {"email": f"lag-{uuid.uuid4().hex}@example.com"},
                }
                client.post(url, json=body).raise_for_status()

    threads = [threading.Thread(target=loop, args=(c,)) for c in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return n


def main() -> None:
    records = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    data_dir = Path(tempfile.mkdtemp(prefix="wj-webhook-bench-"))
    with bench_redis(data_dir) as redis_url:
        ok = bench(records, data_dir, redis_url)
    sys.exit(0 if ok else 1)


def bench(records: int, data_dir: Path, redis_url: str) -> bool:
    run_id = uuid.uuid4().hex[:8]
    database_url = os.environ.get("WRITEJOBS_DATABASE_URL")
    schema = f"wjbench_{run_id}"
    if database_url:
        database_url = _own_schema(database_url, schema)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sandbox_port = sock.getsockname()[1]
    settings = Settings(
        data_dir=data_dir,
        redis_url=redis_url,
        database_url=database_url,
        redis_namespace=f"wjbench-{run_id}",
        celery_queue=f"writejobs-bench-{run_id}",
        sandbox_port=sandbox_port,
        fetch_allowed_http_hosts="localhost",
    )
    migrate(settings)
    store = "PostgreSQL" if settings.database_url else "SQLite (WAL)"
    receiver = Receiver().start()
    sandbox = start_child("sandbox", ["sandbox"], settings)
    try:
        sandbox_url = f"http://127.0.0.1:{sandbox_port}"
        _wait_http(f"{sandbox_url}/_sandbox/stats")
        with (
            running_api(settings) as api_url,
            running_worker(settings, concurrency=2),
            running_webhooks(settings),
            running_scheduler(settings),
        ):
            tenant = create_tenant(settings, api_url, sandbox_url)
            _add_destination(settings, tenant.project_id, receiver.url)
            print(
                f"{records:,} auto-batched creates, one receiver; store {store}; "
                f"{CLIENT_PROCESSES}x{THREADS_PER_PROCESS} clients"
            )
            seen: dict[str, float] = {}
            watching = threading.Event()
            watcher = threading.Thread(target=_watch, args=(settings, seen, watching), daemon=True)
            watcher.start()
            started = time.monotonic()
            url = f"{api_url}{tenant.write_path()}"
            share = [records // CLIENT_PROCESSES] * CLIENT_PROCESSES
            share[0] += records - sum(share)
            jobs = [(url, tenant.api_key, tenant.group_ref, n) for n in share]
            with multiprocessing.get_context("spawn").Pool(CLIENT_PROCESSES) as pool:
                pool.map(send, jobs)
            print(f"accepted in {time.monotonic() - started:.1f} s")
            deadline = time.monotonic() + 600
            while len(_first_arrivals(receiver)) < records and time.monotonic() < deadline:
                time.sleep(0.5)
            print(f"all notified {time.monotonic() - started:.1f} s after the first write")
            time.sleep(2.0)  # a duplicate would arrive by now
            watching.set()
            watcher.join()
        return _report(settings, receiver, records, seen)
    finally:
        sandbox.stop()
        receiver.stop()
        client = redis.Redis.from_url(redis_url)
        for queue in (settings.celery_queue, settings.effective_webhook_queue):
            client.delete(queue)
        for key in client.scan_iter(f"{settings.redis_namespace}:*"):
            client.delete(key)
        client.close()
        if database_url:
            _drop_schema(os.environ["WRITEJOBS_DATABASE_URL"], schema)


def _first_arrivals(receiver: Receiver) -> dict[str, float]:
    first: dict[str, float] = {}
    for got in list(receiver.received):
        first.setdefault(got.headers["webhook-id"], got.at)
    return first


def _watch(settings: Settings, seen: dict[str, float], done: threading.Event) -> None:
    """When each outbox row became visible (its write's transaction committed), polled
    every 50 ms: splits the lag into the write's own commit and the delivery after it."""
    engine = create_store_engine(settings)
    last = 0
    try:
        with create_session_factory(engine)() as session:
            while not done.is_set():
                rows = session.execute(
                    select(WebhookDelivery.id, WebhookDelivery.event_id).where(
                        WebhookDelivery.id > last
                    )
                ).all()
                session.rollback()
                now = time.time()
                for row_id, event in rows:
                    seen.setdefault(event, now)
                    last = max(last, row_id)
                done.wait(0.05)
    finally:
        engine.dispose()


def _report(settings: Settings, receiver: Receiver, records: int, seen: dict[str, float]) -> bool:
    arrivals = _first_arrivals(receiver)
    per_event = Counter(r.headers["webhook-id"] for r in list(receiver.received))
    engine = create_store_engine(settings)
    try:
        with create_session_factory(engine)() as session:
            ended = {
                event: as_utc(created).timestamp()
                for event, created in session.execute(
                    select(WebhookDelivery.event_id, WebhookDelivery.created_at)
                )
            }
    finally:
        engine.dispose()
    lags = sorted(max(arrivals[e] - ended[e], 0.0) for e in arrivals if e in ended)
    if not lags:
        print("FAIL: nothing was delivered")
        return False

    def pct(p: float) -> float:
        return lags[min(len(lags) - 1, int(len(lags) * p))]

    print(
        f"lag s: p50 {pct(0.5):.2f}  p95 {pct(0.95):.2f}  p99 {pct(0.99):.2f}  "
        f"max {lags[-1]:.2f}  ({len(lags):,} operations)"
    )
    committed = sorted(max(seen[e] - ended[e], 0.0) for e in seen if e in ended)
    after = sorted(max(arrivals[e] - seen[e], 0.0) for e in arrivals if e in seen)
    for label, part in (("end to commit", committed), ("commit to arrival", after)):
        if part:
            p99 = part[min(len(part) - 1, int(len(part) * 0.99))]
            print(f"  {label}: p50 {part[len(part) // 2]:.2f}  p99 {p99:.2f}  (±0.05 s)")
    duplicates = sum(n - 1 for n in per_event.values())
    ok = len(lags) == records and duplicates == 0 and pct(0.99) <= P99_LIMIT_S
    verdict = "PASS" if ok else "FAIL"
    print(
        f"{verdict}: {len(lags):,} of {records:,} notified, {duplicates} duplicates, "
        f"p99 {pct(0.99):.2f} s (limit {P99_LIMIT_S:g} s)"
    )
    return ok


def _add_destination(settings: Settings, project_id: str, url: str) -> None:
    engine = create_store_engine(settings)
    try:
        with create_session_factory(engine)() as session:
            webhook_destinations.add(
                session, project_id, url, cipher=cipher_for(settings), now=utcnow()
            )
            session.commit()
    finally:
        engine.dispose()


def _wait_http(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


if __name__ == "__main__":
    main()
