"""Which adapter writes to which provider, and which function reads its rate limits: the
one place that maps a provider's name to its code."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from writejobs.errors import ContractError
from writejobs.providers import hubspot, opus, salesforce
from writejobs.providers.base import ProviderAdapter
from writejobs.providers.http_common import RateLimitReader
from writejobs.providers.hubspot import HubSpotAdapter
from writejobs.providers.opus import OpusAdapter
from writejobs.providers.salesforce import SalesforceAdapter

# Opus is built without a connection id, so a write's object name names its connection.
_ADAPTERS: dict[str, Callable[[httpx.Client], ProviderAdapter]] = {
    "hubspot": HubSpotAdapter,
    "opus": OpusAdapter,
    "salesforce": SalesforceAdapter,
}


def build_adapter(provider: str, client: httpx.Client) -> ProviderAdapter:
    """The adapter for `provider` over `client`; raises `ContractError` for an unknown name."""
    try:
        factory = _ADAPTERS[provider]
    except KeyError:
        known = ", ".join(sorted(_ADAPTERS))
        raise ContractError(f"unknown provider {provider!r}; known providers: {known}") from None
    return factory(client)


def batch_size(provider: str) -> int:
    """Records per batch call of the provider's adapter (1 for a provider we do not know)."""
    factory = _ADAPTERS.get(provider)
    size = getattr(factory, "max_batch_size", 1)
    return int(size) if isinstance(size, int) and size > 0 else 1


_RATE_LIMIT_READERS: dict[str, RateLimitReader] = {
    "hubspot": hubspot.read_rate_limit,
    "opus": opus.read_rate_limit,
    "salesforce": salesforce.read_rate_limit,
}


def rate_limit_reader(provider: str) -> RateLimitReader | None:
    """The provider module's `read_rate_limit`, or None for a provider with none."""
    return _RATE_LIMIT_READERS.get(provider)
