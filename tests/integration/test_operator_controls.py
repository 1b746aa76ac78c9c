"""Operator controls on the real store, with the recording sender for tasks and waits:
pausing an installation (writes wait, without attempts, and expire at their deadline;
resuming releases them), cancelling an operation in each state, and replaying the
failed records of dead letters."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from tests.support.core import Core, core
from writejobs.core.operations import State, public_status
from writejobs.errors import InstallationPaused, NotCancellable, ReplayRefused
from writejobs.intake import controls
from writejobs.intake.replay import replay
from writejobs.intake.write import WriteTarget, new_operation
from writejobs.settings import Settings
from writejobs.store import operations_repo
from writejobs.store.dead_letters import DeadLetterFilter, list_page
from writejobs.store.tables import Project
from writejobs.store.webhook_tables import WebhookDelivery

ASYNC = {"mode": "asynchronous"}


@pytest.fixture()
def c(settings: Settings) -> Iterator[Core]:
    with core(settings) as built:
        yield built


def msgs(c: Core, op_id: str) -> list[str]:
    return [entry.msg for entry in c.logs(op_id)]


def project(c: Core) -> Project:
    return c.target().project


def pause(c: Core) -> None:
    controls.pause(c.deps, c.tenant.installation_id, reason="maintenance", by="test")


def run_due(c: Core, seconds: float) -> list[object]:
    """Let `seconds` pass, release the waits that are due, run what they sent."""
    c.sender.release_due(c.clock.advance(seconds))
    return c.deliver()


# --- pause ---------------------------------------------------------------------


def test_a_paused_installations_async_write_is_accepted_and_waits_without_an_attempt(
    c: Core,
) -> None:
    pause(c)
    op_id = c.accept({**ASYNC, "record": {"email": "a@example.com"}}).operation.id

    assert c.deliver() == [None]

    op = c.operation(op_id)
    assert (op.state, op.attempts, op.waiting_reason) == ("queued", 0, "installation paused")
    assert c.provider.calls == 0
    [(kind, target, at)] = c.sender.waits
    assert (kind, target, at) == ("op", op_id, c.clock() + timedelta(seconds=5))
    assert msgs(c, op_id).count("waiting: installation paused") == 1


def test_a_held_write_is_looked_at_again_less_often_the_longer_it_waits_and_logs_once(
    c: Core,
) -> None:
    pause(c)
    op_id = c.accept({**ASYNC, "record": {"email": "a@example.com"}}).operation.id
    c.deliver()
    gaps = []
    for _ in range(8):
        [(_kind, _target, at)] = c.sender.waits
        gap = (at - c.clock()).total_seconds()
        gaps.append(gap)
        run_due(c, gap)

    assert gaps == [5, 5, 10, 20, 40, 60, 60, 60]
    assert c.operation(op_id).attempts == 0 and c.provider.calls == 0
    assert msgs(c, op_id).count("waiting: installation paused") == 1


def test_a_synchronous_write_to_a_paused_installation_is_refused_and_records_nothing(
    c: Core,
) -> None:
    pause(c)

    with pytest.raises(InstallationPaused) as refused:
        c.accept({"record": {"email": "s@example.com"}})

    assert refused.value.installation_id == c.tenant.installation_id
    assert refused.value.reason == "maintenance"
    with c.deps.sessions() as session:
        page = operations_repo.list_installation_operations(
            session, c.tenant.installation_id, page_size=10, page_token=None
        )
    assert page.operations == [] and c.provider.calls == 0


def test_the_pause_is_in_the_store_so_a_new_process_sees_it(c: Core, settings: Settings) -> None:
    pause(c)

    with core(settings) as other:  # a restarted process: new engine, new tenant cache
        installation = other.dispatch.directory.installation(
            c.tenant.integration_id, c.tenant.group_ref
        )
    assert installation is not None and installation.paused_at is not None
    assert installation.paused_reason == "maintenance"


def test_resume_releases_held_singles_batches_and_auto_batches_and_they_finish(c: Core) -> None:
    pause(c)
    single = c.accept({**ASYNC, "record": {"email": "a@example.com"}}).operation.id
    batch = c.accept(
        {**ASYNC, "batch": [{"record": {"email": f"b{i}@example.com"}} for i in range(2)]}
    ).operation.id
    member = c.accept(
        {**ASYNC, "record": {"email": "m@example.com"}, "autoBatchPolicy": {"maxDelayMinutes": 1}}
    ).operation.id
    batch_id = str(uuid.uuid4())
    with c.deps.sessions() as session:
        operations_repo.assign_batch(session, [member], batch_id, "time", now=c.clock())
        session.commit()
    c.sender.send_batch(batch_id)
    assert c.deliver() == [None, None, {}]
    assert {w[:2] for w in c.sender.waits} == {("op", single), ("op", batch), ("batch", batch_id)}

    resumed = controls.resume(c.deps, c.tenant.installation_id, by="test")

    assert resumed.released == 3 and resumed.installation.paused_at is None
    assert {w[:2] for w in c.sender.waits if w[2] == c.clock()} == {
        ("op", single),
        ("op", batch),
        ("batch", batch_id),
    }
    c.sender.release_due(c.clock())
    c.deliver()
    for op_id in (single, batch, member):
        op = c.operation(op_id)
        assert (op.state, op.attempts, op.waiting_reason) == ("succeeded", 1, None)
        assert "released: installation resumed" in msgs(c, op_id)
    assert c.provider.calls == 3


def test_a_write_whose_deadline_comes_while_paused_expires_saying_it_waited(c: Core) -> None:
    pause(c)
    op_id = c.accept({**ASYNC, "record": {"email": "a@example.com"}}).operation.id
    c.deliver()
    deadline = c.operation(op_id).deadline_at

    while c.sender.waits:
        [(_kind, _target, at)] = c.sender.waits
        assert at <= deadline.replace(tzinfo=at.tzinfo)
        run_due(c, (at - c.clock()).total_seconds())

    op = c.operation(op_id)
    assert (op.state, op.attempts) == ("expired", 0)
    assert "deadline exceeded while waiting: installation paused" in msgs(c, op_id)
    assert c.provider.calls == 0


# --- cancel --------------------------------------------------------------------


def test_a_queued_operation_is_cancelled_at_once_and_its_task_finds_nothing_to_do(
    c: Core,
) -> None:
    c.add_webhook_destination("https://hooks.example.com/")
    op_id = c.accept({**ASYNC, "record": {"email": "a@example.com"}}).operation.id

    outcome = controls.cancel(c.deps, c.tenant.project_id, op_id, by="test")

    assert (outcome.outcome, outcome.state) == ("cancelled", "cancelled")
    assert c.deliver() == [None] and c.provider.calls == 0
    op = c.operation(op_id)
    assert (op.state, public_status(op.state), op.results) == (
        "cancelled",
        "failure",
        [{"success": False, "error": "cancelled"}],
    )
    assert "write finished: cancelled" in msgs(c, op_id)
    with c.deps.sessions() as session:
        owed = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.operation_id == op_id)
        ).all()
    assert len(owed) == 1  # write.async.done goes out through the outbox


def test_a_retrying_operation_is_cancelled_and_its_wait_writes_nothing(c: Core) -> None:
    op_id = c.accept(
        {**ASYNC, "batch": [{"record": {"outcome": "ok"}}, {"record": {"outcome": "retry"}}]}
    ).operation.id
    c.deliver()
    assert c.operation(op_id).state == "retrying"

    controls.cancel(c.deps, c.tenant.project_id, op_id, by="test")
    run_due(c, 400)

    op = c.operation(op_id)
    assert (op.state, op.success_count, op.failure_count) == ("cancelled", 1, 1)
    assert op.results is not None and op.results[0]["success"] is True
    assert op.results[1] == {
        "success": False,
        "error": "cancelled",
        "lastError": "503 Service Unavailable",
    }
    assert c.provider.calls == 1


def test_a_running_attempt_finishes_first_then_ends_cancelled_instead_of_retrying(
    c: Core,
) -> None:
    op_id = c.accept(
        {**ASYNC, "batch": [{"record": {"outcome": "ok"}}, {"record": {"outcome": "retry"}}]}
    ).operation.id
    seen: list[Any] = []
    write_batch = c.provider.write_batch

    def cancelled_during_the_call(*args: Any, **kwargs: Any) -> Any:
        seen.append(controls.cancel(c.deps, c.tenant.project_id, op_id, by="test"))
        return write_batch(*args, **kwargs)

    c.provider.write_batch = cancelled_during_the_call  # type: ignore[method-assign]

    assert c.deliver() == [State.CANCELLED]

    assert [(o.outcome, o.state) for o in seen] == [("requested", "running")]
    op = c.operation(op_id)
    assert (op.state, op.success_count, op.failure_count) == ("cancelled", 1, 1)
    assert op.results is not None and op.results[1]["error"] == "cancelled"
    assert c.sender.waits == []
    logs = msgs(c, op_id)
    assert "cancel requested: the running attempt finishes first" in logs
    assert "cancelled: 1 record(s) left unwritten, not retried" in logs


def test_an_auto_batch_member_cancelled_while_its_batch_runs_ends_cancelled_not_retrying(
    c: Core,
) -> None:
    policy = {"autoBatchPolicy": {"maxDelayMinutes": 1}}
    cancelled, other = (
        c.accept({**ASYNC, **policy, "record": {"outcome": "retry", "n": n}}).operation.id
        for n in (1, 2)
    )
    batch_id = str(uuid.uuid4())
    with c.deps.sessions() as session:
        operations_repo.assign_batch(session, [cancelled, other], batch_id, "time", now=c.clock())
        session.commit()
    c.sender.send_batch(batch_id)
    write_batch = c.provider.write_batch

    def cancelled_during_the_call(*args: Any, **kwargs: Any) -> Any:
        controls.cancel(c.deps, c.tenant.project_id, cancelled, by="test")
        return write_batch(*args, **kwargs)

    c.provider.write_batch = cancelled_during_the_call  # type: ignore[method-assign]

    assert c.deliver() == [{"cancelled": 1, "retrying": 1}]
    assert c.operation(cancelled).state == "cancelled"
    assert c.operation(other).state == "retrying"
    [(kind, _retry_batch, _at)] = c.sender.waits
    assert kind == "batch"


def test_a_running_attempt_that_writes_everything_ends_as_it_ended_despite_a_cancel(
    c: Core,
) -> None:
    op_id = c.accept({**ASYNC, "record": {"email": "a@example.com"}}).operation.id
    write_batch = c.provider.write_batch

    def cancelled_during_the_call(*args: Any, **kwargs: Any) -> Any:
        controls.cancel(c.deps, c.tenant.project_id, op_id, by="test")
        return write_batch(*args, **kwargs)

    c.provider.write_batch = cancelled_during_the_call  # type: ignore[method-assign]

    assert c.deliver() == [State.SUCCEEDED]
    assert c.operation(op_id).cancel_requested_at is not None


def test_a_pending_auto_batched_record_cancelled_is_left_out_of_its_flush(c: Core) -> None:
    policy = {"autoBatchPolicy": {"maxDelayMinutes": 1}}
    kept, cancelled = (
        c.accept({**ASYNC, **policy, "record": {"email": f"{n}@example.com"}}).operation.id
        for n in ("kept", "cancelled")
    )
    controls.cancel(c.deps, c.tenant.project_id, cancelled, by="test")

    with c.deps.sessions() as session:
        moved = operations_repo.assign_batch(
            session, [kept, cancelled], "b-1", "time", now=c.clock()
        )
        session.commit()
    c.sender.send_batch("b-1")
    c.deliver()

    assert moved == 1
    assert c.operation(kept).state == "succeeded"
    assert c.operation(cancelled).state == "cancelled"
    assert c.provider.seen == [[{"email": "kept@example.com"}]]


def test_an_ended_or_synchronous_operation_cannot_be_cancelled(c: Core) -> None:
    sync_id = c.accept({"record": {"email": "s@example.com"}}).operation.id
    async_id = c.accept({**ASYNC, "record": {"email": "a@example.com"}}).operation.id
    c.deliver()

    for op_id, why in ((sync_id, "synchronous"), (async_id, r"already ended \(succeeded\)")):
        with pytest.raises(NotCancellable, match=why):
            controls.cancel(c.deps, c.tenant.project_id, op_id, by="test")


# --- dead letters and replay ---------------------------------------------------


def planted(
    c: Core, state: str, *, object_name: str = "contacts", shape: str = "single", **fields: Any
) -> str:
    """An operation of the tenant's installation in `state`, made directly in the store."""
    installation = c.dispatch.directory.installation(c.tenant.integration_id, c.tenant.group_ref)
    assert installation is not None
    target = c.target()
    op = new_operation(
        WriteTarget(target.project, target.integration_id_or_name, object_name),
        installation,
        c.clock(),
        write_type="create",
        mode="asynchronous",
        shape=shape,
        request={"groupRef": c.tenant.group_ref, "type": "create", "record": {"email": "p@x.io"}},
        state=state,
        deadline_at=c.clock() + timedelta(hours=1),
        results=[{"success": state == "succeeded", "error": fields.pop("error", None)}],
        **fields,
    )
    with c.deps.sessions() as session:
        operations_repo.insert_operation(session, op)
        session.commit()
    c.clock.advance(1)
    return op.id


