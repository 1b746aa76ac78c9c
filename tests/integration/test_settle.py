"""Settling attempts, table by table, on the real store with a fixed clock and a seeded
random.Random: tasks go to a recording sender and are delivered by the test, no Celery."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from tests.support.core import SEED, Core, core
from writejobs import task_names
from writejobs.clock import as_utc
from writejobs.core.operations import State
from writejobs.core.retry import next_attempt_at
from writejobs.settings import Settings


@pytest.fixture()
def c(settings: Settings) -> Iterator[Core]:
    with core(settings) as built:
        yield built


def batch(*outcomes: str, all_or_none: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "mode": "asynchronous",
        "batch": [
            {"record": {"email": f"r{i}@example.com", "outcome": o}} for i, o in enumerate(outcomes)
        ],
    }
    if all_or_none:
        body["batchPolicy"] = {"allOrNone": True}
    return body


@pytest.mark.parametrize(
    ("outcomes", "state", "counts"),
    [
        (("ok",), State.SUCCEEDED, (1, 0)),
        (("ok", "ok", "ok"), State.SUCCEEDED, (3, 0)),
        (("ok", "reject", "ok"), State.PARTIALLY_SUCCEEDED, (2, 1)),
        (("reject", "reject"), State.FAILED, (0, 2)),
    ],
    ids=["single-ok", "all-ok", "some-refused", "all-refused"],
)
def test_an_attempt_with_no_retryable_failure_ends_in_the_state_its_counts_give(
    c: Core, outcomes: tuple[str, ...], state: State, counts: tuple[int, int]
) -> None:
    op_id = c.accept(batch(*outcomes)).operation.id
    assert c.sender.sent == [(task_names.WRITE_OPERATION, op_id)]

    assert c.deliver() == [state]

    op = c.operation(op_id)
    assert (op.state, op.success_count, op.failure_count) == (state.value, *counts)
    assert op.next_attempt_at is None and c.sender.waits == []
    refused = [i for i, o in enumerate(outcomes) if o == "reject"]
    assert [e for e in op.errors or [] if e.startswith("record ")] == [
        f"record {i}: INVALID_EMAIL: email is invalid" for i in refused
    ]


def test_a_retryable_failure_with_time_left_waits_until_the_computed_time(c: Core) -> None:
    op_id = c.accept(batch("ok", "retry")).operation.id
    accepted_at = c.clock()

    assert c.deliver() == [State.RETRYING]

    op = c.operation(op_id)
    expected = next_attempt_at(
        1, accepted_at, accepted_at + timedelta(hours=1), None, random.Random(SEED)
    )
    assert expected is not None
    assert as_utc(op.deadline_at) == accepted_at + timedelta(hours=1)
    assert op.next_attempt_at is not None and as_utc(op.next_attempt_at) == expected
    assert (op.state, op.backoff_failures) == (State.RETRYING.value, 1)
    assert c.sender.waits == [("op", op_id, expected)]
    # the next attempt comes only once the wait is over, and tries only the failed record
    c.provider.healed = True
    c.sender.release_due(c.clock())
    assert c.sender.sent == []
    c.clock.now = expected
    c.sender.release_due(c.clock())
    assert c.deliver() == [State.SUCCEEDED]
    assert [len(records) for records in c.provider.seen] == [2, 1]
    assert (c.operation(op_id).success_count, c.operation(op_id).failure_count) == (2, 0)


def test_a_retryable_failure_past_the_deadline_expires_with_the_last_error(c: Core) -> None:
    op_id = c.accept(batch("ok", "retry")).operation.id
    c.clock.advance(3600)  # the deadline itself: no attempt fits any more

    assert c.deliver() == [State.EXPIRED]

    op = c.operation(op_id)
    message = "deadline exceeded; last error: 503 Service Unavailable"
    assert (op.state, op.success_count, op.failure_count) == (State.EXPIRED.value, 1, 1)
    assert op.result_summary == f"[contacts] {message}"
    assert op.errors is not None and op.errors[0] == message
    assert c.sender.waits == []


def test_all_or_none_retries_every_record_of_the_batch(c: Core) -> None:
    op_id = c.accept(batch("ok", "retry", "ok", all_or_none=True)).operation.id

    assert c.deliver() == [State.RETRYING]
    assert c.operation(op_id).success_count == 0

    c.provider.healed = True
    c.clock.now = c.sender.waits[0][2]
    c.sender.release_due(c.clock())
    assert c.deliver() == [State.SUCCEEDED]
    assert [len(records) for records in c.provider.seen] == [3, 3]
    assert c.operation(op_id).success_count == 3


def test_a_synchronous_write_is_tried_once_and_never_waits(c: Core) -> None:
    accepted = c.accept({"record": {"email": "s@example.com", "outcome": "retry"}})

    op = c.operation(accepted.operation.id)
    assert (op.state, op.attempts) == (State.FAILED.value, 1)
    assert c.sender.sent == [] and c.sender.waits == []
    assert op.deadline_at is not None  # every operation has one
