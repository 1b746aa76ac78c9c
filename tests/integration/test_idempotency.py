"""`Idempotency-Key` on the write and bulk endpoints, over real HTTP, SQL and the sandbox."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from api_shim.app import create_app
from scheduler.scheduler import Scheduler
from tests.support.contract import assert_problem, assert_write_response
from tests.support.servers import serve_in_thread
from tests.support.system import Tenant, create_tenant
from writejobs.clock import utcnow
from writejobs.runtime.wiring import Wiring, wire
from writejobs.settings import Settings
from writejobs.store.tables import IdempotencyKey, Operation

KEY = "Idempotency-Key"


def _email() -> str:
    return f"i-{uuid.uuid4().hex[:12]}@example.com"


def _sync_create(tenant: Tenant, email: str | None = None) -> dict[str, Any]:
    return {"groupRef": tenant.group_ref, "type": "create", "record": {"email": email or _email()}}


def _async_create(tenant: Tenant) -> dict[str, Any]:
    return {**_sync_create(tenant), "mode": "asynchronous"}


class ManualClock:
    """The API's clock, moved by the test (expiry and abandoned requests without sleeping)."""

    def __init__(self) -> None:
        self._now = utcnow()
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)


@dataclass
class System:
    settings: Settings
    wiring: Wiring
    clock: ManualClock
    tenant: Tenant
    sandbox: httpx.Client

    def client(self) -> httpx.Client:
        return self.tenant.client()

    def operations(self, project_id: str | None = None) -> int:
        project = project_id or self.tenant.project_id
        with self.wiring.deps.sessions() as session:
            statement = select(func.count()).where(Operation.project_id == project)
            return int(session.scalar(statement.select_from(Operation)) or 0)

    def provider_calls(self) -> int:
        stats = self.sandbox.get("/_sandbox/stats").json()
        return sum(stats["calls"].values())

    def faults(self, **rule: Any) -> None:
        response = self.sandbox.post("/_sandbox/faults", json={"rules": [rule]})
        response.raise_for_status()


@pytest.fixture()
def system(settings: Settings, own_sandbox: str) -> Iterator[System]:
    """An API of the test's own on a clock the test moves, and a sandbox of its own."""
    clock = ManualClock()
    with (
        closing(wire(settings, clock=clock)) as wiring,
        serve_in_thread(create_app(settings, wiring=wiring)) as api_url,
        httpx.Client(base_url=own_sandbox, timeout=30) as sandbox,
    ):
        tenant = create_tenant(settings, api_url, own_sandbox)
        yield System(settings, wiring, clock, tenant, sandbox)


def test_a_repeated_sync_write_gets_the_same_answer_and_makes_no_second_operation(
    system: System,
) -> None:
    # Given a synchronous create sent with a key
    body = _sync_create(system.tenant)
    with system.client() as client:
        first = client.post(system.tenant.write_path(), json=body, headers={KEY: "k-1"})
        # When it is sent again with the same key
        again = client.post(system.tenant.write_path(), json=body, headers={KEY: "k-1"})
    # Then the second answer is the first, byte for byte, and says it is a replay
    assert first.status_code == 200, first.text
    assert again.status_code == first.status_code
    assert again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert_write_response(again)
    # And there is one operation and one provider write
    assert system.operations() == 1
    assert system.provider_calls() == 1


def test_a_repeated_async_write_gets_the_same_operation_id(system: System) -> None:
    body = _async_create(system.tenant)
    with system.client() as client:
        first = client.post(system.tenant.write_path(), json=body, headers={KEY: "async-1"})
        again = client.post(system.tenant.write_path(), json=body, headers={KEY: "async-1"})
    assert first.status_code == 200, first.text
    assert (again.status_code, again.content) == (first.status_code, first.content)
    assert set(first.json()) == {"operationId"}
    assert system.operations() == 1


def test_the_key_ignores_json_spacing_and_the_spelling_of_the_project(system: System) -> None:
    # Given a write sent with a key, the project named by id
    tenant = system.tenant
    body = _async_create(tenant)
    with system.client() as client:
        first = client.post(tenant.write_path(), json=body, headers={KEY: "k-spelling"})
        # When it is sent again, the project named by name and the JSON spaced differently
        again = client.post(
            tenant.write_path(project=tenant.project_name),
            content=httpx.Request("POST", "/", json=body).content.replace(b",", b", "),
            headers={KEY: "k-spelling", "Content-Type": "application/json"},
        )
    # Then it is the same request
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert system.operations() == 1


def test_a_provider_refusal_is_replayed_as_the_same_422(system: System) -> None:
    # Given a create the provider refuses (HubSpot rejects the email)
    body = _sync_create(system.tenant, email="not-an-email")
    with system.client() as client:
        first = client.post(system.tenant.write_path(), json=body, headers={KEY: "refused"})
        again = client.post(system.tenant.write_path(), json=body, headers={KEY: "refused"})
    assert first.status_code == 422, first.text
    assert (again.status_code, again.content) == (422, first.content)
    assert system.provider_calls() == 1


