"""What the benchmarks share: the Redis a run uses, a PostgreSQL schema of its own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from writejobs.cli.embedded_redis import EmbeddedRedis

# The loopback PostgreSQL the tests use, when WRITEJOBS_DATABASE_URL names none.
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


@contextmanager
def bench_redis(data_dir: Path) -> Iterator[str]:
    """`WRITEJOBS_REDIS_URL`, or an embedded Redis under `data_dir` for the run's length."""
    configured = os.environ.get("WRITEJOBS_REDIS_URL")
    if configured:
        yield configured
        return
    server = EmbeddedRedis(data_dir / "redis", data_dir / "redis.sock")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def libpq(url: str) -> str:
    """The URL as psycopg takes it (no SQLAlchemy driver suffix)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def own_schema(url: str, schema: str) -> str:
    """A fresh schema for this run, and the URL whose connections use it."""
    import psycopg

    with psycopg.connect(libpq(url), autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"


def drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(libpq(url), autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
