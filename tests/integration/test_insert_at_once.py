"""`insert_rows_at_once` against the real stores: the rows read back as an ORM insert
would have left them (defaults, JSON, times), and on a failure no part is written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Table, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tests.support.system import Tenant, create_tenant, operation_row
from writejobs.core.operations import State
from writejobs.settings import Settings
from writejobs.store.bulk_insert import insert_rows_at_once
from writejobs.store.db import statements_alone
from writejobs.store.tables import Operation, OperationLog

_OPERATIONS: Table = Operation.__table__  # type: ignore[assignment]
_LOGS: Table = OperationLog.__table__  # type: ignore[assignment]
AT = datetime(2026, 12, 2, 1, 2, 3, 456789, tzinfo=UTC)


@pytest.fixture()
def owner(settings: Settings) -> Tenant:
    return create_tenant(settings, "http://api.invalid", "http://sandbox.invalid")


def operation(tenant: Tenant, **fields: Any) -> dict[str, Any]:
    """An auto-batched write's row, at a fixed time, with a payload that JSON quoting
    must survive: quotes, a backslash, a tab, a NUL (the `json` type keeps it, text
    would not), non-ASCII, nesting and a number too large for 64 bits."""
    row = operation_row(
        tenant,
        shape="auto_batch",
        request={
            "record": {
                "name": 'O"Brien \\ \t \x00 Zoë',
                "tags": ["a", {"b": None}],
                "n": 2**70,
            }
        },
        state=State.PENDING,
        created_at=AT,
        updated_at=AT,
        deadline_at=AT + timedelta(hours=48),
        max_delay_s=60.5,
    )
    row.update(fields)
    return row


def line(op_id: str, msg: str, **fields: Any) -> dict[str, Any]:
    return {
        "operation_id": op_id,
        "timestamp": AT,
        "severity": "info",
        "msg": msg,
        **fields,
    }


def write(sessions: sessionmaker[Session], parts: list[tuple[Table, list[dict[str, Any]]]]) -> None:
    with sessions() as session, statements_alone(session):
        insert_rows_at_once(session, parts)


def test_rows_read_back_with_their_values_and_the_defaults_of_what_they_leave_out(
    sessions: sessionmaker[Session], owner: Tenant
) -> None:
    first = operation(owner, record_count=1)
    # The second leaves out columns with Python-side defaults that the first sets.
    second = operation(owner, state="queued", shape="single")
    write(
        sessions,
        [
            (_OPERATIONS, [first, second]),
            (_LOGS, [line(first["id"], "write accepted", details={"mode": "x"})]),
            (_LOGS, []),
        ],
    )
    with sessions() as session:
        rows = {
            op.id: op
            for op in session.scalars(
                select(Operation).where(Operation.id.in_([first["id"], second["id"]]))
            )
        }
        logs = list(
            session.scalars(select(OperationLog).where(OperationLog.operation_id == first["id"]))
        )
    assert set(rows) == {first["id"], second["id"]}
    stored = rows[first["id"]]
    assert stored.request == first["request"]
    assert stored.state == "pending"
    assert stored.created_at.replace(tzinfo=UTC) == AT
    assert stored.deadline_at.replace(tzinfo=UTC) == AT + timedelta(hours=48)
    assert stored.max_delay_s == 60.5
    assert stored.results is None and stored.errors is None
    for op in rows.values():
        assert (op.attempts, op.record_count, op.success_count, op.backoff_failures) == (0, 1, 0, 0)
    assert [(entry.msg, entry.details, entry.error) for entry in logs] == [
        ("write accepted", {"mode": "x"}, None)
    ]


def test_a_line_that_leaves_out_its_details_gets_the_default_empty_object(
    sessions: sessionmaker[Session], owner: Tenant
) -> None:
    op = operation(owner)
    write(sessions, [(_OPERATIONS, [op]), (_LOGS, [line(op["id"], "a"), line(op["id"], "b")])])
    with sessions() as session:
        details = session.scalars(
            select(OperationLog.details).where(OperationLog.operation_id == op["id"])
        ).all()
    assert details == [{}, {}]


def test_a_duplicate_key_raises_integrity_error_and_no_part_is_written(
    sessions: sessionmaker[Session], owner: Tenant
) -> None:
    taken = operation(owner)
    write(sessions, [(_OPERATIONS, [taken])])
    fresh = operation(owner)
    with pytest.raises(IntegrityError):
        write(
            sessions,
            [
                (_OPERATIONS, [fresh, operation(owner, id=taken["id"])]),
                (_LOGS, [line(fresh["id"], "write accepted")]),
            ],
        )
    with sessions() as session:
        assert session.get(Operation, fresh["id"]) is None
        assert not session.scalars(
            select(OperationLog).where(OperationLog.operation_id == fresh["id"])
        ).all()


def test_a_value_no_column_takes_is_refused_before_anything_is_sent(
    sessions: sessionmaker[Session], owner: Tenant, settings: Settings
) -> None:
    if not settings.sqlalchemy_url.startswith("postgresql"):
        pytest.skip("the JSON encoding is PostgreSQL's path; elsewhere the driver refuses it")
    odd = operation(owner, config_id=object())
    with pytest.raises(TypeError, match="no column value"):
        write(sessions, [(_OPERATIONS, [odd])])
    with sessions() as session:
        assert session.get(Operation, odd["id"]) is None
