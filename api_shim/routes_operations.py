"""Operations API: get an operation, its logs, and an installation's operations."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session

from api_shim.deps import CallerProject, DbSession
from api_shim.problems import ApiProblem
from api_shim.views import log_view, operation_view
from writejobs.store import operations_repo, tenants_repo
from writejobs.store.tables import Operation, Project

router = APIRouter(tags=["Operations"])

_NOT_FOUND = "Operation not found for the given operation ID."


def _project_operation(session: Session, project: Project, operation_id: str) -> Operation:
    op = operations_repo.get_project_operation(session, project.id, operation_id)
    if op is None:
        raise ApiProblem(404, _NOT_FOUND, remedy="Verify the operation ID and project are correct.")
    return op


@router.get("/v1/projects/{projectIdOrName}/operations/{operationId}")
def get_operation(
    project: CallerProject,
    session: DbSession,
    operationId: str,  # noqa: N803
) -> dict[str, Any]:
    """One operation; 404 for an id unknown to, or foreign to, the key's project."""
    return operation_view(_project_operation(session, project, operationId))


@router.get("/v1/projects/{projectIdOrName}/operations/{operationId}/logs")
def list_operation_logs(
    project: CallerProject,
    session: DbSession,
    operationId: str,  # noqa: N803
) -> list[dict[str, Any]]:
    """The operation's logs, oldest first: acceptance, each attempt, each error, the end."""
    op = _project_operation(session, project, operationId)
    return [log_view(entry) for entry in operations_repo.list_logs(session, op.id)]


@router.get(
    "/v1/projects/{projectIdOrName}/integrations/{integrationId}/installations/{installationId}/operations"
)
def list_operations(
    project: CallerProject,
    session: DbSession,
    integrationId: str,  # noqa: N803
    installationId: str,  # noqa: N803
    pageSize: Annotated[int, Query(ge=1, le=1000)] = 200,  # noqa: N803
    pageToken: str | None = None,  # noqa: N803
) -> dict[str, Any]:
    """An installation's operations, newest first, `pageSize` at a time."""
    integration = tenants_repo.find_integration(session, project.id, integrationId)
    installation = (
        tenants_repo.find_project_installation(session, project.id, integration.id, installationId)
        if integration is not None
        else None
    )
    if installation is None:
        raise ApiProblem(404, "installation not found")
    try:
        page = operations_repo.list_installation_operations(
            session, installation.id, page_size=pageSize, page_token=pageToken
        )
    except ValueError as exc:
        raise ApiProblem(400, str(exc)) from None
    pagination: dict[str, Any] = {"done": page.next_token is None}
    if page.next_token is not None:
        pagination["nextPageToken"] = page.next_token
    return {"results": [operation_view(op) for op in page.operations], "pagination": pagination}
