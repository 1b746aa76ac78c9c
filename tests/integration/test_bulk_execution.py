"""A bulk operation's attempts, run in-process against the sandbox over real HTTP and the
real store: following a job an earlier attempt handed over, replacing one it left
half-done, and waiting out a provider outage."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from sandbox.files import contacts_csv
from tests.support.system import Tenant, create_tenant
from writejobs.clock import utcnow
from writejobs.core.bulk_contract import parse_bulk_request
from writejobs.core.operations import State
from writejobs.execution.deps import ExecutionDeps
from writejobs.execution.run import run_operation
from writejobs.intake.bulk import accept_bulk_upsert
from writejobs.intake.write import Dispatch, WriteTarget
from writejobs.providers.salesforce_bulk import SalesforceBulkIngest
from writejobs.runtime.wiring import Wiring, wire
from writejobs.settings import Settings
from writejobs.store import operations_repo
from writejobs.store.tables import Operation, Project

KEY = "External_Id__c"
INGEST = "POST /services/data/v60.0/jobs/ingest"


@dataclasses.dataclass
class Harness:
    """The worker's side of a bulk write, with retries recorded instead of queued."""

    deps: ExecutionDeps
    wiring: Wiring
    tenant: Tenant
    sandbox_url: str
    retries: list[tuple[str, str, datetime]]

    def accept(self, rows: int = 100) -> str:
        """A bulk operation, committed like the API does, with no task sent for it."""
        csv = b"".join(contacts_csv(rows, set(), pad=0)).decode()
        raw = {"groupRef": self.tenant.group_ref, "primaryKey": KEY, "recordsCSV": csv}
        request, content = parse_bulk_request(json.dumps(raw).encode())
        with self.deps.sessions() as session:
            project = session.get(Project, self.tenant.project_id)
            assert project is not None
            session.expunge(project)
        quiet = Dispatch(lambda _id: None, lambda _op: None, self.wiring.dispatch.directory)
        target = WriteTarget(project, self.tenant.integration_id, "Contact")
        return accept_bulk_upsert(target, request, content, self.deps, quiet).id

    def operation(self, op_id: str) -> Operation:
        with self.deps.sessions() as session:
            op = operations_repo.get_operation(session, op_id)
            assert op is not None
            return op

    def update(self, op_id: str, **values: Any) -> None:
        with self.deps.sessions() as session:
            session.execute(update(Operation).where(Operation.id == op_id).values(**values))
            session.commit()

    def ingest(self) -> SalesforceBulkIngest:
        headers = {"Authorization": "Bearer test-token"}
        return SalesforceBulkIngest(httpx.Client(base_url=self.sandbox_url, headers=headers))

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.sandbox_url}/_sandbox/stats").json())

    def logs(self, op_id: str) -> list[str]:
        with self.deps.sessions() as session:
            return [entry.msg for entry in operations_repo.list_logs(session, op_id)]


@pytest.fixture()
def harness(settings: Settings, own_sandbox: str) -> Iterator[Harness]:
    wiring = wire(settings)
    retries: list[tuple[str, str, datetime]] = []
    deps = dataclasses.replace(
        wiring.deps, schedule_retry=lambda kind, id_, at: retries.append((kind, id_, at))
    )
    tenant = create_tenant(settings, "http://api.invalid", own_sandbox, provider="salesforce")
    yield Harness(deps, wiring, tenant, own_sandbox, retries)
    wiring.close()


def test_a_job_an_earlier_attempt_closed_is_followed_not_started_again(harness: Harness) -> None:
    # given an attempt that handed its CSV to Salesforce and died before the result
    op_id = harness.accept(rows=100)
    ingest = harness.ingest()
    job_id = ingest.create_upsert_job("Contact", KEY)
    ingest.upload(job_id, contacts_csv(100, set(), pad=0))
    ingest.close(job_id)
    harness.update(op_id, provider_job_id=job_id)

    # when the next attempt runs
    state = run_operation(op_id, harness.deps)

    # then it reports that job's outcome, without a second job
    assert state is State.SUCCEEDED
    op = harness.operation(op_id)
    assert (op.success_count, op.failure_count, op.record_count) == (100, 0, 100)
    assert harness.stats()["calls"][INGEST] == 1
    assert f"following Salesforce job {job_id}" in harness.logs(op_id)


