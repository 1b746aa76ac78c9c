"""Operator controls in the API, for the project's own key: pause and resume an
installation, cancel an operation, list dead letters and replay them.

None of these paths is in the contract (it has no cancel, pause or replay); they
sit beside its operations paths, in its shapes: `{results, pagination}` pages,
problem+json errors.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api_shim.deps import CallerProject, DbSession, State
from api_shim.problems import ApiProblem
from api_shim.views import installation_pause_view, operation_view
from writejobs.core.operations import FAILURES
from writejobs.core.operations import State as OpState
from writejobs.intake import controls
from writejobs.intake.replay import replay
from writejobs.store import dead_letters, operations_repo, tenants_repo
from writejobs.store.dead_letters import DeadLetterFilter
from writejobs.store.tables import Installation, Operation, Project

router = APIRouter(tags=["Operator controls"])

_INSTALLATION = (
    "/v1/projects/{projectIdOrName}/integrations/{integrationId}/installations/{installationId}"
)
STATUSES: dict[str, tuple[str, ...]] = {
    "in_progress": (
        OpState.PENDING.value,
        OpState.QUEUED.value,
        OpState.RUNNING.value,
        OpState.RETRYING.value,
    ),
    "success": (OpState.SUCCEEDED.value, OpState.PARTIALLY_SUCCEEDED.value),
    "failure": tuple(s.value for s in FAILURES),
}
MAX_REPLAY = 1000


class PauseRequest(BaseModel):
    reason: str | None = Field(default=None, max_length=500)


class ReplayFilter(BaseModel):
    """Which dead letters to replay: the failures matching all of these."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    state: list[str] = Field(default_factory=list)
    installation: str | None = None
    object_name: str | None = Field(default=None, alias="object", max_length=200)
    since: datetime | None = None
    until: datetime | None = None
    error: str | None = Field(default=None, max_length=dead_letters.MAX_ERROR_FILTER_CHARS)


