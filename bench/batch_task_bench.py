"""What one worker task costs in CPU beside its provider calls, on the real code and stores.

Runs the worker's task bodies in this process (no Celery: `run_batch` for a flushed
100-record auto-batch, `run_operation` for an asynchronous single write) against
PostgreSQL (a throwaway schema), Redis (its own namespace) and a `writejobs sandbox`
process at 0 ms latency, with the wiring a worker builds (`runtime.wiring.wire`:
the fleet's limiter, metrics, admission, pooled provider clients). Beside each, in
the same run, its baseline: the same provider calls alone (the same adapter over the
same pooled client), so "besides the provider's time" is the difference. Printed per
task (medians over the repeats): CPU ms of this process (user + system), wall ms,
SQL statements and Redis commands.

The issue's target: a 100-record batch task at most 40 ms of CPU besides the
provider's time (printed, not asserted).

Run: `.venv/bin/python bench/batch_task_bench.py [--batches 20] [--singles 200]`
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

import httpx  # noqa: E402
from bench_support import DEFAULT_DATABASE_URL, drop_schema, own_schema  # noqa: E402
from sqlalchemy import event  # noqa: E402

from tests.support.system import ChildProcess, create_tenant, start_child  # noqa: E402
from writejobs.core.contract import parse_write_request  # noqa: E402
from writejobs.execution.batch import run_batch  # noqa: E402
from writejobs.execution.run import run_operation  # noqa: E402
from writejobs.intake.directory import TenantDirectory  # noqa: E402
from writejobs.intake.write import Dispatch, WriteTarget, accept_write  # noqa: E402
from writejobs.providers.base import WriteItem, WriteOptions  # noqa: E402
from writejobs.runtime.wiring import Wiring, wire  # noqa: E402
from writejobs.settings import Settings  # noqa: E402
from writejobs.store import operations_repo, tenants_repo  # noqa: E402
from writejobs.store.migrate import migrate  # noqa: E402
from writejobs.store.tables import Installation, Operation, Project  # noqa: E402

TARGET_BATCH_CPU_MS = 40.0


@dataclass
class Sample:
    cpu_ms: list[float] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)
    sql: list[int] = field(default_factory=list)
    transactions: list[int] = field(default_factory=list)
    checkouts: list[int] = field(default_factory=list)
    redis: list[int] = field(default_factory=list)

    def line(self, label: str) -> str:
        def med(values: list[float] | list[int]) -> float:
            return statistics.median(values) if values else float("nan")

        return (
            f"{label:<44} cpu {med(self.cpu_ms):7.2f} ms  wall {med(self.wall_ms):7.2f} ms  "
            f"sql {med(self.sql):3.0f} in {med(self.transactions):.0f} tx, "
            f"{med(self.checkouts):.0f} checkouts  redis {med(self.redis):.0f}"
        )


class Counters:
    """SQL statements, transactions and pool checkouts (each a ping round trip when the
    connection sat idle a second, `store.db.ping_when_idle`), from engine events, and
    Redis commands (the client's), per measured task."""

    def __init__(self, wiring: Wiring) -> None:
        self.sql = self.transactions = self.checkouts = self.redis = 0
        engine = wiring.deps.sessions.kw["bind"]
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "begin", self._begin)
        event.listen(engine.pool, "checkout", self._checkout)
        client = wiring.redis
        original = client.execute_command

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.redis += 1
            return original(*args, **kwargs)

        client.execute_command = counted  # type: ignore[method-assign]

    def _statement(self, *_args: Any) -> None:
        self.sql += 1

    def _begin(self, *_args: Any) -> None:
        self.transactions += 1

    def _checkout(self, *_args: Any) -> None:
        self.checkouts += 1

    @contextmanager
    def measured(self, sample: Sample) -> Iterator[None]:
        self.sql = self.transactions = self.checkouts = self.redis = 0
        cpu, wall = time.process_time(), time.perf_counter()
        yield
        sample.cpu_ms.append((time.process_time() - cpu) * 1000)
        sample.wall_ms.append((time.perf_counter() - wall) * 1000)
        sample.sql.append(self.sql)
        sample.transactions.append(self.transactions)
        sample.checkouts.append(self.checkouts)
        sample.redis.append(self.redis)


