"""`writejobs admin` operator controls: pause and resume an installation, cancel an
operation, list dead letters, replay them.

Registered on the `admin` group by `register`, so `main.py` stays the map of the
command. Resuming and replaying send work (through the retry queue, through the
intake), so those commands wire the configured Redis and broker as the API does.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from writejobs.cli.webhook_admin import parse_since

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from writejobs.execution.deps import ExecutionDeps
    from writejobs.store.dead_letters import DeadLetterFilter
    from writejobs.store.tables import Installation, Operation, Project

FAILURE_STATES = ("failed", "expired", "cancelled")
COLUMNS = ("operation", "state", "installation", "object", "shape", "failed", "accepted", "reason")


def register(
    admin: typer.Typer,
    sessions: Callable[[], Session],
    project_of: Callable[[Session, str], Project],
) -> None:
    """Add the operator commands to `admin`. They print plain lines (ids never wrap)."""

    def installation_of(
        session: Session, project: str, integration: str, group_ref: str
    ) -> Installation:
        from writejobs.store import tenants_repo

        found = project_of(session, project)
        integ = tenants_repo.find_integration(session, found.id, integration)
        installation = (
            tenants_repo.find_installation(session, integ.id, group_ref) if integ else None
        )
        if installation is None:
            raise typer.BadParameter(f"no installation {group_ref!r} of {integration!r}")
        return installation

    @admin.command("pause-installation")
    def pause_installation(
        project: str,
        integration: str,
        group_ref: str,
        reason: Annotated[str, typer.Option(help="Why, for the logs of the writes it holds.")] = "",
    ) -> None:
        """Hold an installation's writes: synchronous ones are refused (409, retryable),
        asynchronous ones are accepted and wait until `resume-installation` (or their deadline)."""
        from writejobs.intake import controls

        with sessions() as session:
            installation_id = installation_of(session, project, integration, group_ref).id
        paused = controls.pause(_deps(), installation_id, reason=reason or None, by="admin")
        typer.echo(f"{installation_id}: paused since {_when(paused.installation.paused_at)}")

    @admin.command("resume-installation")
    def resume_installation(project: str, integration: str, group_ref: str) -> None:
        """Clear an installation's pause and send the writes it held at once."""
        from writejobs.intake import controls

        with sessions() as session:
            installation_id = installation_of(session, project, integration, group_ref).id
        resumed = controls.resume(_deps(), installation_id, by="admin")
        typer.echo(f"{installation_id}: resumed, {resumed.released} operation(s) released")

    @admin.command("cancel-operation")
    def cancel_operation(project: str, operation_id: str) -> None:
        """Cancel an asynchronous operation (a running one finishes its attempt first)."""
        from writejobs.errors import NotCancellable, NotFound
        from writejobs.intake import controls

        with sessions() as session:
            project_id = project_of(session, project).id
        try:
            outcome = controls.cancel(_deps(), project_id, operation_id, by="admin")
        except (NotFound, NotCancellable) as exc:
            raise typer.BadParameter(str(exc)) from None
        if outcome.outcome == "cancelled":
            typer.echo(f"{operation_id}: cancelled")
        else:
            typer.echo(f"{operation_id}: {outcome.state}; cancelled once its attempt settles")

    @admin.command("dead-letters")
    def dead_letters(
        project: str,
        integration: Annotated[str, typer.Option(help="With --group-ref: one installation.")] = "",
        group_ref: Annotated[str, typer.Option(help="With --integration.")] = "",
        object_name: Annotated[str, typer.Option("--object", help="One object.")] = "",
        state: Annotated[
            list[str] | None, typer.Option(help="failed, expired or cancelled (repeat).")
        ] = None,
        since: Annotated[str, typer.Option(help="Accepted since: a time, or 30m, 2h, 1d.")] = "",
        until: Annotated[str, typer.Option(help="Accepted before: a time, or an age.")] = "",
        error: Annotated[str, typer.Option(help="The reason contains this (any case).")] = "",
        limit: Annotated[int, typer.Option(min=1, max=10000)] = 100,
    ) -> None:
        """List a project's failed, expired and cancelled operations, newest first, with why."""
        from writejobs.clock import iso
        from writejobs.store.dead_letters import collect as dead_letters_of

        # Tab-separated, one line each, whatever the terminal's width: ready for `cut`,
        # and for `writejobs admin replay PROJECT $(… | cut -f1 | tail -n +2)`.
        typer.echo("\t".join(COLUMNS))
        with sessions() as session:
            found = project_of(session, project)
            flt = _filter(
                session, found, integration, group_ref, object_name, state, since, until, error
            )
            for op in dead_letters_of(session, found.id, flt, limit):
                reason = op.last_error or (op.errors or [""])[0] or op.result_summary or ""
                row = (
                    op.id,
                    op.state,
                    op.installation_id,
                    op.object_name,
                    op.shape,
                    f"{op.record_count - op.success_count}/{op.record_count}",
                    iso(op.created_at),
                    " ".join(reason.split())[:200],
                )
                typer.echo("\t".join(row))

    @admin.command("replay")
    def replay(
        project: str,
        operation_ids: Annotated[
            list[str] | None, typer.Argument(metavar="[OPERATION_ID]...", help="Replay these.")
        ] = None,
        integration: Annotated[str, typer.Option(help="With --group-ref: one installation.")] = "",
        group_ref: Annotated[str, typer.Option(help="With --integration.")] = "",
        object_name: Annotated[str, typer.Option("--object", help="One object.")] = "",
        state: Annotated[
            list[str] | None, typer.Option(help="failed, expired or cancelled (repeat).")
        ] = None,
        since: Annotated[str, typer.Option(help="Accepted since: a time, or 30m, 2h, 1d.")] = "",
        until: Annotated[str, typer.Option(help="Accepted before: a time, or an age.")] = "",
        error: Annotated[str, typer.Option(help="The reason contains this (any case).")] = "",
        limit: Annotated[int, typer.Option(min=1, max=10000)] = 100,
    ) -> None:
        """Write the failed records of dead letters again, each original as a new
        asynchronous operation (`metadata.replayOf`): the ones named, all or none, or
        those the filters find (at most --limit; ones that cannot be replayed are skipped)."""
        from writejobs.errors import ReplayRefused
        from writejobs.intake.replay import replay as replay_all
        from writejobs.runtime.wiring import wire
        from writejobs.settings import load_settings
        from writejobs.store import operations_repo
        from writejobs.store.dead_letters import collect as dead_letters_of

        filtered = any((integration, group_ref, object_name, state, since, until, error))
        if bool(operation_ids) == filtered:
            raise typer.BadParameter("give OPERATION_IDs or filters (such as --since 1d), not both")
        with sessions() as session:
            found = project_of(session, project)
            if operation_ids:
                originals: list[Operation] = []
                for op_id in dict.fromkeys(operation_ids):
                    op = operations_repo.get_project_operation(session, found.id, op_id)
                    if op is None:
                        raise typer.BadParameter(f"operation {op_id!r} not found in {project!r}")
                    originals.append(op)
            else:
                flt = _filter(
                    session, found, integration, group_ref, object_name, state, since, until, error
                )
                originals = dead_letters_of(session, found.id, flt, limit)
            for op in originals:
                session.expunge(op)
            session.expunge(found)
        wiring = wire(load_settings())
        try:
            results = replay_all(
                found,
                originals,
                wiring.deps,
                wiring.dispatch,
                by="admin",
                strict=bool(operation_ids),
            )
        except ReplayRefused as exc:
            raise typer.BadParameter(str(exc)) from None
        for r in results:
            if r.replay_id is None:
                typer.echo(f"{r.operation_id}: skipped: {r.skipped}")
            else:
                already = " (replayed earlier)" if r.already else ""
                typer.echo(
                    f"{r.operation_id} -> {r.replay_id}: {len(r.records)} record(s){already}"
                )


