"""A worker SIGKILLed between its provider call and the commit of the result, end to end:
API, scheduler, real Celery workers, the sandbox. With a natural key the batch taken
over is an upsert and every record exists once; without one the operations' logs
say "possible duplicate" and the fleet's metrics count it."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from api_shim.app import create_app
from tests.support.servers import serve_in_thread
from tests.support.system import (
    Tenant,
    create_tenant,
    running_scheduler,
    running_worker,
    settings_env,
)
from writejobs.cli.main import app as cli
from writejobs.execution.repeats import POSSIBLE_DUPLICATE
from writejobs.settings import Settings

RECORDS = 10
_METRIC = re.compile(r'^writejobs_possible_duplicates_total\{provider="hubspot"\} (\S+)$', re.M)


@pytest.fixture()
def fleet(settings: Settings, tmp_path: Any) -> Settings:
    """A queue of the test's own, a policy minute of 1.2 s, a 2 s lease, fast sweeps."""
    return settings.model_copy(
        update={
            "celery_queue": f"natkeys-{uuid.uuid4().hex[:6]}",
            "data_dir": tmp_path,
            "policy_time_scale": 0.02,
            "unsent_grace_s": 1.0,
            "orphan_grace_s": 2.0,
            "stalled_after_s": 2.0,
            "running_lease_s": 2.0,
        }
    )


def _auto(tenant: Tenant, client: httpx.Client, email: str) -> str:
    response = client.post(
        tenant.write_path("contacts"),
        json={
            "groupRef": tenant.group_ref,
            "type": "create",
            "mode": "asynchronous",
            "autoBatchPolicy": {"maxDelayMinutes": 1},
            "record": {"email": email},
        },
    )
    assert response.status_code == 200, response.text
    return str(response.json()["operationId"])


def _possible_duplicates(api: str) -> float:
    found = _METRIC.search(httpx.get(f"{api}/metrics").text)
    return float(found.group(1)) if found else 0.0


def _stats(sandbox_url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{sandbox_url}/_sandbox/stats").json())


def _set_natural_key(settings: Settings, tenant: Tenant) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "admin",
            "set-natural-key",
            tenant.project_name,
            "crm",
            tenant.group_ref,
            "contacts",
            "email",
        ],
        env=settings_env(settings),
    )
    assert result.exit_code == 0, result.output


@pytest.mark.timeout(240)
@pytest.mark.parametrize("natural_key", [True, False], ids=["by-email", "no-natural-key"])
def test_a_worker_killed_after_its_provider_call_leaves_each_record_once_or_says_it_may_not(
    natural_key: bool, fleet: Settings, own_sandbox: str
) -> None:
    doomed = fleet.model_copy(update={"failpoints": "batch.after_provider_call"})
    with serve_in_thread(create_app(fleet)) as api:
        tenant = create_tenant(fleet, api, own_sandbox)
        if natural_key:
            _set_natural_key(fleet, tenant)
        before = _possible_duplicates(api)
        with tenant.client() as client:
            ids = [
                _auto(tenant, client, f"nk{i}-{uuid.uuid4().hex[:6]}@example.com")
                for i in range(RECORDS)
            ]
        with running_scheduler(fleet) as scheduler:
            with running_worker(doomed) as victim:
                victim.process.wait(timeout=60)  # the failpoint SIGKILLs its process group
            assert victim.process.returncode == -9, victim.output()[-3000:]
            assert _stats(own_sandbox)["records_stored"] == RECORDS  # written, not recorded
            with running_worker(fleet) as survivor:
                try:
                    views = tenant.wait_terminal(ids, timeout_s=120)
                except TimeoutError:
                    print(scheduler.output()[-5000:], survivor.output()[-5000:])
                    raise
                # the pool process sends its figures within a second
                deadline = time.monotonic() + 15
                counted = _possible_duplicates(api) - before
                while not natural_key and counted < RECORDS and time.monotonic() < deadline:
                    time.sleep(0.5)
                    counted = _possible_duplicates(api) - before
            with tenant.client() as client:
                logs = {
                    op_id: [
                        e["message"]["msg"]
                        for e in client.get(tenant.operation_path(op_id) + "/logs").json()
                    ]
                    for op_id in ids
                }

    assert {v["status"] for v in views.values()} == {"success"}
    stats = _stats(own_sandbox)
    assert stats["records_stored"] == RECORDS
    if natural_key:
        # the repeat was an upsert: HubSpot never saw a create of a contact it had
        assert stats["duplicate_creates"] == 0
        assert stats["calls"].get("POST /crm/v3/objects/{objectType}/batch/create", 0) == 0
        for messages in logs.values():
            assert "repeat written as an upsert by email" in messages
            assert POSSIBLE_DUPLICATE not in messages
        assert counted == 0
    else:
        # HubSpot refused each contact as existing (its email is unique); for any other
        # object the record would now exist twice, which is what the logs warn of
        assert stats["duplicate_creates"] == RECORDS
        for messages in logs.values():
            assert messages.count(POSSIBLE_DUPLICATE) == 1
        assert counted == RECORDS
