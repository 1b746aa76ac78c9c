"""`writejobs admin …-webhook(s)` against the real store."""

from __future__ import annotations

import uuid

from typer.testing import CliRunner

from tests.support.system import settings_env
from writejobs.cli.main import app
from writejobs.settings import Settings


def run(settings: Settings, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["admin", *args], env=settings_env(settings))
    return result.exit_code, result.output


def test_a_destination_is_added_with_its_secret_shown_once_then_listed_enabled_and_removed(
    settings: Settings,
) -> None:
    name = f"hooks-{uuid.uuid4().hex[:8]}"
    assert run(settings, "create-project", name)[0] == 0
    assert run(settings, "create-integration", name, "crm")[0] == 0
    # an internal address is refused, saying why
    code, output = run(settings, "add-webhook", name, "https://10.0.0.8/hook")
    assert code == 2 and "private address" in output
    code, output = run(settings, "add-webhook", name, "http://example.com/hook")
    assert code == 2 and "https://" in output
    # a listed host over plain http is taken: its id, then its secret
    code, output = run(
        settings, "add-webhook", name, "http://localhost:9/hook", "--integration", "crm"
    )
    assert code == 0, output
    destination_id, secret = output.split()
    assert uuid.UUID(destination_id) and secret.startswith("whsec_")
    code, listing = run(settings, "list-webhooks", name)
    assert code == 0 and destination_id[:8] in listing and "yes" in listing
    assert secret not in listing and secret[6:20] not in listing
    assert run(settings, "enable-webhook", name, destination_id)[0] == 0
    code, output = run(settings, "replay-webhooks", name, "--since", "1h")
    assert code == 0 and "replaying 0 notification(s)" in output
    code, output = run(settings, "replay-webhooks", name, "--since", "yesterday")
    assert code == 2 and "--since" in output
    assert run(settings, "remove-webhook", name, destination_id)[0] == 0
    code, listing = run(settings, "list-webhooks", name)
    assert destination_id[:8] not in listing
    assert run(settings, "remove-webhook", name, destination_id)[0] == 2
