"""The write endpoint over real HTTP, against the real store and the sandbox provider."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import httpx
import pytest

from tests.support.contract import assert_problem, assert_write_response, write_examples
from tests.support.system import Tenant


def _email() -> str:
    return f"t-{uuid.uuid4().hex[:12]}@example.com"


def _fill(example: dict[str, Any], tenant: Tenant, record_id: str | None) -> dict[str, Any]:
    body = copy.deepcopy(example)
    body["groupRef"] = tenant.group_ref
    if "record" in body and "email" in body["record"]:
        body["record"]["email"] = _email()
    for item in body.get("batch", []):
        item["record"]["email"] = _email()
    if record_id is not None and "id" in body.get("record", {}):
        body["record"]["id"] = record_id
    return body


def _create(client: httpx.Client, tenant: Tenant) -> str:
    response = client.post(
        tenant.write_path(),
        json={"groupRef": tenant.group_ref, "type": "create", "record": {"email": _email()}},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["result"]["recordId"])


@pytest.mark.parametrize("name", sorted(write_examples()))
def test_every_contract_example_is_accepted_with_the_documented_shape(
    name: str, tenant: Tenant
) -> None:
    # Given the contract's example, routed to this tenant (ids and emails made real)
    with tenant.client() as client:
        record_id = _create(client, tenant) if name in ("single-update", "single-delete") else None
        body = _fill(write_examples()[name], tenant, record_id)
        # When it is sent
        response = client.post(tenant.write_path(), json=body)
    # Then it succeeds in the contract's 200 shape
    assert response.status_code == 200, response.text
    assert_write_response(response)
    payload = response.json()
    if body.get("mode") == "asynchronous":
        assert set(payload) == {"operationId"}
    elif "batch" in body:
        assert payload["successCount"] == len(body["batch"])
    else:
        assert payload["result"]["success"] is True


def test_sync_create_puts_the_record_in_the_sandbox(tenant: Tenant, sandbox_url: str) -> None:
    email = _email()
    with tenant.client() as client:
        body = {"groupRef": tenant.group_ref, "type": "create", "record": {"email": email}}
        response = client.post(tenant.write_path(), json=body)
    record_id = response.json()["result"]["recordId"]
    stored = httpx.get(
        f"{sandbox_url}/crm/v3/objects/contacts/{record_id}", headers={"Authorization": "Bearer x"}
    )
    assert stored.status_code == 200
    assert stored.json()["properties"]["email"] == email


def test_sync_batch_with_one_rejected_record_returns_per_record_results(tenant: Tenant) -> None:
    # Given a batch of five where the third email is invalid
    batch = [{"record": {"email": _email()}} for _ in range(5)]
    batch[2]["record"]["email"] = "not-an-email"
    with tenant.client() as client:
        response = client.post(
            tenant.write_path(),
            json={"groupRef": tenant.group_ref, "type": "create", "batch": batch},
        )
        # Then the good four succeed and the bad one fails with HubSpot's message
        assert response.status_code == 200, response.text
        assert_write_response(response)
        body = response.json()
        assert (body["successCount"], body["failureCount"]) == (4, 1)
        assert [r["success"] for r in body["results"]] == [True, True, False, True, True]
        assert "recordId" not in body["results"][2]
        assert "record 2" in body["errors"][0]["message"]
        assert "not-an-email is invalid" in body["errors"][0]["message"]
        # And the operation tells the same story
        view = client.get(tenant.operation_path(body["operationId"])).json()
    assert view["status"] == "success" and view["state"] == "partially_succeeded"
    assert view["result"] == "Batch write completed (4 succeeded, 1 failed)"


def test_sync_single_rejected_record_is_a_422_in_the_contract_shape(tenant: Tenant) -> None:
    with tenant.client() as client:
        response = client.post(
            tenant.write_path(),
            json={
                "groupRef": tenant.group_ref,
                "type": "update",
                "record": {"id": "999999999", "email": _email()},
            },
        )
    assert response.status_code == 422
    assert_write_response(response)
    assert response.json()["result"] == {"success": False}


def test_delete_without_deletion_enabled_is_refused_with_a_clear_400(tenant: Tenant) -> None:
    with tenant.client() as client:
        response = client.post(
            tenant.write_path("companies"),
            json={"groupRef": tenant.group_ref, "type": "delete", "record": {"id": "1"}},
        )
    assert response.status_code == 400
    assert_write_response(response)
    assert "deletion is not enabled for object 'companies'" in response.text


def test_delete_where_enabled_removes_the_record(tenant: Tenant, sandbox_url: str) -> None:
    with tenant.client() as client:
        record_id = _create(client, tenant)
        body = {"groupRef": tenant.group_ref, "type": "delete", "record": {"id": record_id}}
        response = client.post(tenant.write_path(), json=body)
    assert response.status_code == 200, response.text
    assert response.json()["result"] == {"success": True}
    gone = httpx.get(
        f"{sandbox_url}/crm/v3/objects/contacts/{record_id}", headers={"Authorization": "Bearer x"}
    )
    assert gone.status_code == 404


BAD_REQUESTS: list[tuple[str, bytes | dict[str, Any], str]] = [
    ("malformed JSON", b'{"groupRef": ', "not valid JSON"),
    ("missing groupRef", {"type": "create", "record": {}}, "groupRef is required"),
    (
        "batch of 101",
        {"groupRef": "G", "type": "create", "batch": [{"record": {}}] * 101},
        "batch must have at most 100 items",
    ),
    (
        "record and batch",
        {"groupRef": "G", "type": "create", "record": {}, "batch": [{"record": {}}]},
        "either record or batch, not both",
    ),
    (
        "autoBatchPolicy with sync mode",
        {
            "groupRef": "G",
            "type": "create",
            "mode": "synchronous",
            "autoBatchPolicy": {"maxDelayMinutes": 1},
            "record": {},
        },
        "autoBatchPolicy requires mode asynchronous",
    ),
    ("neither record nor batch", {"groupRef": "G", "type": "create"}, "record or batch"),
    ("unknown type", {"groupRef": "G", "type": "upsert", "record": {}}, "type must be one of"),
    (
        "update without id",
        {"groupRef": "G", "type": "update", "record": {"x": 1}},
        "record.id is required for update",
    ),
    (
        "maxDelayMinutes out of range",
        {
            "groupRef": "G",
            "type": "create",
            "mode": "asynchronous",
            "autoBatchPolicy": {"maxDelayMinutes": 0},
            "record": {},
        },
        "autoBatchPolicy.maxDelayMinutes must be at least 1",
    ),
    (
        "async delete",
        {"groupRef": "G", "type": "delete", "mode": "asynchronous", "record": {"id": "1"}},
        "delete is synchronous only",
    ),
    (
        "unknown groupRef",
        {"groupRef": "nobody", "type": "create", "record": {}},
        "groupRef 'nobody' has no installation",
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "message"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_requests_are_400_text_naming_the_problem(
    case: str, body: bytes | dict[str, Any], message: str, tenant: Tenant
) -> None:
    if isinstance(body, dict) and body.get("groupRef") == "G":
        body = {**body, "groupRef": tenant.group_ref}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with tenant.client() as client:
        response = client.post(
            tenant.write_path(), content=content, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400, response.text
    assert_write_response(response)
    assert response.headers["content-type"].startswith("text/plain")
    assert message in response.text


@pytest.mark.parametrize("api_key", [None, "wj_wrong"], ids=["missing key", "wrong key"])
def test_missing_or_wrong_api_key_is_401_problem(tenant: Tenant, api_key: str | None) -> None:
    headers = {} if api_key is None else {"X-Api-Key": api_key}
    response = httpx.post(
        tenant.api_url + tenant.write_path(),
        headers=headers,
        json={"groupRef": tenant.group_ref, "type": "create", "record": {}},
    )
    body = assert_problem(response, 401)
    assert body["subsystem"] == "api" and body["requestId"]


def test_a_key_cannot_read_another_projects_operation(
    tenant: Tenant, settings: Any, api_url: str, sandbox_url: str
) -> None:
    from tests.support.system import create_tenant

    other = create_tenant(settings, api_url, sandbox_url)
    with tenant.client() as client:
        op_id = client.post(
            tenant.write_path(),
            json={"groupRef": tenant.group_ref, "type": "create", "record": {"email": _email()}},
        ).json()["operationId"]
    with other.client() as client:
        # Through other's own project path: unknown there
        assert_problem(client.get(other.operation_path(op_id)), 404)
        assert_problem(client.get(other.operation_path(op_id) + "/logs"), 404)
        # Through tenant's project path with other's key: not other's project
        assert_problem(client.get(tenant.operation_path(op_id)), 404)
        # Writing into tenant's project with other's key
        response = client.post(
            tenant.write_path(), json={"groupRef": tenant.group_ref, "type": "create", "record": {}}
        )
        assert_problem(response, 404)


def test_unknown_integration_is_404_problem(tenant: Tenant) -> None:
    path = f"/v1/projects/{tenant.project_id}/integrations/nope/objects/contacts"
    with tenant.client() as client:
        response = client.post(
            path, json={"groupRef": tenant.group_ref, "type": "create", "record": {}}
        )
    assert_problem(response, 404)


def test_project_may_be_named_instead_of_id(tenant: Tenant) -> None:
    with tenant.client() as client:
        body = {"groupRef": tenant.group_ref, "type": "create", "record": {"email": _email()}}
        response = client.post(tenant.write_path(project=tenant.project_name.upper()), json=body)
    assert response.status_code == 200, response.text