class ReplayRequest(BaseModel):
    """Replay these operations (all or none), or the dead letters a filter finds."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    operation_ids: list[str] | None = Field(
        default=None, alias="operationIds", min_length=1, max_length=MAX_REPLAY
    )
    filter: ReplayFilter | None = None
    limit: int = Field(default=100, ge=1, le=MAX_REPLAY)


def _installation(
    session: Session, project: Project, integration_id: str, installation_id: str
) -> Installation:
    integration = tenants_repo.find_integration(session, project.id, integration_id)
    installation = (
        tenants_repo.find_project_installation(session, project.id, integration.id, installation_id)
        if integration is not None
        else None
    )
    if installation is None:
        raise ApiProblem(404, "installation not found")
    return installation


@router.post(_INSTALLATION + ":pause")
def pause_installation(
    state: State,
    project: CallerProject,
    session: DbSession,
    integrationId: str,  # noqa: N803
    installationId: str,  # noqa: N803
    body: Annotated[PauseRequest | None, Body()] = None,
) -> dict[str, Any]:
    """Hold the installation's writes: sync writes get 409 (retryable), async ones wait.

    The pause is stored, so it outlives restarts; each API process sees it within 5 s.
    """
    installation = _installation(session, project, integrationId, installationId)
    reason = body.reason if body is not None else None
    paused = controls.pause(state.deps, installation.id, reason=reason, by="api")
    return installation_pause_view(paused.installation)


@router.post(_INSTALLATION + ":resume")
def resume_installation(
    state: State,
    project: CallerProject,
    session: DbSession,
    integrationId: str,  # noqa: N803
    installationId: str,  # noqa: N803
) -> dict[str, Any]:
    """Clear the pause and release the writes it held; `released` counts them."""
    installation = _installation(session, project, integrationId, installationId)
    resumed = controls.resume(state.deps, installation.id, by="api")
    return installation_pause_view(resumed.installation, resumed.released)


@router.get(_INSTALLATION + "/pause")
def get_installation_pause(
    project: CallerProject,
    session: DbSession,
    integrationId: str,  # noqa: N803
    installationId: str,  # noqa: N803
) -> dict[str, Any]:
    """Whether the installation is paused, since when, and why."""
    return installation_pause_view(_installation(session, project, integrationId, installationId))


@router.post("/v1/projects/{projectIdOrName}/operations/{operationId}:cancel")
def cancel_operation(
    state: State,
    project: CallerProject,
    operationId: str,  # noqa: N803
) -> dict[str, Any]:
    """Cancel an asynchronous operation: one that waits ends `cancelled` (status
    `failure`) now; a running one finishes its attempt first, then ends `cancelled`
    instead of retrying. 409 for one that has ended or is synchronous."""
    controls.cancel(state.deps, project.id, operationId, by="api")
    with state.deps.sessions() as session:
        op = operations_repo.get_project_operation(session, project.id, operationId)
        assert op is not None
        return operation_view(op)


@router.get("/v1/projects/{projectIdOrName}/operations")
def list_project_operations(
    project: CallerProject,
    session: DbSession,
    status: Annotated[str | None, Query(description="in_progress, success or failure")] = None,
    state: Annotated[list[str] | None, Query(description="writejobs states (repeat)")] = None,
    installation: Annotated[str | None, Query(description="an installation id")] = None,
    object_name: Annotated[str | None, Query(alias="object", max_length=200)] = None,
    since: Annotated[datetime | None, Query(description="accepted at or after (RFC 3339)")] = None,
    until: Annotated[datetime | None, Query(description="accepted before (RFC 3339)")] = None,
    error: Annotated[str | None, Query(max_length=dead_letters.MAX_ERROR_FILTER_CHARS)] = None,
    pageSize: Annotated[int, Query(ge=1, le=1000)] = 200,  # noqa: N803
    pageToken: str | None = None,  # noqa: N803
) -> dict[str, Any]:
    """The project's operations, newest first, by filter: `status=failure` lists the
    dead letters (failed, expired, cancelled) with their reasons (`lastError`, `errors`)."""
    flt = _filter(status, state or [], installation, object_name, since, until, error)
    try:
        page = dead_letters.list_page(
            session, project.id, flt, page_size=pageSize, page_token=pageToken
        )
    except ValueError as exc:
        raise ApiProblem(400, str(exc)) from None
    pagination: dict[str, Any] = {"done": page.next_token is None}
    if page.next_token is not None:
        pagination["nextPageToken"] = page.next_token
    return {"results": [operation_view(op) for op in page.operations], "pagination": pagination}


@router.post("/v1/projects/{projectIdOrName}/operations:replay")
async def replay_operations(
    state: State, project: CallerProject, body: ReplayRequest
) -> dict[str, Any]:
    """Write the failed records of ended operations again, each original as one new
    asynchronous operation with `metadata.replayOf`. By `operationIds` (all or none:
    400 naming one that cannot be replayed), or by `filter` (the failures it finds,
    at most `limit`; those that cannot be replayed are listed as skipped). An
    original already replayed answers with its replay: nothing is written twice."""
    if (body.operation_ids is None) == (body.filter is None):
        raise ApiProblem(400, "give operationIds or filter, not both or neither")
    return await run_in_threadpool(_replay, state, project, body)


def _replay(state: State, project: Project, body: ReplayRequest) -> dict[str, Any]:
    with state.deps.sessions() as session:
        if body.operation_ids is not None:
            originals = _named(session, project, body.operation_ids)
        else:
            assert body.filter is not None
            f = body.filter
            flt = _filter(
                "failure", f.state, f.installation, f.object_name, f.since, f.until, f.error
            )
            originals = dead_letters.collect(session, project.id, flt, body.limit)
        for op in originals:
            session.expunge(op)
    results = replay(
        project,
        originals,
        state.deps,
        state.dispatch,
        by="api",
        strict=body.operation_ids is not None,
    )
    return {"results": [r.view() for r in results]}


def _named(session: Session, project: Project, ids: list[str]) -> list[Operation]:
    found: list[Operation] = []
    for op_id in dict.fromkeys(ids):
        op = operations_repo.get_project_operation(session, project.id, op_id)
        if op is None:
            raise ApiProblem(404, f"operation {op_id[:60]} not found")
        found.append(op)
    return found


def _filter(
    status: str | None,
    states: list[str],
    installation: str | None,
    object_name: str | None,
    since: datetime | None,
    until: datetime | None,
    error: str | None,
) -> DeadLetterFilter:
    """The store's filter; 400 naming a status or state that does not exist."""
    chosen: tuple[str, ...] = tuple(s.value for s in OpState)
    if status is not None:
        if status not in STATUSES:
            raise ApiProblem(400, f"status must be one of {', '.join(STATUSES)}")
        chosen = STATUSES[status]
    if states:
        unknown = [s for s in states if s not in {v.value for v in OpState}]
        if unknown:
            raise ApiProblem(400, f"state {unknown[0][:40]!r} is not a state")
        chosen = tuple(s for s in chosen if s in states)
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and moment.tzinfo is None:
            raise ApiProblem(400, f"{name} needs a time zone (end it in Z for UTC)")
    return DeadLetterFilter(
        states=chosen or ("none",),
        installation_id=installation,
        object_name=object_name,
        since=since,
        until=until,
        error=error or None,
    )
