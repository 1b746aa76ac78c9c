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
from collections.abc import Sequence
from enum import Enum
from typing import Any

import psycopg
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
    statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    values = [(name, _Value(table, name)) for name in columns]
    try:
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row([value(row, name) for name, value in values])
    except psycopg.Error as exc:
        raise DBAPIError.instance(
            statement, None, exc, psycopg.Error, hide_parameters=True
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


class _Value:
    """A row's value for one column, as COPY's text format takes it."""

    def __init__(self, table: Table, name: str) -> None:
        column = table.columns[name]
        self.is_json = isinstance(column.type, JSON)
        self.has_default = column.default is not None
        self.default: Any = getattr(column.default, "arg", None)
        # SQLAlchemy wraps a callable default (`default=dict`) to take a context.
        self.callable_default = bool(getattr(column.default, "is_callable", False))

    def __call__(self, row: dict[str, Any], name: str) -> Any:
        if name in row:
            value = row[name]
        elif self.has_default:
            value = self.default(None) if self.callable_default else self.default
        else:
            return None
        if self.is_json:
            # As SQLAlchemy's JSON type stores it: None too is the JSON `null`.
            return json.dumps(value)
        if isinstance(value, Enum):
            return value.value
        return value
