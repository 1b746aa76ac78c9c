"""Build a provider adapter for an installation: its base URL, its credentials.

HTTP clients are kept per (base URL, credentials) for the life of the process,
so consecutive writes to one installation reuse their connections instead of
opening a new one per operation. httpx clients are safe to share between
threads; a forked worker child starts with an empty pool of its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from writejobs.providers.base import ProviderAdapter
from writejobs.providers.registry import build_adapter
from writejobs.settings import Settings
from writejobs.store.tables import Installation

_clients: dict[tuple[int, str, str, float], httpx.Client] = {}
_lock = threading.Lock()


def auth_headers(credentials_json: str) -> dict[str, str]:
    """Bearer-token credentials as headers (OAuth2 flows arrive with issue 5)."""
    credentials = json.loads(credentials_json or "{}")
    token = credentials.get("access_token") or credentials.get("token")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _client(installation: Installation, settings: Settings) -> httpx.Client:
    secret = hashlib.sha256(installation.credentials.encode()).hexdigest()
    key = (os.getpid(), installation.base_url, secret, settings.provider_timeout_s)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = httpx.Client(
                base_url=installation.base_url,
                headers=auth_headers(installation.credentials),
                timeout=settings.provider_timeout_s,
            )
            _clients[key] = client
        return client


@contextmanager
def open_adapter(installation: Installation, settings: Settings) -> Iterator[ProviderAdapter]:
    """An adapter for the installation, over this process's client for it."""
    yield build_adapter(installation.provider, _client(installation, settings))
