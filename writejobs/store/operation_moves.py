"""The state machine's moves in SQL: the one compare-and-set every change of state goes
through, and the bookkeeping of operations that end (finished counts, webhooks).

`deferred(session)` gathers the log lines and moves made inside it, and makes them
when it ends as one INSERT and one UPDATE … executemany per kind of move: a batch
settles its hundred members in a handful of statements instead of three hundred.
Like every repository, nothing here commits: the caller owns the transaction.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    DateTime,
    Executable,
    Table,
    and_,
    bindparam,
    column,
    event,
    false,
    func,
    insert,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from writejobs.core.operations import ALLOWED_FROM, TERMINAL, State
from writejobs.core.recorder import Recorder
from writejobs.store import webhook_outbox
from writejobs.store.bulk_insert import insert_rows
from writejobs.store.id_sets import among
from writejobs.store.tables import Operation, OperationLog

log = logging.getLogger(__name__)

# Bulk UPDATEs must not evaluate their WHERE against objects in the session:
# SQLite hands datetimes back without a zone, so the comparison would raise.
# Callers refresh the objects they keep using.
_NO_SYNC = {"synchronize_session": False}
_OPERATIONS: Table = Operation.__table__  # type: ignore[assignment]
_LOGS: Table = OperationLog.__table__  # type: ignore[assignment]
# session.info key: the writes a `deferred` block gathers.
_DEFERRED = "writejobs.deferred_writes"


def transition(
    session: Session,
    operation_id: str,
    to: State,
    *,
    now: datetime,
    lease_s: float | None = None,
    only_from: frozenset[State] | None = None,
    unless_cancel_requested: bool = False,
    **fields: Any,
) -> bool:
    """Move an operation to `to` if its current state allows it; say if it moved.

    A compare-and-set (`UPDATE … WHERE id = :id AND <may enter>`, see
    `_may_enter`). False means another delivery got there first, and the caller
    must stop. `only_from` narrows the states moved from (a subset of
    `ALLOWED_FROM[to]`); `unless_cancel_requested` refuses the move once a cancel
    has been asked for (a retry must not outlive a cancel). The caller commits.
    Inside `deferred(session)` the move is gathered (and True returned) to be made
    with its like when the block ends.
    """
    pending = session.info.get(_DEFERRED)
    if pending is not None and pending.moves is not None and to is not State.RUNNING:
        move = _Move(operation_id, to, now, only_from, fields, unless_cancel_requested)
        pending.moves.append(move)
        return True
    which = Operation.id == operation_id
    if unless_cancel_requested:
        which = and_(which, Operation.cancel_requested_at.is_(None))
    moved = bool(_move(session, which, to, now, lease_s, only_from, fields))
    if not moved:
        log.info("operation %s: not moved to %s (state changed elsewhere)", operation_id, to)
    return moved


def _may_enter(
    to: State, now: datetime | ColumnElement[datetime], only_from: frozenset[State] | None
) -> ColumnElement[bool]:
    """SQL for "may move to `to` now": the state is one `ALLOWED_FROM[to]` names, and
    the guarded moves into `running` hold their guard. A wait is honoured even
    against a stray early delivery (`retrying`, or a `queued` one the gate held back,
    only once `next_attempt_at` has come), and a running operation is taken over
    only from a holder whose lease lapsed."""
    sources = ALLOWED_FROM[to] if only_from is None else ALLOWED_FROM[to] & only_from
    assert only_from is None or only_from <= ALLOWED_FROM[to], f"{only_from} -> {to}"
    conditions: list[ColumnElement[bool]] = []
    for source in sorted(sources):
        condition: ColumnElement[bool] = Operation.state == source.value
        if to is State.RUNNING and source is State.RETRYING:
            condition = and_(condition, Operation.next_attempt_at <= now)
        elif to is State.RUNNING and source is State.QUEUED:
            # A queued operation the gate held back (a pause, the rate limit) waits too.
            condition = and_(
                condition,
                or_(Operation.next_attempt_at.is_(None), Operation.next_attempt_at <= now),
            )
        elif to is State.RUNNING and source is State.RUNNING:
            condition = and_(condition, Operation.lease_expires_at < now)
        conditions.append(condition)
    return or_(false(), *conditions)


def _move(
    session: Session,
    which: ColumnElement[bool],
    to: State,
    now: datetime,
    lease_s: float | None,
    only_from: frozenset[State] | None,
    fields: dict[str, Any],
) -> list[str]:
    """The one compare-and-set of the state machine: move the operations `which` selects
    that may enter `to` now; return the ids it moved. Entering `running` takes a
    lease of `lease_s` seconds."""
    values: dict[str, Any] = {"state": to.value, "updated_at": now, **fields}
    if to is State.RUNNING:
        assert lease_s is not None, "entering running needs a lease"
        values["lease_expires_at"] = now + timedelta(seconds=lease_s)
    # A Core UPDATE (the ORM's bulk path costs more than the statement): the session's
    # objects are not touched, as `_NO_SYNC` asks of the ORM's.
    statement = update(_OPERATIONS).where(which, _may_enter(to, now, only_from)).values(**values)
    if to in TERMINAL and session.get_bind().dialect.name == "postgresql":
        # The move and the notifications it owes in one statement (a round trip fewer).
        moved = list(session.scalars(webhook_outbox.ending(statement, now=now)))
        if moved:
            _note_finished(session, to, len(moved))
        return moved
    moved = list(session.scalars(statement.returning(_OPERATIONS.c.id)))
    _note_ended(session, to, moved, now)
    return moved


def _note_ended(session: Session, to: State, moved: list[str], now: datetime) -> None:
    if moved and to in TERMINAL:
        _note_finished(session, to, len(moved))
        # In the transaction that ends the operation: notified exactly when it ended.
        webhook_outbox.enqueue_for(session, moved, now=now)


def assign_batch(
    session: Session, operation_ids: list[str], batch_id: str, reason: str, *, now: datetime
) -> int:
    """`assign_batch_ids`, counted."""
    return len(assign_batch_ids(session, operation_ids, batch_id, reason, now=now))


def assign_batch_ids(
    session: Session, operation_ids: list[str], batch_id: str, reason: str, *, now: datetime
) -> list[str]:
    """Move pending members into a flushed batch (`pending` → `queued`); the ids moved.

    Members no longer pending (a flush already recorded them, or they were
    cancelled while buffered) are left alone, so re-running a flush after a crash
    is harmless and a cancelled record is never written.
    """
    fields = {"batch_id": batch_id, "flush_reason": reason}
    pending = frozenset({State.PENDING})
    which = among(session, Operation.id, operation_ids)
    return _move(session, which, State.QUEUED, now, None, pending, fields)


def _attempt_fields(now: datetime) -> dict[str, Any]:
    """What the move into `running` sets besides the state and the lease: one more attempt."""
    return {
        "attempts": Operation.attempts + 1,
        "last_attempt_at": now,
        "waiting_reason": None,
        "waiting_since": None,
    }


def _take(
    session: Session, which: ColumnElement[bool], now: datetime, lease_s: float
) -> list[Operation]:
    """The compare-and-set into `running` for the operations `which` selects, handing
    back the rows as they now are, in the same statement (`UPDATE … RETURNING` them).

    populate_existing: rows the session already holds (read by the gate) are
    refreshed, not handed back with the attempts and lease they had before the move.
    """
    values: dict[str, Any] = {
        "state": State.RUNNING.value,
        "updated_at": now,
        "lease_expires_at": now + timedelta(seconds=lease_s),
        **_attempt_fields(now),
    }
    statement = (
        update(Operation)
        .where(which, _may_enter(State.RUNNING, now, None))
        .values(**values)
        .returning(Operation)
    )
    options = {**_NO_SYNC, "populate_existing": True}
    return list(session.scalars(statement, execution_options=options))


def take_operation(
    session: Session,
    op: Operation,
    *,
    now: datetime,
    lease_s: float,
    log_line: dict[str, Any] | None = None,
) -> bool:
    """Move `op`, as it was read, into `running` for an attempt (the compare-and-set, one
    more attempt, a lease of `lease_s`); False when it may not run (another delivery
    holds it, its wait is not over, it ended). The caller commits.

    The compare-and-set also asks that no attempt began since `op` was read (its
    `attempts`), so what was read is the row as it now is but for what the move sets,
    which is set on `op` here: no second read. A delivery that finds another attempt
    began in between is one that other attempt makes redundant. `log_line` (a
    `log_row`) is written only if the move was made, on PostgreSQL in its statement
    (one round trip: autocommit may run it alone, see `store.db.statements_alone`).
    """
    params = {
        "t_id": op.id,
        "t_attempts": op.attempts,
        "t_now": now,
        "t_lease": now + timedelta(seconds=lease_s),
    }
    postgres = session.get_bind().dialect.name == "postgresql"
    if log_line is not None and postgres:
        params.update({f"l_{k}": v for k, v in log_line.items() if k != "operation_id"})
        moved = session.execute(_TAKE_ONE_LOGGED, params).first() is not None
    else:
        moved = session.execute(_TAKE_ONE, params).first() is not None
        if moved and log_line is not None:
            session.execute(insert(_LOGS), [log_line])
    if not moved:
        log.info("operation %s: not moved to running (state changed elsewhere)", op.id)
        return False
    taken = {
        "state": State.RUNNING.value,
        "updated_at": now,
        "lease_expires_at": params["t_lease"],
        "attempts": op.attempts + 1,
        "last_attempt_at": now,
        "waiting_reason": None,
        "waiting_since": None,
    }
    for key, value in taken.items():
        set_committed_value(op, key, value)
    return True


def _take_one() -> tuple[Executable, Executable]:
    """The statements of `take_operation`, built once: alone, and with its log line
    (PostgreSQL: the INSERT … SELECT of a data-modifying CTE, so only a made move logs)."""
    at = bindparam("t_now", type_=DateTime(timezone=True))
    move = (
        update(_OPERATIONS)
        .where(
            _OPERATIONS.c.id == bindparam("t_id"),
            _OPERATIONS.c.attempts == bindparam("t_attempts"),
            _may_enter(State.RUNNING, at, None),
        )
        .values(
            state=State.RUNNING.value,
            updated_at=at,
            lease_expires_at=bindparam("t_lease", type_=DateTime(timezone=True)),
            attempts=_OPERATIONS.c.attempts + 1,
            last_attempt_at=at,
            waiting_reason=None,
            waiting_since=None,
        )
        .returning(_OPERATIONS.c.id)
    )
    taken = move.cte("taken")
    columns = ["operation_id", "timestamp", "severity", "msg", "error", "details"]
    line = select(
        taken.c.id,
        *(bindparam(f"l_{name}", type_=_LOGS.c[name].type) for name in columns[1:]),
    )
    logged = insert(_LOGS).from_select(columns, line).cte("logged")
    return move, select(taken.c.id).add_cte(logged)


_TAKE_ONE, _TAKE_ONE_LOGGED = _take_one()


def take_batch(
    session: Session, batch_id: str, *, now: datetime, lease_s: float
) -> list[Operation]:
    """Move every member of a batch that may run now into `running`, in one statement.

    The same compare-and-set as `transition` to `running`; returns the members
    this call took, oldest first (the caller commits).
    """
    taken = _take(session, Operation.batch_id == batch_id, now, lease_s)
    return sorted(taken, key=lambda op: op.created_at)


# session.info key: the operations this transaction ended, by state, counted at commit.
_FINISHED = "writejobs.operations_finished"


def _note_finished(session: Session, state: State, n: int = 1) -> None:
    finished: dict[str, int] = session.info.setdefault(_FINISHED, {})
    finished[state.value] = finished.get(state.value, 0) + n


def count_finished(sessions: sessionmaker[Session], recorder: Recorder) -> None:
    """Count each operation the sessions of `sessions` end (`operations_finished{state}`)
    when the transaction that ended it commits, so a rolled-back end is never counted
    and every path that ends one (settling, the watchdog, intake's failures) is."""

    def committed(session: Session) -> None:
        for state, n in session.info.pop(_FINISHED, {}).items():
            recorder.count("operations_finished", n, state=state)

    def rolled_back(session: Session) -> None:
        session.info.pop(_FINISHED, None)

    event.listen(sessions, "after_commit", committed)
    event.listen(sessions, "after_rollback", rolled_back)


@dataclass(frozen=True, slots=True)
class _Move:
    operation_id: str
    to: State
    now: datetime
    only_from: frozenset[State] | None
    fields: dict[str, Any]
    unless_cancel_requested: bool = False


@dataclass(slots=True)
class _Deferred:
    logs: list[dict[str, Any]] = field(default_factory=list)
    # None: moves are made at once (only the log lines wait for the block's end).
    moves: list[_Move] | None = field(default_factory=list)


def defer_log(session: Session, row: dict[str, Any]) -> bool:
    """Gather a log line if a `deferred` block is open; False when the caller must write it."""
    pending = session.info.get(_DEFERRED)
    if pending is None:
        return False
    pending.logs.append(row)
    return True


@contextmanager
def deferred(session: Session, *, moves: bool = True) -> Iterator[None]:
    """Gather the log lines and moves (other than into `running`) made inside, and make
    them together when the block ends without an error; the caller then commits.

    With `moves=False` only the log lines wait (one INSERT at the end); each move is
    made when asked and says whether it moved, as a lone operation's settling needs.
    A block that gathered one move of one operation into a terminal state (a lone
    operation's end) makes it with its log lines in one statement on PostgreSQL.
    """
    assert _DEFERRED not in session.info, "deferred blocks do not nest"
    pending = _Deferred() if moves else _Deferred(moves=None)
    session.info[_DEFERRED] = pending
    try:
        yield
    finally:
        session.info.pop(_DEFERRED, None)
    if pending.moves is not None and len(pending.moves) == 1:
        move = pending.moves[0]
        if move.to in TERMINAL and not move.unless_cancel_requested:
            if not _end_alone(session, move, pending.logs):
                log.info(
                    "operation %s: not moved to %s (state changed elsewhere)",
                    move.operation_id,
                    move.to,
                )
            return
    insert_rows(session, _LOGS, pending.logs)
    kinds: dict[tuple[Any, ...], list[_Move]] = {}
    for move in pending.moves or []:
        kind = (
            move.to,
            move.now,
            move.only_from,
            move.unless_cancel_requested,
            tuple(sorted(move.fields)),
        )
        kinds.setdefault(kind, []).append(move)
    postgres = session.get_bind().dialect.name == "postgresql"
    for alike in kinds.values():
        if postgres and len(alike) > 1:
            _move_set(session, alike)
        else:
            _move_many(session, alike)


def _end_alone(session: Session, move: _Move, logs: list[dict[str, Any]]) -> bool:
    """One operation's move into a terminal state with its log lines (written whether or
    not it moved); on PostgreSQL one statement with the notifications it owes."""
    if session.get_bind().dialect.name != "postgresql":
        insert_rows(session, _LOGS, logs)
        which = Operation.id == move.operation_id
        return bool(_move(session, which, move.to, move.now, None, move.only_from, move.fields))
    names = tuple(sorted(move.fields))
    statement = _ending_alone(move.to, move.only_from, names, len(logs))
    params: dict[str, Any] = {"e_id": move.operation_id, "e_now": move.now}
    params.update({f"e_{name}": move.fields[name] for name in names})
    for i, row in enumerate(logs):
        params.update({f"l{i}_{column}": row[column] for column in _LOG_COLUMNS})
    moved = session.execute(statement, params).first() is not None
    if moved:
        _note_finished(session, move.to)
    return moved


_LOG_COLUMNS = ("operation_id", "timestamp", "severity", "msg", "error", "details")


@functools.lru_cache(maxsize=128)
def _ending_alone(
    to: State, only_from: frozenset[State] | None, names: tuple[str, ...], lines: int
) -> Executable:
    """`_end_alone`'s statement for one shape of move, built once: every value is a
    parameter (building the statement cost more than running it, and a statement with
    its values inline would be compiled each time)."""
    at = bindparam("e_now", type_=DateTime(timezone=True))
    values: dict[str, Any] = {"state": to.value, "updated_at": at}
    values.update({n: bindparam(f"e_{n}", type_=_OPERATIONS.c[n].type) for n in names})
    move = (
        update(_OPERATIONS)
        .where(_OPERATIONS.c.id == bindparam("e_id"), _may_enter(to, at, only_from))
        .values(**values)
    )
    statement = webhook_outbox.ending(move, now=at)
    if lines:
        # INSERT … SELECT of the lines in order (a multi-row VALUES is never cached).
        rows = [
            select(*(bindparam(f"l{i}_{c}", type_=_LOGS.c[c].type) for c in _LOG_COLUMNS))
            for i in range(lines)
        ]
        lines_in = union_all(*rows) if lines > 1 else rows[0]
        logged = insert(_LOGS).from_select(list(_LOG_COLUMNS), lines_in).cte("logged")
        statement = statement.add_cte(logged)
    return statement


def _move_set(session: Session, moves: list[_Move]) -> None:
    """PostgreSQL: moves alike but for their values in one statement, `UPDATE … FROM` the
    members' values as one JSON parameter, that also owes the notifications of the
    operations it ends (`webhook_outbox.ending`). An executemany ran one UPDATE per
    member: a hundred executions on the server, and a hundred parameter sets adapted
    by the client, for a batch that settles."""
    first = moves[0]
    names = tuple(sorted(first.fields))
    statement = _set_statement(first.to, first.only_from, first.unless_cancel_requested, names)
    rows = [{"m_id": m.operation_id, **{n: _json_value(m.fields[n]) for n in names}} for m in moves]
    moved = list(session.scalars(statement, {"m_rows": rows, "m_now": first.now}))
    if len(moved) < len(moves):
        for op_id in {m.operation_id for m in moves} - set(moved):
            log.info("operation %s: not moved to %s (state changed elsewhere)", op_id, first.to)
    if moved and first.to in TERMINAL:
        _note_finished(session, first.to, len(moved))


def _json_value(value: Any) -> Any:
    """A column's value as `json_to_recordset` reads it back (a time as ISO 8601, with
    its zone: every time here is aware)."""
    return value.isoformat() if isinstance(value, datetime) else value


@functools.lru_cache(maxsize=64)
def _set_statement(
    to: State,
    only_from: frozenset[State] | None,
    unless_cancel_requested: bool,
    names: tuple[str, ...],
) -> Executable:
    """`_move_set`'s statement for one shape of move, built once (every value a parameter)."""
    at = bindparam("m_now", type_=DateTime(timezone=True))
    # The members' values, typed as their columns: a JSON column's value is its JSON text.
    values = (
        func.json_to_recordset(bindparam("m_rows", type_=JSON))
        .table_valued(
            column("m_id", _OPERATIONS.c.id.type),
            *(column(n, _OPERATIONS.c[n].type) for n in names),
        )
        .render_derived(name="m", with_types=True)
    )
    move = (
        update(_OPERATIONS)
        .where(
            _OPERATIONS.c.id == values.c.m_id,
            _may_enter(to, at, only_from),
            _OPERATIONS.c.cancel_requested_at.is_(None) if unless_cancel_requested else true(),
        )
        .values(state=to.value, updated_at=at, **{n: values.c[n] for n in names})
    )
    if to in TERMINAL:
        return webhook_outbox.ending(move, now=at)
    return move.returning(_OPERATIONS.c.id)


def _move_many(session: Session, moves: list[_Move]) -> None:
    """One executemany compare-and-set for moves alike but for their values."""
    first = moves[0]
    names = sorted(first.fields)
    statement = (
        update(_OPERATIONS)
        .where(
            _OPERATIONS.c.id == bindparam("m_id"),
            _may_enter(first.to, first.now, first.only_from),
            _OPERATIONS.c.cancel_requested_at.is_(None)
            if first.unless_cancel_requested
            else true(),
        )
        .values(
            state=first.to.value,
            updated_at=first.now,
            **{name: bindparam(f"m_{name}", type_=_OPERATIONS.c[name].type) for name in names},
        )
    )
    params = [{"m_id": m.operation_id, **{f"m_{n}": m.fields[n] for n in names}} for m in moves]
    result = session.execute(statement, params, execution_options=_NO_SYNC)
    ids = [m.operation_id for m in moves]
    if result.rowcount == len(moves):  # type: ignore[attr-defined]
        moved = ids
    else:
        # Another delivery got to some first: the ones that moved carry this move's time.
        found = select(Operation.id).where(
            Operation.id.in_(ids),
            Operation.state == first.to.value,
            Operation.updated_at == first.now,
        )
        moved = list(session.scalars(found))
        for op_id in set(ids) - set(moved):
            log.info("operation %s: not moved to %s (state changed elsewhere)", op_id, first.to)
    _note_ended(session, first.to, moved, first.now)
