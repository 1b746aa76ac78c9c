"""The sandbox app: local stand-ins for the providers writejobs writes to.

One FastAPI app holds a router per provider (HubSpot, Salesforce and its Bulk
API 2.0, AvePoint Opus) over one shared `SandboxState`, an OAuth2 token endpoint
(`sandbox.oauth`) whose ended tokens every provider refuses, a file host for bulk
writes' `recordsURL` (`sandbox.files`), per-token rate limits as each provider
enforces them (`sandbox.limits`), plus `/_sandbox/*` routes that tests and
benchmarks use to read what the providers saw and to reset them. Each provider
answers errors, malformed bodies included, in its own shape.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox import files, hubspot, oauth, opus, salesforce, salesforce_bulk, salesforce_upsert
from sandbox.faults import FaultConfig, FaultMiddleware
from sandbox.limits import LimitConfig, LimitMiddleware
from sandbox.state import LoggedRequest, SandboxState, iso_now

# Which provider serves each path, for the rate limits (Salesforce: its whole REST root).
PROVIDER_PREFIXES = {
    hubspot.OBJECTS_PREFIX: hubspot.PROVIDER,
    salesforce.DATA_PREFIX: salesforce.PROVIDER,
    opus.PREFIX: opus.PROVIDER,
}


def create_app(state: SandboxState | None = None) -> FastAPI:
    """A sandbox app over `state` (a fresh one unless a test wants to hold it)."""
    state = state or SandboxState()
    issuer = oauth.TokenIssuer()
    app = FastAPI(title="writejobs provider sandbox", openapi_url=None)
    app.state.sandbox = state
    app.state.oauth = issuer
    app.include_router(hubspot.create_router(state))
    app.include_router(salesforce.create_router(state))
    app.include_router(salesforce_upsert.create_router(state))
    app.include_router(salesforce_bulk.create_router(state))
    app.include_router(opus.create_router(state))
    app.include_router(oauth.create_router(issuer))
    app.include_router(_control_router(state, issuer))
    app.include_router(files.create_router(state))
    _refuse_ended_tokens(app, issuer)
    # Added last, so outermost: the log sees the refusals and the faults too, and a
    # call over its limit is refused before any fault is rolled for it.
    app.add_middleware(FaultMiddleware, plan=state.faults)
    app.add_middleware(LimitMiddleware, plan=state.limits, providers=PROVIDER_PREFIXES)
    app.add_middleware(RequestLogMiddleware, state=state)

    async def on_hubspot_error(_request: Request, error: Exception) -> Response:
        assert isinstance(error, hubspot.HubSpotError)
        return hubspot.hubspot_error_response(error)

    async def on_salesforce_error(_request: Request, error: Exception) -> Response:
        assert isinstance(error, salesforce.SalesforceError)
        return salesforce.salesforce_error_response(error)

    async def on_opus_error(_request: Request, error: Exception) -> Response:
        assert isinstance(error, opus.OpusError)
        return opus.opus_error_response(error)

    async def on_invalid_body(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        # Each provider answers a malformed body in its own error shape.
        path = request.url.path
        if path.startswith(hubspot.OBJECTS_PREFIX):
            message = f"Invalid input JSON: {_describe(error)}"
            return hubspot.hubspot_error_response(
                hubspot.HubSpotError(400, "VALIDATION_ERROR", message)
            )
        if path.startswith(salesforce.DATA_PREFIX):
            return salesforce.salesforce_error_response(
                salesforce.SalesforceError(400, "JSON_PARSER_ERROR", _describe(error))
            )
        if path.startswith(opus.PREFIX):
            return opus.opus_error_response(opus.OpusError(400, _describe(error)))
        return await request_validation_exception_handler(request, error)

    app.add_exception_handler(hubspot.HubSpotError, on_hubspot_error)
    app.add_exception_handler(salesforce.SalesforceError, on_salesforce_error)
    app.add_exception_handler(opus.OpusError, on_opus_error)
    app.add_exception_handler(RequestValidationError, on_invalid_body)
    return app


def _refuse_ended_tokens(app: FastAPI, issuer: oauth.TokenIssuer) -> None:
    """Each provider's bearer check, extended to refuse the tokens `/oauth/token` ended,
    with that provider's own 401 (what its API answers for an expired token)."""
    app.dependency_overrides[hubspot.require_bearer] = oauth.bearer_guard(
        issuer,
        hubspot.require_bearer,
        lambda: hubspot.HubSpotError(
            401, "EXPIRED_AUTHENTICATION", "The OAuth token used to make this call expired."
        ),
    )
    app.dependency_overrides[salesforce.require_session] = oauth.bearer_guard(
        issuer,
        salesforce.require_session,
        lambda: salesforce.SalesforceError(401, "INVALID_SESSION_ID", "Session expired or invalid"),
    )
    app.dependency_overrides[opus.require_bearer] = oauth.bearer_guard(
        issuer, opus.require_bearer, lambda: opus.OpusError(401, "Unauthorized")
    )


