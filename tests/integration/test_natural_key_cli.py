"""`writejobs admin set-natural-key` against the real store."""

from __future__ import annotations

import uuid

from typer.testing import CliRunner

from tests.support.system import settings_env
from writejobs.settings import Settings
from writejobs.store import tenants_repo
from writejobs.store.db import create_session_factory, create_store_engine


def run(settings: Settings, *args: str) -> tuple[int, str]:
    from writejobs.cli.main import app

    result = CliRunner().invoke(app, ["admin", *args], env=settings_env(settings))
    return result.exit_code, result.output


def _installation(settings: Settings, provider: str) -> tuple[str, str]:
    """A project with one installation of `provider`; (project name, installation id)."""
    name = f"nk-{uuid.uuid4().hex[:8]}"
    assert run(settings, "create-project", name)[0] == 0
    assert run(settings, "create-integration", name, "crm", "--provider", provider)[0] == 0
    base_url = "https://example.com/records" if provider == "opus" else "https://example.com"
    code, output = run(
        settings,
        "create-installation",
        name,
        "crm",
        "org-1",
        "--token",
        "t",
        "--base-url",
        base_url,
    )
    assert code == 0, output
    return name, output.strip()


def _natural_keys(settings: Settings, installation_id: str) -> dict[str, str] | None:
    engine = create_store_engine(settings)
    try:
        with create_session_factory(engine)() as session:
            installation = tenants_repo.get_installation(session, installation_id)
            assert installation is not None
            return installation.natural_keys
    finally:
        engine.dispose()


def test_natural_keys_are_set_per_object_and_cleared_one_by_one(settings: Settings) -> None:
    project, installation_id = _installation(settings, "salesforce")

    code, output = run(settings, "set-natural-key", project, "crm", "org-1", "Account", "Ext__c")
    assert code == 0, output
    assert run(settings, "set-natural-key", project, "crm", "org-1", "Contact", "Email")[0] == 0
    assert _natural_keys(settings, installation_id) == {"Account": "Ext__c", "Contact": "Email"}

    code, output = run(settings, "set-natural-key", project, "crm", "org-1", "Account", "--clear")
    assert code == 0, output
    assert _natural_keys(settings, installation_id) == {"Contact": "Email"}
    assert run(settings, "set-natural-key", project, "crm", "org-1", "Contact", "--clear")[0] == 0
    assert _natural_keys(settings, installation_id) is None


def test_a_bad_natural_key_is_refused_naming_the_problem(settings: Settings) -> None:
    project, installation_id = _installation(settings, "opus")
    base = ("set-natural-key", project, "crm", "org-1", "conn-1")

    code, output = run(settings, *base, "email")
    assert code == 2 and "rowKey only" in output
    code, output = run(settings, *base)
    assert code == 2 and "--clear" in output
    code, output = run(settings, *base, "rowKey", "--clear")
    assert code == 2 and "--clear" in output
    code, output = run(settings, "set-natural-key", project, "crm", "org-2", "conn-1", "rowKey")
    assert code == 2 and "no installation" in output
    assert _natural_keys(settings, installation_id) is None

    assert run(settings, *base, "rowKey")[0] == 0
    assert _natural_keys(settings, installation_id) == {"conn-1": "rowKey"}
