"""Group commit against the real store: concurrent writes share transactions, each
caller returns only once its own rows are committed, and one bad row fails alone."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from tests.support.system import Tenant, create_tenant, operation_row
from writejobs.clock import utcnow
from writejobs.settings import Settings
from writejobs.store import operations_repo
from writejobs.store.db import create_session_factory, create_store_engine
from writejobs.store.group_commit import GroupCommitter
from writejobs.store.tables import Operation, OperationLog

THREADS = 48


@pytest.fixture()
def committer(settings: Settings) -> Iterator[GroupCommitter]:
    engine = create_store_engine(settings)
    yield GroupCommitter(create_session_factory(engine))
    engine.dispose()


@pytest.fixture()
def owner(settings: Settings) -> Tenant:
    return create_tenant(settings, "http://api.invalid", "http://sandbox.invalid")


def operation(tenant: Tenant, op_id: str | None = None) -> dict[str, Any]:
    return operation_row(tenant) if op_id is None else operation_row(tenant, id=op_id)


def run_concurrently(calls: list[Any]) -> list[BaseException | None]:
    """Start every call at once; what each raised (None if it returned)."""
    start = threading.Barrier(len(calls))
    outcomes: list[BaseException | None] = [None] * len(calls)

    def run(i: int) -> None:
        start.wait()
        try:
            calls[i]()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def count(settings: Settings, model: type[Any], ids: list[str], column: str) -> int:
    engine = create_store_engine(settings)
    try:
        with create_session_factory(engine)() as session:
            statement = select(func.count()).where(getattr(model, column).in_(ids))
            return int(session.scalar(statement) or 0)
    finally:
        engine.dispose()


def test_concurrent_writes_are_committed_in_fewer_transactions_than_writes(
    committer: GroupCommitter, owner: Tenant, settings: Settings
) -> None:
    rows = [operation(owner) for _ in range(THREADS)]
    ids = [row["id"] for row in rows]

    def write(row: dict[str, Any]) -> Any:
        log = operations_repo.log_row(row["id"], "write accepted", now=utcnow())
        return lambda: committer.commit(row, [log])

    outcomes = run_concurrently([write(row) for row in rows])

    assert outcomes == [None] * THREADS
    assert count(settings, Operation, ids, "id") == THREADS
    assert count(settings, OperationLog, ids, "operation_id") == THREADS
    assert committer.groups_committed < THREADS


def test_a_write_that_cannot_be_committed_fails_alone(
    committer: GroupCommitter, owner: Tenant, settings: Settings
) -> None:
    # given an operation already stored under an id a later write reuses
    taken = operation(owner)
    committer.commit(taken, [])
    rows = [operation(owner) for _ in range(19)] + [operation(owner, taken["id"])]

    outcomes = run_concurrently([lambda row=row: committer.commit(row, []) for row in rows])

    # then only the duplicate failed, and every other write is stored
    assert all(outcome is None for outcome in outcomes[:-1])
    assert isinstance(outcomes[-1], IntegrityError)
    fresh = [row["id"] for row in rows[:-1]]
    assert count(settings, Operation, fresh, "id") == 19


def test_coroutines_share_groups_and_each_returns_once_its_row_is_committed(
    committer: GroupCommitter, owner: Tenant, settings: Settings
) -> None:
    rows = [operation(owner) for _ in range(THREADS)]
    taken = rows[0]
    committer.commit(taken, [])
    duplicate = operation(owner, taken["id"])

    async def write_all() -> list[BaseException | None]:
        async def one(row: dict[str, Any]) -> None:
            await committer.commit_async(
                row, [operations_repo.log_row(row["id"], "w", now=utcnow())]
            )
            # Returned: the row is there for anyone to read.
            assert count(settings, Operation, [row["id"]], "id") == 1

        results = await asyncio.gather(
            *(one(row) for row in [*rows[1:], duplicate]), return_exceptions=True
        )
        return [r if isinstance(r, BaseException) else None for r in results]

    before = committer.groups_committed
    outcomes = asyncio.run(write_all())

    assert outcomes[:-1] == [None] * (THREADS - 1)
    assert isinstance(outcomes[-1], IntegrityError)
    assert count(settings, Operation, [row["id"] for row in rows], "id") == THREADS
    # All were waiting on one event loop, yet they did not commit one by one.
    assert committer.groups_committed - before < THREADS - 1


class _CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts the wakeups other threads ask of it."""

    wakeups = 0

    def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> Any:
        self.wakeups += 1
        return super().call_soon_threadsafe(*args, **kwargs)


def test_a_committed_group_wakes_its_event_loop_once(
    committer: GroupCommitter, owner: Tenant, settings: Settings
) -> None:
    rows = [operation(owner) for _ in range(THREADS)]

    async def write_all() -> None:
        await asyncio.gather(*(committer.commit_async(row, []) for row in rows))

    loop = _CountingLoop()
    before = committer.groups_committed
    try:
        loop.run_until_complete(write_all())
    finally:
        loop.close()

    assert count(settings, Operation, [row["id"] for row in rows], "id") == THREADS
    groups = committer.groups_committed - before
    assert groups < THREADS
    # One wakeup per group, not one per write of it.
    assert loop.wakeups == groups


def test_with_several_threads_every_write_is_committed_once(
    settings: Settings, owner: Tenant
) -> None:
    engine = create_store_engine(settings)
    committer = GroupCommitter(create_session_factory(engine), threads=3)
    try:
        rows = [operation(owner) for _ in range(THREADS)]
        outcomes = run_concurrently([lambda row=row: committer.commit(row, []) for row in rows])
        assert outcomes == [None] * THREADS
        assert count(settings, Operation, [row["id"] for row in rows], "id") == THREADS
    finally:
        engine.dispose()


def test_a_write_after_the_committers_connection_was_killed_is_still_committed(
    owner: Tenant, settings: Settings
) -> None:
    if settings.database_url is None:
        pytest.skip("a PostgreSQL server process to terminate")
    name = f"wj-commit-{uuid.uuid4().hex[:8]}"
    own = Settings(
        **(
            settings.model_dump()
            | {"database_url": f"{settings.database_url}&application_name={name}"}
        )
    )
    committer_engine, admin_engine = create_store_engine(own), create_store_engine(settings)
    # Idle for a minute before it gives the connection back: the kill finds it held.
    committer = GroupCommitter(create_session_factory(committer_engine), idle_s=60)
    try:
        # given a committer that has committed, and so holds its connection between groups
        committer.commit(operation(owner), [])
        with admin_engine.connect() as admin:
            killed = admin.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = :n"
                ),
                {"n": name},
            ).all()
        assert killed, "the committer's connection was terminated"

        # when the next writes arrive, then they are committed all the same
        rows = [operation(owner) for _ in range(3)]
        for row in rows:
            committer.commit(row, [])
        assert count(settings, Operation, [row["id"] for row in rows], "id") == 3
    finally:
        committer_engine.dispose()
        admin_engine.dispose()


def test_an_idle_committer_gives_its_connection_back(settings: Settings, owner: Tenant) -> None:
    engine = create_store_engine(settings)
    committer = GroupCommitter(create_session_factory(engine), idle_s=0.2)
    try:
        committer.commit(operation(owner), [])
        deadline = time.monotonic() + 10
        while engine.pool.checkedout() and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.05)
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        # and it takes one again for the next write
        committer.commit(operation(owner), [])
    finally:
        engine.dispose()