def _control_router(state: SandboxState, issuer: oauth.TokenIssuer) -> APIRouter:
    router = APIRouter(prefix="/_sandbox")

    @router.get("/stats")
    def stats() -> dict[str, Any]:
        """Calls per route template, records stored, duplicate creates and batch sizes."""
        return state.stats()

    @router.post("/reset", status_code=204)
    def reset() -> Response:
        """Forget every record and counter, and every token `/oauth/token` issued."""
        state.reset()
        issuer.reset()
        return Response(status_code=204)

    @router.post("/faults", status_code=204)
    def set_faults(config: FaultConfig) -> Response:
        """Replace the fault rules (see `sandbox.faults`)."""
        state.faults.configure(config)
        return Response(status_code=204)

    @router.delete("/faults", status_code=204)
    def clear_faults() -> Response:
        state.faults.clear()
        return Response(status_code=204)

    @router.post("/limits", status_code=204)
    def set_limit(config: LimitConfig) -> Response:
        """Set one provider's limit for one bearer token, or `"*"` (see `sandbox.limits`)."""
        state.limits.configure(config)
        return Response(status_code=204)

    @router.delete("/limits", status_code=204)
    def clear_limits() -> Response:
        state.limits.clear()
        return Response(status_code=204)

    @router.get("/limits/stats")
    def limit_stats() -> dict[str, Any]:
        """Per `provider:token_hash`: calls admitted and refused, the most in any window."""
        return state.limits.stats()

    @router.get("/requests")
    def requests() -> list[dict[str, Any]]:
        """The last 10,000 provider requests: time, method, path, status, input count."""
        return state.recent_requests()

    @router.get("/records/{provider}/{object_name}/keys")
    def stored_keys(provider: str, object_name: str, field: str) -> dict[str, Any]:
        """Hashes of `field`'s value in each stored record of one object, one per record
        (a value stored twice is listed twice), never the values: how a benchmark finds
        records written twice, or not at all, without the sandbox holding its bookkeeping."""
        return state.stored_keys(provider, object_name, field, key_hash)

    return router


class RequestLogMiddleware:
    """Counts and logs every provider call, including the ones refused before a route ran.

    A plain ASGI middleware, so it sees the final status of every response and
    the route template FastAPI matched; endpoints report their input count in
    `request.state.inputs`.
    """

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sandbox"):
            await self.app(scope, receive, send)
            return
        status_code = 500
        retry_after: str | None = None
        body = bytearray()

        async def receive_keeping_body() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) < _MAX_BODY_FOR_KEYS:
                body.extend(message.get("body", b""))
            return message

        async def send_watching_status(message: Message) -> None:
            nonlocal status_code, retry_after
            if message["type"] == "http.response.start":
                status_code = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"retry-after":
                        retry_after = value.decode()
            await send(message)

        try:
            await self.app(scope, receive_keeping_body, send_watching_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None)
            request_state = scope.get("state") or {}
            self.state.log_request(
                f"{scope['method']} {template}" if template else None,
                LoggedRequest(
                    at=iso_now(),
                    method=scope["method"],
                    path=scope["path"],
                    status=status_code,
                    inputs=int(request_state.get("inputs", 0)),
                    keys=record_keys(bytes(body)),
                    retry_after=retry_after,
                ),
            )


_MAX_BODY_FOR_KEYS = 4 * 1024 * 1024
_KEY_FIELDS = frozenset({"email", "Email", "rowKey"})


def record_keys(body: bytes) -> tuple[str, ...]:
    """Short hashes of the identifying values in a request body, in body order."""
    try:
        document = json.loads(body) if body else None
    except ValueError:
        return ()
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _KEY_FIELDS and isinstance(value, str):
                    found.append(key_hash(value))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(document)
    return tuple(found)


def key_hash(value: str) -> str:
    """How the request log names a record: a hash, never the value itself."""
    return hashlib.sha256(value.encode()).hexdigest()[:12]


def _describe(error: RequestValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in e.get('loc', ()))}: {e.get('msg', '')}"
        for e in error.errors()
    )
