"""Which of a write's own headers go on to Salesforce: an allowlist of the request
headers its REST API defines, never whatever a caller sends."""

from __future__ import annotations

from writejobs.providers.base import WriteOptions

# A caller's headers ride along only if Salesforce defines them as request headers of
# its REST API ("Headers" in the REST API Developer Guide,
# https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/headers.htm):
# Sforce-Auto-Assign, Sforce-Call-Options, Sforce-Duplicate-Rule-Header, Sforce-Mru,
# Sforce-Query-Options, Sforce-Enable-PKChunking (all `Sforce-*`), the package version
# header `x-sfdc-packageversion-[namespace]`, and the conditional request headers
# (https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/intro_rest_conditional_requests.htm).
# An allowlist, not a denylist: Cookie, Proxy-Authorization, Connection, Expect and
# whatever else a caller sends must never reach the org with our credentials.
# The compression headers of that page are left out: the client frames the body.
FORWARDED_HEADER_PREFIXES = ("sforce-", "x-sfdc-packageversion-")
FORWARDED_HEADERS = frozenset(
    {"if-match", "if-none-match", "if-modified-since", "if-unmodified-since"}
)


def forwarded_headers(options: WriteOptions) -> list[tuple[str, str]]:
    """The caller's headers that Salesforce defines for API calls, to send overriding the
    client's; any other header is dropped (see `FORWARDED_HEADER_PREFIXES`)."""
    return [(k, v) for k, v in options.headers if is_forwarded_header(k)]


def is_forwarded_header(name: str) -> bool:
    """Whether `name` is a Salesforce REST API request header we pass on."""
    lowered = name.strip().lower()
    return lowered in FORWARDED_HEADERS or lowered.startswith(FORWARDED_HEADER_PREFIXES)
