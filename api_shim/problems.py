"""Every error the API answers, in the contract's shapes, mapped in one place.

The write route answers bad requests as 400 `text/plain` (one line naming the
field); everything else that is not a write result is RFC 9457
`application/problem+json` with the contract's `ApiProblem` extensions.
"""

from __future__ import annotations

import logging
import math
import uuid
from datetime import timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from writejobs.clock import iso, utcnow
from writejobs.errors import (
    ContractError,
    InstallationPaused,
    KeyInFlight,
    KeyReused,
    NotCancellable,
    NotFound,
    RateLimited,
    ReplayRefused,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class ApiProblem(Exception):
    """Raise to answer with a problem+json body."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        remedy: str | None = None,
        retryable: bool = False,
        retry_after: str | None = None,
        context: dict[str, Any] | None = None,
        issues: list[dict[str, Any]] | None = None,
        subsystem: str = "api",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.remedy = remedy
        self.retryable = retryable
        self.retry_after = retry_after
        self.context = context
        self.issues = issues
        self.subsystem = subsystem
        self.headers = headers


def problem_response(request: Request, problem: ApiProblem) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://httpstatuses.com/{problem.status}",
        "title": _TITLES.get(problem.status, "Error"),
        "status": problem.status,
        "detail": problem.detail,
        "subsystem": problem.subsystem,
        "time": iso(utcnow()),
        "requestId": request_id(request),
        "retryable": problem.retryable,
    }
    if problem.remedy:
        body["remedy"] = problem.remedy
    if problem.retry_after:
        body["retryAfter"] = problem.retry_after
    if problem.context:
        body["context"] = problem.context
    if problem.issues:
        body["issues"] = problem.issues
    return JSONResponse(
        body, status_code=problem.status, media_type=PROBLEM_JSON, headers=problem.headers
    )


# A 400 names the problem; it never echoes a caller's megabytes back (the messages
# quote short prefixes already; this is the backstop).
MAX_BAD_REQUEST_CHARS = 1000


def bad_request(message: str) -> PlainTextResponse:
    """The write endpoint's 400: text/plain, one line."""
    if len(message) > MAX_BAD_REQUEST_CHARS:
        message = message[:MAX_BAD_REQUEST_CHARS] + "…"
    return PlainTextResponse(message, status_code=400)


def request_id(request: Request) -> str:
    existing = getattr(request.state, "request_id", None)
    if existing is None:
        existing = str(uuid.uuid4())
        request.state.request_id = existing
    return str(existing)


def install_handlers(app: FastAPI) -> None:
    """Map every exception to the contract's shapes; no default FastAPI body leaks."""

    @app.exception_handler(ApiProblem)
    async def _problem(request: Request, exc: ApiProblem) -> Response:
        return problem_response(request, exc)

    @app.exception_handler(ContractError)
    async def _contract(request: Request, exc: ContractError) -> Response:
        return bad_request(str(exc))

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> Response:
        return problem_response(request, ApiProblem(404, str(exc), remedy=_NOT_FOUND_REMEDY))

    @app.exception_handler(StoreUnavailable)
    async def _store_unavailable(request: Request, exc: StoreUnavailable) -> Response:
        # Nothing was recorded, so sending the write again cannot make a duplicate.
        remedy = "The write was not recorded; send it again."
        return problem_response(request, ApiProblem(503, str(exc), retryable=True, remedy=remedy))

    @app.exception_handler(KeyInFlight)
    async def _key_in_flight(request: Request, exc: KeyInFlight) -> Response:
        problem = ApiProblem(
            409,
            str(exc),
            retryable=True,
            retry_after=iso(utcnow() + timedelta(seconds=1)),
            context={"operationId": exc.operation_id},
            remedy="Send it again in a moment with the same key to get its answer.",
        )
        return problem_response(request, problem)

    @app.exception_handler(RateLimited)
    async def _rate_limited(request: Request, exc: RateLimited) -> Response:
        wait_s = max(math.ceil(exc.retry_after_s), 1)
        remedy = (
            "The provider account's rate limit has no room for this write now; "
            "send it again after Retry-After, or write asynchronously to have it wait."
            if exc.subsystem == "provider"
            else "The project's intake quota is spent for now; send it again after Retry-After."
        )
        problem = ApiProblem(
            429,
            str(exc),
            retryable=True,
            retry_after=iso(utcnow() + timedelta(seconds=wait_s)),
            remedy=remedy,
            subsystem=exc.subsystem,
            headers={"Retry-After": str(wait_s)},
            context={"retryAfterSeconds": round(exc.retry_after_s, 3)},
        )
        return problem_response(request, problem)

    @app.exception_handler(KeyReused)
    async def _key_reused(request: Request, exc: KeyReused) -> Response:
        remedy = "Use a new Idempotency-Key for a different request."
        return problem_response(request, ApiProblem(422, str(exc), remedy=remedy))

    @app.exception_handler(InstallationPaused)
    async def _paused(request: Request, exc: InstallationPaused) -> Response:
        problem = ApiProblem(
            409,
            str(exc),
            retryable=True,
            retry_after=iso(utcnow() + timedelta(seconds=PAUSED_RETRY_AFTER_S)),
            context={"installationId": exc.installation_id},
            remedy="Send it again once the installation is resumed, or send it "
            "asynchronously: asynchronous writes are accepted and wait.",
        )
        return problem_response(request, problem)

    @app.exception_handler(NotCancellable)
    async def _not_cancellable(request: Request, exc: NotCancellable) -> Response:
        problem = ApiProblem(409, str(exc), context={"operationId": exc.operation_id})
        return problem_response(request, problem)

    @app.exception_handler(ReplayRefused)
    async def _replay_refused(request: Request, exc: ReplayRefused) -> Response:
        return problem_response(request, ApiProblem(400, str(exc)))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        issues = [
            {
                "in": str(e["loc"][0]),
                "name": ".".join(str(p) for p in e["loc"][1:]),
                "detail": e["msg"],
            }
            for e in exc.errors()
        ]
        first = issues[0] if issues else {"name": "request", "detail": "invalid"}
        detail = f"{first['name']}: {first['detail']}"
        return problem_response(request, ApiProblem(400, detail, issues=issues))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return problem_response(request, ApiProblem(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem_response(
            request,
            ApiProblem(
                500, "internal error; the request id identifies it in our logs", retryable=True
            ),
        )


# What a paused installation's 409 suggests as the time to send again.
PAUSED_RETRY_AFTER_S = 30

_NOT_FOUND_REMEDY = "Verify the ids and that they belong to the project of your API key."