def test_dead_letters_are_the_failures_filtered_by_object_time_and_error_newest_first(
    c: Core,
) -> None:
    start = c.clock()
    failed = planted(c, "failed", last_error="INVALID_EMAIL: email is invalid")
    planted(c, "succeeded")
    expired = planted(c, "expired", last_error="deadline exceeded; last error: 503")
    other_object = planted(c, "failed", object_name="companies", last_error="nope")
    cancelled = planted(c, "cancelled", last_error="cancelled")
    project_id = c.tenant.project_id

    def ids(flt: DeadLetterFilter, **kw: Any) -> list[str]:
        with c.deps.sessions() as session:
            return [
                op.id for op in list_page(session, project_id, flt, page_size=50, **kw).operations
            ]

    assert ids(DeadLetterFilter()) == [cancelled, other_object, expired, failed]
    assert ids(DeadLetterFilter(object_name="contacts")) == [cancelled, expired, failed]
    assert ids(DeadLetterFilter(states=("expired",))) == [expired]
    assert ids(DeadLetterFilter(error="invalid_EMAIL")) == [failed]
    assert ids(DeadLetterFilter(error="50%")) == []  # a LIKE wildcard is a plain character
    assert ids(DeadLetterFilter(since=start + timedelta(seconds=2))) == [
        cancelled,
        other_object,
        expired,
    ]
    assert ids(DeadLetterFilter(until=start + timedelta(seconds=1))) == [failed]
    assert ids(DeadLetterFilter(installation_id=str(uuid.uuid4()))) == []
    with c.deps.sessions() as session:
        first = list_page(session, project_id, DeadLetterFilter(), page_size=3)
        assert first.next_token is not None
        second = list_page(
            session, project_id, DeadLetterFilter(), page_size=3, page_token=first.next_token
        )
    assert [op.id for op in first.operations + second.operations] == [
        cancelled,
        other_object,
        expired,
        failed,
    ]
    assert second.next_token is None


