"""What routes depend on, as typed FastAPI dependencies (the full-stack template's `deps.py`).

Routes name what they need (`State`, `Sessions`, `CallerProject`,
`IdempotencyKey`) in their
signatures instead of reading `request.app.state` by hand, so each route says
what it touches and a test can override one dependency.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Path, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api_shim.problems import ApiProblem
from api_shim.state import AppState
from writejobs.core.json_input import shown
from writejobs.intake.idempotency import HEADER, parse_key
from writejobs.store.tables import Project

# Keys we issue are ~50 characters; a longer one is refused before it is hashed.
MAX_API_KEY_CHARS = 256


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.writejobs
    return state


State = Annotated[AppState, Depends(get_state)]


def get_session(state: State) -> Iterator[Session]:
    """One session per request, closed when the response is sent (sync routes only)."""
    with state.deps.sessions() as session:
        yield session


DbSession = Annotated[Session, Depends(get_session)]


async def authenticated_project(
    state: State,
    project_id_or_name: Annotated[str, Path(alias="projectIdOrName")],
    api_key: Annotated[str | None, Header(alias="X-Api-Key")] = None,
) -> Project:
    """The caller's project, if the path names it; 401 without a valid key, 404 otherwise.

    A key of another project gets 404, not 403: a key sees only its own project
    and learns nothing about others.
    """
    if not api_key:
        raise ApiProblem(401, "missing X-Api-Key header", remedy="Send your API key as X-Api-Key.")
    if len(api_key) > MAX_API_KEY_CHARS:
        raise ApiProblem(401, "invalid API key", remedy="Check the key; keys are shown once.")
    directory = state.dispatch.directory
    project = directory.cached_project_for_api_key(api_key)
    if project is None:
        project = await run_in_threadpool(directory.project_for_api_key, api_key)
    if project is None:
        raise ApiProblem(401, "invalid API key", remedy="Check the key; keys are shown once.")
    if not names_project(project, project_id_or_name):
        raise ApiProblem(404, f"project {shown(project_id_or_name)} not found")
    return project


def names_project(project: Project, project_id_or_name: str) -> bool:
    """Whether a path's project segment names `project` (its id or name, any case)."""
    return project_id_or_name.lower() in (project.id.lower(), project.name.lower())


CallerProject = Annotated[Project, Depends(authenticated_project)]


def idempotency_key(
    raw: Annotated[
        str | None,
        Header(
            alias=HEADER,
            description="Send the write again with the same key to get the first answer back, "
            "not a second write (at most 255 characters, kept 24 hours, per project).",
        ),
    ] = None,
) -> str | None:
    """The request's `Idempotency-Key`, if it sent one; 400 text/plain for one we cannot keep."""
    return None if raw is None else parse_key(raw)


IdempotencyKey = Annotated[str | None, Depends(idempotency_key)]


async def read_limited_body(request: Request, limit_bytes: int, remedy: str | None = None) -> bytes:
    """The body, refused with 413 up front by Content-Length, or as soon as the stream
    passes `limit_bytes`, so a huge body never sits in memory whole."""
    too_large = ApiProblem(413, f"request body is larger than {limit_bytes} bytes", remedy=remedy)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit_bytes:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit_bytes:
            raise too_large
    return bytes(body)
