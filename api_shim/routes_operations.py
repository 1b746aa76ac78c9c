"""Operations API: get an operation, its logs, and an installation's operations."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from api_shim.auth import authenticated_project
from api_shim.problems import ApiProblem
from api_shim.state import AppState
from api_shim.views import log_view, operation_view
from writejobs.store import operations_repo, tenants_repo

router = APIRouter(tags=["Operations"])

_NOT_FOUND = "Operation not found for the given operation ID."


@router.get("/v1/projects/{projectIdOrName}/operations/{operationId}")
async def get_operation(request: Request, projectIdOrName: str, operationId: str) -> dict[str, Any]:  # noqa: N803
    """One operation; 404 for an id unknown to, or foreign to, the key's project."""
    project = await authenticated_project(request, projectIdOrName)
    state: AppState = request.app.state.writejobs

    def load() -> dict[str, Any] | None:
        with state.deps.sessions() as session:
            op = operations_repo.get_project_operation(session, project.id, operationId)
            return operation_view(op) if op is not None else None

    view = await run_in_threadpool(load)
    if view is None:
        raise ApiProblem(404, _NOT_FOUND, remedy="Verify the operation ID and project are correct.")
    return view


@router.get("/v1/projects/{projectIdOrName}/operations/{operationId}/logs")
async def list_operation_logs(
    request: Request,
    projectIdOrName: str,
    operationId: str,  # noqa: N803
) -> list[dict[str, Any]]:
    """The operation's logs, oldest first: acceptance, each attempt, each error, the end."""
    project = await authenticated_project(request, projectIdOrName)
    state: AppState = request.app.state.writejobs

    def load() -> list[dict[str, Any]] | None:
        with state.deps.sessions() as session:
            op = operations_repo.get_project_operation(session, project.id, operationId)
            if op is None:
                return None
            return [log_view(entry) for entry in operations_repo.list_logs(session, op.id)]

    logs = await run_in_threadpool(load)
    if logs is None:
        raise ApiProblem(404, _NOT_FOUND, remedy="Verify the operation ID and project are correct.")
    return logs


@router.get(
    "/v1/projects/{projectIdOrName}/integrations/{integrationId}/installations/{installationId}/operations"
)
async def list_operations(
    request: Request,
    projectIdOrName: str,  # noqa: N803
    integrationId: str,  # noqa: N803
    installationId: str,  # noqa: N803
    pageSize: Annotated[int, Query(ge=1, le=1000)] = 200,  # noqa: N803
    pageToken: str | None = None,  # noqa: N803
) -> dict[str, Any]:
    """An installation's operations, newest first, `pageSize` at a time."""
    project = await authenticated_project(request, projectIdOrName)
    state: AppState = request.app.state.writejobs

    def load() -> dict[str, Any] | None:
        with state.deps.sessions() as session:
            integration = tenants_repo.find_integration(session, project.id, integrationId)
            if integration is None:
                return None
            installation = tenants_repo.find_project_installation(
                session, project.id, integration.id, installationId
            )
            if installation is None:
                return None
            try:
                page = operations_repo.list_installation_operations(
                    session, installation.id, page_size=pageSize, page_token=pageToken
                )
            except ValueError as exc:
                raise ApiProblem(400, str(exc)) from None
            pagination: dict[str, Any] = {"done": page.next_token is None}
            if page.next_token is not None:
                pagination["nextPageToken"] = page.next_token
            return {
                "results": [operation_view(op) for op in page.operations],
                "pagination": pagination,
            }

    body = await run_in_threadpool(load)
    if body is None:
        raise ApiProblem(404, "installation not found")
    return body
