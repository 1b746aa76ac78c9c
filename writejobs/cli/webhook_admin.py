"""`writejobs admin …-webhook(s)`: a project's notification destinations, and replays.

The commands are registered on the `admin` group by `register`, so `main.py`
stays the map of the command. The signing secret is printed once, by
`add-webhook`, and kept encrypted; no other command shows it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from writejobs.store.tables import Project

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime) -> datetime:
    """`--since`: an RFC 3339 time (`2026-12-01T10:00:00Z`) or an age (`90s`, `30m`, `2h`, `1d`)."""
    relative = _RELATIVE.match(text.strip())
    if relative is not None:
        return now - timedelta(seconds=float(relative[1]) * _UNIT_S[relative[2]])
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"--since must be a time (2026-12-01T10:00:00Z) or an age (30m, 2h, 1d), not {text!r}"
        ) from None
    if parsed.tzinfo is None:
        raise typer.BadParameter("--since needs a time zone (end it in Z for UTC)")
    return parsed


def register(
    admin: typer.Typer,
    sessions: Callable[[], Session],
    project_of: Callable[[Session, str], Project],
    console: Console,
) -> None:
    """Add the webhook commands to `admin`."""

    @admin.command("add-webhook")
    def add_webhook(
        project: str,
        url: str,
        integration: Annotated[
            str | None, typer.Option(help="Only this integration's operations (id or name).")
        ] = None,
    ) -> None:
        """Send `write.async.done` notifications of a project's asynchronous writes to URL.

        Prints the destination's id, then its signing secret (`whsec_…`), once."""
        from writejobs.clock import utcnow
        from writejobs.execution.fetch_guard import UnsafeUrl
        from writejobs.execution.webhook_http import check_destination_url
        from writejobs.settings import load_settings
        from writejobs.store import tenants_repo, webhook_destinations
        from writejobs.store.secrets import cipher_for

        settings = load_settings()
        try:
            check_destination_url(url, settings.allowed_http_hosts)
        except UnsafeUrl as exc:
            raise typer.BadParameter(str(exc)) from None
        with sessions() as session:
            found = project_of(session, project)
            integration_id = None
            if integration is not None:
                integ = tenants_repo.find_integration(session, found.id, integration)
                if integ is None:
                    raise typer.BadParameter(f"integration {integration!r} not found")
                integration_id = integ.id
            destination, secret = webhook_destinations.add(
                session,
                found.id,
                url,
                cipher=cipher_for(settings),
                now=utcnow(),
                integration_id=integration_id,
            )
            session.commit()
            typer.echo(destination.id)
            typer.echo(secret)

    @admin.command("list-webhooks")
    def list_webhooks(project: str) -> None:
        """A project's destinations: id, URL, integration filter, state, failure run."""
        from writejobs.clock import iso
        from writejobs.store import webhook_destinations

        with sessions() as session:
            found = project_of(session, project)
            table = Table(show_header=True)
            for column in ("id", "url", "integration", "enabled", "failures", "since", "why off"):
                table.add_column(column, overflow="fold")
            for d in webhook_destinations.list_for(session, found.id):
                table.add_row(
                    d.id,
                    d.url,
                    d.integration_id or "all",
                    "yes" if d.enabled else "no",
                    str(d.consecutive_failures),
                    iso(d.first_failure_at) if d.first_failure_at else "",
                    d.disabled_reason or "",
                )
            console.print(table)

    @admin.command("remove-webhook")
    def remove_webhook(project: str, destination: str) -> None:
        """Remove a destination, with its pending deliveries and their history."""
        from writejobs.store import webhook_destinations

        with sessions() as session:
            found = project_of(session, project)
            if webhook_destinations.get(session, found.id, destination) is None:
                raise typer.BadParameter(f"webhook {destination!r} not found in {project!r}")
            webhook_destinations.remove(session, destination)
            session.commit()
            typer.echo(f"removed {destination}")

    @admin.command("enable-webhook")
    def enable_webhook(project: str, destination: str) -> None:
        """Switch a disabled destination back on (`replay-webhooks` sends what it missed)."""
        from writejobs.store import webhook_destinations

        with sessions() as session:
            found = project_of(session, project)
            if webhook_destinations.get(session, found.id, destination) is None:
                raise typer.BadParameter(f"webhook {destination!r} not found in {project!r}")
            webhook_destinations.enable(session, destination)
            session.commit()
            typer.echo(f"enabled {destination}")

    @admin.command("replay-webhooks")
    def replay_webhooks(
        project: str,
        since: Annotated[str, typer.Option(help="RFC 3339 time, or an age: 30m, 2h, 1d.")],
        operation: Annotated[
            str | None, typer.Option(help="Only this operation's notification.")
        ] = None,
    ) -> None:
        """Send again, to every enabled destination, the notifications owed since --since.

        A replay carries the original's `webhook-id` and body."""
        from writejobs.clock import utcnow
        from writejobs.store import webhook_outbox

        now = utcnow()
        start = parse_since(since, now)
        with sessions() as session:
            found = project_of(session, project)
            n = webhook_outbox.replay(
                session, found.id, since=start, now=now, operation_id=operation
            )
            session.commit()
            typer.echo(f"replaying {n} notification(s)")
