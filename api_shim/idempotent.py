"""Running a write route under its `Idempotency-Key` (see writejobs.intake.idempotency).

The route hands over how to perform the write; this answers from the key's
stored answer when there is one, and otherwise performs it with the key
claimed in the operation's transaction.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api_shim.state import AppState
from writejobs.intake import idempotency
from writejobs.intake.idempotency import Answer, KeyClaim
from writejobs.store.tables import Project

REPLAYED_HEADER = "Idempotent-Replayed"


async def answer_once(
    state: AppState,
    project: Project,
    key: str | None,
    request: Request,
    body: bytes,
    perform: Callable[[KeyClaim | None], Response],
) -> Response:
    """`perform(None)` without a key; with one, the key's answer, performed at most once.

    `perform` runs in a worker thread (it blocks on SQL and the provider).
    A replayed answer carries `Idempotent-Replayed: true`.
    """
    if key is None:
        return await run_in_threadpool(perform, None)
    # The path as it names the project by id: a retry may spell the project by name.
    segments = request.url.path.split("/")
    segments[3] = project.id
    claim = KeyClaim(
        project.id,
        key,
        idempotency.fingerprint(request.method, "/".join(segments), body),
        ttl_s=state.deps.settings.idempotency_ttl_s,
    )

    def attempt(claimed: KeyClaim) -> Answer:
        response = perform(claimed)
        return Answer(response.status_code, bytes(response.body))

    answer, replayed = await run_in_threadpool(
        idempotency.answer_once,
        state.deps.sessions,
        claim,
        attempt,
        clock=state.deps.clock,
        abandoned_after_s=state.deps.settings.sync_lease_s,
    )
    headers = {REPLAYED_HEADER: "true"} if replayed else None
    return Response(
        answer.body, status_code=answer.status, media_type="application/json", headers=headers
    )