def test_a_job_left_open_by_a_cut_off_upload_is_aborted_and_replaced(harness: Harness) -> None:
    # given an attempt that opened a job and died during its upload
    op_id = harness.accept(rows=100)
    ingest = harness.ingest()
    stale = ingest.create_upsert_job("Contact", KEY)
    harness.update(op_id, provider_job_id=stale)

    # when the next attempt runs
    state = run_operation(op_id, harness.deps)

    # then the half-done job is aborted and a new one writes every row
    assert state is State.SUCCEEDED
    assert ingest.poll(stale).state == "Aborted"
    assert harness.stats()["calls"][INGEST] == 2
    assert harness.stats()["records_by_object"] == {"Contact": 100}
    assert harness.operation(op_id).provider_job_id not in (None, stale)


def test_a_provider_outage_waits_for_a_retry_and_the_csv_is_kept_until_the_end(
    harness: Harness,
) -> None:
    # given Salesforce answering 503 to every new job
    op_id = harness.accept(rows=50)
    rule = {"endpoint": INGEST, "status_rates": {"503": 1.0}}
    httpx.post(f"{harness.sandbox_url}/_sandbox/faults", json={"rules": [rule]})

    # when the first attempt runs, it waits for a retry, its CSV still stored
    assert run_operation(op_id, harness.deps) is State.RETRYING
    [(kind, retried, at)] = harness.retries
    assert (kind, retried) == ("op", op_id)
    op = harness.operation(op_id)
    assert op.next_attempt_at is not None and op.last_error is not None
    with harness.deps.sessions() as session:
        assert operations_repo.load_payload(session, op_id) is not None

    # and once Salesforce is back and the wait is over, the retry writes every row
    httpx.delete(f"{harness.sandbox_url}/_sandbox/faults")
    harness.update(op_id, next_attempt_at=utcnow() - timedelta(seconds=1))
    assert run_operation(op_id, harness.deps) is State.SUCCEEDED
    assert harness.operation(op_id).success_count == 50
    with harness.deps.sessions() as session:
        assert operations_repo.load_payload(session, op_id) is None


def test_a_second_upsert_of_the_same_keys_updates_instead_of_creating(harness: Harness) -> None:
    first, second = harness.accept(rows=20), harness.accept(rows=20)
    assert run_operation(first, harness.deps) is State.SUCCEEDED
    assert run_operation(second, harness.deps) is State.SUCCEEDED
    assert "rows written: 20 created, 0 updated" in harness.logs(first)
    assert "rows written: 0 created, 20 updated" in harness.logs(second)
    assert harness.stats()["records_by_object"] == {"Contact": 20}


def test_a_finished_operation_is_not_run_again(harness: Harness) -> None:
    op_id = harness.accept(rows=10)
    assert run_operation(op_id, harness.deps) is State.SUCCEEDED
    # a redelivered task finds it finished and writes nothing
    assert run_operation(op_id, harness.deps) is None
    assert harness.stats()["calls"][INGEST] == 1


def test_a_job_still_running_at_the_deadline_is_aborted_and_the_operation_expires(
    harness: Harness,
) -> None:
    # given a bulk operation whose deadline has come by the time its job is handed over
    op_id = harness.accept(rows=10)
    harness.update(op_id, deadline_at=utcnow() - timedelta(seconds=1))

    # when its attempt runs
    state = run_operation(op_id, harness.deps)

    # then the operation expires saying why (the job was aborted, unless Salesforce
    # finished it first), and its CSV is dropped
    assert state is State.EXPIRED
    op = harness.operation(op_id)
    assert op.result_summary is not None and op.result_summary.startswith(
        "[Contact] deadline exceeded; last error: Salesforce job"
    )
    assert "deadline exceeded" in harness.logs(op_id) and harness.retries == []
    with harness.deps.sessions() as session:
        assert operations_repo.load_payload(session, op_id) is None
