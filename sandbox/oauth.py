"""A local OAuth 2.0 token endpoint (RFC 6749) for the sandbox providers.

`POST /oauth/token` takes a form body and grants access tokens for the
client-credentials grant (any non-empty client id and secret, in the body or as
HTTP Basic) and the refresh-token grant (any refresh token not already spent:
each use rotates it). Tokens last `TokenIssuer.expires_in_s`;
`POST /_sandbox/oauth/expire` ends every token issued so far, so the next
provider call with one is answered 401 and tests see the client renew it.

The providers' bearer check stays as lenient as before for tokens this endpoint
never issued, so installations with made-up bearer tokens keep working next to
OAuth2 ones; a token it did issue passes only while it is live.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import parse_qsl, unquote

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse

TOKEN_PATH = "/oauth/token"
# RFC 6749 §5.1: token responses must not be cached.
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass
class TokenIssuer:
    """The tokens `/oauth/token` issued: which are live, which refresh tokens are spent."""

    expires_in_s: int = 3600
    lock: threading.Lock = field(default_factory=threading.Lock)
    # access token -> when it stops working (time.monotonic() seconds)
    access_expiry: dict[str, float] = field(default_factory=dict)
    spent_refresh_tokens: set[str] = field(default_factory=set)

    def grant(self, *, refresh: bool) -> dict[str, Any]:
        """A new access token (and refresh token): the body of a successful token response."""
        token = "sbx-at-" + secrets.token_urlsafe(24)
        with self.lock:
            self.access_expiry[token] = time.monotonic() + self.expires_in_s
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.expires_in_s,
        }
        if refresh:
            body["refresh_token"] = "sbx-rt-" + secrets.token_urlsafe(24)
        return body

    def spend(self, refresh_token: str) -> bool:
        """Use a refresh token once; False when it was used before (rotated away)."""
        with self.lock:
            if refresh_token in self.spent_refresh_tokens:
                return False
            self.spent_refresh_tokens.add(refresh_token)
            return True

    def accepts(self, token: str) -> bool:
        """Whether a provider takes `token`: one issued here while live, any other if non-empty."""
        with self.lock:
            expires_at = self.access_expiry.get(token)
        if expires_at is None:
            return bool(token)
        return time.monotonic() < expires_at

    def expire_all(self) -> int:
        """End every access token issued so far; returns how many were live."""
        now = time.monotonic()
        with self.lock:
            live = [t for t, at in self.access_expiry.items() if at > now]
            for token in live:
                self.access_expiry[token] = 0.0
        return len(live)

    def reset(self) -> None:
        with self.lock:
            self.access_expiry.clear()
            self.spent_refresh_tokens.clear()


def create_router(issuer: TokenIssuer) -> APIRouter:
    """`POST /oauth/token` and `POST /_sandbox/oauth/expire` over `issuer`."""
    router = APIRouter()

    @router.post(TOKEN_PATH)
    async def token(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> Response:
        """Grant a token: `grant_type=client_credentials` or `refresh_token` (RFC 6749 §4.4, §6)."""
        form = dict(parse_qsl((await request.body()).decode(errors="replace")))
        client_id, client_secret = _basic_client(authorization) or (
            form.get("client_id", ""),
            form.get("client_secret", ""),
        )
        if not client_id or not client_secret:
            return _error(401, "invalid_client", "client authentication failed")
        grant_type = form.get("grant_type", "")
        if grant_type == "client_credentials":
            return JSONResponse(issuer.grant(refresh=False), headers=_NO_STORE)
        if grant_type == "refresh_token":
            refresh_token = form.get("refresh_token", "")
            if not refresh_token:
                return _error(400, "invalid_request", "refresh_token is required")
            if not issuer.spend(refresh_token):
                return _error(400, "invalid_grant", "the refresh token was already used")
            return JSONResponse(issuer.grant(refresh=True), headers=_NO_STORE)
        return _error(400, "unsupported_grant_type", f"grant_type {grant_type!r} is not supported")

    @router.post("/_sandbox/oauth/expire")
    def expire() -> dict[str, int]:
        """End every access token issued so far: the next call with one gets a 401."""
        return {"expired": issuer.expire_all()}

    return router


def bearer_guard(
    issuer: TokenIssuer,
    require_token: Callable[[str | None], None],
    refuse: Callable[[], Exception],
) -> Callable[[str | None], None]:
    """A provider's bearer check that also refuses the tokens `issuer` ended.

    `require_token` is the provider's own check (its 401 for a missing token);
    `refuse` builds the provider's 401 for a token that is no longer live.
    """

    def guard(authorization: Annotated[str | None, Header()] = None) -> None:
        require_token(authorization)
        _scheme, _, token = (authorization or "").partition(" ")
        if not issuer.accepts(token.strip()):
            raise refuse()

    return guard


def _basic_client(authorization: str | None) -> tuple[str, str] | None:
    """The client id and secret of an HTTP Basic header (RFC 6749 §2.3.1), if there is one."""
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, _, client_secret = decoded.partition(":")
    return unquote(client_id), unquote(client_secret)


def _error(status_code: int, error: str, description: str) -> JSONResponse:
    """An RFC 6749 §5.2 error body."""
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status_code,
        headers=_NO_STORE,
    )