def start_sandbox(data_dir: Path, redis_url: str) -> tuple[ChildProcess, str]:
    with socket_port() as port:
        pass
    settings = Settings(data_dir=data_dir / "sandbox", redis_url=redis_url, sandbox_port=port)
    child = start_child("sandbox", ["sandbox"], settings)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{url}/_sandbox/stats", timeout=1)
            return child, url
        except httpx.HTTPError:
            if child.process.poll() is not None or time.monotonic() > deadline:
                child.stop()
                raise RuntimeError(f"sandbox did not serve:\n{child.output()[-2000:]}") from None
            time.sleep(0.1)


@contextmanager
def socket_port() -> Iterator[int]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


class Bench:
    def __init__(self, wiring: Wiring, project: Project, tenant_integration: str) -> None:
        self.wiring = wiring
        self.deps = wiring.deps
        self.target = WriteTarget(project, tenant_integration, "contacts")
        self.sent: list[str] = []
        self.dispatch = Dispatch(
            self.sent.append, lambda _op: None, TenantDirectory(self.deps.sessions)
        )
        self.counter = 0

    def accept(self, body: dict[str, Any]) -> Operation:
        self.counter += 1
        record = {"email": f"b{self.counter}-{uuid.uuid4().hex[:6]}@example.com"}
        full = {"type": "create", "mode": "asynchronous", "record": record, **body}
        request = parse_write_request(json.dumps(full).encode())
        return accept_write(self.target, request, self.deps, self.dispatch).operation

    def flushed_batch(self, group_ref: str, size: int) -> str:
        policy = {"autoBatchPolicy": {"maxDelayMinutes": 1}}
        ids = [self.accept({"groupRef": group_ref, **policy}).id for _ in range(size)]
        batch_id = f"bench-{uuid.uuid4().hex[:10]}"
        with self.deps.sessions() as session:
            operations_repo.assign_batch(session, ids, batch_id, "size", now=self.deps.clock())
            session.commit()
        return batch_id

    def provider_calls(
        self, installation: Installation, size: int, *, single: bool
    ) -> Callable[[], None]:
        """The baseline: the same provider call(s) a task makes, and nothing else."""

        def call() -> None:
            items = [
                WriteItem({"email": f"p{self.counter}-{i}-{uuid.uuid4().hex[:6]}@example.com"}, [])
                for i in range(size)
            ]
            self.counter += 1
            with self.deps.open_adapter(installation, self.deps.settings) as adapter:
                if single:
                    adapter.write_one("contacts", "create", items[0], WriteOptions())
                else:
                    adapter.write_batch("contacts", "create", items, WriteOptions())

        return call


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--batches", type=int, default=20, help="100-record batch tasks to run")
    parser.add_argument("--singles", type=int, default=200, help="single-write tasks to run")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument(
        "--profile", choices=["batch", "single"], help="cProfile those tasks; print the top"
    )
    parser.add_argument("--sort", default="cumulative", help="the profile's order (tottime, …)")
    args = parser.parse_args()

    run_id = uuid.uuid4().hex[:6]
    schema = f"wjbatchbench_{run_id}"
    with tempfile.TemporaryDirectory(prefix="wj-batch-bench-") as tmp:
        data_dir = Path(tmp)
        sandbox, sandbox_url = start_sandbox(data_dir, args.redis_url)
        database_url = own_schema(args.database_url, schema)
        wiring: Wiring | None = None
        try:
            settings = Settings(
                data_dir=data_dir / "wj",
                redis_url=args.redis_url,
                database_url=database_url,
                redis_namespace=f"wjbatchbench-{run_id}",
                celery_queue=f"wjbatchbench-{run_id}",
                log_level="WARNING",
            )
            migrate(settings)
            tenant = create_tenant(settings, "http://api.invalid", sandbox_url)
            wiring = wire(settings)
            with wiring.deps.sessions() as session:
                limit = {"max": 1_000_000, "interval_ms": 1000}
                tenants_repo.set_rate_limit(session, tenant.installation_id, limit)
                session.commit()
                project = session.get(Project, tenant.project_id)
                installation = tenants_repo.get_installation(session, tenant.installation_id)
                assert project is not None and installation is not None
                session.expunge_all()
            run(args, wiring, project, tenant.integration_id, tenant.group_ref, installation)
        finally:
            if wiring is not None:
                wiring.deps.sessions.kw["bind"].dispose()
            sandbox.stop()
            drop_schema(args.database_url, schema)
            cleanup_redis(args.redis_url, f"wjbatchbench-{run_id}")
    return 0


