"""Operator controls over HTTP (the API on loopback, no worker) and through
`writejobs admin`, on the real store and Redis."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from typer.testing import CliRunner

from tests.support.system import Tenant, create_tenant, settings_env
from writejobs.cli.main import app
from writejobs.settings import Settings

PROBLEM = "application/problem+json"


def installation_path(tenant: Tenant) -> str:
    return (
        f"/v1/projects/{tenant.project_id}/integrations/{tenant.integration_id}"
        f"/installations/{tenant.installation_id}"
    )


def async_write(client: httpx.Client, tenant: Tenant, email: str) -> str:
    body = {"groupRef": tenant.group_ref, "type": "create", "mode": "asynchronous"}
    response = client.post(tenant.write_path(), json={**body, "record": {"email": email}})
    assert response.status_code == 200, response.text
    op_id: str = response.json()["operationId"]
    return op_id


def operations(client: httpx.Client, tenant: Tenant, **params: Any) -> httpx.Response:
    return client.get(f"/v1/projects/{tenant.project_id}/operations", params=params)


def test_a_paused_installation_refuses_sync_writes_retryably_takes_async_ones_and_resumes(
    tenant: Tenant,
) -> None:
    with tenant.client() as client:
        paused = client.post(installation_path(tenant) + ":pause", json={"reason": "migration"})
        assert paused.status_code == 200, paused.text
        assert paused.json() | {"pausedAt": "-"} == {
            "installationId": tenant.installation_id,
            "groupRef": tenant.group_ref,
            "paused": True,
            "pausedAt": "-",
            "pausedReason": "migration",
        }

        sync = client.post(
            tenant.write_path(),
            json={"groupRef": tenant.group_ref, "type": "create", "record": {"email": "s@x.io"}},
        )
        assert (sync.status_code, sync.headers["content-type"]) == (409, PROBLEM)
        problem = sync.json()
        assert problem["retryable"] is True and "retryAfter" in problem
        assert problem["context"] == {"installationId": tenant.installation_id}
        assert "paused: migration" in problem["detail"]
        async_write(client, tenant, "a@x.io")
        listed = client.get(installation_path(tenant) + "/operations").json()["results"]
        assert [op["mode"] for op in listed] == ["asynchronous"]  # the 409 recorded nothing
        assert client.get(installation_path(tenant) + "/pause").json()["paused"] is True

        resumed = client.post(installation_path(tenant) + ":resume")
        assert resumed.status_code == 200
        # Held once a worker has looked at it (the session's worker may run in this suite).
        assert resumed.json() | {"released": "-"} == {
            "installationId": tenant.installation_id,
            "groupRef": tenant.group_ref,
            "paused": False,
            "released": "-",
        }
        assert resumed.json()["released"] in (0, 1)


def test_another_projects_key_cannot_pause_or_cancel(
    tenant: Tenant, settings: Settings, sandbox_url: str
) -> None:
    other = create_tenant(settings, tenant.api_url, sandbox_url)
    with tenant.client() as client:
        op_id = async_write(client, tenant, "a@x.io")
    with other.client() as client:
        path = installation_path(tenant).replace(tenant.project_id, other.project_id)
        assert client.post(path + ":pause").status_code == 404
        cancel = f"/v1/projects/{other.project_id}/operations/{op_id}:cancel"
        assert client.post(cancel).status_code == 404


def test_a_cancelled_write_is_a_dead_letter_and_a_replay_makes_a_linked_operation(
    tenant: Tenant,
) -> None:
    with tenant.client() as client:
        # Paused, so that no worker of this test session runs them first.
        assert client.post(installation_path(tenant) + ":pause").status_code == 200
        op_id = async_write(client, tenant, "c@x.io")
        kept = async_write(client, tenant, "k@x.io")

        cancelled = client.post(f"/v1/projects/{tenant.project_id}/operations/{op_id}:cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert (cancelled.json()["status"], cancelled.json()["state"]) == ("failure", "cancelled")
        again = client.post(f"/v1/projects/{tenant.project_id}/operations/{op_id}:cancel")
        assert (again.status_code, again.headers["content-type"]) == (409, PROBLEM)

        letters = operations(client, tenant, status="failure").json()
        assert [(op["id"], op["lastError"]) for op in letters["results"]] == [(op_id, "cancelled")]
        assert letters["pagination"] == {"done": True}
        every = operations(client, tenant, installation=tenant.installation_id).json()["results"]
        assert [op["id"] for op in every] == [kept, op_id]
        assert operations(client, tenant, status="failure", error="nothing like it").json() == {
            "results": [],
            "pagination": {"done": True},
        }

        replay_path = f"/v1/projects/{tenant.project_id}/operations:replay"
        replayed = client.post(replay_path, json={"operationIds": [op_id]})
        assert replayed.status_code == 200, replayed.text
        [result] = replayed.json()["results"]
        assert result | {"replayOperationId": "-"} == {
            "operationId": op_id,
            "replayOperationId": "-",
            "records": [0],
            "alreadyReplayed": False,
        }
        new = client.get(tenant.operation_path(result["replayOperationId"])).json()
        assert (new["metadata"]["replayOf"], new["status"]) == (op_id, "in_progress")
        by_filter = client.post(replay_path, json={"filter": {"state": ["cancelled"]}})
        assert by_filter.json()["results"][0]["alreadyReplayed"] is True

        in_progress = client.post(replay_path, json={"operationIds": [kept]})
        assert (
            in_progress.status_code == 400 and "still in progress" in in_progress.json()["detail"]
        )


def test_bad_filters_and_replay_requests_are_400_problems_naming_the_problem(
    tenant: Tenant,
) -> None:
    with tenant.client() as client:
        for params, named in (
            ({"status": "broken"}, "status"),
            ({"state": "nope"}, "state"),
            ({"since": "2026-12-01T10:00:00"}, "since"),
            ({"pageToken": "x"}, "pageToken"),
            ({"pageSize": "0"}, "pageSize"),
        ):
            response = operations(client, tenant, **params)
            assert (response.status_code, response.headers["content-type"]) == (400, PROBLEM)
            assert named in response.json()["detail"], (params, response.text)
        replay_path = f"/v1/projects/{tenant.project_id}/operations:replay"
        for body, named in (
            ({}, "operationIds or filter"),
            ({"operationIds": [], "filter": {}}, "operationIds"),
            ({"filter": {"color": "red"}}, "color"),
        ):
            response = client.post(replay_path, json=body)
            assert response.status_code == 400 and named in response.json()["detail"], body
        unknown = client.post(replay_path, json={"operationIds": [str(uuid.uuid4())]})
        assert unknown.status_code == 404


def run(settings: Settings, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["admin", *args], env=settings_env(settings))
    return result.exit_code, result.output


def test_the_admin_commands_pause_resume_cancel_list_and_replay(
    tenant: Tenant, settings: Settings
) -> None:
    names = (tenant.project_name, "crm", tenant.group_ref)
    code, output = run(settings, "pause-installation", *names, "--reason", "upgrade")
    assert code == 0 and "paused since" in output, output
    with tenant.client() as client:
        sync = client.post(
            tenant.write_path(),
            json={"groupRef": tenant.group_ref, "type": "create", "record": {"email": "s@x.io"}},
        )
        assert sync.status_code == 409
        op_id = async_write(client, tenant, "a@x.io")
    code, output = run(settings, "cancel-operation", tenant.project_name, op_id)
    assert code == 0 and f"{op_id}: cancelled" in output, output
    code, output = run(settings, "cancel-operation", tenant.project_name, op_id)
    assert code == 2 and "already ended" in output
    code, output = run(settings, "resume-installation", *names)
    assert code == 0 and "resumed, 0 operation(s) released" in output, output

    code, listing = run(settings, "dead-letters", tenant.project_name, "--since", "1h")
    assert code == 0, listing
    header, *rows = listing.splitlines()
    assert header.split("\t")[:2] == ["operation", "state"]
    assert [row.split("\t")[:2] for row in rows] == [[op_id, "cancelled"]]
    code, listing = run(settings, "dead-letters", tenant.project_name, "--state", "expired")
    assert code == 0 and op_id[:8] not in listing
    code, output = run(settings, "dead-letters", tenant.project_name, "--state", "running")
    assert code == 2 and "--state" in output

    code, output = run(settings, "replay", tenant.project_name)
    assert code == 2 and "OPERATION_ID" in output
    code, output = run(settings, "replay", tenant.project_name, "--since", "1h")
    assert code == 0 and f"{op_id} -> " in output and "1 record(s)" in output, output
    code, output = run(settings, "replay", tenant.project_name, op_id)
    assert code == 0 and "(replayed earlier)" in output, output
