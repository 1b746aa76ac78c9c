"""Running leases: a worker's heartbeat keeps the leases of what it runs alive, and an
operation whose lease lapsed (its worker died) is sent again a lease later, not after
the whole stalled window (real store, real Redis, a parked queue)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from scheduler.scheduler import Scheduler
from tests.support.parked import Parked
from writejobs import task_names
from writejobs.clock import as_utc, utcnow
from writejobs.core.operations import State
from writejobs.store import operations_repo
from writejobs.store.leases import LeaseHeartbeat
from writejobs.store.tables import Operation


def _async_write(p: Parked) -> str:
    with p.tenant.client() as client:
        response = client.post(
            p.tenant.write_path(),
            json={
                "groupRef": p.tenant.group_ref,
                "type": "create",
                "mode": "asynchronous",
                "record": {"email": "lease@example.com"},
            },
        )
    assert response.status_code == 200, response.text
    return str(response.json()["operationId"])


def _start_running(p: Parked, op_id: str, at: datetime, lease_s: float) -> None:
    """What a worker's first step does: take the operation into `running` under a lease."""
    with p.wiring.deps.sessions() as session:
        assert operations_repo.transition(session, op_id, State.RUNNING, now=at, lease_s=lease_s)
        session.commit()


def _lease(p: Parked, op_id: str) -> datetime:
    [op] = p.ops([op_id])
    assert op.lease_expires_at is not None
    return as_utc(op.lease_expires_at)


def test_the_heartbeat_renews_the_lease_of_what_it_holds_and_only_while_it_holds_it(
    parked: Parked,
) -> None:
    held, other = _async_write(parked), _async_write(parked)
    started = utcnow()
    for op_id in (held, other):
        _start_running(parked, op_id, started, lease_s=5)
    later = started + timedelta(seconds=60)
    heartbeat = LeaseHeartbeat(parked.wiring.deps.sessions, 5, lambda: later)

    with heartbeat.holding(operation_id=held):
        assert heartbeat.beat() == 1
    assert _lease(parked, held) == later + timedelta(seconds=5)
    assert _lease(parked, other) == started + timedelta(seconds=5)
    # Out of the block, nothing is renewed any more.
    assert heartbeat.beat() == 0


def test_a_lapsed_lease_is_sent_again_a_lease_later_not_after_the_stalled_window(
    parked: Parked,
) -> None:
    op_id = _async_write(parked)
    parked.redis.delete(parked.settings.celery_queue)
    lease_s = parked.settings.running_lease_s
    started = utcnow()
    # A worker took it, then was SIGKILLed: nobody renews the lease.
    _start_running(parked, op_id, started, lease_s=lease_s)
    assert parked.settings.stalled_after_s > 2 * lease_s + 2

    scheduler = Scheduler(parked.settings, parked.wiring)
    assert op_id not in scheduler.tick(started + timedelta(seconds=lease_s / 2)).requeued
    # A lease and a bit after the start: the lease lapsed and it is sent again.
    lapsed = started + timedelta(seconds=lease_s + 1)
    assert op_id in Scheduler(parked.settings, parked.wiring).tick(lapsed).requeued
    assert (task_names.WRITE_OPERATION, [op_id]) in parked.sent()


def test_a_lease_the_heartbeat_keeps_alive_is_never_taken_over(parked: Parked) -> None:
    op_id = _async_write(parked)
    parked.redis.delete(parked.settings.celery_queue)
    lease_s = parked.settings.running_lease_s
    started = utcnow()
    _start_running(parked, op_id, started, lease_s=lease_s)
    # Long past the lease, the worker is still on it and its heartbeat just renewed it.
    much_later = started + timedelta(seconds=3 * lease_s)
    heartbeat = LeaseHeartbeat(parked.wiring.deps.sessions, lease_s, lambda: much_later)
    with heartbeat.holding(operation_id=op_id):
        heartbeat.beat()
        report = Scheduler(parked.settings, parked.wiring).tick(much_later)
    assert op_id not in report.requeued
    assert (task_names.WRITE_OPERATION, [op_id]) not in parked.sent()


@pytest.mark.timeout(60)
def test_the_heartbeat_skips_a_row_another_transaction_holds_instead_of_waiting(
    parked: Parked,
) -> None:
    # A batch settling its members holds their row locks; a heartbeat that waited on
    # one of them while holding the others would deadlock with it.
    if not parked.settings.sqlalchemy_url.startswith("postgresql"):
        pytest.skip("row locks: PostgreSQL only (SQLite locks the whole database)")
    locked, free = _async_write(parked), _async_write(parked)
    started = utcnow()
    for op_id in (locked, free):
        _start_running(parked, op_id, started, lease_s=5)
    later = started + timedelta(seconds=60)
    heartbeat = LeaseHeartbeat(parked.wiring.deps.sessions, 5, lambda: later)
    with parked.wiring.deps.sessions() as settling:
        settling.execute(select(Operation.id).where(Operation.id == locked).with_for_update()).all()
        with heartbeat.holding(operation_id=locked), heartbeat.holding(operation_id=free):
            assert heartbeat.beat() == 1
        settling.rollback()
    assert _lease(parked, free) == later + timedelta(seconds=5)
    assert _lease(parked, locked) == started + timedelta(seconds=5)
