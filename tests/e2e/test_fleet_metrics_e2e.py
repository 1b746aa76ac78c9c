"""The counters a deployment alerts on, from a real Celery worker process: an
asynchronous write ended by the worker is counted at the API's `/metrics`."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.integration.test_metrics import scrape, value
from tests.support.system import Tenant

pytestmark = pytest.mark.usefixtures("worker")

FINISHED = "writejobs_operations_finished_total"


def test_an_async_write_the_worker_ends_is_counted_as_finished(
    tenant: Tenant, api_url: str
) -> None:
    # given the fleet's count of succeeded operations
    before = value(scrape(api_url), FINISHED, state="succeeded")

    # when a worker runs an asynchronous write to its end
    with tenant.client() as client:
        body = {
            "groupRef": tenant.group_ref,
            "type": "create",
            "mode": "asynchronous",
            "record": {"email": f"e-{uuid.uuid4().hex[:8]}@example.com"},
        }
        op_id = client.post(tenant.write_path(), json=body).json()["operationId"]
    assert tenant.wait_terminal([op_id])[op_id]["state"] == "succeeded"

    # then the worker's count reaches the API's scrape (sent within its next second)
    deadline = time.monotonic() + 30
    counted = before
    while counted < before + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
        counted = value(scrape(api_url), FINISHED, state="succeeded")
    assert counted >= before + 1
