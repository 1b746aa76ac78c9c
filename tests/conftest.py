"""Session fixtures: real Redis (the configured one, or an embedded server), real
SQLite and, when `WRITEJOBS_DATABASE_URL` names one, real PostgreSQL; the API and
the sandbox served over loopback HTTP; a real Celery worker process."""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sandbox.app import create_app as create_sandbox
from tests.support.servers import serve_in_thread
from tests.support.system import Tenant, create_tenant, running_worker
from writejobs.cli.embedded_redis import EmbeddedRedis
from writejobs.settings import Settings
from writejobs.store.migrate import migrate


def _backends() -> list[str]:
    backends = ["sqlite"]
    if (os.environ.get("WRITEJOBS_DATABASE_URL") or "").startswith("postgres"):
        backends.append("postgresql")
    return backends


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The configured Redis, or an embedded one owned by this test session."""
    configured = os.environ.get("WRITEJOBS_REDIS_URL")
    if configured:
        redis.Redis.from_url(configured).ping()
        yield configured
        return
    data_dir = tmp_path_factory.mktemp("redis")
    server = EmbeddedRedis(data_dir, data_dir / "redis.sock")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session", params=_backends())
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def settings(
    backend: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """Settings for one backend, with a namespace, queue and database of this session's own."""
    data_dir: Path = tmp_path_factory.mktemp(f"data-{backend}")
    run = uuid.uuid4().hex[:8]
    database_url = None
    schema = f"wjtest_{run}"
    if backend == "postgresql":
        database_url = _postgres_schema(os.environ["WRITEJOBS_DATABASE_URL"], schema)
    built = Settings(
        data_dir=data_dir,
        redis_url=redis_url,
        database_url=database_url,
        redis_namespace=f"wjtest-{run}",
        celery_queue=f"writejobs-test-{run}",
        scheduler_interval_s=0.1,
        running_lease_s=30,
        # The suite wires many processes and engines against one PostgreSQL server:
        # keep few idle connections each, so it never runs out of them.
        db_pool_size=2,
        # The sandbox's file host, named "localhost" so that 127.0.0.1 stays refused.
        fetch_allowed_http_hosts="localhost",
    )
    migrate(built)
    yield built
    if backend == "postgresql":
        _drop_postgres_schema(os.environ["WRITEJOBS_DATABASE_URL"], schema)


def _postgres_schema(url: str, schema: str) -> str:
    """A fresh schema for this session, and the URL whose connections use it."""
    import psycopg

    with psycopg.connect(_libpq(url), autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"


def _drop_postgres_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(_libpq(url), autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture(scope="session")
def sandbox_url() -> Iterator[str]:
    with serve_in_thread(create_sandbox()) as url:
        yield url


@pytest.fixture(scope="session")
def api_url(settings: Settings) -> Iterator[str]:
    from api_shim.app import create_app

    with serve_in_thread(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="session")
def worker(settings: Settings) -> Iterator[object]:
    with running_worker(settings) as child:
        yield child


@pytest.fixture()
def tenant(settings: Settings, api_url: str, sandbox_url: str) -> Tenant:
    """A fresh project whose installation writes to the shared sandbox."""
    return create_tenant(settings, api_url, sandbox_url, deletable=["contacts"])


@pytest.fixture()
def own_sandbox() -> Iterator[str]:
    """A sandbox of the test's own, for asserting on its call counts."""
    with serve_in_thread(create_sandbox()) as url:
        yield url


@pytest.fixture()
def heavy(backend: str) -> None:
    """Long tests run on one backend: the external database when there is one."""
    if backend != _backends()[-1]:
        pytest.skip("long test: runs once, on " + _backends()[-1])


@pytest.fixture(autouse=True)
def _load_tests_one_at_a_time(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """A test marked `load` holds a lock that every session of this run shares, so two
    of them never share the machine's cores and PostgreSQL's connections: the other
    session waits for it when it reaches one too. The lock sits in the run's temporary
    directory, which holds each xdist worker's own (so other runs are not held up)."""
    if request.node.get_closest_marker("load") is None:
        yield
        return
    run_dir = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        run_dir = run_dir.parent
    with open(run_dir / "load-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Whole-system tests run on one backend (the external database when there is one):
    the integration tests already run the store's SQL on every backend, and running
    every worker and scheduler twice would double CI's time for no new coverage."""
    last = _backends()[-1]
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec is not None else None
        if "tests/e2e/" in item.nodeid and backend not in (None, last):
            item.add_marker(pytest.mark.skip(reason=f"system test: runs once, on {last}"))
