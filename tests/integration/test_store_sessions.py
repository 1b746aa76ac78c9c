"""How the worker's session talks to the store: a transaction that is one statement
commits on its own (`statements_alone`), and a connection is pinged only after it
sat idle in the pool (`ping_when_idle`)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, event, inspect, select, text, update
from sqlalchemy.exc import DBAPIError

from tests.integration.test_state_machine import an_operation
from tests.support.core import Core, core
from writejobs.core.operations import State
from writejobs.settings import Settings
from writejobs.store import worker_reads
from writejobs.store.db import ping_when_idle, pinned_session, statements_alone
from writejobs.store.tables import Operation


@pytest.fixture()
def c(settings: Settings) -> Iterator[Core]:
    with core(settings) as built:
        yield built


def _summary(c: Core, op_id: str) -> str | None:
    with c.deps.sessions() as session:
        return session.scalar(select(Operation.result_summary).where(Operation.id == op_id))


def test_a_write_in_statements_alone_commits_by_itself_on_postgresql_and_with_the_block_else(
    c: Core,
) -> None:
    op_id = an_operation(c, State.QUEUED)
    postgres = c.settings.sqlalchemy_url.startswith("postgresql")
    with pinned_session(c.deps.sessions) as session:
        with statements_alone(session):
            statement = update(Operation).where(Operation.id == op_id).values(result_summary="x")
            session.execute(statement)
            # PostgreSQL ran it under autocommit: another session sees it already
            assert _summary(c, op_id) == ("x" if postgres else None)
        # and everywhere the block's end committed it
        assert _summary(c, op_id) == "x"
        assert not session.in_transaction()
        # the connection is transactional again after the block
        statement = update(Operation).where(Operation.id == op_id).values(result_summary="y")
        session.execute(statement)
        assert _summary(c, op_id) == "x"
        session.rollback()
    assert _summary(c, op_id) == "x"


def test_what_statements_alone_read_stays_loaded_after_it(c: Core) -> None:
    op_id = an_operation(c, State.QUEUED)
    with pinned_session(c.deps.sessions) as session:
        with statements_alone(session):
            op = session.get(Operation, op_id)
        assert op is not None
        statements: list[str] = []
        bind = session.get_bind()
        event.listen(bind, "before_cursor_execute", lambda *args: statements.append(args[2]))
        assert (op.state, inspect(op).expired) == (State.QUEUED.value, False)
        assert statements == []


def test_a_connection_idle_in_the_pool_is_pinged_and_a_dead_one_replaced(
    settings: Settings,
) -> None:
    if not settings.sqlalchemy_url.startswith("postgresql"):
        pytest.skip("a server that ends a connection: PostgreSQL")
    engine = create_engine(settings.sqlalchemy_url, pool_size=1, max_overflow=0)
    ping_when_idle(engine, idle_s=0.3)
    killer = create_engine(settings.sqlalchemy_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            first = connection.scalar(text("SELECT pg_backend_pid()"))
        with killer.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        # given back just now: handed out unpinged, so its first statement meets the end
        with pytest.raises(DBAPIError) as failed, engine.connect() as connection:
            connection.scalar(text("SELECT 1"))
        assert failed.value.connection_invalidated
        with engine.connect() as connection:
            second = connection.scalar(text("SELECT pg_backend_pid()"))
        with killer.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": second})
        time.sleep(0.5)
        # idle longer than the window: the ping finds it dead and a new one is made
        with engine.connect() as connection:
            third = connection.scalar(text("SELECT pg_backend_pid()"))
        assert third not in (first, second)
    finally:
        engine.dispose()
        killer.dispose()


def test_the_workers_first_read_finds_each_operation_with_its_installation(c: Core) -> None:
    # One statement, built once, serves every task: each read must find its own id.
    first, second = an_operation(c, State.QUEUED), an_operation(c, State.RETRYING)
    with pinned_session(c.deps.sessions) as session:
        for op_id, state in ((first, State.QUEUED), (second, State.RETRYING)):
            with statements_alone(session):
                found = worker_reads.operation_with_installation(session, op_id)
            assert found is not None
            op, installation = found
            assert (op.id, op.state) == (op_id, state.value)
            assert installation.id == op.installation_id
        with statements_alone(session):
            assert worker_reads.operation_with_installation(session, "no-such-op") is None
