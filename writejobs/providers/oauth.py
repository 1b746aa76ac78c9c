"""Installation credentials as `httpx.Auth`: a bearer token, or OAuth2 with refresh.

An installation's credentials take one of two shapes:

    {"type": "bearer", "access_token": "..."}     (legacy rows: {"access_token"} or {"token"})
    {"type": "oauth2", "grant": "client_credentials" | "refresh_token",
     "token_url": "...", "client_id": "...", "client_secret": "...",
     "refresh_token": "..."?, "access_token": "..."?, "expires_at": "<RFC 3339>"?}

For OAuth2, `InstallationAuth` fetches an access token before a call when it has
none or it expires within `EXPIRY_MARGIN_S`, and on a 401 renews it once and
sends the call again (a second 401 is the call's answer). Each new token (and a
refresh token the server rotated) goes to `on_refresh`, which stores it.

Processes share credentials only through the store, so before asking the token
endpoint, `InstallationAuth` reads the stored credentials (`load_latest`): when
another process already renewed them, their token is used instead. This also
keeps a rotated refresh token from being spent twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator
from datetime import datetime, timedelta
from typing import Any, NoReturn

import httpx

from writejobs.clock import Clock, as_utc, iso, utcnow
from writejobs.errors import PermanentProviderError, RetryableProviderError
from writejobs.providers.http_common import is_retryable_status, parse_retry_after, read_json

log = logging.getLogger(__name__)

# A token this close to its expiry is renewed before the call rather than after a 401.
EXPIRY_MARGIN_S = 60.0
GRANTS = ("client_credentials", "refresh_token")
# How much of a token endpoint's error description a message keeps.
_DESCRIPTION_CHARS = 200

CredentialsSink = Callable[[dict[str, Any]], None]
CredentialsSource = Callable[[], dict[str, Any] | None]


def bearer_credentials(token: str) -> dict[str, Any]:
    """Credentials for a static bearer token."""
    return {"type": "bearer", "access_token": token}


def oauth2_credentials(
    *, token_url: str, client_id: str, client_secret: str, refresh_token: str | None = None
) -> dict[str, Any]:
    """OAuth2 credentials: the refresh-token grant when `refresh_token` is given,
    else client credentials. The first call fetches the access token."""
    credentials: dict[str, Any] = {
        "type": "oauth2",
        "grant": "refresh_token" if refresh_token else "client_credentials",
        "token_url": token_url,
        "client_id": client_id,
        "client_secret": client_secret,
    }
    if refresh_token:
        credentials["refresh_token"] = refresh_token
    return credentials


def is_oauth2(credentials: dict[str, Any]) -> bool:
    return credentials.get("type") == "oauth2"


def access_token(credentials: dict[str, Any]) -> str | None:
    """The token to send, in any shape (the legacy bearer shape calls it `token`)."""
    token = credentials.get("access_token") or credentials.get("token")
    return token if isinstance(token, str) and token else None


class InstallationAuth(httpx.Auth):
    """Authenticates an installation's provider calls; safe to share between threads.

    `token_client` sends token requests (not through the provider's client, so a
    renewal never waits on, or recurses into, this auth). `on_refresh` receives
    the whole credentials after each renewal, to store them; `load_latest`
    returns the stored credentials (or None). Token endpoint failures raise from
    the provider call: `RetryableProviderError` for a transport error, 408, 429
    or 5xx; `PermanentProviderError` otherwise (a bad client or a revoked refresh
    token), with `status_code` 401 so every adapter reads it as the call's failure.
    """

    def __init__(
        self,
        credentials: dict[str, Any],
        *,
        provider: str,
        token_client: httpx.Client,
        on_refresh: CredentialsSink | None = None,
        load_latest: CredentialsSource | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self._credentials = dict(credentials)
        self._provider = provider
        self._token_client = token_client
        self._on_refresh = on_refresh
        self._load_latest = load_latest
        self._clock = clock
        # Held across a renewal, so threads sharing the client renew once, not each.
        self._lock = threading.Lock()

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        # A request answered 401 is sent again, so its body must be replayable; but a
        # streamed body (a bulk CSV upload of up to 150 MiB) is never read into memory
        # for that: after a 401 its token is renewed and the caller sends it again.
        streamed = not isinstance(request.stream, httpx.ByteStream)
        if not streamed:
            request.read()
        token = self._token_for_call()
        _authorize(request, token)
        response = yield request
        if response.status_code != 401:
            return
        renewed = self._renew_after(token)
        if renewed is None or renewed == token:
            return
        if streamed:
            raise RetryableProviderError(
                "the access token expired during a streamed upload; it is renewed, and the "
                "upload must be sent again",
                provider=self._provider,
                status_code=401,
            )
        _authorize(request, renewed)
        yield request

    def async_auth_flow(self, request: httpx.Request) -> NoReturn:
        """Not served: the renewal lock and the token client are sync (the adapters are)."""
        raise RuntimeError("InstallationAuth serves sync httpx clients only")

    def _token_for_call(self) -> str | None:
        with self._lock:
            token = access_token(self._credentials)
            if not is_oauth2(self._credentials) or (
                token and not self._expiring(self._credentials)
            ):
                return token
            return self._renew(stale=token)

    def _renew_after(self, rejected: str | None) -> str | None:
        with self._lock:
            current = access_token(self._credentials)
            if current != rejected:
                return current  # another thread renewed it while this call was out
            return self._renew(stale=rejected)

    def _renew(self, *, stale: str | None) -> str | None:
        """A token other than `stale`: the store's, if another process renewed it, else a
        new one from the token endpoint (bearer credentials have none: `stale` stays)."""
        if self._adopt_stored(stale):
            return access_token(self._credentials)
        if not is_oauth2(self._credentials):
            return stale
        try:
            renewed = self._fetch(self._credentials)
        except PermanentProviderError:
            # Another process may have spent the refresh token we hold a moment ago.
            if self._adopt_stored(stale):
                return access_token(self._credentials)
            raise
        self._credentials = renewed
        if self._on_refresh is not None:
            self._on_refresh(dict(renewed))
        return access_token(renewed)

    def _adopt_stored(self, stale: str | None) -> bool:
        """Take the stored credentials; True when they hold a usable token other than `stale`."""
        latest = self._load_latest() if self._load_latest is not None else None
        if latest is None:
            return False
        # Taken even when their token is stale too: their refresh token may be newer.
        self._credentials = dict(latest)
        token = access_token(latest)
        return token is not None and token != stale and not self._expiring(latest)

    def _expiring(self, credentials: dict[str, Any]) -> bool:
        expires_at = _parse_time(credentials.get("expires_at"))
        if expires_at is None:
            return False
        return expires_at - self._clock() <= timedelta(seconds=EXPIRY_MARGIN_S)

    def _fetch(self, credentials: dict[str, Any]) -> dict[str, Any]:
        """New credentials from the token endpoint (RFC 6749 §4.4 or §6)."""
        grant = credentials.get("grant", "client_credentials")
        token_url = credentials.get("token_url")
        if grant not in GRANTS:
            self._refuse(f"unknown OAuth2 grant {grant!r}")
        form = {
            "grant_type": grant,
            "client_id": credentials.get("client_id"),
            "client_secret": credentials.get("client_secret"),
        }
        if grant == "refresh_token":
            form["refresh_token"] = credentials.get("refresh_token")
        if credentials.get("scope"):
            form["scope"] = credentials["scope"]
        missing = [name for name, value in [("token_url", token_url), *form.items()] if not value]
        if missing:
            self._refuse(f"OAuth2 credentials lack {', '.join(missing)}")
        assert isinstance(token_url, str)
        try:
            response = self._token_client.post(
                token_url, data=form, headers={"Accept": "application/json"}
            )
        except httpx.TransportError as exc:
            raise RetryableProviderError(
                f"{self._provider} token endpoint unreachable: {type(exc).__name__}",
                provider=self._provider,
            ) from None
        body = read_json(response)
        if is_retryable_status(response.status_code):
            raise RetryableProviderError(
                f"{self._provider} token endpoint answered {response.status_code}",
                provider=self._provider,
                status_code=response.status_code,
                retry_after_s=parse_retry_after(
                    response.headers.get("Retry-After"), now=self._clock()
                ),
            )
        if not response.is_success:
            self._refuse(
                f"token endpoint refused the {grant} grant with {response.status_code}"
                f"{_oauth_error(body)}"
            )
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            self._refuse(f"token endpoint answered {response.status_code} with no access_token")
        assert isinstance(body, dict)
        renewed = dict(credentials)
        renewed["access_token"] = token
        renewed.pop("expires_at", None)
        expires_in_s = _seconds(body.get("expires_in"))
        if expires_in_s is not None:
            renewed["expires_at"] = iso(self._clock() + timedelta(seconds=expires_in_s))
        rotated = body.get("refresh_token")
        if isinstance(rotated, str) and rotated:
            renewed["refresh_token"] = rotated
        log.info(
            "fetched a %s access token (%s grant, expires in %s s)",
            self._provider,
            grant,
            "?" if expires_in_s is None else round(expires_in_s),
        )
        return renewed

    def _refuse(self, reason: str) -> NoReturn:
        # 401: credentials that cannot get a token fail the call like a rejected token.
        raise PermanentProviderError(
            f"{self._provider} credentials: {reason}", provider=self._provider, status_code=401
        )


def _authorize(request: httpx.Request, token: str | None) -> None:
    if token:
        request.headers["Authorization"] = f"Bearer {token}"


def _oauth_error(body: Any) -> str:
    """`: invalid_client (description)` from an RFC 6749 §5.2 error body, or nothing."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return ""
    description = body.get("error_description")
    suffix = f" ({description[:_DESCRIPTION_CHARS]})" if isinstance(description, str) else ""
    return f": {body['error'][:_DESCRIPTION_CHARS]}{suffix}"


def _seconds(value: Any) -> float | None:
    """`expires_in`, which some servers send as a string."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return as_utc(datetime.fromisoformat(value))
    except ValueError:
        return None
