"""`writejobs admin` against the real store: the tenant set-up a README reader runs."""

from __future__ import annotations

import uuid

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