def _deps() -> ExecutionDeps:
    from writejobs.runtime.wiring import wire
    from writejobs.settings import load_settings

    return wire(load_settings()).deps


def _when(moment: datetime | None) -> str:
    from writejobs.clock import iso

    return iso(moment) if moment is not None else "-"


def _filter(
    session: Session,
    project: Project,
    integration: str,
    group_ref: str,
    object_name: str,
    states: list[str] | None,
    since: str,
    until: str,
    error: str,
) -> DeadLetterFilter:
    from writejobs.clock import utcnow
    from writejobs.store import tenants_repo
    from writejobs.store.dead_letters import DeadLetterFilter

    installation_id = None
    if bool(integration) != bool(group_ref):
        raise typer.BadParameter("give --integration and --group-ref together")
    if integration:
        integ = tenants_repo.find_integration(session, project.id, integration)
        installation = (
            tenants_repo.find_installation(session, integ.id, group_ref) if integ else None
        )
        if installation is None:
            raise typer.BadParameter(f"no installation {group_ref!r} of {integration!r}")
        installation_id = installation.id
    for s in states or []:
        if s not in FAILURE_STATES:
            raise typer.BadParameter(f"--state is one of {', '.join(FAILURE_STATES)}, not {s!r}")
    now = utcnow()
    return DeadLetterFilter(
        states=tuple(states or FAILURE_STATES),
        installation_id=installation_id,
        object_name=object_name or None,
        since=parse_since(since, now) if since else None,
        until=parse_since(until, now) if until else None,
        error=error or None,
    )
