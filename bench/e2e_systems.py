"""The systems bench/e2e_bench.py compares, each started and stopped as real processes.

Every row of the bench is one context manager here that starts the row's
processes (the system under test), waits until each is ready, yields a
`System` (how clients submit to it, the processes whose CPU counts, how to learn
which records are done and when), and on the way out, error or Ctrl-C
included, stops every process it started and removes the row's Redis keys and
PostgreSQL schema. Redis keys carry the row's own prefix or queue name; nothing
else in the Redis database is touched.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import psycopg
import redis
from bench_support import drop_schema, libpq, own_schema
from celery import Celery
from e2e_clients import SubmitSpec

from tests.support.system import ChildProcess, create_tenant, start_child
from writejobs.settings import Settings
from writejobs.store import tenants_repo
from writejobs.store.db import create_session_factory, create_store_engine
from writejobs.store.migrate import migrate

BENCH_DIR = Path(__file__).resolve().parent
TERMINAL = ("succeeded", "partially_succeeded", "failed", "expired")


@dataclass(frozen=True)
class Env:
    """What every row shares: services, the sandbox, the shape of the run."""

    run_id: str
    redis_url: str
    database_url: str  # the root URL; each writejobs row makes a schema in it
    sandbox_url: str
    concurrency: int
    data_dir: Path


@dataclass
class System:
    """A running system under test."""

    spec: SubmitSpec
    processes: list[ChildProcess]
    done_count: Callable[[], int]
    done_times: Callable[[], dict[str, float]]  # record key -> epoch s it was written
    # The PostgreSQL backend of the bench's own polling connection (bench/service_cpu.py).
    poll_backend_pid: int | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(name: str, argv: list[str], env: dict[str, str]) -> ChildProcess:
    """A process in a session of its own (so only we stop it), its output kept."""
    process = subprocess.Popen(
        argv,
        env=env,
        cwd=BENCH_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    child = ChildProcess(name, process)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            child.lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return child


def wait_http(url: str, child: ChildProcess, timeout_s: float = 60) -> None:
    """Until `url` answers anything at all."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            if child.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{child.name} did not serve:\n{child.output()[-3000:]}"
                ) from None
            time.sleep(0.1)


def wait_worker(broker_url: str, prefix: str, child: ChildProcess, timeout_s: float = 90) -> None:
    """Until a worker whose node name starts with `prefix` answers a Celery ping."""
    app = Celery("e2e-ping", broker=broker_url)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if child.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{child.name} not ready:\n{child.output()[-3000:]}")
            replies = app.control.ping(timeout=1.0)
            if any(name.startswith(prefix) for reply in replies for name in reply):
                return
    finally:
        app.close()


def cpu_seconds(processes: list[ChildProcess]) -> float:
    """User + system CPU of every process under these roots, children included."""
    return sum(cpu_by_piece(processes).values())


def cpu_by_piece(processes: list[ChildProcess]) -> dict[str, float]:
    """`cpu_seconds` of each root process (api, worker, scheduler, …) by its name."""
    pieces: dict[str, float] = {}
    for child in processes:
        total = 0.0
        try:
            root = psutil.Process(child.process.pid)
            members = [root, *root.children(recursive=True)]
            reaped = root.cpu_times()
            total += reaped.children_user + reaped.children_system
        except psutil.NoSuchProcess:
            continue
        for member in members:
            try:
                times = member.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        pieces[child.name] = pieces.get(child.name, 0.0) + total
    return pieces


def delete_keys(redis_url: str, patterns: list[str]) -> None:
    """Remove this row's keys (never a FLUSHDB: the database may hold others')."""
    client = redis.Redis.from_url(redis_url)
    try:
        for pattern in patterns:
            for key in client.scan_iter(match=pattern, count=1000):
                client.delete(key)
    finally:
        client.close()


def stop_all(processes: list[ChildProcess]) -> None:
    for child in reversed(processes):
        child.stop()


