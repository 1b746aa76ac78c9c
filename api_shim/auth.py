"""API-key authentication: `X-Api-Key` names exactly one project."""

from __future__ import annotations

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from api_shim.problems import ApiProblem
from api_shim.state import AppState
from writejobs.store.tables import Project


async def authenticated_project(request: Request, project_id_or_name: str) -> Project:
    """The caller's project, if the path names it; 401 without a valid key, 404 otherwise.

    A key of another project gets 404, not 403: a key sees only its own project
    and learns nothing about others.
    """
    key = request.headers.get("x-api-key")
    if not key:
        raise ApiProblem(401, "missing X-Api-Key header", remedy="Send your API key as X-Api-Key.")
    state: AppState = request.app.state.writejobs
    project = await run_in_threadpool(_lookup, state, key)
    if project is None:
        raise ApiProblem(401, "invalid API key", remedy="Check the key; keys are shown once.")
    wanted = project_id_or_name.lower()
    if wanted not in (project.id.lower(), project.name.lower()):
        raise ApiProblem(404, f"project {project_id_or_name!r} not found")
    return project


def _lookup(state: AppState, key: str) -> Project | None:
    return state.dispatch.directory.project_for_api_key(key)