def test_a_replay_writes_only_the_failed_records_as_a_new_linked_operation(c: Core) -> None:
    records = [
        {"email": "ok@x.io"},
        {"email": "late@x.io", "outcome": "retry"},
        {"email": "ok2@x.io"},
    ]
    original = c.accept(
        {**ASYNC, "batch": [{"record": r} for r in records], "retryPolicy": {"deadlineHours": 1}}
    ).operation.id
    c.deliver()
    while c.sender.waits:
        [(_kind, _target, at)] = c.sender.waits
        run_due(c, (at - c.clock()).total_seconds())
    assert c.operation(original).state == "expired"
    c.provider.healed = True
    calls = c.provider.calls

    [done] = replay(project(c), [c.operation(original)], c.deps, c.dispatch, by="test", strict=True)
    c.deliver()

    assert (done.operation_id, done.records, done.already) == (original, [1], False)
    assert done.replay_id is not None
    new = c.operation(done.replay_id)
    assert (new.state, new.record_count, new.replay_of, new.shape) == (
        "succeeded",
        1,
        original,
        "batch",
    )
    assert c.provider.calls == calls + 1
    assert c.provider.seen[-1] == [records[1]]
    assert f"replayed as operation {new.id}" in msgs(c, original)
    assert f"replay of operation {original}" in msgs(c, new.id)

    [again] = replay(
        project(c), [c.operation(original)], c.deps, c.dispatch, by="test", strict=True
    )
    assert (again.replay_id, again.already) == (new.id, True)
    assert c.sender.sent == []


def test_a_replay_of_one_that_cannot_be_replayed_refuses_the_request_or_skips_it(c: Core) -> None:
    running = planted(c, "running")
    bulk = planted(c, "failed", shape="bulk")
    failed = planted(c, "failed")
    ops = [c.operation(i) for i in (failed, bulk, running)]

    with pytest.raises(ReplayRefused, match="bulk upsert, which cannot be replayed"):
        replay(project(c), ops, c.deps, c.dispatch, by="test", strict=True)
    with c.deps.sessions() as session:
        assert operations_repo.replay_of(session, failed) is None

    results = replay(project(c), ops, c.deps, c.dispatch, by="test", strict=False)

    assert [r.replay_id is not None for r in results] == [True, False, False]
    assert "bulk upsert" in (results[1].skipped or "")
    assert "still in progress" in (results[2].skipped or "")
