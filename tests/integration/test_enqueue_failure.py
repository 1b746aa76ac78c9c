"""When Redis cannot take an accepted write's task or buffer append, the write is still
accepted: its row is committed, it is marked, and the hand-off sweep sends it once
Redis answers. Only a store that cannot take the row makes a 503 (real store, real
Redis; tasks go to a parked queue that no worker reads).

(Until issue 10 such a write was failed and answered 503, though SQL had it.)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from api_shim.app import create_app
from tests.support.parked import Parked
from tests.support.servers import serve_in_thread
from tests.support.system import Tenant, create_tenant
from writejobs import task_names
from writejobs.clock import utcnow
from writejobs.core.bulk_contract import parse_bulk_request
from writejobs.core.contract import parse_write_request
from writejobs.core.operations import State
from writejobs.errors import StoreUnavailable
from writejobs.grouping.keys import group_key
from writejobs.grouping.recovery import retry_handoffs
from writejobs.intake.bulk import accept_bulk_upsert
from writejobs.intake.write import Dispatch, WriteTarget, accept_write
from writejobs.runtime.wiring import Wiring
from writejobs.settings import Settings
from writejobs.store import operations_repo
from writejobs.store.db import create_session_factory, create_store_engine
from writejobs.store.group_commit import GroupCommitter
from writejobs.store.tables import Operation, Project


def broker_down(_target: object) -> None:
    raise ConnectionError("broker unreachable")


def target(wiring: Wiring, tenant: Tenant, object_name: str) -> WriteTarget:
    with wiring.deps.sessions() as session:
        project = session.get(Project, tenant.project_id)
        assert project is not None
        session.expunge(project)
    return WriteTarget(project, tenant.integration_id, object_name)


def operation(wiring: Wiring, op_id: str) -> Operation:
    with wiring.deps.sessions() as session:
        op = operations_repo.get_operation(session, op_id)
        assert op is not None
        return op


def log_messages(wiring: Wiring, op_id: str) -> list[str]:
    with wiring.deps.sessions() as session:
        return [row.msg for row in operations_repo.list_logs(session, op_id)]


def sweep(parked: Parked) -> list[str]:
    """One pass of the hand-off sweep with the parked system's real Redis senders."""
    wiring = parked.wiring
    return retry_handoffs(
        wiring.deps.sessions,
        wiring.dispatch.send_operation,
        wiring.batcher.send_batch,
        wiring.batcher.rebuffer,
        now=utcnow(),
    )


def async_body(tenant: Tenant, **extra: Any) -> bytes:
    body = {
        "groupRef": tenant.group_ref,
        "type": "create",
        "mode": "asynchronous",
        "record": {"email": "ada@example.com"},
        **extra,
    }
    return json.dumps(body).encode()


@pytest.mark.parametrize("record", [True, False], ids=["group-commit", "own-commit"])
def test_an_async_write_redis_refused_is_accepted_kept_queued_and_sent_by_the_sweep(
    parked: Parked, record: bool
) -> None:
    wiring = parked.wiring
    recorder: Callable[..., None] | None = wiring.dispatch.record if record else None
    down = Dispatch(
        broker_down, wiring.dispatch.buffer_operations, wiring.dispatch.directory, recorder
    )

    accepted = accept_write(
        target(wiring, parked.tenant, "contacts"),
        parse_write_request(async_body(parked.tenant)),
        wiring.deps,
        down,
    )

    op = operation(wiring, accepted.operation.id)
    assert op.state == State.QUEUED and op.handoff_failed_at is not None
    assert any("queue unavailable" in m for m in log_messages(wiring, op.id))
    assert parked.sent() == []

    assert op.id in sweep(parked)
    assert (task_names.WRITE_OPERATION, [op.id]) in parked.sent()
    again = operation(wiring, op.id)
    assert again.state == State.QUEUED and again.handoff_failed_at is None
    # Taken once: the next pass has nothing of it to send.
    assert op.id not in sweep(parked)
    assert parked.sent().count((task_names.WRITE_OPERATION, [op.id])) == 1


def test_an_auto_batched_write_whose_append_failed_is_buffered_by_the_sweep(
    parked: Parked,
) -> None:
    wiring = parked.wiring
    down = Dispatch(
        wiring.dispatch.send_operation,
        broker_down,
        wiring.dispatch.directory,
        wiring.dispatch.record,
    )
    body = async_body(parked.tenant, autoBatchPolicy={"maxDelayMinutes": 1})

    accepted = accept_write(
        target(wiring, parked.tenant, "contacts"), parse_write_request(body), wiring.deps, down
    )

    op = operation(wiring, accepted.operation.id)
    assert op.state == State.PENDING and op.handoff_failed_at is not None
    buffer_key = wiring.batcher.keys.buffer(
        group_key(op.installation_id, op.object_name, op.write_type)
    )
    assert wiring.redis.zscore(buffer_key, op.id) is None

    assert op.id in sweep(parked)
    # Buffered at once, not after the orphan sweep's grace period.
    assert wiring.redis.zscore(buffer_key, op.id) is not None
    assert operation(wiring, op.id).handoff_failed_at is None


