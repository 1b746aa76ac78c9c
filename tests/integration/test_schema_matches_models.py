"""The migrations build the schema the models describe: every index as the models
declare it (columns, uniqueness, a partial index's predicate), and no difference
Alembic's own comparison finds (tables, columns, foreign keys)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, create_engine, text

from writejobs.core.operations import State
from writejobs.runtime.metrics import COUNTED_STATES
from writejobs.settings import Settings
from writejobs.store import webhook_tables
from writejobs.store.tables import STATE_INDEXED, Base

assert webhook_tables  # its tables are the models' too


def index_definitions(connection: Connection) -> dict[str, str]:
    """Each index of the connection's schema by name, as the database itself writes it
    (its own normalized form, so two schemas built two ways compare as text)."""
    if connection.dialect.name == "postgresql":
        rows = connection.execute(
            text(
                "SELECT indexname, indexdef FROM pg_indexes "
                "WHERE schemaname = current_schema() AND tablename <> 'alembic_version'"
            )
        )
        schema = connection.execute(text("SELECT current_schema()")).scalar_one()
        return {name: definition.replace(f"{schema}.", "") for name, definition in rows}
    rows = connection.execute(
        text("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
    )
    return {name: re.sub(r"\s+", " ", sql.replace('"', "")) for name, sql in rows}


@pytest.fixture()
def models_engine(settings: Settings, tmp_path: Path) -> Iterator[Engine]:
    """An empty store of the same backend with the models' schema made directly."""
    url = settings.sqlalchemy_url
    if not url.startswith("postgresql"):
        engine = create_engine(f"sqlite:///{tmp_path / 'models.db'}")
        Base.metadata.create_all(engine)
        yield engine
        engine.dispose()
        return
    schema = f"wjmodels_{uuid.uuid4().hex[:8]}"
    root = url.split("?")[0].replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(root, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    engine = create_engine(url.split("?")[0], connect_args={"options": f"-csearch_path={schema}"})
    try:
        Base.metadata.create_all(engine)
        yield engine
    finally:
        engine.dispose()
        with psycopg.connect(root, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_the_migrated_indexes_are_the_models_indexes(
    settings: Settings, models_engine: Engine
) -> None:
    migrated = create_engine(settings.sqlalchemy_url)
    try:
        with migrated.connect() as a, models_engine.connect() as b:
            assert index_definitions(a) == index_definitions(b)
    finally:
        migrated.dispose()


def test_alembic_finds_no_difference_between_the_migrations_and_the_models(
    settings: Settings,
) -> None:
    engine = create_engine(settings.sqlalchemy_url)
    try:
        with engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    finally:
        engine.dispose()


def test_the_partial_state_index_holds_every_state_its_readers_ask_for() -> None:
    from api_shim.console.routes import _UNFINISHED

    unfinished = {State.PENDING, State.QUEUED, State.RUNNING, State.RETRYING}
    asked = {s.value for s in COUNTED_STATES} | set(_UNFINISHED) | {s.value for s in unfinished}
    assert asked <= set(STATE_INDEXED)
