"""Which adapter writes to which provider: the one place that maps a name to a class."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from writejobs.errors import ContractError
from writejobs.providers.base import ProviderAdapter
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
