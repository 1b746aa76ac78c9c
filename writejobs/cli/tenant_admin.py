"""`writejobs admin`: projects, API keys, integrations and installations (and the
installation settings: rate limit, natural keys), against the configured store.

The webhook and operator commands join this group from their own modules
(`webhook_admin`, `operator_admin`), registered by `main.py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from writejobs.settings import load_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from writejobs.store.tables import Project

console = Console()
admin = typer.Typer(
    help="Create projects, API keys, integrations, installations and webhook destinations.",
    no_args_is_help=True,
)


@admin.command("create-project")
def create_project(name: str) -> None:
    """Create a project and print its id."""
    from writejobs.clock import utcnow
    from writejobs.store import tenants_repo

    with sessions() as session:
        if tenants_repo.find_project(session, name) is not None:
            raise typer.BadParameter(f"project {name!r} already exists")
        project = tenants_repo.create_project(session, name, now=utcnow())
        session.commit()
        console.print(project.id)


@admin.command("create-api-key")
def create_api_key(project: str, label: str = "") -> None:
    """Create an API key for a project; the key is printed once and stored hashed."""
    from writejobs.clock import utcnow
    from writejobs.store import tenants_repo

    with sessions() as session:
        found = project_of(session, project)
        key = tenants_repo.create_api_key(session, found.id, now=utcnow(), label=label)
        session.commit()
        console.print(key.plain_key)


@admin.command("create-integration")
def create_integration(project: str, name: str, provider: str = "hubspot") -> None:
    """Create an integration (one provider use-case) in a project."""
    from writejobs.clock import utcnow
    from writejobs.store import tenants_repo

    with sessions() as session:
        found = project_of(session, project)
        integration = tenants_repo.create_integration(
            session, found.id, name, provider, now=utcnow()
        )
        session.commit()
        console.print(integration.id)


@admin.command("create-installation")
def create_installation(
    project: str,
    integration: str,
    group_ref: str,
    base_url: Annotated[
        str,
        typer.Option(
            help="The provider's API root: HubSpot https://api.hubapi.com, Salesforce the "
            "org's My Domain URL, AvePoint Opus the records API root ending in /records."
        ),
    ],
    token: Annotated[str, typer.Option(help="Bearer token for the provider.")] = "",
    client_id: Annotated[str, typer.Option(help="OAuth2 client id.")] = "",
    client_secret: Annotated[str, typer.Option(help="OAuth2 client secret.")] = "",
    token_url: Annotated[str, typer.Option(help="OAuth2 token endpoint.")] = "",
    refresh_token: Annotated[
        str, typer.Option(help="OAuth2 refresh token; without it, the client-credentials grant.")
    ] = "",
    deletable: Annotated[
        list[str] | None, typer.Option(help="Objects that may be deleted.")
    ] = None,
    credentials_file: Annotated[
        str,
        typer.Option(
            help="Read the credentials from this JSON file, or `-` for standard input: "
            '{"token": …} or {"token_url": …, "client_id": …, "client_secret": …, '
            '"refresh_token": …}. Keeps secrets out of `ps` and shell history.'
        ),
    ] = "",
) -> None:
    """Create an installation: a customer's (groupRef's) instance of an integration.

    Credentials are a bearer `--token`, or OAuth2 (`--token-url`, `--client-id`,
    `--client-secret`, and `--refresh-token` for the refresh-token grant), or the
    same fields in `--credentials-file`; they are stored encrypted and never printed."""
    from writejobs.clock import utcnow
    from writejobs.store import tenants_repo
    from writejobs.store.secrets import cipher_for

    if credentials_file:
        from writejobs.cli.credentials_file import CredentialsFileError, read_credentials_file

        if any((token, client_id, client_secret, token_url, refresh_token)):
            raise typer.BadParameter("give the credentials in --credentials-file or as options")
        try:
            fields = read_credentials_file(credentials_file)
        except CredentialsFileError as exc:
            raise typer.BadParameter(str(exc)) from None
        token, token_url = fields["token"], fields["token_url"]
        client_id, client_secret = fields["client_id"], fields["client_secret"]
        refresh_token = fields["refresh_token"]
    credentials = _credentials(token, client_id, client_secret, token_url, refresh_token)
    with sessions() as session:
        found = project_of(session, project)
        integ = tenants_repo.find_integration(session, found.id, integration)
        if integ is None:
            raise typer.BadParameter(f"integration {integration!r} not found")
        if integ.provider == "opus" and not base_url.rstrip("/").endswith("/records"):
            # The Opus adapter appends /connector/records; the API root alone 404s every write.
            raise typer.BadParameter(
                f"an AvePoint Opus base URL ends in /records (…/records), not {base_url!r}"
            )
        installation = tenants_repo.create_installation(
            session,
            integ,
            group_ref,
            base_url,
            now=utcnow(),
            cipher=cipher_for(load_settings()),
            credentials=credentials,
            deletable_objects=list(deletable or []),
        )
        session.commit()
        console.print(installation.id)


@admin.command("set-rate-limit")
def set_rate_limit(
    project: str,
    integration: str,
    group_ref: str,
    max_calls: Annotated[
        int, typer.Option("--max", help="Calls allowed in any window of --interval-ms.")
    ] = 0,
    interval_ms: Annotated[int, typer.Option(help="The window, in milliseconds.")] = 0,
    clear: Annotated[bool, typer.Option(help="Go back to the provider's default.")] = False,
) -> None:
    """Pace an installation's provider calls at its own limit, fleet-wide.

    It replaces the provider kind's default, and what the provider's own rate limit
    headers say can lower it but never raise it (a share of a customer's quota)."""
    from writejobs.core.flow import RateLimit
    from writejobs.store import tenants_repo

    value = None
    if not clear:
        try:
            value = RateLimit(max_calls, interval_ms / 1000).to_column()
        except ValueError:
            raise typer.BadParameter("give --max N and --interval-ms M, both above 0") from None
    with sessions() as session:
        found = project_of(session, project)
        integ = tenants_repo.find_integration(session, found.id, integration)
        installation = (
            tenants_repo.find_installation(session, integ.id, group_ref) if integ else None
        )
        if installation is None:
            raise typer.BadParameter(f"no installation {group_ref!r} of {integration!r}")
        tenants_repo.set_rate_limit(session, installation.id, value)
        session.commit()
        console.print(f"{installation.id}: {value or 'provider default'}")


@admin.command("set-natural-key")
def set_natural_key(
    project: str,
    integration: str,
    group_ref: str,
    object_name: Annotated[str, typer.Argument(metavar="OBJECT")],
    field: Annotated[str, typer.Argument(metavar="FIELD")] = "",
    clear: Annotated[bool, typer.Option(help="Forget the object's natural key.")] = False,
) -> None:
    """Name the field that identifies one record of OBJECT at the provider.

    Creates that carry it are written as upserts by it (HubSpot: a unique
    property such as contacts' email; Salesforce: an external id field; Opus:
    rowKey), so a create repeated after a worker died cannot duplicate a record."""
    from writejobs.providers.natural_keys import check_natural_key
    from writejobs.store import tenants_repo

    if clear == bool(field):
        raise typer.BadParameter("give FIELD, or --clear without one")
    if not object_name.strip() or len(object_name) > 200:
        raise typer.BadParameter("OBJECT is an object name of 1 to 200 characters")
    with sessions() as session:
        found = project_of(session, project)
        integ = tenants_repo.find_integration(session, found.id, integration)
        installation = (
            tenants_repo.find_installation(session, integ.id, group_ref) if integ else None
        )
        if installation is None:
            raise typer.BadParameter(f"no installation {group_ref!r} of {integration!r}")
        key = None
        if not clear:
            try:
                key = check_natural_key(installation.provider, field)
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from None
        tenants_repo.set_natural_key(session, installation.id, object_name, key)
        session.commit()
        console.print(f"{installation.id} {object_name}: {key or 'no natural key'}")


def _credentials(
    token: str, client_id: str, client_secret: str, token_url: str, refresh_token: str
) -> dict[str, Any]:
    from writejobs.providers.oauth import bearer_credentials, oauth2_credentials

    oauth = {
        "--client-id": client_id,
        "--client-secret": client_secret,
        "--token-url": token_url,
        "--refresh-token": refresh_token,
    }
    if not any(oauth.values()):
        return bearer_credentials(token) if token else {}
    if token:
        raise typer.BadParameter("give --token (bearer) or the OAuth2 options, not both")
    missing = [flag for flag, value in oauth.items() if not value and flag != "--refresh-token"]
    if missing:
        raise typer.BadParameter(f"OAuth2 credentials need {', '.join(missing)} too")
    return oauth2_credentials(
        token_url=token_url,
        client_id=client_id,
        client_secret=client_secret,
        refresh_token=refresh_token or None,
    )


def sessions() -> Session:
    from writejobs.store.db import create_session_factory, create_store_engine

    return create_session_factory(create_store_engine(load_settings()))()


def project_of(session: Session, id_or_name: str) -> Project:
    from writejobs.store import tenants_repo

    found = tenants_repo.find_project(session, id_or_name)
    if found is None:
        raise typer.BadParameter(f"project {id_or_name!r} not found")
    return found