def test_a_bulk_upsert_redis_refused_is_accepted_and_sent_by_the_sweep(
    parked: Parked, sandbox_url: str
) -> None:
    wiring = parked.wiring
    sf = create_tenant(parked.settings, parked.tenant.api_url, sandbox_url, provider="salesforce")
    down = Dispatch(broker_down, wiring.dispatch.buffer_operations, wiring.dispatch.directory)
    raw = {"groupRef": sf.group_ref, "primaryKey": "Id", "recordsCSV": "Id,LastName\n,Ada\n"}
    request, content = parse_bulk_request(json.dumps(raw).encode())

    op = accept_bulk_upsert(target(wiring, sf, "Contact"), request, content, wiring.deps, down)

    stored = operation(wiring, op.id)
    assert (stored.state, stored.shape) == (State.QUEUED, "bulk")
    assert stored.handoff_failed_at is not None
    assert op.id in sweep(parked)
    assert (task_names.WRITE_OPERATION, [op.id]) in parked.sent()


def test_a_sweep_whose_send_fails_keeps_the_mark_for_the_next_pass(parked: Parked) -> None:
    wiring = parked.wiring
    down = Dispatch(
        broker_down,
        wiring.dispatch.buffer_operations,
        wiring.dispatch.directory,
        wiring.dispatch.record,
    )
    accepted = accept_write(
        target(wiring, parked.tenant, "contacts"),
        parse_write_request(async_body(parked.tenant)),
        wiring.deps,
        down,
    )

    with pytest.raises(ConnectionError):
        retry_handoffs(
            wiring.deps.sessions,
            broker_down,
            broker_down,
            wiring.batcher.rebuffer,
            now=utcnow(),
        )

    assert operation(wiring, accepted.operation.id).handoff_failed_at is not None
    assert accepted.operation.id in sweep(parked)


@pytest.fixture()
def dead_store(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """Settings whose database cannot be reached (a closed port, or a missing directory)."""
    if settings.sqlalchemy_url.startswith("postgresql"):
        url = "postgresql://postgres@127.0.0.1:1/test?connect_timeout=2"
    else:
        url = f"sqlite:///{tmp_path / 'missing' / 'writejobs.db'}"
    # A new Settings, not model_copy: that would keep the cached `sqlalchemy_url`.
    yield Settings(**(settings.model_dump() | {"database_url": url}))


@pytest.mark.parametrize("record", [True, False], ids=["group-commit", "own-commit"])
def test_a_write_the_store_cannot_record_is_refused_with_a_503(
    parked: Parked, dead_store: Settings, record: bool
) -> None:
    wiring = parked.wiring
    dead_engine = create_store_engine(dead_store)
    dead_sessions = create_session_factory(dead_engine)
    dispatch = Dispatch(
        wiring.dispatch.send_operation,
        wiring.dispatch.buffer_operations,
        # The tenant is known (an API process caches it); the row is what cannot be written.
        wiring.dispatch.directory,
        GroupCommitter(dead_sessions).commit if record else None,
    )
    deps = wiring.deps
    if not record:
        deps = replace(deps, sessions=dead_sessions)

    with pytest.raises(StoreUnavailable):
        accept_write(
            target(wiring, parked.tenant, "contacts"),
            parse_write_request(async_body(parked.tenant)),
            deps,
            dispatch,
        )
    dead_engine.dispose()
    assert parked.sent() == []


def test_the_api_answers_503_problem_json_when_the_store_cannot_take_the_row(
    parked: Parked, dead_store: Settings
) -> None:
    live = parked.wiring
    dead_store_engine = create_store_engine(dead_store)
    # Everything of the live system but the committer, which writes to the dead store.
    dispatch = Dispatch(
        live.dispatch.send_operation,
        live.dispatch.buffer_operations,
        live.dispatch.directory,
        GroupCommitter(create_session_factory(dead_store_engine)).commit,
    )
    app = create_app(parked.settings, wiring=replace(live, dispatch=dispatch))
    tenant = parked.tenant
    with serve_in_thread(app) as url:
        response = httpx.post(
            f"{url}{tenant.write_path()}",
            content=async_body(tenant),
            headers={"X-Api-Key": tenant.api_key, "Content-Type": "application/json"},
            timeout=30,
        )
    dead_store_engine.dispose()
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["retryable"] is True and "could not record" in problem["detail"]
    assert parked.sent() == []
