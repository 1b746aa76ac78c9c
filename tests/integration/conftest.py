"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.parked import Parked, parked_system
from writejobs.settings import Settings


@pytest.fixture()
def parked(settings: Settings, sandbox_url: str) -> Iterator[Parked]:
    """The API on a queue of its own that no worker reads."""
    yield from parked_system(settings, sandbox_url)
