"""Many rows into one table: `COPY … FROM STDIN` on PostgreSQL, an executemany elsewhere.

The intake's group commit and a batch's settling insert rows by the hundred (an
operation and its "write accepted" line per write; a line per member at each
step of a batch). An executemany sends each row as its own statement execution,
and psycopg adapts every parameter in Python: per row that was twice the client
CPU of COPY, whose rows are written by psycopg's C code and loaded by the server
as one statement. COPY runs on the session's own connection, inside its
transaction: the rows commit with everything else the caller writes.

A row may leave columns out: they take the column's Python-side default, as
SQLAlchemy's INSERT would give them, or the server's. Errors are raised as
SQLAlchemy's (`IntegrityError` for a duplicate key), as an INSERT's would be.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import JSON, Table, insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session


def insert_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert `rows` (dicts of column values) into `table` in the session's transaction."""
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        for shaped in _by_columns(rows):
            session.execute(insert(table), shaped)
        return
    columns = _columns(table, rows)
    driver = connection.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    # Quoted names: a column may be a keyword (`timestamp` is, `user` would be).
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    plan = _plan(table, columns)
    try:
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(_row(plan, row))
    except psycopg.Error as exc:
        raise DBAPIError.instance(
            statement.as_string(driver), None, exc, psycopg.Error, hide_parameters=True
        ) from exc


def _by_columns(rows: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows grouped by the columns they set: one executemany per set, so the columns
    a row leaves out take their defaults."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row)), []).append(row)
    return list(groups.values())


def _columns(table: Table, rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every column some row sets, and every column with a Python-side default (COPY
    would leave those NULL: only the server's defaults apply to it)."""
    named: dict[str, None] = {}
    for row in rows:
        named.update(dict.fromkeys(row))
    for column in table.columns:
        if column.default is not None and column.name not in named:
            named[column.name] = None
    return list(named)


def _plan(table: Table, columns: list[str]) -> list[tuple[str, Callable[[Any], Any], Any]]:
    """Per column: its name, how a value converts for COPY, and what a row without
    it gets (a callable default is called per such row)."""
    plan: list[tuple[str, Callable[[Any], Any], Any]] = []
    for name in columns:
        column = table.columns[name]
        convert = json.dumps if isinstance(column.type, JSON) else _plain
        default = column.default
        if default is None:
            plan.append((name, convert, _NULL))
        elif getattr(default, "is_callable", False):
            # SQLAlchemy wraps a callable default (`default=dict`) to take a context.
            plan.append((name, convert, default.arg))  # type: ignore[attr-defined]
        else:
            plan.append((name, convert, convert(getattr(default, "arg", None))))
    return plan


def _plain(value: Any) -> Any:
    # psycopg would dump an Enum by its name; SQLAlchemy's INSERT binds its value.
    return value.value if isinstance(value, Enum) else value


class _Null:
    """What a row that leaves out a column without a Python-side default gets: NULL."""


_NULL = _Null()


def _row(plan: list[tuple[str, Callable[[Any], Any], Any]], row: dict[str, Any]) -> list[Any]:
    values: list[Any] = []
    for name, convert, missing in plan:
        if name in row:
            values.append(convert(row[name]))
        elif missing is _NULL:
            values.append(None)
        elif callable(missing):
            values.append(convert(missing(None)))
        else:
            values.append(missing)
    return values
