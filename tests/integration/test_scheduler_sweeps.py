"""The scheduler's sweeps, driven by an injected clock: the watchdog and stalled work."""

from __future__ import annotations

from datetime import timedelta

from scheduler.scheduler import Scheduler
from tests.support.parked import Parked
from writejobs import task_names
from writejobs.clock import as_utc, utcnow


def _async_write(p: Parked) -> str:
    with p.tenant.client() as client:
        response = client.post(
            p.tenant.write_path(),
            json={
                "groupRef": p.tenant.group_ref,
                "type": "create",
                "mode": "asynchronous",
                "record": {"email": "w@example.com"},
            },
        )
    assert response.status_code == 200
    return str(response.json()["operationId"])


def test_a_queued_operation_whose_task_was_lost_is_sent_again(parked: Parked) -> None:
    op_id = _async_write(parked)
    parked.redis.delete(parked.settings.celery_queue)  # the broker lost the task
    scheduler = Scheduler(parked.settings, parked.wiring)
    assert op_id not in scheduler.tick(utcnow()).requeued  # not stalled yet
    later = utcnow() + timedelta(seconds=parked.settings.stalled_after_s + 1)
    # (other tests' leftovers in the shared store may be sent too: that is the point)
    assert op_id in scheduler.tick(later).requeued
    assert (task_names.WRITE_OPERATION, [op_id]) in parked.sent()


def test_the_watchdog_expires_what_outlived_its_deadline_and_says_why(parked: Parked) -> None:
    op_id = _async_write(parked)
    [op] = parked.ops([op_id])
    assert op.deadline_at is not None
    scheduler = Scheduler(parked.settings, parked.wiring)
    just_after = as_utc(op.deadline_at) + timedelta(seconds=1)
    assert op_id not in scheduler.tick(just_after).expired  # within the grace period
    past_grace = just_after + timedelta(seconds=parked.settings.watchdog_grace_s + 1)
    assert op_id in Scheduler(parked.settings, parked.wiring).tick(past_grace).expired
    with parked.tenant.client() as client:
        view = client.get(parked.tenant.operation_path(op_id)).json()
        logs = client.get(parked.tenant.operation_path(op_id) + "/logs").json()
    assert view["status"] == "failure" and view["state"] == "expired"
    assert "deadline exceeded" in view["result"]
    assert any(e["message"]["msg"].startswith("watchdog: still queued") for e in logs)
