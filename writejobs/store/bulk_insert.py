"""Many rows into one table: `COPY … FROM STDIN` on PostgreSQL, an executemany elsewhere;
or rows into several tables in one statement (`insert_rows_at_once`).

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

`insert_rows_at_once` is for the intake's group commit, whose whole transaction
is its inserts: on PostgreSQL each table's rows travel as one JSON parameter
(encoded by the json module's C code, not value by value in Python) and land
through `json_to_recordset`, every table in one statement of data-modifying
CTEs. Under autocommit that is one round trip for the whole group, against
six for a transaction of two COPYs (BEGIN, two per COPY, COMMIT).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from enum import Enum
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import JSON, Table, insert, text
from sqlalchemy.engine import Dialect
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


def insert_rows_at_once(
    session: Session, parts: Sequence[tuple[Table, Sequence[dict[str, Any]]]]
) -> None:
    """Insert each part's rows into its table, in the session's transaction.

    On PostgreSQL one statement writes every part, so a session in autocommit
    (`store.db.statements_alone`) commits them all in one round trip, atomically.
    Elsewhere, `insert_rows` part by part. Columns and defaults as `insert_rows`.
    """
    parts = [(table, rows) for table, rows in parts if rows]
    if not parts:
        return
    dialect = session.get_bind().dialect
    if dialect.name != "postgresql":
        for table, rows in parts:
            insert_rows(session, table, rows)
        return
    shapes: list[tuple[Table, tuple[str, ...]]] = []
    values: dict[str, str] = {}
    for i, (table, rows) in enumerate(parts):
        columns = _columns(table, rows)
        shapes.append((table, tuple(columns)))
        values[f"rows{i}"] = json.dumps(
            _recordset_rows(table, columns, rows),
            default=_json_value,
            separators=(",", ":"),
        )
    session.execute(text(_recordset_statement(dialect, tuple(shapes))), values)


@lru_cache(maxsize=64)
def _recordset_statement(
    dialect: Dialect, shapes: tuple[tuple[Table, tuple[str, ...]], ...]
) -> str:
    """One INSERT per (table, columns), the last one outer and the others CTEs.

    A JSON column's values arrive as JSON text in a string and are cast by the
    server: `json_to_recordset` de-escapes every string it meets, and a `\\u0000`
    inside a record (which the `json` type keeps) would fail as text.
    """
    quote = dialect.identifier_preparer.quote
    inserts = []
    for i, (table, columns) in enumerate(shapes):
        fields, picked = [], []
        for name in columns:
            is_json = isinstance(table.columns[name].type, JSON)
            sql_type = "text" if is_json else table.columns[name].type.compile(dialect=dialect)
            fields.append(f"{quote(name)} {sql_type}")
            picked.append(f"CAST(r.{quote(name)} AS json)" if is_json else f"r.{quote(name)}")
        inserts.append(
            f"INSERT INTO {quote(table.name)} ({', '.join(map(quote, columns))})"
            f" SELECT {', '.join(picked)}"
            f" FROM json_to_recordset(CAST(:rows{i} AS json)) AS r({', '.join(fields)})"
        )
    ctes = [f"part{i} AS ({statement})" for i, statement in enumerate(inserts[:-1])]
    return (f"WITH {', '.join(ctes)} " if ctes else "") + inserts[-1]


def _recordset_rows(
    table: Table, columns: list[str], rows: Sequence[dict[str, Any]]
) -> Sequence[dict[str, Any]]:
    """The rows as `json_to_recordset` takes them: every column with a Python-side
    default set (a missing key would be NULL), JSON columns as their JSON text.
    Rows that change are copied; the caller's stay as they were. All JSON here is
    ASCII, as COPY's was: a lone surrogate stays an escape, never bytes UTF-8 lacks."""
    plan = {name: (convert, default) for name, convert, default in _plan(table, columns)}
    encoded = [name for name in columns if isinstance(table.columns[name].type, JSON)]
    defaulted = [
        name
        for name, (_convert, default) in plan.items()
        if default is not _NULL and not all(name in row for row in rows)
    ]
    if not encoded and not defaulted:
        return rows
    shaped_rows: list[dict[str, Any]] = []
    for row in rows:
        shaped = dict(row)
        for name in defaulted:
            if name not in shaped:
                convert, default = plan[name]
                # As `_row` gives COPY: a constant default is converted already.
                shaped[name] = convert(default(None)) if callable(default) else default
        for name in encoded:
            if name in row:
                shaped[name] = json.dumps(row[name], separators=(",", ":"))
        shaped_rows.append(shaped)
    return shaped_rows


def _json_value(value: Any) -> Any:
    """What `json.dumps` cannot encode itself, as PostgreSQL's input for its column."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"a {type(value).__name__} is no column value")


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
