"""Resuming an installation that holds a large backlog: 20,000 held auto-batch members
are all released, each with its log line and its batch's task sent once, and on
PostgreSQL the release does not deadlock with a worker's transaction holding some
of the rows (the bench's resume of 20,000 held writes once answered 500 so)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import delete, func, select, text, update

from tests.support.core import Core, core
from writejobs.execution.gate import PAUSED
from writejobs.intake import controls
from writejobs.settings import Settings
from writejobs.store import operations_repo
from writejobs.store.tables import Operation, OperationLog, OperationPayload

HELD = 20_000
PER_BATCH = 100


@pytest.fixture()
def c(settings: Settings) -> Iterator[Core]:
    with core(settings) as built:
        yield built
        # The store is the session's: leave no backlog for other tests' sweeps to find.
        mine = select(Operation.id).where(Operation.installation_id == built.tenant.installation_id)
        with built.deps.sessions() as session:
            for table in (OperationLog, OperationPayload):
                session.execute(delete(table).where(table.operation_id.in_(mine)))
            session.execute(
                delete(Operation).where(Operation.installation_id == built.tenant.installation_id)
            )
            session.commit()


def hold_backlog(c: Core, n: int) -> str:
    """Pause, hold one auto-batch member as a worker would, then copy it `n` times in
    one set-based INSERT (ids `<prefix>-1` to `<prefix>-n`) into batches of `PER_BATCH`;
    the prefix."""
    controls.pause(c.deps, c.tenant.installation_id, reason="maintenance", by="test")
    member = c.accept(
        {
            "mode": "asynchronous",
            "record": {"email": "m@example.com"},
            "autoBatchPolicy": {"maxDelayMinutes": 1},
        }
    ).operation.id
    batch_id = str(uuid.uuid4())
    prefix = uuid.uuid4().hex[:8]
    with c.deps.sessions() as session:
        operations_repo.assign_batch(session, [member], batch_id, "time", now=c.clock())
        session.commit()
    c.sender.send_batch(batch_id)
    c.deliver()
    assert c.operation(member).waiting_reason == PAUSED
    columns = [
        col.name for col in Operation.__table__.columns if col.name not in ("id", "batch_id")
    ]
    copied = ", ".join(f"o.{name}" for name in columns)
    with c.deps.sessions() as session:
        session.execute(
            text(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :n) "
                f"INSERT INTO operations (id, batch_id, {', '.join(columns)}) "
                "SELECT :prefix || '-' || CAST(n.i AS VARCHAR), "
                f":prefix || '-batch-' || CAST(n.i / {PER_BATCH} AS VARCHAR), {copied} "
                "FROM operations o, n WHERE o.id = :source"
            ),
            {"n": n, "source": member, "prefix": prefix},
        )
        session.commit()
    return prefix


def still_held(c: Core) -> int:
    statement = select(func.count()).where(
        Operation.installation_id == c.tenant.installation_id,
        Operation.next_attempt_at != c.clock(),
        Operation.state == "queued",
    )
    with c.deps.sessions() as session:
        return int(session.scalar(statement) or 0)


def test_resume_releases_every_one_of_20000_held_writes_and_sends_each_batch_once(
    c: Core,
) -> None:
    hold_backlog(c, HELD)
    c.sender.waits.clear()

    resumed = controls.resume(c.deps, c.tenant.installation_id, by="test")

    assert resumed.released == HELD + 1 and resumed.installation.paused_at is None
    assert still_held(c) == 0
    with c.deps.sessions() as session:
        due = session.scalar(
            select(func.count()).where(
                Operation.installation_id == c.tenant.installation_id,
                Operation.next_attempt_at == c.clock(),
            )
        )
        logged = session.scalar(
            select(func.count())
            .select_from(OperationLog)
            .join(Operation, Operation.id == OperationLog.operation_id)
            .where(
                Operation.installation_id == c.tenant.installation_id,
                OperationLog.msg == "released: installation resumed",
            )
        )
    assert (due, logged) == (HELD + 1, HELD + 1)
    sent = [(kind, target) for kind, target, _at in c.sender.waits]
    assert all(kind == "batch" for kind, _ in sent)
    assert len(sent) == len(set(sent)) == HELD // PER_BATCH + 2  # batch-0..200 and the source's


def test_resume_on_postgresql_does_not_deadlock_with_a_worker_holding_some_rows(
    c: Core, backend: str
) -> None:
    if backend != "postgresql":
        pytest.skip("row locks: SQLite has one writer at a time")
    prefix = hold_backlog(c, HELD)
    first = f"{prefix}-{HELD}"
    outcome: list[object] = []

    def resume() -> None:
        try:
            outcome.append(controls.resume(c.deps, c.tenant.installation_id, by="test"))
        except Exception as exc:
            outcome.append(exc)

    # A worker's transaction takes one held row, then (as a batch take does) more of them.
    with c.deps.sessions() as worker:
        worker.execute(update(Operation).where(Operation.id == first).values(updated_at=c.clock()))
        worker_pid = worker.scalar(text("SELECT pg_backend_pid()"))
        releasing = threading.Thread(target=resume)
        releasing.start()
        # Until the release waits on the worker, or has committed a first chunk past it.
        for _ in range(200):
            with c.deps.sessions() as probe:
                blocked = probe.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE :pid = ANY(pg_blocking_pids(pid))"
                    ),
                    {"pid": worker_pid},
                )
            if blocked or still_held(c) < HELD + 1 or outcome:
                break
            time.sleep(0.05)
        worker.execute(
            update(Operation)
            .where(
                Operation.installation_id == c.tenant.installation_id,
                Operation.id != first,
            )
            .values(updated_at=c.clock())
        )
        worker.commit()
        releasing.join(timeout=120)

    [result] = outcome
    assert not isinstance(result, Exception), repr(result)
    assert isinstance(result, controls.PauseState) and result.released == HELD + 1
    assert still_held(c) == 0