def run(
    args: argparse.Namespace,
    wiring: Wiring,
    project: Project,
    integration_id: str,
    group_ref: str,
    installation: Installation,
) -> None:
    bench = Bench(wiring, project, integration_id)
    counters = Counters(wiring)
    size = args.batch_size
    batch, batch_calls = Sample(), Sample()
    single, single_calls = Sample(), Sample()
    batch_call = bench.provider_calls(installation, size, single=False)
    single_call = bench.provider_calls(installation, 1, single=True)
    # Warm up: the pooled client, the cached scripts, the first statements' compilation.
    run_batch(bench.flushed_batch(group_ref, size), wiring.deps)
    run_operation(bench.accept({"groupRef": group_ref}).id, wiring.deps)
    batch_call()
    single_call()
    profiler = cProfile.Profile(time.process_time)
    for _ in range(args.batches):
        batch_id = bench.flushed_batch(group_ref, size)
        with counters.measured(batch_calls):
            batch_call()
        with counters.measured(batch), profiling(profiler, args.profile == "batch"):
            counts = run_batch(batch_id, wiring.deps)
        assert counts == {"succeeded": size}, counts
    for _ in range(args.singles):
        op_id = bench.accept({"groupRef": group_ref}).id
        with counters.measured(single_calls):
            single_call()
        with counters.measured(single), profiling(profiler, args.profile == "single"):
            state = run_operation(op_id, wiring.deps)
        assert state is not None and state.value == "succeeded", state
    if args.profile:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats(args.sort).print_stats(45)
    cpu_beside = statistics.median(batch.cpu_ms) - statistics.median(batch_calls.cpu_ms)
    single_beside = statistics.median(single.cpu_ms) - statistics.median(single_calls.cpu_ms)
    print(
        f"batch task bench: {args.batches} batch tasks of {size} records, {args.singles} "
        f"single-write tasks; sandbox at 0 ms; medians per task"
    )
    print(batch.line(f"run_batch ({size} records)"))
    print(batch_calls.line(f"baseline: 1 batch call of {size} records"))
    print(single.line("run_operation (1 record)"))
    print(single_calls.line("baseline: 1 single-record call"))
    verdict = "met" if cpu_beside <= TARGET_BATCH_CPU_MS else "missed"
    print(
        f"batch task CPU besides the provider call: {cpu_beside:.2f} ms "
        f"(target <= {TARGET_BATCH_CPU_MS:g} ms: {verdict}); "
        f"single task: {single_beside:.2f} ms"
    )


@contextmanager
def profiling(profiler: cProfile.Profile, on: bool) -> Iterator[None]:
    if on:
        profiler.enable()
    try:
        yield
    finally:
        if on:
            profiler.disable()


def cleanup_redis(redis_url: str, namespace: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            client.delete(key)
    finally:
        client.close()


if __name__ == "__main__":
    raise SystemExit(main())
