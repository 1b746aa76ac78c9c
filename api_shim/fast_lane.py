"""The write route's hot path as plain ASGI: most writes never reach FastAPI.

An asynchronous write (auto-batched or single) is what clients send by the
thousand, and the framework's layers (middleware, routing, dependency solving,
request and response objects) cost more CPU than recording it. So this ASGI
wrapper answers the common case itself: a `POST` to the write path with a small
JSON body, a cached API key of the project the path names, no `Idempotency-Key`,
no intake quota, an asynchronous write whose route the directory holds. It does
what the route does (`accept_async_write`: the row committed before the answer)
and answers `{"operationId": …}` as the route would.

Anything else, and any error on the way, goes to the FastAPI app untouched, with
the body read so far given back: a write that raised here recorded nothing (the
commit is its last step), so the app handles it from scratch, and every error
keeps one shape, the app's.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_shim.deps import MAX_API_KEY_CHARS, names_project
from api_shim.routes_write import SMALL_BODY_BYTES
from api_shim.state import AppState
from writejobs.core.contract import parse_write_request
from writejobs.intake.write import WriteTarget, accept_async_write

log = logging.getLogger(__name__)

WRITE_PATH = re.compile(r"/v1/projects/([^/]+)/integrations/([^/]+)/objects/([^/]+)")
# Larger bodies (explicit batches) go to the app, which parses them in a thread.
MAX_FAST_BODY_BYTES = SMALL_BODY_BYTES
_JSON_HEADERS = [(b"content-type", b"application/json")]


class FastLane:
    """Wraps the API app; `state` is read on each request (the app builds it)."""

    def __init__(self, app: ASGIApp, state: Callable[[], AppState]) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        match = WRITE_PATH.fullmatch(scope["path"])
        if match is None:
            return await self.app(scope, receive, send)
        # The first of a repeated header wins, as in the app's own header reading.
        headers = dict(reversed(scope["headers"]))
        declared = headers.get(b"content-length", b"")
        state = self.state()
        if (
            b"idempotency-key" in headers
            or state.quota.enabled
            or not declared.isdigit()
            or int(declared) > MAX_FAST_BODY_BYTES
        ):
            return await self.app(scope, receive, send)
        body, complete = await _read_body(receive, MAX_FAST_BODY_BYTES)
        if complete:
            answer = await _accept(state, match, headers.get(b"x-api-key"), body)
            if answer is not None:
                return await _send_json(send, answer)
        await self.app(scope, _replay(body, complete, receive), send)


async def _accept(
    state: AppState, match: re.Match[str], raw_key: bytes | None, body: bytes
) -> bytes | None:
    """The answer's body when the write is the common case and was accepted, else None."""
    if raw_key is None or len(raw_key) > MAX_API_KEY_CHARS:
        return None
    directory = state.dispatch.directory
    project = directory.cached_project_for_api_key(raw_key.decode("latin-1"))
    project_ref, integration_ref, object_name = match.groups()
    if project is None or not names_project(project, project_ref):
        return None
    try:
        write = parse_write_request(body)
        if not write.is_async or not directory.knows(project.id, integration_ref, write.group_ref):
            return None
        accepted = await accept_async_write(
            WriteTarget(project, integration_ref, object_name),
            write,
            state.deps,
            state.dispatch,
            state.committer.commit_async,
            state.hand_offs,
        )
    except Exception as exc:  # nothing was recorded: the app answers it in its own shape
        log.debug("write left to the app: %s", type(exc).__name__)
        return None
    op = accepted.operation
    state.metrics.count("writes_accepted", shape=op.shape)
    # `json.dumps({"operationId": op.id})`'s bytes: an id is a UUID's text (writejobs.core.ids),
    # which JSON quotes as it is.
    return b'{"operationId":"' + op.id.encode() + b'"}'


async def _read_body(receive: Receive, limit_bytes: int) -> tuple[bytes, bool]:
    """The body, and whether it is whole: reading stops past `limit_bytes` (the app
    then reads the rest and refuses it, as it refuses any body too large)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True
        if size > limit_bytes:
            return b"".join(chunks), False


def _replay(body: bytes, complete: bool, receive: Receive) -> Receive:
    """A `receive` that gives the app the body already read, then the rest of the stream."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": not complete}
        return await receive()

    return replayed


async def _send_json(send: Send, body: bytes) -> None:
    headers = [(b"content-length", str(len(body)).encode()), *_JSON_HEADERS]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
