"""On PostgreSQL the indexes by state and creation time hold no running operation (an
attempt's take adds no entry to them), and every reader by state still seeks an index:
the running rows through `ix_operations_state`, every other state through its own
range of the composite indexes. Planned on a table shaped like a busy store's: most
operations ended well, a few failed, a few hundred running."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy import Engine, Select, create_engine, text
from sqlalchemy.dialects import postgresql

from writejobs.settings import Settings
from writejobs.store import console_queries, dead_letters
from writejobs.store.console_queries import OperationFilter
from writejobs.store.dead_letters import DeadLetterFilter
from writejobs.store.tables import Base, Operation

T = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
BEFORE = (T, "ffffffff-ffff-ffff-ffff-ffffffffffff")


@pytest.fixture(scope="module")
def busy(settings: Settings, backend: str) -> Iterator[Engine]:
    """A schema of its own with the models' indexes and 40,000 operations in it."""
    if backend != "postgresql":
        pytest.skip("the indexes are partial on PostgreSQL only")
    schema = f"wjbusy_{uuid.uuid4().hex[:8]}"
    url = settings.sqlalchemy_url.split("?")[0]
    root = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(root, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    engine = create_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        Base.metadata.create_all(engine)
        with engine.begin() as connection:
            # The rows name no project or installation rows: their keys are not checked.
            connection.execute(text("SET LOCAL session_replication_role = replica"))
            connection.execute(text(_ROWS), {"t": T})
            connection.execute(text("ANALYZE operations"))
        yield engine
    finally:
        engine.dispose()
        with psycopg.connect(root, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


# 4 installations of one project, 2 objects; 1 in 100 running, 1 in 50 failed.
_ROWS = """
INSERT INTO operations (id, project_id, integration_id, installation_id, config_id,
    object_name, write_type, mode, shape, request, state, attempts, record_count,
    success_count, failure_count, deadline_at, created_at, updated_at, backoff_failures)
SELECT gen_random_uuid()::text, 'proj', 'integ', 'inst' || (g % 4), 'cfg',
    CASE WHEN g % 3 = 0 THEN 'deals' ELSE 'contacts' END, 'create', 'asynchronous',
    'auto_batch', '{}', CASE WHEN g % 100 = 0 THEN 'running' WHEN g % 50 = 1 THEN 'failed'
    ELSE 'succeeded' END, 1, 1, 1, 0, :t, :t - g * interval '1 second', :t, 0
FROM generate_series(1, 40000) AS g
"""


def plan(engine: Engine, statement: Select[Operation]) -> str:
    page = statement.order_by(Operation.created_at.desc(), Operation.id.desc()).limit(51)
    compiled = page.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    with engine.connect() as connection:
        return "\n".join(connection.execute(text(f"EXPLAIN {compiled}")).scalars())


@pytest.mark.parametrize("state", ["running", "succeeded", "failed"])
@pytest.mark.parametrize("obj", [None, "contacts"])
def test_a_console_page_of_any_state_seeks_an_index(
    busy: Engine, state: str, obj: str | None
) -> None:
    [statement] = console_queries._ranges("inst1", OperationFilter((state,), obj), BEFORE)
    steps = plan(busy, statement)
    assert "Seq Scan" not in steps, steps
    if state == "running":
        assert "ix_operations_state" in steps, steps
    else:
        assert "ix_operations_installation_" in steps, steps


@pytest.mark.parametrize("state", ["running", "succeeded", "failed"])
def test_a_project_page_of_any_state_seeks_an_index(busy: Engine, state: str) -> None:
    [statement] = dead_letters._ranges("proj", DeadLetterFilter(states=(state,)), BEFORE)
    steps = plan(busy, statement)
    assert "Seq Scan" not in steps, steps
    expected = "ix_operations_state" if state == "running" else "ix_operations_project_state"
    assert expected in steps, steps
