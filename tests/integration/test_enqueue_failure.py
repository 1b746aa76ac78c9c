"""When the broker cannot take a task, the accepted write is not left to linger: the
client hears 503 and the operation ends failed, saying why (real store, real Redis)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from tests.support.system import Tenant, create_tenant
from writejobs.core.bulk_contract import parse_bulk_request
from writejobs.core.contract import parse_write_request
from writejobs.core.operations import State
from writejobs.intake.bulk import accept_bulk_upsert
from writejobs.intake.write import Dispatch, EnqueueFailed, WriteTarget, accept_write
from writejobs.runtime.wiring import Wiring, wire
from writejobs.settings import Settings
from writejobs.store import operations_repo
from writejobs.store.tables import Operation, Project


def broker_down(_operation_id: str) -> None:
    raise ConnectionError("broker unreachable")


@pytest.fixture()
def wiring(settings: Settings) -> Iterator[Wiring]:
    built = wire(settings)
    yield built
    built.redis.close()


def target(wiring: Wiring, tenant: Tenant, object_name: str) -> WriteTarget:
    with wiring.deps.sessions() as session:
        project = session.get(Project, tenant.project_id)
        assert project is not None
        session.expunge(project)
    return WriteTarget(project, tenant.integration_id, object_name)


def only_operation(wiring: Wiring, tenant: Tenant) -> Operation:
    with wiring.deps.sessions() as session:
        page = operations_repo.list_installation_operations(
            session, tenant.installation_id, page_size=10, page_token=None
        )
    [op] = page.operations
    return op


@pytest.mark.parametrize("record", [True, False], ids=["group-commit", "own-commit"])
def test_an_async_write_the_broker_refused_ends_failed(
    wiring: Wiring, settings: Settings, sandbox_url: str, record: bool
) -> None:
    tenant = create_tenant(settings, "http://api.invalid", sandbox_url)
    recorder: Callable[..., None] | None = wiring.dispatch.record if record else None
    dispatch = Dispatch(
        broker_down, wiring.dispatch.buffer_operation, wiring.dispatch.directory, recorder
    )
    body = {
        "groupRef": tenant.group_ref,
        "type": "create",
        "mode": "asynchronous",
        "record": {"email": "ada@example.com"},
    }

    with pytest.raises(EnqueueFailed, match="ConnectionError"):
        accept_write(
            target(wiring, tenant, "contacts"),
            parse_write_request(json.dumps(body).encode()),
            wiring.deps,
            dispatch,
        )

    op = only_operation(wiring, tenant)
    assert op.state == State.FAILED
    assert op.errors is not None and "could not enqueue" in op.errors[0]


def test_a_bulk_upsert_the_broker_refused_ends_failed(
    wiring: Wiring, settings: Settings, sandbox_url: str
) -> None:
    tenant = create_tenant(settings, "http://api.invalid", sandbox_url, provider="salesforce")
    dispatch = Dispatch(broker_down, wiring.dispatch.buffer_operation, wiring.dispatch.directory)
    raw = {"groupRef": tenant.group_ref, "primaryKey": "Id", "recordsCSV": "Id,LastName\n,Ada\n"}
    request, content = parse_bulk_request(json.dumps(raw).encode())

    with pytest.raises(EnqueueFailed, match="ConnectionError"):
        accept_bulk_upsert(
            target(wiring, tenant, "Contact"), request, content, wiring.deps, dispatch
        )

    op = only_operation(wiring, tenant)
    assert (op.state, op.shape) == (State.FAILED, "bulk")
    assert op.result_summary is not None and "could not enqueue" in op.result_summary
