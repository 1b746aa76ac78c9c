"""Bulk CSV upserts end to end: the API, a real Celery worker, the sandbox's Bulk API 2.0
and its file host, all over loopback HTTP."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from sandbox.files import contacts_csv
from tests.support.system import Tenant, create_tenant
from writejobs.settings import Settings

KEY = "External_Id__c"
ROWS = 10_000
INVALID = (17, 5_000, 9_998)


@pytest.fixture()
def salesforce(settings: Settings, api_url: str, own_sandbox: str, worker: object) -> Tenant:
    """A Salesforce installation on a sandbox of the test's own, with a worker running."""
    return create_tenant(settings, api_url, own_sandbox, provider="salesforce")


def bulk_path(tenant: Tenant, object_name: str = "Contact") -> str:
    return tenant.write_path(object_name) + ":async"


def upsert(tenant: Tenant, **source: str) -> str:
    body = {"groupRef": tenant.group_ref, "primaryKey": KEY, **source}
    with tenant.client() as client:
        response = client.put(bulk_path(tenant), json=body)
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"operationId"}
    return str(response.json()["operationId"])


def file_host(sandbox_url: str) -> str:
    """The sandbox by the name the settings allow over plain http."""
    return sandbox_url.replace("127.0.0.1", "localhost")


def logs(tenant: Tenant, op_id: str) -> list[dict[str, Any]]:
    with tenant.client() as client:
        return list(client.get(tenant.operation_path(op_id) + "/logs").json())


def stats(sandbox_url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{sandbox_url}/_sandbox/stats").json())


def ingest_calls(sandbox_url: str) -> int:
    calls = stats(sandbox_url)["calls"]
    return int(calls.get("POST /services/data/v60.0/jobs/ingest", 0))


def expected_failures() -> dict[str, str]:
    return {f"bulk-{i}": f"INVALID_EMAIL_ADDRESS: bad-email-{i}" for i in INVALID}


def assert_three_of_ten_thousand_failed(tenant: Tenant, op_id: str, sandbox_url: str) -> None:
    view = tenant.wait_terminal([op_id], timeout_s=120)[op_id]
    assert (view["status"], view["state"]) == ("success", "partially_succeeded")
    assert (view["successCount"], view["failureCount"], view["recordCount"]) == (9_997, 3, ROWS)
    assert view["result"] == "[Contact] Bulk upsert completed (9997 succeeded, 3 failed)"
    # each failed row is in the logs with Salesforce's message and its primary key
    failed = {
        e["message"]["details"][KEY]: e["message"]["error"]
        for e in logs(tenant, op_id)
        if e["message"]["msg"] == "row failed"
    }
    assert set(failed) == set(expected_failures())
    for key, error in failed.items():
        assert error.startswith("INVALID_EMAIL_ADDRESS:"), error
        assert f"bad-email-{key.removeprefix('bulk-')}" in error
    assert stats(sandbox_url)["records_by_object"] == {"Contact": 9_997}
    messages = [e["message"]["msg"] for e in logs(tenant, op_id)]
    assert "rows written: 9997 created, 0 updated" in messages


def test_an_inline_csv_with_3_invalid_rows_of_10000_ends_success_with_9997_written(
    salesforce: Tenant, own_sandbox: str
) -> None:
    csv = b"".join(contacts_csv(ROWS, set(INVALID), pad=0)).decode()
    op_id = upsert(salesforce, recordsCSV=csv)
    assert_three_of_ten_thousand_failed(salesforce, op_id, own_sandbox)
    assert ingest_calls(own_sandbox) == 1


def test_a_records_url_csv_with_3_invalid_rows_of_10000_ends_success_with_9997_written(
    salesforce: Tenant, own_sandbox: str
) -> None:
    invalid = ",".join(str(i) for i in INVALID)
    url = f"{file_host(own_sandbox)}/_sandbox/generated/contacts.csv?rows={ROWS}&invalid={invalid}"
    op_id = upsert(salesforce, recordsURL=url)
    assert_three_of_ten_thousand_failed(salesforce, op_id, own_sandbox)
    assert stats(own_sandbox)["file_fetches"] == {"generated/contacts.csv": 1}


@pytest.mark.parametrize(
    ("target", "refusal"),
    [
        ("https://127.0.0.1:{port}/_sandbox/files/{name}", "127.0.0.1, a loopback address"),
        ("https://10.0.0.1/_sandbox/files/{name}", "10.0.0.1, a private address"),
        ("https://169.254.169.254/latest/meta-data/", "169.254.169.254, a link-local address"),
    ],
)
def test_a_redirect_to_an_internal_address_fails_the_write_and_fetches_nothing_there(
    salesforce: Tenant, own_sandbox: str, target: str, refusal: str
) -> None:
    # given a CSV on the sandbox, reachable on 127.0.0.1 (were anything to go there)
    name = f"{uuid.uuid4().hex[:8]}.csv"
    httpx.put(f"{own_sandbox}/_sandbox/files/{name}", content=b"External_Id__c,LastName\nx,y\n")
    port = httpx.URL(own_sandbox).port
    internal = target.format(port=port, name=name)

    # when the recordsURL (allowed) redirects to an internal address
    op_id = upsert(
        salesforce, recordsURL=f"{file_host(own_sandbox)}/_sandbox/redirect?to={quote(internal)}"
    )

    # then the write fails, saying why, and nothing was fetched from there or sent on
    view = salesforce.wait_terminal([op_id])[op_id]
    assert view["status"] == "failure"
    assert refusal in view["errors"][0]["message"]
    failure = next(
        e for e in logs(salesforce, op_id) if e["message"]["msg"] == "bulk upsert failed"
    )
    assert refusal in failure["message"]["error"]
    assert stats(own_sandbox)["file_fetches"] == {"redirect": 1}
    assert ingest_calls(own_sandbox) == 0


def test_a_records_url_csv_with_crlf_line_endings_fails_clearly_and_writes_nothing(
    salesforce: Tenant, own_sandbox: str
) -> None:
    name = f"{uuid.uuid4().hex[:8]}.csv"
    crlf = b"External_Id__c,LastName\r\nx-1,Lovelace\r\n"
    httpx.put(f"{own_sandbox}/_sandbox/files/{name}", content=crlf)

    op_id = upsert(salesforce, recordsURL=f"{file_host(own_sandbox)}/_sandbox/files/{name}")

    view = salesforce.wait_terminal([op_id])[op_id]
    assert view["status"] == "failure"
    assert "CRLF" in view["errors"][0]["message"]
    assert stats(own_sandbox)["records_by_object"] == {}


def test_a_records_url_that_is_not_found_fails_without_retrying(
    salesforce: Tenant, own_sandbox: str
) -> None:
    op_id = upsert(salesforce, recordsURL=f"{file_host(own_sandbox)}/_sandbox/files/missing.csv")
    view = salesforce.wait_terminal([op_id])[op_id]
    assert view["status"] == "failure"
    assert "HTTP 404" in view["errors"][0]["message"]
    assert view["metadata"]["retry"]["attempts"] == 1
