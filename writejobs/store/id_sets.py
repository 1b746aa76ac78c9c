"""`column IN (ids)` for lists of a hundred ids, one parameter on PostgreSQL.

SQLAlchemy expands `IN` into one placeholder per id, so each distinct list
length is a new statement text, and past a few kilobytes psycopg re-parses the
text on every execution instead of caching it: for a flush's 100 ids that cost
more client CPU than the UPDATE itself. `= ANY(array)` is one text and one
parameter at any length. SQLite has no arrays, so it keeps `IN`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, String, any_, literal
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import InstrumentedAttribute, Session


def among(
    session: Session, column: ColumnElement[Any] | InstrumentedAttribute[Any], ids: Sequence[str]
) -> ColumnElement[bool]:
    """SQL for "`column` is one of `ids`" in the session's dialect."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(literal(list(ids), ARRAY(String)))
    return column.in_(ids)