def test_the_same_key_with_a_different_body_is_a_422_problem(system: System) -> None:
    with system.client() as client:
        first = client.post(
            system.tenant.write_path(), json=_sync_create(system.tenant), headers={KEY: "k-2"}
        )
        other = client.post(
            system.tenant.write_path(), json=_sync_create(system.tenant), headers={KEY: "k-2"}
        )
    assert first.status_code == 200
    problem = assert_problem(other, 422)
    assert "Idempotency-Key" in problem["detail"] and "different request" in problem["detail"]
    assert problem["retryable"] is False
    assert system.operations() == 1


def test_the_same_key_on_another_endpoint_is_a_different_request(system: System) -> None:
    body = _async_create(system.tenant)
    with system.client() as client:
        client.post(system.tenant.write_path(), json=body, headers={KEY: "k-3"})
        other = client.post(system.tenant.write_path("companies"), json=body, headers={KEY: "k-3"})
    assert_problem(other, 422)


def test_a_key_whose_request_is_still_running_is_a_retryable_409(system: System) -> None:
    # Given a synchronous write held in flight by a slow provider
    system.faults(endpoint="*", latency_ms=1500)
    body = _sync_create(system.tenant)
    with ThreadPoolExecutor(1) as pool, system.client() as client:
        slow = pool.submit(client.post, system.tenant.write_path(), json=body, headers={KEY: "k"})
        _wait_for_key(system, "k")
        # When the same request arrives meanwhile
        during = client.post(system.tenant.write_path(), json=body, headers={KEY: "k"})
        first = slow.result()
        # Then it is told to come back, and afterwards gets the first answer
        after = client.post(system.tenant.write_path(), json=body, headers={KEY: "k"})
    problem = assert_problem(during, 409)
    assert problem["retryable"] is True and "retryAfter" in problem
    assert problem["context"]["operationId"] == first.json()["operationId"]
    assert (after.status_code, after.content) == (200, first.content)
    assert system.operations() == 1
    assert system.provider_calls() == 1


def test_a_key_left_in_flight_by_a_dead_request_is_settled_with_its_operation_id(
    system: System,
) -> None:
    # Given a synchronous write in flight, and then a synchronous lease's time passes
    # (as if the API process had died: no live request lasts that long)
    system.faults(endpoint="*", latency_ms=1500)
    body = _sync_create(system.tenant)
    with ThreadPoolExecutor(1) as pool, system.client() as client:
        held = pool.submit(client.post, system.tenant.write_path(), json=body, headers={KEY: "d"})
        _wait_for_key(system, "d")
        system.clock.advance(system.settings.sync_lease_s + 1)
        # When the client sends it again with the key
        retry = client.post(system.tenant.write_path(), json=body, headers={KEY: "d"})
        held.result()
        later = client.post(system.tenant.write_path(), json=body, headers={KEY: "d"})
    # Then it learns the operation's id, as an asynchronous write would, and keeps learning it
    assert retry.status_code == 200, retry.text
    with system.wiring.deps.sessions() as session:
        [op_id] = session.scalars(
            select(Operation.id).where(Operation.project_id == system.tenant.project_id)
        )
    assert retry.json() == {"operationId": op_id}
    assert (later.status_code, later.content) == (200, retry.content)


def test_a_key_expires_after_its_time_and_is_then_a_new_request(system: System) -> None:
    body = _async_create(system.tenant)
    with system.client() as client:
        first = client.post(system.tenant.write_path(), json=body, headers={KEY: "old"})
        system.clock.advance(system.settings.idempotency_ttl_s + 1)
        again = client.post(system.tenant.write_path(), json=body, headers={KEY: "old"})
    assert again.status_code == 200
    assert "Idempotent-Replayed" not in again.headers
    assert again.json()["operationId"] != first.json()["operationId"]
    assert system.operations() == 2


def test_the_scheduler_purges_expired_keys_and_keeps_the_others(system: System) -> None:
    with system.client() as client:
        for key in ("a", "b"):
            body = _async_create(system.tenant)
            client.post(system.tenant.write_path(), json=body, headers={KEY: key})
            system.clock.advance(3600)
    # When the sweep runs just after the first key's time is up
    now = system.clock() + timedelta(seconds=system.settings.idempotency_ttl_s - 5400)
    purged = Scheduler(system.settings, system.wiring).tick(now).keys_purged
    # Then only the first key is gone
    with system.wiring.deps.sessions() as session:
        left = session.scalars(
            select(IdempotencyKey.key).where(IdempotencyKey.project_id == system.tenant.project_id)
        )
        assert list(left) == ["b"]
    assert purged >= 1


