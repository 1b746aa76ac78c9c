"""How the scheduler's tick scales with the number of idle groups.

For 100, 10,000 and 100,000 idle auto-batch groups, plus 10 due ones, times one
`flush_due` pass (median of several) and prints the three figures side by side
with their ratio to the 100-group figure, which must stay within 2x. As a
baseline measured in the same run, it also times what a tick would cost if it
scanned every group for due members instead of reading the sorted set.

Run: `.venv/bin/python bench/tick_bench.py` (uses WRITEJOBS_REDIS_URL, or an
embedded Redis; a throwaway SQLite store).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis

from writejobs.cli.embedded_redis import EmbeddedRedis
from writejobs.grouping.autobatch import AutoBatcher
from writejobs.grouping.keys import Keys
from writejobs.settings import Settings
from writejobs.store import operations_repo, tenants_repo
from writejobs.store.db import create_session_factory, create_store_engine
from writejobs.store.migrate import migrate
from writejobs.store.secrets import cipher_for
from writejobs.store.tables import Operation

SIZES = (100, 10_000, 100_000)
DUE_GROUPS = 10
REPEATS = 7


def populate(client: redis.Redis, keys: Keys, idle: int, now_s: float) -> None:
    """Idle groups: one member each, due in an hour."""
    pipe = client.pipeline(transaction=False)
    for i in range(idle):
        group = f"idle-{i}"
        pipe.zadd(keys.buffer(group), {str(uuid.uuid4()): now_s + 3600})
        pipe.zadd(keys.due, {group: now_s + 3600})
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def add_due(client: redis.Redis, keys: Keys, now_s: float) -> list[str]:
    """DUE_GROUPS groups of one pending operation each, due a second ago (rows in SQL too)."""
    groups = [f"due-{uuid.uuid4().hex[:8]}" for _ in range(DUE_GROUPS)]
    members = [pending_operation() for _ in groups]
    pipe = client.pipeline(transaction=False)
    for group, member in zip(groups, members, strict=True):
        pipe.zadd(keys.buffer(group), {member: now_s - 1})
        pipe.zadd(keys.due, {group: now_s - 1})
    pipe.execute()
    return groups


_store: dict[str, object] = {}


def pending_operation() -> str:
    sessions = _store["sessions"]
    installation = _store["installation"]
    now = datetime.now(UTC)
    op = Operation(
        id=str(uuid.uuid4()),
        project_id=installation.project_id,  # type: ignore[attr-defined]
        integration_id=installation.integration_id,  # type: ignore[attr-defined]
        installation_id=installation.id,
        config_id=installation.config_id,  # type: ignore[attr-defined]
        object_name="contacts",
        write_type="create",
        mode="asynchronous",
        shape="auto_batch",
        request={},
        state="pending",
        created_at=now,
        updated_at=now,
        deadline_at=now + timedelta(hours=1),
    )
    with sessions() as session:  # type: ignore[operator]
        operations_repo.insert_operation(session, op)
        session.commit()
    return op.id


def make_tenant(sessions: object) -> None:
    with sessions() as session:  # type: ignore[operator]
        now = datetime.now(UTC)
        project = tenants_repo.create_project(session, f"bench-{uuid.uuid4().hex[:6]}", now=now)
        integration = tenants_repo.create_integration(
            session, project.id, "crm", "hubspot", now=now
        )
        installation = tenants_repo.create_installation(
            session,
            integration,
            "g",
            "http://x",
            now=now,
            cipher=_store["cipher"],  # type: ignore[arg-type]
        )
        session.commit()
        session.expunge(installation)
    _store.update(sessions=sessions, installation=installation)


def time_tick(batcher: AutoBatcher, client: redis.Redis, keys: Keys) -> float:
    samples = []
    for _ in range(REPEATS):
        now = datetime.now(UTC)
        add_due(client, keys, now.timestamp())
        start = time.perf_counter()
        report = batcher.flush_due(now)
        samples.append(time.perf_counter() - start)
        assert len(report.flushed) == DUE_GROUPS, len(report.flushed)
    return statistics.median(samples)


def time_scan(client: redis.Redis, keys: Keys) -> float:
    """The baseline: look at every group's earliest member to find the due ones."""
    start = time.perf_counter()
    now_s = time.time()
    due = 0
    for raw in client.scan_iter(f"{keys.namespace}:buf:*", count=5000):
        first = client.zrange(raw, 0, 0, withscores=True)
        if first and first[0][1] <= now_s:
            due += 1
    return time.perf_counter() - start


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="tick-bench-"))
    url = os.environ.get("WRITEJOBS_REDIS_URL")
    embedded = None
    if not url:
        embedded = EmbeddedRedis(workdir, workdir / "redis.sock")
        embedded.start()
        url = embedded.url
    settings = Settings(data_dir=workdir, redis_url=url)
    migrate(settings)
    sessions = create_session_factory(create_store_engine(settings))
    _store["cipher"] = cipher_for(settings)
    make_tenant(sessions)
    client = redis.Redis.from_url(url)
    rows = []
    try:
        for size in SIZES:
            keys = Keys(f"tickbench-{uuid.uuid4().hex[:6]}")
            batcher = AutoBatcher(
                client, sessions, lambda _batch_id: None, keys=keys, clock=lambda: datetime.now(UTC)
            )
            populate(client, keys, size, time.time())
            tick_s = time_tick(batcher, client, keys)
            scan_s = time_scan(client, keys) if size <= 10_000 else float("nan")
            rows.append((size, tick_s, scan_s))
            for key in client.scan_iter(f"{keys.namespace}:*", count=10_000):
                client.unlink(key)
    finally:
        client.close()
        if embedded is not None:
            embedded.stop()
    base = rows[0][1]
    print(
        f"{'idle groups':>12} {'tick (10 due) ms':>17} {'vs 100 groups':>14} "
        f"{'baseline: scan every group ms':>30}"
    )
    for size, tick_s, scan_s in rows:
        scan = "(skipped)" if scan_s != scan_s else f"{scan_s * 1000:.1f}"
        print(f"{size:>12,} {tick_s * 1000:>17.2f} {tick_s / base:>13.2f}x {scan:>30}")
    worst = max(t for _, t, _ in rows) / base
    print(f"largest / smallest tick: {worst:.2f}x (target: within 2x)")


if __name__ == "__main__":
    main()
