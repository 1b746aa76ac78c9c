"""Apply the Alembic migrations that ship inside the package, or tell whether they are.

A deployment runs `writejobs migrate` once per release, before the new pieces
start; each piece can wait for it with `writejobs migrate --check` (see
`schema_state`), so none runs against a schema older than its code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

from writejobs.settings import Settings
from writejobs.store.db import prepare_embedded_sqlite

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's ini interpolation treats % specially; URLs may contain it.
    config.set_main_option("sqlalchemy.url", settings.sqlalchemy_url.replace("%", "%%"))
    return config


def migrate(settings: Settings) -> None:
    """Bring the store's schema up to the newest revision (idempotent)."""
    prepare_embedded_sqlite(settings)
    command.upgrade(alembic_config(settings), "head")


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Where the database's schema stands against the migrations this code ships."""

    current: frozenset[str]  # the database's revisions (empty: never migrated)
    head: frozenset[str]  # this code's newest revisions
    known: frozenset[str]  # every revision this code ships

    @property
    def ready(self) -> bool:
        """True when this code may run on the database: at its head, or past it (a
        revision this code does not know is a newer release's, as during a rollback)."""
        return self.current == self.head or self.newer

    @property
    def newer(self) -> bool:
        return bool(self.current) and not self.current <= self.known


def schema_state(settings: Settings) -> SchemaState:
    """Read the database's revision and this code's head, changing nothing."""
    scripts = ScriptDirectory.from_config(alembic_config(settings))
    engine = create_engine(settings.sqlalchemy_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_heads()
    finally:
        engine.dispose()
    known = frozenset(rev.revision for rev in scripts.walk_revisions())
    return SchemaState(frozenset(current), frozenset(scripts.get_heads()), known)
