"""Times the console's reads on 1,000,000 operations of one installation (the worst case:
every row in the ranges the console reads), on PostgreSQL (`WRITEJOBS_DATABASE_URL`, a
schema of the run's own, dropped after) or else SQLite in a temporary directory.

For each filter: the first page (50 rows), a page 500,000 rows deep, and the bounded
per-state counts (each stops at 1,000), median of 5 runs, next to the same-run baseline
of reading one operation by id.

    .venv/bin/python bench/console_bench.py [rows]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from writejobs.clock import utcnow
from writejobs.settings import Settings
from writejobs.store import console_queries, tenants_repo
from writejobs.store.console_queries import OperationFilter
from writejobs.store.db import create_session_factory, create_store_engine
from writejobs.store.migrate import migrate
from writejobs.store.secrets import cipher_for

STATES = ["succeeded"] * 14 + ["failed", "partially_succeeded", "expired", "queued", "pending"]
OBJECTS = ["contacts", "contacts", "contacts", "companies", "deals"]


def main(rows: int) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="console-bench-"))
    configured = os.environ.get("WRITEJOBS_DATABASE_URL", "")
    schema = f"console_bench_{uuid.uuid4().hex[:8]}"
    database_url = None
    if configured.startswith("postgres"):
        import psycopg

        with psycopg.connect(configured, autocommit=True) as connection:
            connection.execute(f'CREATE SCHEMA "{schema}"')
        database_url = (
            f"{configured}{'&' if '?' in configured else '?'}options=-csearch_path%3D{schema}"
        )
    settings = Settings(data_dir=data_dir, database_url=database_url)
    try:
        run(settings, rows)
    finally:
        if database_url is not None:
            import psycopg

            with psycopg.connect(configured, autocommit=True) as connection:
                connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


def run(settings: Settings, rows: int) -> None:
    migrate(settings)
    engine = create_store_engine(settings)
    sessions = create_session_factory(engine)
    with sessions() as session:
        now = utcnow()
        project = tenants_repo.create_project(session, "bench", now=now)
        integration = tenants_repo.create_integration(
            session, project.id, "crm", "hubspot", now=now
        )
        installation = tenants_repo.create_installation(
            session,
            integration,
            "org",
            "http://127.0.0.1:9",
            now=now,
            cipher=cipher_for(settings),
            credentials={"token": "x"},
        )
        session.commit()
        ids = (project.id, integration.id, installation.id)
    started = time.monotonic()
    seed(engine.dialect.name, sessions, ids, rows)
    print(
        f"{engine.dialect.name}: seeded {rows:,} operations in {time.monotonic() - started:.0f} s"
    )
    inst = ids[2]
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    deep = (t0 + timedelta(seconds=rows // 2), "ffffffff")
    filters = {
        "no filter": OperationFilter(),
        "status failure": OperationFilter(states=("failed", "expired")),
        "status in_progress": OperationFilter(states=("queued", "pending", "running", "retrying")),
        "object companies": OperationFilter(object_name="companies"),
        "object + failed": OperationFilter(states=("failed",), object_name="companies"),
        "last 24 h of data": OperationFilter(since=t0 + timedelta(seconds=rows - 86400)),
    }
    with sessions() as session:
        some_id = session.execute(text("SELECT id FROM operations LIMIT 1")).scalar_one()
        print(f"{'read':<22}{'first page ms':>15}{'page at 500k ms':>17}{'counts ms':>11}")
        base = timed(lambda: console_queries.get_operation(session, None, some_id))
        print(f"{'one operation by id':<22}{base:>15.2f}")
        for name, flt in filters.items():
            first = timed(
                lambda f=flt: console_queries.list_operations(session, inst, f, page_size=50)
            )
            deep_ms = timed(
                lambda f=flt: console_queries.list_operations(
                    session, inst, f, page_size=50, before=deep
                )
            )
            counts = timed(lambda f=flt: console_queries.count_by_state(session, inst, f, cap=1000))
            print(f"{name:<22}{first:>15.2f}{deep_ms:>17.2f}{counts:>11.2f}")
    engine.dispose()


def timed(call: Callable[[], object], runs: int = 5) -> float:
    took = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        took.append((time.perf_counter() - started) * 1000)
    return statistics.median(took)


def seed(dialect: str, sessions: object, ids: tuple[str, str, str], rows: int) -> None:
    """One INSERT … SELECT over a generated series: a row a second from 2026-01-01."""
    project, integration, installation = ids
    states = "ARRAY[" + ",".join(f"'{s}'" for s in STATES) + "]"
    objects = "ARRAY[" + ",".join(f"'{o}'" for o in OBJECTS) + "]"
    columns = (
        "id, project_id, integration_id, installation_id, config_id, object_name, write_type, "
        "mode, shape, request, state, attempts, record_count, success_count, failure_count, "
        "backoff_failures, created_at, updated_at, deadline_at"
    )
    if dialect == "postgresql":
        statement = f"""
            INSERT INTO operations ({columns})
            SELECT md5(n::text), '{project}', '{integration}', '{installation}', 'cfg',
                   ({objects})[1 + n % {len(OBJECTS)}], 'create', 'asynchronous', 'single',
                   '{{}}', ({states})[1 + n % {len(STATES)}], 1, 1, 1, 0, 0,
                   TIMESTAMPTZ '2026-01-01 00:00:00+00' + n * INTERVAL '1 second',
                   TIMESTAMPTZ '2026-01-01 00:00:00+00' + n * INTERVAL '1 second',
                   TIMESTAMPTZ '2026-01-01 01:00:00+00' + n * INTERVAL '1 second'
            FROM generate_series(1, {rows}) AS n"""
        script = [statement, "ANALYZE operations"]
    else:
        state_case = " ".join(f"WHEN {i} THEN '{s}'" for i, s in enumerate(STATES))
        object_case = " ".join(f"WHEN {i} THEN '{o}'" for i, o in enumerate(OBJECTS))
        statement = f"""
            WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < {rows})
            INSERT INTO operations ({columns})
            SELECT printf('%032x', v), '{project}', '{integration}', '{installation}', 'cfg',
                   CASE v % {len(OBJECTS)} {object_case} END, 'create', 'asynchronous', 'single',
                   '{{}}', CASE v % {len(STATES)} {state_case} END, 1, 1, 1, 0, 0,
                   strftime('%Y-%m-%d %H:%M:%f', '2026-01-01', '+' || v || ' seconds'),
                   strftime('%Y-%m-%d %H:%M:%f', '2026-01-01', '+' || v || ' seconds'),
                   strftime('%Y-%m-%d %H:%M:%f', '2026-01-01 01:00', '+' || v || ' seconds')
            FROM n"""
        script = [statement, "ANALYZE"]
    with sessions() as session:  # type: ignore[operator]
        for step in script:
            session.execute(text(step))
        session.commit()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
