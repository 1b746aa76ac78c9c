"""The state machine's compare-and-set on the real store: every (from, to) pair of states
is allowed exactly when `ALLOWED_FROM` says so, and the two guarded moves into `running`
hold their guard, for one operation (`transition`) and for a batch (`take_batch`)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from tests.support.core import Core, core
from writejobs.core.operations import ALLOWED_FROM, TERMINAL, State
from writejobs.intake.write import new_operation
from writejobs.settings import Settings
from writejobs.store import operations_repo
from writejobs.store.db import pinned_session, statements_alone
from writejobs.store.tables import Operation

PAIRS = list(itertools.product(State, State))
LEASE_S = 30.0


@pytest.fixture()
def c(settings: Settings) -> Iterator[Core]:
    with core(settings) as built:
        yield built


def an_operation(c: Core, state: State, *, batch_id: str | None = None, **fields: object) -> str:
    """An operation in `state`; a `retrying` one is due and a `running` one's lease lapsed,
    so that only the state decides, unless `fields` say otherwise."""
    now = c.clock()
    installation = c.dispatch.directory.installation(c.tenant.integration_id, c.tenant.group_ref)
    assert installation is not None
    values: dict[str, object] = {
        "next_attempt_at": now - timedelta(seconds=1) if state is State.RETRYING else None,
        "lease_expires_at": now - timedelta(seconds=1) if state is State.RUNNING else None,
        **fields,
    }
    op = new_operation(
        c.target(),
        installation,
        now - timedelta(minutes=1),
        write_type="create",
        mode="asynchronous",
        shape="single",
        request={},
        state=state.value,
        deadline_at=now + timedelta(hours=1),
        batch_id=batch_id,
        **values,
    )
    with c.deps.sessions() as session:
        operations_repo.insert_operation(session, op)
        session.commit()
    return op.id


def move(c: Core, op_id: str, to: State, now: datetime) -> bool:
    with c.deps.sessions() as session:
        lease = LEASE_S if to is State.RUNNING else None
        moved = operations_repo.transition(session, op_id, to, now=now, lease_s=lease)
        session.commit()
    return moved


@pytest.mark.parametrize(("source", "to"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_a_move_happens_exactly_when_allowed_from_names_its_source(
    c: Core, source: State, to: State
) -> None:
    op_id = an_operation(c, source)

    moved = move(c, op_id, to, c.clock())

    assert moved is (source in ALLOWED_FROM[to])
    assert c.operation(op_id).state == (to if moved else source).value


def test_no_move_leaves_a_terminal_state() -> None:
    for to, sources in ALLOWED_FROM.items():
        assert not sources & TERMINAL, f"{to} may be entered from a terminal state"


def test_a_retrying_operation_enters_running_only_once_its_wait_is_over(c: Core) -> None:
    now = c.clock()
    op_id = an_operation(c, State.RETRYING, next_attempt_at=now + timedelta(seconds=5))

    assert not move(c, op_id, State.RUNNING, now)
    assert move(c, op_id, State.RUNNING, now + timedelta(seconds=5))


def test_a_running_operation_is_taken_over_only_once_its_lease_lapsed(c: Core) -> None:
    now = c.clock()
    op_id = an_operation(c, State.RUNNING, lease_expires_at=now + timedelta(seconds=5))

    assert not move(c, op_id, State.RUNNING, now)
    assert move(c, op_id, State.RUNNING, now + timedelta(seconds=6))
    lease = c.operation(op_id).lease_expires_at
    assert lease is not None
    assert lease.replace(tzinfo=None) == (now + timedelta(seconds=6 + LEASE_S)).replace(tzinfo=None)


def test_a_batch_takes_exactly_the_members_the_same_moves_allow(c: Core) -> None:
    now = c.clock()
    batch_id = str(uuid.uuid4())
    by_state = {state: an_operation(c, state, batch_id=batch_id) for state in State}
    waiting = an_operation(
        c, State.RETRYING, batch_id=batch_id, next_attempt_at=now + timedelta(seconds=5)
    )
    held = an_operation(
        c, State.RUNNING, batch_id=batch_id, lease_expires_at=now + timedelta(seconds=5)
    )

    with c.deps.sessions() as session:
        taken = operations_repo.take_batch(session, batch_id, now=now, lease_s=LEASE_S)
        session.commit()

    expected = {by_state[s] for s in ALLOWED_FROM[State.RUNNING]}
    assert {op.id for op in taken} == expected
    assert waiting not in expected and held not in expected
    for op in taken:
        assert (op.state, op.attempts) == (State.RUNNING.value, 1)


def test_a_flush_queues_only_members_still_pending(c: Core) -> None:
    ids = {state: an_operation(c, state) for state in State}

    with c.deps.sessions() as session:
        moved = operations_repo.assign_batch(
            session, list(ids.values()), "b-1", "size", now=c.clock()
        )
        session.commit()

    assert moved == 1
    states = {state: c.operation(op_id).state for state, op_id in ids.items()}
    assert states == {s: (State.QUEUED if s is State.PENDING else s).value for s in State}


def test_a_take_moves_the_row_as_read_and_writes_its_log_line_with_it(c: Core) -> None:
    now = c.clock()
    op_id = an_operation(c, State.QUEUED)

    with pinned_session(c.deps.sessions) as session:
        with statements_alone(session):
            op = session.get(Operation, op_id)
        assert op is not None
        line = operations_repo.log_row(op_id, "attempt started", now=now, details={"n": 1})
        with statements_alone(session):
            taken = operations_repo.take_operation(
                session, op, now=now, lease_s=LEASE_S, log_line=line
            )
        # the object is the row as taken, with no second read
        assert taken and (op.state, op.attempts) == (State.RUNNING.value, 1)

    row = c.operation(op_id)
    assert (row.state, row.attempts) == (State.RUNNING.value, 1)
    assert [log.msg for log in c.logs(op_id)] == ["attempt started"]


def test_a_take_refuses_a_row_another_attempt_began_on_since_it_was_read(c: Core) -> None:
    now = c.clock()
    op_id = an_operation(c, State.QUEUED)
    with pinned_session(c.deps.sessions) as session:
        with statements_alone(session):
            stale = session.get(Operation, op_id)
        assert stale is not None
        # another delivery takes it, and its attempt ends in a retry that is due at once
        with c.deps.sessions() as other:
            fresh = other.get(Operation, op_id)
            assert fresh is not None
            assert operations_repo.take_operation(other, fresh, now=now, lease_s=LEASE_S)
            assert operations_repo.transition(
                other, op_id, State.RETRYING, now=now, next_attempt_at=now
            )
            other.commit()
        line = operations_repo.log_row(op_id, "attempt started", now=now)
        with statements_alone(session):
            taken = operations_repo.take_operation(
                session, stale, now=now, lease_s=LEASE_S, log_line=line
            )

    assert not taken
    row = c.operation(op_id)
    assert (row.state, row.attempts) == (State.RETRYING.value, 1)
    assert c.logs(op_id) == []
