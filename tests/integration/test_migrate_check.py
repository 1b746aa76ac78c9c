"""`writejobs migrate --check`: how a piece's init container waits for its release's
migration Job, against a real (SQLite) store of the test's own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from tests.support.system import REPO_ROOT, settings_env
from writejobs.cli.main import app
from writejobs.settings import Settings
from writejobs.store.migrate import migrate, schema_state


def fresh_store(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'fresh.db'}")


def check(settings: Settings, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["migrate", "--check", *args], env=settings_env(settings))
    return result.exit_code, result.output


def stamp(settings: Settings, revision: str) -> None:
    engine = create_engine(settings.sqlalchemy_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    engine.dispose()


def test_a_store_never_migrated_is_not_ready_and_a_migrated_one_is(tmp_path: Path) -> None:
    settings = fresh_store(tmp_path)
    head = ", ".join(sorted(schema_state(settings).head))

    code, output = check(settings)
    assert code == 1
    assert f"schema at none, this release needs {head}" in output

    migrate(settings)
    assert check(settings) == (0, "schema ready\n")


def test_a_store_behind_this_release_is_not_ready(tmp_path: Path) -> None:
    settings = fresh_store(tmp_path)
    migrate(settings)
    stamp(settings, "0001")

    code, output = check(settings)
    assert code == 1
    assert "schema at 0001" in output


def test_a_store_ahead_of_this_release_is_ready_for_a_rollback(tmp_path: Path) -> None:
    settings = fresh_store(tmp_path)
    migrate(settings)
    stamp(settings, "9999_from_a_newer_release")

    assert check(settings) == (0, "schema ready (newer than this release)\n")


def test_a_waiting_check_passes_once_the_migration_has_run(tmp_path: Path) -> None:
    # given a check that waits, started before the migration
    settings = fresh_store(tmp_path)
    waiting = subprocess.Popen(
        [sys.executable, "-m", "writejobs.cli.main", "migrate", "--check", "--wait-s", "60"],
        env=settings_env(settings),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # when the migration runs
        migrate(settings)
        output, _ = waiting.communicate(timeout=90)
    finally:
        waiting.kill()
    # then the check ends well
    assert waiting.returncode == 0, output
    assert "schema ready" in output


def test_a_check_that_cannot_reach_the_database_says_so(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, database_url="postgresql://nobody@127.0.0.1:1/none?connect_timeout=1"
    )
    code, output = check(settings)
    assert code == 1
    assert "database not reachable: OperationalError" in output
