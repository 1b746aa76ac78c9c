"""The console's reads seek indexes: on SQLite, every range of a filtered page and of a
bounded count is an index search, never a scan of the table or a sort of its rows
(what keeps a page as cheap on a million operations as on a hundred)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.dialects import sqlite

from writejobs.settings import Settings
from writejobs.store import console_queries
from writejobs.store.console_queries import OperationFilter
from writejobs.store.db import create_session_factory, create_store_engine
from writejobs.store.tables import Operation

T = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
FILTERS = {
    "none": OperationFilter(),
    "a status": OperationFilter(states=("failed", "expired")),
    "an object": OperationFilter(object_name="contacts"),
    "an object and a state": OperationFilter(states=("queued",), object_name="contacts"),
    "a time window": OperationFilter(since=T, until=T.replace(hour=10)),
    "a state in a window": OperationFilter(states=("failed",), since=T),
}


def plans(settings: Settings, statement: object) -> list[str]:
    compiled = statement.compile(  # type: ignore[attr-defined]
        dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}
    )
    engine = create_store_engine(settings)
    try:
        with create_session_factory(engine)() as session:
            rows = session.execute(text(f"EXPLAIN QUERY PLAN {compiled}")).all()
    finally:
        engine.dispose()
    return [str(row[-1]) for row in rows]


@pytest.mark.parametrize("name", list(FILTERS))
def test_each_page_range_and_count_is_an_index_search_without_a_sort(
    settings: Settings, backend: str, name: str
) -> None:
    if backend != "sqlite":
        pytest.skip("EXPLAIN QUERY PLAN is SQLite's; PostgreSQL plans by its statistics")
    before = (T, "00000000-0000-0000-0000-000000000000")
    ranges = console_queries._ranges("inst", FILTERS[name], before)
    assert ranges
    for statement in ranges:
        page = statement.order_by(Operation.created_at.desc(), Operation.id.desc()).limit(51)
        steps = plans(settings, page)
        assert any("USING INDEX ix_operations_installation" in s for s in steps), steps
        assert not any("TEMP B-TREE" in s for s in steps), steps
        assert not any(s.startswith("SCAN") for s in steps), steps
        bounded = statement.with_only_columns(Operation.id).limit(1001).subquery()
        counted = plans(settings, select(func.count()).select_from(bounded))
        assert any("ix_operations_installation" in s for s in counted), counted