def test_keys_are_scoped_per_project(system: System, settings: Settings, own_sandbox: str) -> None:
    # Given two projects that use the same key for their own writes
    other = create_tenant(settings, system.tenant.api_url, own_sandbox)
    with system.client() as mine, other.client() as theirs:
        a = mine.post(
            system.tenant.write_path(), json=_async_create(system.tenant), headers={KEY: "s"}
        )
        b = theirs.post(other.write_path(), json=_async_create(other), headers={KEY: "s"})
    # Then each made its own operation
    assert a.status_code == b.status_code == 200
    assert a.json()["operationId"] != b.json()["operationId"]
    assert system.operations() == 1 and system.operations(other.project_id) == 1


def test_a_request_refused_before_it_ran_leaves_the_key_free(system: System) -> None:
    with system.client() as client:
        bad = client.post(
            system.tenant.write_path(),
            json={"groupRef": system.tenant.group_ref, "type": "create"},
            headers={KEY: "fixme"},
        )
        good = client.post(
            system.tenant.write_path(), json=_sync_create(system.tenant), headers={KEY: "fixme"}
        )
    assert bad.status_code == 400 and bad.headers["content-type"].startswith("text/plain")
    assert good.status_code == 200, good.text


def test_a_provider_outage_frees_the_key_so_the_write_can_be_tried_again(system: System) -> None:
    # Given a synchronous write that meets a provider outage (502, retryable)
    system.faults(endpoint="*", status_rates={"503": 1.0})
    body = _sync_create(system.tenant)
    with system.client() as client:
        down = client.post(system.tenant.write_path(), json=body, headers={KEY: "outage"})
        system.sandbox.delete("/_sandbox/faults").raise_for_status()
        # When it is sent again with the same key once the provider is back
        up = client.post(system.tenant.write_path(), json=body, headers={KEY: "outage"})
    # Then it is performed this time
    assert assert_problem(down, 502)["retryable"] is True
    assert up.status_code == 200, up.text
    assert up.json()["result"]["success"] is True


def test_a_repeated_bulk_upsert_gets_the_same_operation_id(
    settings: Settings, own_sandbox: str
) -> None:
    with serve_in_thread(create_app(settings)) as api_url:
        tenant = create_tenant(settings, api_url, own_sandbox, provider="salesforce")
        body = {
            "groupRef": tenant.group_ref,
            "recordsCSV": "Email,LastName\na@example.com,A\n",
            "primaryKey": "Email",
        }
        path = tenant.write_path("Contact") + ":async"
        with tenant.client() as client:
            first = client.put(path, json=body, headers={KEY: "bulk-1"})
            again = client.put(path, json=body, headers={KEY: "bulk-1"})
            changed = client.put(
                path,
                json={**body, "recordsCSV": "Email,LastName\nb@example.com,B\n"},
                headers={KEY: "bulk-1"},
            )
    assert first.status_code == 200, first.text
    assert (again.status_code, again.content) == (200, first.content)
    assert_problem(changed, 422)


@pytest.mark.parametrize(
    ("header", "why"),
    [("", "empty"), ("x" * 256, "longer than 255"), ("caf\u00e9", "printable ASCII")],
)
def test_a_key_we_cannot_keep_is_a_400_naming_the_header(
    system: System, header: str, why: str
) -> None:
    with system.client() as client:
        response = client.post(
            system.tenant.write_path(),
            json=_sync_create(system.tenant),
            headers={KEY: header.encode()},
        )
    assert response.status_code == 400
    assert "Idempotency-Key" in response.text and why in response.text
    assert system.operations() == 0


def test_a_structured_field_string_key_is_the_same_key_as_its_bare_form(system: System) -> None:
    body = _async_create(system.tenant)
    with system.client() as client:
        first = client.post(system.tenant.write_path(), json=body, headers={KEY: '"abc-123"'})
        again = client.post(system.tenant.write_path(), json=body, headers={KEY: "abc-123"})
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content


def test_twenty_concurrent_async_requests_with_one_key_make_one_operation(system: System) -> None:
    # Given twenty clients sending the same asynchronous write with one key at once
    body = _async_create(system.tenant)
    barrier = threading.Barrier(20)

    def send(_: int) -> httpx.Response:
        with system.client() as client:
            barrier.wait()
            return client.post(system.tenant.write_path(), json=body, headers={KEY: "race"})

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(send, range(20)))
    # Then every one of them answers with the one operation's id
    assert {r.status_code for r in responses} == {200}, [r.text for r in responses]
    assert len({r.json()["operationId"] for r in responses}) == 1
    assert system.operations() == 1


def _wait_for_key(system: System, key: str, timeout_s: float = 10.0) -> None:
    """Until the key's row is committed (its request is past the claim)."""
    done = threading.Event()
    for _ in range(int(timeout_s / 0.02)):
        with system.wiring.deps.sessions() as session:
            if session.get(IdempotencyKey, (system.tenant.project_id, key)) is not None:
                return
        done.wait(0.02)
    raise TimeoutError(f"key {key!r} was never claimed")
