"""Build a provider adapter for an installation: its base URL, its credentials.

HTTP clients are kept per installation for the life of the process, so
consecutive writes to one installation reuse their connections instead of
opening a new one per operation, and an OAuth2 token renewed by one write is
used by the next. httpx clients are safe to share between threads; a forked
worker child starts with an empty pool of its own.

Credentials are decrypted once, when the client is built; a renewed token is
encrypted and stored back to the installation's row, through an engine of this
module's own (the opener's signature carries no session).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from writejobs.errors import RetryableProviderError
from writejobs.providers.base import ProviderAdapter
from writejobs.providers.oauth import InstallationAuth
from writejobs.providers.registry import build_adapter
from writejobs.providers.salesforce_bulk import SalesforceBulkIngest
from writejobs.settings import Settings
from writejobs.store import tenants_repo
from writejobs.store.db import create_session_factory, create_store_engine
from writejobs.store.secrets import CredentialsUnreadable, cipher_for
from writejobs.store.tables import Installation

log = logging.getLogger(__name__)

# (pid, installation id, base URL, timeout in seconds) -> the installation's client.
_clients: dict[tuple[int, str, str, float], httpx.Client] = {}
# (pid, timeout in seconds) -> the client that sends token requests, for every installation.
_token_clients: dict[tuple[int, float], httpx.Client] = {}
# (pid, store URL) -> sessions for storing renewed credentials.
_sessions: dict[tuple[int, str], sessionmaker[Session]] = {}
_lock = threading.Lock()


def _client(installation: Installation, settings: Settings) -> httpx.Client:
    pid, timeout_s = os.getpid(), settings.provider_timeout_s
    key = (pid, installation.id, installation.base_url, timeout_s)
    with _lock:
        client = _clients.get(key)
        if client is None:
            try:
                credentials = cipher_for(settings).decrypt(installation.credentials)
            except CredentialsUnreadable as exc:
                # Retryable: another worker, started with the right key, may take the retry.
                raise RetryableProviderError(str(exc), provider=installation.provider) from None
            token_client = _token_clients.get((pid, timeout_s))
            if token_client is None:
                token_client = httpx.Client(timeout=timeout_s)
                _token_clients[(pid, timeout_s)] = token_client
            auth = InstallationAuth(
                credentials,
                provider=installation.provider,
                token_client=token_client,
                on_refresh=_store_credentials(installation.id, settings),
                load_latest=_load_credentials(installation.id, settings),
            )
            client = httpx.Client(base_url=installation.base_url, auth=auth, timeout=timeout_s)
            _clients[key] = client
        return client


@contextmanager
def open_adapter(installation: Installation, settings: Settings) -> Iterator[ProviderAdapter]:
    """An adapter for the installation, over this process's client for it.

    Raises `RetryableProviderError` when the stored credentials cannot be
    decrypted with this process's key (the message names `WRITEJOBS_SECRET_KEY`).
    """
    yield build_adapter(installation.provider, _client(installation, settings))


@contextmanager
def open_bulk_ingest(
    installation: Installation, settings: Settings
) -> Iterator[SalesforceBulkIngest]:
    """A Bulk API 2.0 ingest client for a Salesforce installation, over the same client."""
    yield SalesforceBulkIngest(_client(installation, settings))


def _store_sessions(settings: Settings) -> sessionmaker[Session]:
    key = (os.getpid(), settings.sqlalchemy_url)
    with _lock:
        sessions = _sessions.get(key)
        if sessions is None:
            sessions = create_session_factory(create_store_engine(settings))
            _sessions[key] = sessions
        return sessions


def _store_credentials(
    installation_id: str, settings: Settings
) -> Callable[[dict[str, Any]], None]:
    def store(credentials: dict[str, Any]) -> None:
        try:
            with _store_sessions(settings)() as session:
                tenants_repo.update_credentials(
                    session, installation_id, credentials, cipher_for(settings)
                )
                session.commit()
        except SQLAlchemyError as exc:
            # The new token still serves this process; others renew their own.
            log.warning(
                "could not store the renewed credentials of installation %s: %s",
                installation_id,
                type(exc).__name__,
            )

    return store


def _load_credentials(
    installation_id: str, settings: Settings
) -> Callable[[], dict[str, Any] | None]:
    def load() -> dict[str, Any] | None:
        try:
            with _store_sessions(settings)() as session:
                installation = tenants_repo.get_installation(session, installation_id)
                if installation is None:
                    return None
                return cipher_for(settings).decrypt(installation.credentials)
        except (SQLAlchemyError, CredentialsUnreadable) as exc:
            log.warning(
                "could not read the stored credentials of installation %s: %s",
                installation_id,
                type(exc).__name__,
            )
            return None

    return load
