"""Every file writejobs makes in its data dir is 0600, in a 0700 directory, under a 022 umask.

The real writers on embedded defaults: the store's migrations and engine (the
SQLite file and its WAL), the credentials key, the demo's details, Flower's
login and the embedded Redis (its AOF and log).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import text

from writejobs.cli.bootstrap import ensure_demo
from writejobs.cli.embedded_redis import EmbeddedRedis
from writejobs.cli.flower_auth import auth_file, first_user, flower_basic_auth
from writejobs.settings import Settings
from writejobs.store.db import create_store_engine
from writejobs.store.migrate import migrate
from writejobs.store.secrets import cipher_for, key_file


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def open_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("open_umask")
def test_the_store_key_demo_details_and_flower_login_are_private(tmp_path: Path) -> None:
    # given embedded defaults in a fresh data dir
    settings = Settings(data_dir=tmp_path / ".writejobs", redis_url=None, database_url=None)

    # when the store is migrated and written, the key made, the demo and Flower set up
    migrate(settings)
    engine = create_store_engine(settings)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE probe (x INTEGER)"))
        connection.execute(text("INSERT INTO probe VALUES (1)"))
        wal = settings.data_dir / "writejobs.db-wal"
        assert wal.exists()
        assert mode(wal) == 0o600
    engine.dispose()
    cipher_for(settings)
    login = first_user(flower_basic_auth(settings))
    details = ensure_demo(
        settings,
        api_url="http://127.0.0.1:1",
        sandbox_url="http://127.0.0.1:2",
        flower_url="http://127.0.0.1:3",
        flower_login=login,
    )

    # then the directory is 0700 and every file in it 0600
    assert mode(settings.data_dir) == 0o700
    made = {p.name: mode(p) for p in settings.data_dir.iterdir() if p.is_file()}
    assert {"writejobs.db", "secret.key", "demo.json", "flower.auth"} <= made.keys()
    assert {name: m for name, m in made.items() if m != 0o600} == {}
    # and the demo's details name Flower's login, the same one on the next start
    assert (details["flower_user"], details["flower_password"]) == login
    assert first_user(flower_basic_auth(settings)) == login
    assert login[0] and len(login[1]) >= 20
    assert auth_file(settings).read_text().strip() == f"{login[0]}:{login[1]}"


@pytest.mark.usefixtures("open_umask")
def test_the_embedded_redis_keeps_its_aof_and_log_private(tmp_path: Path) -> None:
    data_dir = tmp_path / ".writejobs"
    server = EmbeddedRedis(data_dir, data_dir / "redis.sock")
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        client.close()
    finally:
        server.stop()

    assert mode(data_dir) == 0o700
    made = {p.name: mode(p) for p in data_dir.rglob("*") if p.is_file()}
    assert any("appendonly" in name for name in made), made
    assert "redis.log" in made
    assert {name: m for name, m in made.items() if m != 0o600} == {}


def test_an_existing_key_file_is_narrowed_when_it_is_read(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, redis_url=None, database_url=None)
    cipher_for(settings)
    os.chmod(key_file(settings), 0o644)

    cipher_for(settings)

    assert mode(key_file(settings)) == 0o600
