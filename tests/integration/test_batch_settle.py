"""An auto-batch settles its members set-based: each member gets its own outcome, log
lines and move, written in a handful of statements however many members there are,
and a member another delivery moved meanwhile keeps what that delivery gave it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, select

from tests.support.core import Core, core
from writejobs.clock import as_utc
from writejobs.core.operations import State
from writejobs.execution.batch import run_batch
from writejobs.execution.settle import expire
from writejobs.providers.base import BatchOutcome
from writejobs.settings import Settings
from writejobs.store import operations_repo
from writejobs.store.webhook_tables import WebhookDelivery

POLICY = {"mode": "asynchronous", "autoBatchPolicy": {"maxDelayMinutes": 1}}


@pytest.fixture()
def c(settings: Settings) -> Iterator[Core]:
    with core(settings) as built:
        yield built


def flushed_batch(c: Core, outcomes: list[str]) -> tuple[str, list[str]]:
    """Accept one auto-batched record per outcome and flush them as one batch."""
    ids = [
        c.accept({**POLICY, "record": {"email": f"m{i}@example.com", "outcome": o}}).operation.id
        for i, o in enumerate(outcomes)
    ]
    batch_id = f"batch-{uuid.uuid4().hex[:8]}"
    with c.deps.sessions() as session:
        operations_repo.assign_batch(session, ids, batch_id, "size", now=c.clock())
        session.commit()
    return batch_id, ids


def statements_during(engine: Engine) -> list[str]:
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement.split(None, 1)[0].upper())

    event.listen(engine, "before_cursor_execute", count)
    return seen


def test_a_hundred_members_settle_each_on_its_own_in_a_handful_of_statements(c: Core) -> None:
    # given a flushed batch of 100: 90 the provider writes, 6 it refuses, 4 it cannot take now
    outcomes = ["ok"] * 90 + ["reject"] * 6 + ["retry"] * 4
    batch_id, ids = flushed_batch(c, outcomes)
    engine = c.deps.sessions.kw["bind"]
    seen = statements_during(engine)

    # when one delivery runs it
    counts = run_batch(batch_id, c.deps)

    # then every member has its own outcome, in one provider call...
    assert c.provider.calls == 1
    assert counts == {"succeeded": 90, "failed": 6, "retrying": 4}
    states = [c.operation(i).state for i in ids]
    assert states == ["succeeded"] * 90 + ["failed"] * 6 + ["retrying"] * 4
    assert len({c.operation(i).results[0]["recordId"] for i in ids[:90]}) == 90
    # ...and its own story...
    for op_id, outcome in zip(ids, outcomes, strict=True):
        messages = [entry.msg for entry in c.logs(op_id)]
        assert "attempt 1 finished" in messages
        if outcome == "retry":
            assert any(m.startswith("retrying 1 record(s) at ") for m in messages)
        else:
            assert messages[-1].startswith("write finished: ")
    # ...written in a few statements, not three per member (~300 before)
    writes = [s for s in seen if s in ("INSERT", "UPDATE", "DELETE")]
    assert len(writes) <= 12, writes


def test_a_member_another_delivery_ended_meanwhile_keeps_its_end(c: Core) -> None:
    # given a batch of 3 whose provider call takes long enough for the watchdog to end one
    batch_id, ids = flushed_batch(c, ["ok", "ok", "ok"])
    real_write = c.provider.write_batch

    def slow_write(*args: Any, **kwargs: Any) -> BatchOutcome:
        with c.deps.sessions() as session:
            op = operations_repo.get_operation(session, ids[1])
            assert op is not None and op.state == State.RUNNING.value
            assert expire(session, op, "expired by the watchdog (test)", now=c.clock())
            session.commit()
        return real_write(*args, **kwargs)

    c.provider.write_batch = slow_write  # type: ignore[method-assign]

    # when the delivery settles
    run_batch(batch_id, c.deps)

    # then the other two succeed and the ended one is not moved again
    assert [c.operation(i).state for i in ids] == ["succeeded", "expired", "succeeded"]


def test_members_that_failed_retryably_are_written_by_their_retry_batch_once_it_is_due(
    c: Core,
) -> None:
    # given a batch of three whose provider cannot take one record now
    batch_id, ids = flushed_batch(c, ["ok", "retry", "ok"])
    assert run_batch(batch_id, c.deps) == {"succeeded": 2, "retrying": 1}
    [(kind, retry_batch_id, at)] = c.sender.waits
    assert kind == "batch" and retry_batch_id != batch_id

    # when the provider heals, and the retry batch's task runs before its time, then at it
    c.provider.healed = True
    assert run_batch(retry_batch_id, c.deps) == {}
    c.clock.now = as_utc(at)
    c.sender.release_due(c.clock())
    results = c.deliver()

    # then the waiting member is written by a second attempt, the others once
    assert results == [{"succeeded": 1}]
    assert [op.state for op in map(c.operation, ids)] == ["succeeded"] * 3
    assert [c.operation(i).attempts for i in ids] == [1, 2, 1]
    assert [len(records) for records in c.provider.seen] == [3, 1]
    messages = [entry.msg for entry in c.logs(ids[1])]
    assert messages.count("attempt started") == 2 and messages[-1] == "write finished: succeeded"


def test_each_member_is_written_its_own_values_and_owes_one_notification_per_end(
    c: Core,
) -> None:
    # given a project with a webhook destination, and a batch of four: two the provider
    # writes, one it refuses, one it cannot take now; the watchdog ends one of the
    # written ones while the call runs
    destination_id = c.add_webhook_destination("https://example.com/hook")
    batch_id, ids = flushed_batch(c, ["ok", "ok", "reject", "retry"])
    real_write = c.provider.write_batch

    def slow_write(*args: Any, **kwargs: Any) -> BatchOutcome:
        with c.deps.sessions() as session:
            op = operations_repo.get_operation(session, ids[1])
            assert op is not None
            assert expire(session, op, "expired by the watchdog (test)", now=c.clock())
            session.commit()
        return real_write(*args, **kwargs)

    c.provider.write_batch = slow_write  # type: ignore[method-assign]

    # when the delivery settles them
    assert run_batch(batch_id, c.deps) == {"succeeded": 2, "failed": 1, "retrying": 1}

    # then each moved member holds its own outcome, the expired one what the watchdog gave it
    ok, ended, rejected, waiting = map(c.operation, ids)
    assert (ok.state, ok.success_count, ok.failure_count) == ("succeeded", 1, 0)
    assert ok.results is not None and ok.results[0]["success"] is True
    assert ok.result_summary == f"[contacts] Write succeeded (recordId {ok.results[0]['recordId']})"
    assert not ok.errors and ok.next_attempt_at is None and ok.updated_at is not None
    assert ended.state == "expired" and ended.result_summary is not None
    assert "deadline exceeded" in ended.result_summary
    assert (rejected.state, rejected.success_count, rejected.failure_count) == ("failed", 0, 1)
    assert rejected.errors and rejected.errors[-1].startswith("record 0: ")
    assert rejected.results is not None and rejected.results[0]["success"] is False
    assert waiting.state == "retrying" and waiting.next_attempt_at is not None
    assert as_utc(waiting.next_attempt_at) > c.clock() and waiting.backoff_failures == 1
    assert waiting.result_summary is not None and waiting.result_summary.startswith(
        "[contacts] Retrying"
    )
    # ...and each operation that ended is owed one notification, the retrying one none
    with c.deps.sessions() as session:
        owed = session.scalars(
            select(WebhookDelivery.operation_id).where(
                WebhookDelivery.destination_id == destination_id
            )
        ).all()
    assert sorted(owed) == sorted([ok.id, ended.id, rejected.id])


def test_a_call_that_failed_no_record_retryably_reads_no_cancels(c: Core) -> None:
    # given a batch whose members the provider writes or refuses, none it cannot take now
    batch_id, ids = flushed_batch(c, ["ok", "reject", "ok"])
    engine = c.deps.sessions.kw["bind"]
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", note)

    # when the delivery settles them
    assert run_batch(batch_id, c.deps) == {"succeeded": 2, "failed": 1}

    # then no member is asked about a cancel: each ended, which a cancel would not change
    assert not [s for s in seen if "cancel_requested_at IS NOT NULL" in s], seen
    assert [c.operation(i).state for i in ids] == ["succeeded", "failed", "succeeded"]