@contextmanager
def writejobs_system(env: Env, row: str, *, auto_batch: bool) -> Iterator[System]:
    """API, scheduler and a worker (`writejobs api|scheduler|worker`) on a fresh schema.

    Auto-batched writes ask `maxDelayMinutes: 1` with the policy time scale at 1/60,
    so a group short of 100 records flushes after one second, as celery-batches'
    `flush_interval` does; with whole hundreds every flush is by size anyway.
    """
    tag = f"{env.run_id}-{row}"
    schema = f"wje2e_{tag}".replace("-", "_")
    namespace, queue = f"wje2e-{tag}", f"writejobs-e2e-{tag}"
    processes: list[ChildProcess] = []
    conn: psycopg.Connection | None = None
    try:
        settings = Settings(
            data_dir=env.data_dir / row,
            redis_url=env.redis_url,
            database_url=own_schema(env.database_url, schema),
            redis_namespace=namespace,
            celery_queue=queue,
            worker_concurrency=env.concurrency,
            log_level="WARNING",
            policy_time_scale=1 / 60 if auto_batch else 1.0,
        )
        migrate(settings)
        port = free_port()
        api = start_child("api", ["api"], settings.model_copy(update={"api_port": port}))
        processes.append(api)
        worker = start_child("worker", ["worker"], settings)
        processes.append(worker)
        scheduler = start_child(
            "scheduler", ["scheduler"], settings.model_copy(update={"log_level": "INFO"})
        )
        processes.append(scheduler)
        api_url = f"http://127.0.0.1:{port}"
        wait_http(f"{api_url}/healthz", api)
        wait_worker(env.redis_url, f"writejobs-{worker.process.pid}@", worker)
        scheduler.wait_for("scheduler started", timeout_s=60)
        tenant = create_tenant(settings, api_url, env.sandbox_url)
        unthrottled(settings, tenant.installation_id)
        body: dict[str, object] = {
            "groupRef": tenant.group_ref,
            "type": "create",
            "mode": "asynchronous",
        }
        if auto_batch:
            body["autoBatchPolicy"] = {"maxDelayMinutes": 1, "retryDeadlineHours": 48}
        conn = psycopg.connect(libpq(settings.sqlalchemy_url), autocommit=True)
        db = conn

        def done_count() -> int:
            row_ = db.execute(
                "SELECT count(*) FROM operations WHERE state = ANY(%s)", [list(TERMINAL)]
            ).fetchone()
            return int(row_[0]) if row_ else 0

        def done_times() -> dict[str, float]:
            rows = db.execute(
                "SELECT id, extract(epoch FROM updated_at) FROM operations WHERE state = ANY(%s)",
                [list(TERMINAL)],
            )
            return {str(op_id): float(at) for op_id, at in rows}

        spec = SubmitSpec(
            kind="writejobs",
            target=f"{api_url}{tenant.write_path()}",
            body=body,
            headers={"X-Api-Key": tenant.api_key},
        )
        yield System(spec, processes, done_count, done_times, conn.info.backend_pid)
    finally:
        stop_all(processes)
        if conn is not None:
            conn.close()
        drop_schema(env.database_url, schema)
        delete_keys(env.redis_url, [f"{namespace}:*", f"*{queue}*"])


def unthrottled(settings: Settings, installation_id: str) -> None:
    """Give the bench's installation a rate limit no run reaches: the sandbox imposes
    none and the Celery baselines pace nothing, so HubSpot's default (100 calls per
    10 s) in writejobs' limiter would measure the limit, not the system."""
    engine = create_store_engine(settings)
    try:
        with create_session_factory(engine)() as session:
            limit = {"max": 1_000_000, "interval_ms": 1000}
            tenants_repo.set_rate_limit(session, installation_id, limit)
            session.commit()
    finally:
        engine.dispose()


def _baseline_env(env: Env, queue: str, done_key: str, prefetch: int) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("E2E_", "WRITEJOBS_"))}
    return {
        **base,
        "PYTHONPATH": str(BENCH_DIR),
        "E2E_BROKER_URL": env.redis_url,
        "E2E_QUEUE": queue,
        "E2E_SANDBOX_URL": env.sandbox_url,
        "E2E_DONE_KEY": done_key,
        "E2E_PREFETCH": str(prefetch),
    }


def _baseline_worker(env: Env, row: str, child_env: dict[str, str], prefetch: int) -> ChildProcess:
    node = f"e2e-{row}-{env.run_id}"
    argv = [sys.executable, "-m", "celery", "-A", "celery_baselines", "worker"]
    argv += ["--pool", "prefork", "--concurrency", str(env.concurrency)]
    argv += ["--queues", child_env["E2E_QUEUE"], "--hostname", f"{node}@%h"]
    argv += ["--prefetch-multiplier", str(prefetch), "--loglevel", "WARNING"]
    return spawn("celery worker", argv, child_env)


def _redis_done(
    redis_url: str, done_key: str
) -> tuple[Callable[[], int], Callable[[], dict[str, float]]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)

    def done_count() -> int:
        return int(client.hlen(done_key))

    def done_times() -> dict[str, float]:
        return {str(key): float(at) for key, at in client.hgetall(done_key).items()}

    return done_count, done_times


@contextmanager
def celery_system(
    env: Env, row: str, *, task_name: str, prefetch: int, http_front: bool = False
) -> Iterator[System]:
    """A Celery worker over `celery_baselines` (plain, or celery-batches); with
    `http_front`, the FastAPI endpoint in front of it too (clients then POST)."""
    tag = f"{env.run_id}-{row}"
    queue, done_key = f"e2e-{tag}", f"e2e:{tag}:done"
    child_env = _baseline_env(env, queue, done_key, prefetch)
    processes: list[ChildProcess] = []
    try:
        worker = _baseline_worker(env, row, child_env, prefetch)
        processes.append(worker)
        spec = SubmitSpec(kind="celery", target=env.redis_url, task_name=task_name, queue=queue)
        if http_front:
            port = free_port()
            argv = [sys.executable, str(BENCH_DIR / "fastapi_batches.py"), str(port)]
            front = spawn("fastapi", argv, child_env)
            processes.insert(0, front)
            wait_http(f"http://127.0.0.1:{port}/", front)
            spec = SubmitSpec(
                kind="fastapi",
                target=f"http://127.0.0.1:{port}/v1/records",
                body={"groupRef": "org-bench", "type": "create"},
            )
        wait_worker(env.redis_url, f"e2e-{row}-{env.run_id}@", worker)
        done_count, done_times = _redis_done(env.redis_url, done_key)
        yield System(spec, processes, done_count, done_times)
    finally:
        stop_all(processes)
        delete_keys(env.redis_url, [f"*{queue}*", done_key])
