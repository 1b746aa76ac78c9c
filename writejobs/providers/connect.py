"""Build a provider adapter for an installation: its base URL, its credentials."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from writejobs.providers.base import ProviderAdapter
from writejobs.providers.registry import build_adapter
from writejobs.settings import Settings
from writejobs.store.tables import Installation


def auth_headers(credentials_json: str) -> dict[str, str]:
    """Bearer-token credentials as headers (OAuth2 flows arrive with issue 5)."""
    credentials = json.loads(credentials_json or "{}")
    token = credentials.get("access_token") or credentials.get("token")
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextmanager
def open_adapter(installation: Installation, settings: Settings) -> Iterator[ProviderAdapter]:
    """An adapter over a fresh `httpx.Client`, closed when the block ends."""
    client = httpx.Client(
        base_url=installation.base_url,
        headers=auth_headers(installation.credentials),
        timeout=settings.provider_timeout_s,
    )
    with client:
        yield build_adapter(installation.provider, client)
