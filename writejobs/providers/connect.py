"""Build a provider adapter for an installation: its base URL, its credentials.

HTTP clients are kept per installation for the life of the process, so
consecutive writes to one installation reuse their connections instead of
opening a new one per operation, and an OAuth2 token renewed by one write is
used by the next. httpx clients are safe to share between threads; a forked
worker child starts with an empty pool of its own.

Credentials come through a `CredentialVault` (the store's `StoredCredentials`
in a running system): decrypted once, when the client is built, and a renewed
token handed back to it. This module runs no SQL.

With `on_rate_limit`, every answer an installation's client receives is read by
its provider's `read_rate_limit` and what it said is handed to the callback with
the installation's `Account` (the fleet's limiter learns from it). With
`on_send`, every request is announced as it leaves (the limiter moves the call's
slot to that moment).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import httpx

from writejobs.clock import Clock, utcnow
from writejobs.core.flow import Account, RateLimitObservation
from writejobs.errors import CredentialsUnreadable, RetryableProviderError
from writejobs.providers.base import ProviderAdapter
from writejobs.providers.http_common import rate_limit_hook
from writejobs.providers.oauth import InstallationAuth
from writejobs.providers.registry import build_adapter, rate_limit_reader
from writejobs.providers.salesforce_bulk import SalesforceBulkIngest
from writejobs.settings import Settings

log = logging.getLogger(__name__)

# on_rate_limit(account, observation): what an answer said of the account's limits.
RateLimitListener = Callable[[Account, RateLimitObservation], None]
# on_send(account): a call of the account leaves for the provider now.
SendListener = Callable[[Account], None]


class InstallationRef(Protocol):
    """What an adapter needs of an installation (the store's `Installation` row has it)."""

    @property
    def id(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def base_url(self) -> str: ...
    @property
    def credentials(self) -> str: ...


class CredentialVault(Protocol):
    """Where installations' credentials are kept, encrypted at rest."""

    def decrypt(self, encrypted: str) -> dict[str, Any]:
        """Raises `CredentialsUnreadable` when this process's key cannot read them."""
        ...

    def load_latest(self, installation_id: str) -> dict[str, Any] | None: ...

    def store(self, installation_id: str, credentials: dict[str, Any]) -> None: ...


class ProviderClients:
    """Opens adapters and bulk ingest clients over one pooled HTTP client per installation."""

    def __init__(
        self,
        vault: CredentialVault,
        *,
        on_rate_limit: RateLimitListener | None = None,
        on_send: SendListener | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.vault = vault
        self._on_rate_limit = on_rate_limit
        self._on_send = on_send
        self._clock = clock
        # (pid, installation id, base URL, timeout in seconds) -> the installation's client.
        self._clients: dict[tuple[int, str, str, float], httpx.Client] = {}
        # (pid, timeout in seconds) -> the client that sends token requests, for every installation.
        self._token_clients: dict[tuple[int, float], httpx.Client] = {}
        self._lock = threading.Lock()

    @contextmanager
    def open_adapter(
        self, installation: InstallationRef, settings: Settings
    ) -> Iterator[ProviderAdapter]:
        """An adapter for the installation, over this process's client for it.

        Raises `RetryableProviderError` when the stored credentials cannot be
        decrypted with this process's key (the message names `WRITEJOBS_SECRET_KEY`).
        """
        yield build_adapter(installation.provider, self._client(installation, settings))

    @contextmanager
    def open_bulk_ingest(
        self, installation: InstallationRef, settings: Settings
    ) -> Iterator[SalesforceBulkIngest]:
        """A Bulk API 2.0 ingest client for a Salesforce installation, over the same client."""
        yield SalesforceBulkIngest(self._client(installation, settings))

    def _client(self, installation: InstallationRef, settings: Settings) -> httpx.Client:
        pid, timeout_s = os.getpid(), settings.provider_timeout_s
        key = (pid, installation.id, installation.base_url, timeout_s)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._build(installation, timeout_s)
                self._clients[key] = client
            return client

    def _build(self, installation: InstallationRef, timeout_s: float) -> httpx.Client:
        try:
            credentials = self.vault.decrypt(installation.credentials)
        except CredentialsUnreadable as exc:
            # Retryable: another worker, started with the right key, may take the retry.
            raise RetryableProviderError(str(exc), provider=installation.provider) from None
        token_key = (os.getpid(), timeout_s)
        token_client = self._token_clients.get(token_key)
        if token_client is None:
            token_client = httpx.Client(timeout=timeout_s)
            self._token_clients[token_key] = token_client
        installation_id = installation.id
        auth = InstallationAuth(
            credentials,
            provider=installation.provider,
            token_client=token_client,
            on_refresh=lambda renewed: self.vault.store(installation_id, renewed),
            load_latest=lambda: self.vault.load_latest(installation_id),
        )
        return httpx.Client(
            base_url=installation.base_url,
            auth=auth,
            timeout=timeout_s,
            event_hooks={
                "request": self._request_hooks(installation),
                "response": self._response_hooks(installation),
            },
        )

    def _request_hooks(self, installation: InstallationRef) -> list[Callable[..., Any]]:
        listener = self._on_send
        if listener is None:
            return []
        account = Account(installation.provider, installation.id)

        def leaving(_request: httpx.Request) -> None:
            try:
                listener(account)
            except Exception:  # pacing is advice: it must never fail the write it paces
                log.warning("installation %s: call not marked sent", account.key, exc_info=True)

        return [leaving]

    def _response_hooks(self, installation: InstallationRef) -> list[Callable[..., Any]]:
        listener, read = self._on_rate_limit, rate_limit_reader(installation.provider)
        if listener is None or read is None:
            return []
        account = Account(installation.provider, installation.id)

        def heard(observation: RateLimitObservation) -> None:
            try:
                listener(account, observation)
            except Exception:  # pacing is advice: it must never fail the write it heard
                log.warning("installation %s: rate limit not learned", account.key, exc_info=True)

        return [rate_limit_hook(read, heard, clock=self._clock)]
