"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from sandbox.app import create_app as create_sandbox
from tests.support.parked import Parked, parked_system
from tests.support.servers import serve_in_thread
from writejobs.settings import Settings
from writejobs.store.db import create_session_factory, create_store_engine


@pytest.fixture()
def parked(settings: Settings, sandbox_url: str) -> Iterator[Parked]:
    """The API on a queue of its own that no worker reads."""
    yield from parked_system(settings, sandbox_url)


@pytest.fixture(scope="module")
def private_sandbox_url() -> Iterator[str]:
    """A sandbox of the module's own, so its tests may reset it."""
    with serve_in_thread(create_sandbox()) as url:
        yield url


@pytest.fixture
def sandbox(private_sandbox_url: str) -> Iterator[httpx.Client]:
    """A client for the module's sandbox, carrying a token; the sandbox starts each test empty."""
    with httpx.Client(
        base_url=private_sandbox_url, headers={"Authorization": "Bearer sandbox-token"}, timeout=30
    ) as client:
        client.post("/_sandbox/reset").raise_for_status()
        yield client


@pytest.fixture()
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """Sessions of the test's store, on an engine of the test's own."""
    engine = create_store_engine(settings)
    yield create_session_factory(engine)
    engine.dispose()
