"""Webhook notifications against the real store and a real receiver on loopback.

The writes run through the real API and `run_operation` against the sandbox;
deliveries are made by the task's function (`deliver`) with a clock the test
moves, so retries, the failure run and the retry window are driven, not waited for.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from tests.support.contract import assert_notification_schema
from tests.support.parked import Parked
from tests.support.receiver import Receiver
from writejobs.clock import as_utc, utcnow
from writejobs.execution.run import run_operation
from writejobs.execution.webhooks import WebhookDeps, deliver, dispatch_due
from writejobs.store import tenants_repo, webhook_destinations, webhook_outbox
from writejobs.store.secrets import cipher_for
from writejobs.store.webhook_tables import WebhookDelivery, WebhookDestination


@dataclass
class Clock:
    """Real time plus an offset the test moves forward."""

    offset_s: float = 0.0

    def __call__(self) -> datetime:
        return utcnow() + timedelta(seconds=self.offset_s)


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def _deps(p: Parked, clock: Clock, **overrides: Any) -> WebhookDeps:
    settings = p.settings.model_copy(update=overrides)
    return WebhookDeps(
        settings=settings,
        sessions=p.wiring.deps.sessions,
        client=httpx.Client(timeout=5, trust_env=False),
        cipher=cipher_for(settings),
        clock=clock,
    )


def _destination(p: Parked, url: str, integration_id: str | None = None) -> tuple[str, str]:
    with p.wiring.deps.sessions() as session:
        destination, secret = webhook_destinations.add(
            session,
            p.tenant.project_id,
            url,
            cipher=cipher_for(p.settings),
            now=utcnow(),
            integration_id=integration_id,
        )
        session.commit()
        return destination.id, secret


def _write(p: Parked, body: dict[str, Any]) -> str:
    with p.tenant.client() as client:
        response = client.post(p.tenant.write_path(), json={"groupRef": p.tenant.group_ref, **body})
    assert response.status_code == 200, response.text
    return str(response.json()["operationId"])


def _async(p: Parked, name: str) -> str:
    """An asynchronous create of a new contact (`name` made unique), run to its end."""
    email = name.replace("@", f"-{uuid.uuid4().hex[:8]}@")
    op_id = _write(p, {"type": "create", "mode": "asynchronous", "record": {"email": email}})
    run_operation(op_id, p.wiring.deps)
    return op_id


def _deliveries(p: Parked, destination_id: str) -> list[WebhookDelivery]:
    with p.wiring.deps.sessions() as session:
        statement = (
            select(WebhookDelivery)
            .where(WebhookDelivery.destination_id == destination_id)
            .order_by(WebhookDelivery.id)
        )
        return list(session.scalars(statement))


def _deliver_all(p: Parked, destination_id: str, deps: WebhookDeps) -> dict[str, int]:
    ids = [d.id for d in _deliveries(p, destination_id) if d.state == "pending"]
    return deliver(ids, deps)


def _verified(received: Any, secret: str) -> dict[str, Any]:
    payload: dict[str, Any] = Webhook(secret).verify(received.body, received.headers)
    return payload


def test_an_async_write_that_ends_notifies_its_destination_once_signed_and_in_the_contract(
    parked: Parked, receiver: Receiver
) -> None:
    # Given a destination for the project, and one filtered to another integration
    dest_id, secret = _destination(parked, receiver.url)
    with parked.wiring.deps.sessions() as session:
        other = tenants_repo.create_integration(
            session, parked.tenant.project_id, "other", "hubspot", now=utcnow()
        )
        session.commit()
    other_id, _ = _destination(parked, receiver.url, integration_id=other.id)
    # When an asynchronous write ends
    op_id = _async(parked, "hook-one@example.com")
    # Then exactly one delivery is owed, to the matching destination only
    assert [d.operation_id for d in _deliveries(parked, dest_id)] == [op_id]
    assert _deliveries(parked, other_id) == []
    assert _deliver_all(parked, dest_id, _deps(parked, Clock())) == {"delivered": 1}
    [got] = receiver.received
    # signed the Standard Webhooks way, verified by its own verifier
    payload = _verified(got, secret)
    assert got.headers["webhook-id"] == f"msg_{op_id}"
    assert got.headers["Content-Type"] == "application/json"
    # valid against the contract's payload, with our operation id, status and records
    assert_notification_schema(payload, "WriteAsyncDoneNotificationPayload")
    data = payload["data"]
    assert payload["notificationType"] == "write.async.done"
    assert data["operationId"] == op_id and data["status"] == "success"
    assert data["success"] is True and data["objectName"] == "contacts"
    assert data["projectId"] == parked.tenant.project_id
    assert data["installationId"] == parked.tenant.installation_id
    assert data["groupRef"] == parked.tenant.group_ref
    [record] = data["records"]
    assert record["index"] == 0 and record["success"] is True
    assert data["successfulRecordIds"] == [record["recordId"]]
    # and the attempt is recorded with its status, latency and the receiver's answer
    [delivery] = _deliveries(parked, dest_id)
    assert delivery.state == "delivered" and delivery.attempts == 1
    with parked.wiring.deps.sessions() as session:
        [attempt] = webhook_outbox.attempts_of(session, delivery.id)
    assert attempt.status_code == 200 and attempt.response_excerpt == "ok"
    assert attempt.latency_ms >= 0
    # and a second delivery of the same task sends nothing more
    assert deliver([delivery.id], _deps(parked, Clock())) == {}
    assert len(receiver.received) == 1


def test_a_partial_batch_says_success_false_with_both_lists_filled(
    parked: Parked, receiver: Receiver
) -> None:
    dest_id, secret = _destination(parked, receiver.url)
    op_id = _write(
        parked,
        {
            "type": "create",
            "mode": "asynchronous",
            "batch": [
                {"record": {"email": f"ok-{uuid.uuid4().hex[:8]}@example.com"}},
                {"record": {"email": "nope"}},
            ],
        },
    )
    run_operation(op_id, parked.wiring.deps)
    assert _deliver_all(parked, dest_id, _deps(parked, Clock())) == {"delivered": 1}
    data = _verified(receiver.received[0], secret)["data"]
    assert_notification_schema(
        {"notificationType": "write.async.done", "data": data}, "WriteAsyncDoneNotificationPayload"
    )
    assert data["state"] == "partially_succeeded" and data["success"] is False
    assert len(data["successfulRecordIds"]) == 1 and data["errors"]
    assert [r["success"] for r in data["records"]] == [True, False]
    assert "error" in data["records"][1] and "recordId" in data["records"][0]


def test_a_synchronous_write_notifies_nobody(parked: Parked, receiver: Receiver) -> None:
    dest_id, _ = _destination(parked, receiver.url)
    _write(parked, {"type": "create", "record": {"email": f"s-{uuid.uuid4().hex}@example.com"}})
    assert _deliveries(parked, dest_id) == []


def test_a_receiver_down_for_a_while_gets_every_notification_once_it_is_back(
    parked: Parked, receiver: Receiver
) -> None:
    # Given a destination whose receiver is down
    dest_id, secret = _destination(parked, receiver.url)
    receiver.stop()
    ops = [_async(parked, f"down-{i}@example.com") for i in range(3)]
    clock = Clock()
    deps = _deps(parked, clock, webhook_retry_base_s=1.0, webhook_retry_max_delay_s=4.0)
    # When every attempt meets a closed port for a while
    for _ in range(4):
        assert _deliver_all(parked, dest_id, deps) == {"retrying": 3}
        clock.offset_s += 5  # past the longest wait
    # and the receiver comes back
    receiver.start()
    assert _deliver_all(parked, dest_id, deps) == {"delivered": 3}
    # Then each operation was delivered exactly once, nothing lost
    got = sorted(_verified(r, secret)["data"]["operationId"] for r in receiver.received)
    assert got == sorted(ops)
    # and each delivery's attempts are recorded in order: four failures, then the 2xx
    with parked.wiring.deps.sessions() as session:
        for delivery in _deliveries(parked, dest_id):
            attempts = webhook_outbox.attempts_of(session, delivery.id)
            assert [a.status_code for a in attempts] == [None, None, None, None, 200]
            times = [as_utc(a.at) for a in attempts]
            assert times == sorted(times)
            assert "Connect" in attempts[0].response_excerpt
    # and the destination's failure run is over
    with parked.wiring.deps.sessions() as session:
        destination = session.get(WebhookDestination, dest_id)
        assert destination is not None
        assert destination.consecutive_failures == 0 and destination.first_failure_at is None


def test_a_delivery_is_retried_until_its_window_ends_then_failed(
    parked: Parked, receiver: Receiver
) -> None:
    dest_id, _ = _destination(parked, receiver.url)
    receiver.status = 503
    _async(parked, "window@example.com")
    clock = Clock()
    deps = _deps(parked, clock, webhook_retry_window_s=60.0, webhook_retry_base_s=10.0)
    outcomes = []
    for _ in range(10):
        outcomes.append(_deliver_all(parked, dest_id, deps))
        clock.offset_s += 30
    # Then it was tried at the window's end (t=60) and then given up
    [delivery] = _deliveries(parked, dest_id)
    assert delivery.state == "failed" and delivery.last_status == 503
    assert {"failed": 1} in outcomes and delivery.attempts == 3


@pytest.mark.parametrize(
    "overrides, steps_s",
    [
        ({"webhook_disable_after_failures": 3}, 1.0),
        ({"webhook_disable_after_s": 3600.0, "webhook_retry_window_s": 7200.0}, 1000.0),
    ],
    ids=["after-n-failures", "after-a-failing-run"],
)
def test_a_destination_failing_past_the_threshold_is_disabled_and_owed_nothing_more(
    parked: Parked, receiver: Receiver, overrides: dict[str, Any], steps_s: float
) -> None:
    dest_id, _ = _destination(parked, receiver.url)
    receiver.status = 500
    _async(parked, "disable-1@example.com")
    _async(parked, "disable-2@example.com")
    clock = Clock()
    deps = _deps(
        parked, clock, webhook_retry_base_s=0.5, webhook_retry_max_delay_s=0.9, **overrides
    )
    for _ in range(10):
        _deliver_all(parked, dest_id, deps)
        clock.offset_s += steps_s
    with parked.wiring.deps.sessions() as session:
        destination = session.get(WebhookDestination, dest_id)
        assert destination is not None
        assert destination.enabled is False
        assert destination.disabled_reason and "failed attempts in a row" in (
            destination.disabled_reason
        )
    assert {d.state for d in _deliveries(parked, dest_id)} == {"abandoned"}
    # and a write that ends now owes it nothing
    _async(parked, "disable-3@example.com")
    assert len(_deliveries(parked, dest_id)) == 2
    # until it is enabled again
    with parked.wiring.deps.sessions() as session:
        webhook_destinations.enable(session, dest_id)
        session.commit()
    _async(parked, "disable-4@example.com")
    assert len(_deliveries(parked, dest_id)) == 3


def test_replay_sends_again_with_the_same_event_id_and_body(
    parked: Parked, receiver: Receiver
) -> None:
    dest_id, secret = _destination(parked, receiver.url)
    first = _async(parked, "replay-1@example.com")
    second = _async(parked, "replay-2@example.com")
    deps = _deps(parked, Clock())
    assert _deliver_all(parked, dest_id, deps) == {"delivered": 2}
    with parked.wiring.deps.sessions() as session:
        n = webhook_outbox.replay(
            session,
            parked.tenant.project_id,
            since=utcnow() - timedelta(hours=1),
            now=utcnow(),
            operation_id=second,
        )
        session.commit()
    assert n == 1
    assert _deliver_all(parked, dest_id, deps) == {"delivered": 1}
    original, replayed = receiver.received[1], receiver.received[2]
    assert replayed.headers["webhook-id"] == original.headers["webhook-id"] == f"msg_{second}"
    assert replayed.body == original.body
    assert _verified(replayed, secret)["data"]["operationId"] == second
    assert first not in replayed.body.decode()


def test_the_sweep_claims_each_due_delivery_once_until_its_hold_lapses(
    parked: Parked, receiver: Receiver
) -> None:
    dest_id, _ = _destination(parked, receiver.url)
    _async(parked, "sweep@example.com")
    [delivery] = _deliveries(parked, dest_id)
    sent: list[list[int]] = []
    now = utcnow()
    dispatch_due(parked.wiring.deps.sessions, sent.append, now=now, hold_s=30)
    assert any(delivery.id in chunk for chunk in sent)
    # a second sweep (another scheduler) finds it claimed
    again: list[list[int]] = []
    dispatch_due(parked.wiring.deps.sessions, again.append, now=now, hold_s=30)
    assert all(delivery.id not in chunk for chunk in again)
    # its task was lost: once the hold lapses it is sent again
    later: list[list[int]] = []
    dispatch_due(
        parked.wiring.deps.sessions, later.append, now=now + timedelta(seconds=31), hold_s=30
    )
    assert any(delivery.id in chunk for chunk in later)


def test_a_destination_on_a_private_address_is_never_posted_to(
    parked: Parked, receiver: Receiver
) -> None:
    # A destination row made before the rule (or edited in SQL) still meets the guard
    dest_id, _ = _destination(parked, f"http://127.0.0.1:{receiver.port}/hooks")
    _async(parked, "private@example.com")
    assert _deliver_all(parked, dest_id, _deps(parked, Clock())) == {"retrying": 1}
    assert receiver.received == []
    [delivery] = _deliveries(parked, dest_id)
    with parked.wiring.deps.sessions() as session:
        [attempt] = webhook_outbox.attempts_of(session, delivery.id)
    assert attempt.status_code is None and attempt.response_excerpt.startswith("refused")


def test_an_end_that_rolls_back_owes_nothing_and_one_that_commits_owes_one(
    parked: Parked, receiver: Receiver
) -> None:
    from writejobs.core.operations import State
    from writejobs.store import operations_repo

    dest_id, _ = _destination(parked, receiver.url)
    op_id = _write(
        parked,
        {"type": "create", "mode": "asynchronous", "record": {"email": "rb@example.com"}},
    )
    with parked.wiring.deps.sessions() as session:
        now = utcnow()
        assert operations_repo.transition(session, op_id, State.FAILED, now=now)
        session.rollback()  # the process died before its commit
    assert _deliveries(parked, dest_id) == []
    with parked.wiring.deps.sessions() as session:
        assert operations_repo.transition(session, op_id, State.FAILED, now=now)
        session.commit()
    [delivery] = _deliveries(parked, dest_id)
    assert delivery.operation_id == op_id and as_utc(delivery.created_at) == now


def test_deliveries_are_counted_by_outcome_with_their_lag_and_disabled_destinations_gauged(
    parked: Parked, receiver: Receiver
) -> None:
    from dataclasses import replace

    from tests.integration.test_metrics import scrape, value

    dest_id, _ = _destination(parked, receiver.url)
    _async(parked, "metrics@example.com")
    before = scrape(parked.tenant.api_url)
    deps = replace(_deps(parked, Clock()), recorder=parked.wiring.metrics)
    receiver.status = 500
    assert _deliver_all(parked, dest_id, deps) == {"retrying": 1}
    receiver.status = 200
    deps = replace(deps, clock=Clock(offset_s=10))
    assert _deliver_all(parked, dest_id, deps) == {"delivered": 1}
    with parked.wiring.deps.sessions() as session:
        webhook_destinations.disable(session, dest_id, "test", now=utcnow())
        session.commit()
    parked.wiring.metrics.flush()
    after = scrape(parked.tenant.api_url)
    name = "writejobs_webhook_deliveries_total"
    for outcome in ("retrying", "delivered"):
        assert value(after, name, outcome=outcome) - value(before, name, outcome=outcome) == 1
    lag = "writejobs_webhook_delivery_lag_seconds_count"
    assert value(after, lag) - value(before, lag) == 1
    disabled = "writejobs_webhook_destinations_disabled"
    assert value(after, disabled) - value(before, disabled) == 1
