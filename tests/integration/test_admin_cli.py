"""`writejobs admin` against the real store: the tenant set-up a README reader runs."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.support.system import settings_env
from writejobs.cli.main import app
from writejobs.settings import Settings


def run(settings: Settings, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["admin", *args], env=settings_env(settings))
    return result.exit_code, result.output


def test_an_opus_installation_needs_the_records_api_root(settings: Settings) -> None:
    name = f"acme-{uuid.uuid4().hex[:8]}"
    assert run(settings, "create-project", name)[0] == 0
    assert run(settings, "create-integration", name, "records", "--provider", "opus")[0] == 0

    # the API root alone would make every write a 404: refused, saying what to give
    install = ("create-installation", name, "records", "org-1", "--token", "t", "--base-url")
    code, output = run(settings, *install, "https://opus.example.com")
    assert code == 2
    assert "ends in /records" in output

    code, output = run(settings, *install, "https://opus.example.com/records")
    assert code == 0, output
    assert uuid.UUID(output.strip())


def test_an_installation_gets_a_rate_limit_of_its_own_and_can_give_it_back(
    settings: Settings,
) -> None:
    from writejobs.core.flow import RateLimit
    from writejobs.store import tenants_repo
    from writejobs.store.db import create_session_factory, create_store_engine

    name = f"acme-{uuid.uuid4().hex[:8]}"
    assert run(settings, "create-project", name)[0] == 0
    assert run(settings, "create-integration", name, "crm", "--provider", "hubspot")[0] == 0
    install = ("create-installation", name, "crm", "portal-1", "--token", "t", "--base-url")
    code, output = run(settings, *install, "https://api.hubapi.com")
    assert code == 0, output
    installation_id = output.strip()
    sessions = create_session_factory(create_store_engine(settings))

    def stored() -> RateLimit | None:
        with sessions() as session:
            row = tenants_repo.get_installation(session, installation_id)
            assert row is not None
            return RateLimit.from_column(row.rate_limit)

    limit = ("set-rate-limit", name, "crm", "portal-1")
    code, output = run(settings, *limit, "--max", "50", "--interval-ms", "10000")
    assert code == 0, output
    assert stored() == RateLimit(50, 10.0)

    code, output = run(settings, *limit, "--max", "0", "--interval-ms", "10000")
    assert code == 2
    assert "above 0" in output
    code, output = run(settings, "set-rate-limit", name, "crm", "portal-404", "--max", "5")
    assert code == 2
    assert "above 0" in output  # --interval-ms is needed too
    elsewhere = ("set-rate-limit", name, "crm", "portal-404", "--max", "5", "--interval-ms", "1")
    code, output = run(settings, *elsewhere)
    assert code == 2
    assert "no installation 'portal-404'" in output

    assert run(settings, *limit, "--clear")[0] == 0
    assert stored() is None


def _plain(output: str) -> str:
    """The CLI's message without the error box's borders and line breaks."""
    return " ".join(output.translate(str.maketrans("", "", "│╭╮╰╯─")).split())


def _stored_credentials(settings: Settings, installation_id: str) -> dict[str, object]:
    from writejobs.store import tenants_repo
    from writejobs.store.db import create_session_factory, create_store_engine
    from writejobs.store.secrets import cipher_for

    engine = create_store_engine(settings)
    try:
        with create_session_factory(engine)() as session:
            installation = tenants_repo.get_installation(session, installation_id)
            assert installation is not None
            return cipher_for(settings).decrypt(installation.credentials)
    finally:
        engine.dispose()


def _project_with_integration(settings: Settings) -> str:
    name = f"acme-{uuid.uuid4().hex[:8]}"
    assert run(settings, "create-project", name)[0] == 0
    assert run(settings, "create-integration", name, "crm")[0] == 0
    return name


INSTALL_BASE = ("--base-url", "https://api.hubapi.com")


def test_credentials_read_from_a_file_are_stored_and_never_printed(
    settings: Settings, tmp_path: Path
) -> None:
    name = _project_with_integration(settings)
    secrets_file = tmp_path / "creds.json"
    secrets_file.write_text(
        json.dumps(
            {
                "token_url": "https://auth.example.com/token",
                "client_id": "cid-1",
                "client_secret": "s3cret-from-file",
            }
        )
    )

    code, output = run(
        settings,
        "create-installation",
        name,
        "crm",
        "org-1",
        *INSTALL_BASE,
        "--credentials-file",
        str(secrets_file),
    )

    assert code == 0, output
    assert "s3cret-from-file" not in output
    stored = _stored_credentials(settings, output.strip())
    assert stored["type"] == "oauth2" and stored["grant"] == "client_credentials"
    assert stored["client_secret"] == "s3cret-from-file"
    assert stored["client_id"] == "cid-1"


def test_credentials_read_from_standard_input_are_stored(settings: Settings) -> None:
    name = _project_with_integration(settings)

    result = CliRunner().invoke(
        app,
        ["admin", "create-installation", name, "crm", "org-2", *INSTALL_BASE]
        + ["--credentials-file", "-"],
        env=settings_env(settings),
        input=json.dumps({"token": "tok-from-stdin"}),
    )

    assert result.exit_code == 0, result.output
    assert "tok-from-stdin" not in result.output
    assert _stored_credentials(settings, result.output.strip()) == {
        "type": "bearer",
        "access_token": "tok-from-stdin",
    }


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("tok-not-json", "is not JSON"),
        ('["tok"]', "is not a JSON object"),
        ('{"token": "t", "password": "p"}', "unknown fields password"),
        ('{"token": 12345}', "token must be strings"),
        ('{"client_id": "c", "token_url": "https://a.example.com"}', "--client-secret"),
    ],
)
def test_a_bad_credentials_file_is_refused_naming_the_problem_not_the_secret(
    settings: Settings, tmp_path: Path, content: str, says: str
) -> None:
    name = _project_with_integration(settings)
    secrets_file = tmp_path / "creds.json"
    secrets_file.write_text(content)

    code, output = run(
        settings,
        "create-installation",
        name,
        "crm",
        "org-3",
        *INSTALL_BASE,
        "--credentials-file",
        str(secrets_file),
    )

    assert code == 2
    assert says in _plain(output)
    assert "tok-not-json" not in output and "12345" not in output


def test_a_credentials_file_and_credential_options_together_are_refused(
    settings: Settings, tmp_path: Path
) -> None:
    name = _project_with_integration(settings)
    secrets_file = tmp_path / "creds.json"
    secrets_file.write_text('{"token": "a"}')

    code, output = run(
        settings,
        *("create-installation", name, "crm", "org-4", *INSTALL_BASE),
        *("--credentials-file", str(secrets_file), "--token", "b"),
    )

    assert code == 2
    assert "--credentials-file or as options" in _plain(output)


def test_a_missing_credentials_file_is_refused(settings: Settings, tmp_path: Path) -> None:
    name = _project_with_integration(settings)
    missing = tmp_path / "nope.json"

    code, output = run(
        settings,
        *("create-installation", name, "crm", "org-5", *INSTALL_BASE),
        *("--credentials-file", str(missing)),
    )

    assert code == 2
    assert "cannot read" in _plain(output)
