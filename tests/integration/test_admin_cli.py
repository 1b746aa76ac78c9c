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
