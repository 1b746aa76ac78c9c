"""The console in a real browser: headless Chromium (Debian's `chromium`, driven by
Playwright for Python with the system browser; no browser is downloaded) opens the
console of `writejobs up --demo`, logs in with the demo's API key, filters, opens an
operation, and looks at the fleet as an operator; `/docs` and Flower's dashboard too.

Screenshots go to `test-artifacts/console/` (or `$TEST_ARTIFACTS_DIR/console/`);
with `CONSOLE_SCREENSHOT_TO_DOCS=1` the operations page also becomes the README's
`docs/console.png`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_up import RUNNING_LINE, START_TIMEOUT_S, running_up
from tests.support.system import REPO_ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OPERATOR = ("operator", "console-e2e-password")
VIEWPORT = {"width": 1360, "height": 900}

playwright_api = pytest.importorskip("playwright.sync_api")


def artifacts_dir() -> Path:
    base = Path(os.environ.get("TEST_ARTIFACTS_DIR") or REPO_ROOT / "test-artifacts")
    path = base / "console"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture()
def chromium() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (.ci/run does)")
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.mark.timeout(300)
def test_a_person_logs_in_filters_opens_an_operation_and_sees_the_fleet(
    tmp_path: Path, chromium: Any
) -> None:
    shots = artifacts_dir()
    operators = {"WRITEJOBS_CONSOLE_OPERATORS": f"{OPERATOR[0]}:{OPERATOR[1]}"}
    with running_up(tmp_path.resolve(), env=operators) as run:
        run.wait_for(RUNNING_LINE, timeout_s=START_TIMEOUT_S)
        demo = json.loads((tmp_path / ".writejobs" / "demo.json").read_text())
        api = demo["api_url"]
        refused = _write_the_provider_refuses(demo)

        page = chromium.new_page(viewport=VIEWPORT)
        # given a visitor with no session, the console asks for a login
        page.goto(f"{api}/console")
        assert "/console/login" in page.url
        page.screenshot(path=str(shots / "01-login.png"), full_page=True)

        # when they log in with the demo project's API key
        page.fill("#api_key", demo["api_key"])
        page.click("text=Log in with the key")
        page.wait_for_url(re.compile(r".*/console$"))
        # then they see the demo project's installations
        assert page.locator(f"text={demo['group_ref']}").count() >= 1
        page.screenshot(path=str(shots / "02-installations.png"), full_page=True)

        # and the demo installation's operations, newest first
        page.click(f"a[href='/console/installations/{demo['installation_id']}']")
        page.wait_for_selector("table.ops")
        assert page.locator("table.ops tbody tr").count() == 50  # a full first page
        page.screenshot(path=str(shots / "03-operations.png"), full_page=False)
        if os.environ.get("CONSOLE_SCREENSHOT_TO_DOCS") == "1":
            (REPO_ROOT / "docs").mkdir(exist_ok=True)
            page.screenshot(path=str(REPO_ROOT / "docs" / "console.png"), full_page=False)

        # when they filter to failures of the contacts object
        page.select_option("select[name=status]", "failure")
        page.fill("input[name=object]", demo["object"])
        page.click("button:text-is('Filter')")
        page.wait_for_url(re.compile(r".*status=failure.*"))
        assert "object=contacts" in page.url
        # then they see the one write the provider refused, and nothing else
        statuses = page.locator("table.ops tbody td:nth-child(2)").all_inner_texts()
        assert statuses == ["failure"], statuses
        page.screenshot(path=str(shots / "04-filtered.png"), full_page=True)

        # and open that operation: its record's error and its logs
        page.click("table.ops tbody tr:first-child td:first-child a")
        page.wait_for_selector("text=Records")
        assert refused in page.url
        assert page.locator(".summary .badge").inner_text() == "failure"
        assert "not-an-email is invalid" in page.locator("table.records").inner_text()
        assert page.locator("table.logs tbody tr").count() >= 2
        page.screenshot(path=str(shots / "05-operation.png"), full_page=True)

        # and a batch member shows its batch
        page.goto(f"{api}/console")
        page.click(f"a[href='/console/installations/{demo['installation_id']}']")
        page.select_option("select[name=status]", "success")
        page.click("button:text-is('Filter')")
        page.wait_for_url(re.compile(r".*status=success.*"))
        batched = page.locator("table.ops tbody tr", has_text="auto_batch").first
        batched.locator("td:first-child a").click()
        page.wait_for_selector("text=Auto-batch")
        page.screenshot(path=str(shots / "06-batched-operation.png"), full_page=False)

        # the fleet page is for operators: a key's session is told so
        page.goto(f"{api}/console/fleet")
        assert page.locator("h1").inner_text() == "Operators only"
        page.click("text=Log out")
        page.wait_for_url(re.compile(r".*/console/login$"))

        # an operator sees the fleet with its charts
        page.goto(f"{api}/console/fleet")
        page.fill("#username", OPERATOR[0])
        page.fill("#password", OPERATOR[1])
        page.click("text=Log in as operator")
        page.wait_for_url(re.compile(r".*/console/fleet$"))
        assert page.locator("figure.chart svg").count() == 6
        page.screenshot(path=str(shots / "07-fleet.png"), full_page=True)

        # the API's own docs, and Flower behind its login
        page.goto(f"{api}/docs")
        page.wait_for_selector("text=writejobs", timeout=15000)
        page.screenshot(path=str(shots / "08-docs.png"), full_page=False)
        flower = chromium.new_context(
            viewport=VIEWPORT,
            http_credentials={
                "username": demo["flower_user"],
                "password": demo["flower_password"],
            },
        )
        flower_page = flower.new_page()
        answer = flower_page.goto(demo["flower_url"] + "/")
        assert answer is not None and answer.status == 200
        flower_page.wait_for_selector("text=Workers", timeout=15000)
        flower_page.screenshot(path=str(shots / "09-flower.png"), full_page=False)
        flower.close()

    for name in ("01-login", "03-operations", "05-operation", "07-fleet", "08-docs", "09-flower"):
        assert (shots / f"{name}.png").stat().st_size > 5000, name


def _write_the_provider_refuses(demo: dict[str, str]) -> str:
    """A synchronous create the sandbox refuses (an invalid email): a failed operation."""
    path = (
        f"/v1/projects/{demo['project']}/integrations/{demo['integration']}"
        f"/objects/{demo['object']}"
    )
    body = {"groupRef": demo["group_ref"], "type": "create", "record": {"email": "not-an-email"}}
    answer = httpx.post(
        demo["api_url"] + path, json=body, headers={"X-Api-Key": demo["api_key"]}, timeout=30
    )
    assert answer.status_code == 422, answer.text
    return str(answer.json()["operationId"])
