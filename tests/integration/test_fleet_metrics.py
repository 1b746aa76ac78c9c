"""The metrics a deployment alerts on: operations finished by state (counted when the
transaction that ended them commits) and the Celery queues' lengths in Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from sqlalchemy import Engine

from tests.integration.test_metrics import scrape, value
from tests.support.system import Tenant
from writejobs.clock import utcnow
from writejobs.core.operations import State
from writejobs.grouping.keys import Keys
from writejobs.runtime.celery_config import create_sender
from writejobs.runtime.metrics import FleetCollector, celery_queue_lists
from writejobs.settings import Settings
from writejobs.store import operations_repo
from writejobs.store.db import create_session_factory, create_store_engine
from writejobs.store.tables import Operation

FINISHED = "writejobs_operations_finished_total"


class Tally:
    """A Recorder that keeps what it was told."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}

    def count(self, name: str, n: int = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.counts[key] = self.counts.get(key, 0) + n

    def observe(self, name: str, value: float, **labels: str) -> None:
        return None


@pytest.fixture()
def engine(settings: Settings) -> Iterator[Engine]:
    built = create_store_engine(settings)
    yield built
    built.dispose()


def running_operation(tenant: Tenant) -> Operation:
    now = utcnow()
    return Operation(
        id=str(uuid.uuid4()),
        project_id=tenant.project_id,
        integration_id=tenant.integration_id,
        installation_id=tenant.installation_id,
        config_id=str(uuid.uuid4()),
        object_name="contacts",
        write_type="create",
        mode="asynchronous",
        shape="single",
        request={},
        state=State.RUNNING.value,
        created_at=now,
        updated_at=now,
        deadline_at=now + timedelta(hours=1),
    )


def test_a_sync_write_that_succeeds_is_counted_once_as_succeeded(
    tenant: Tenant, api_url: str
) -> None:
    before = scrape(api_url)
    with tenant.client() as client:
        body = {
            "groupRef": tenant.group_ref,
            "type": "create",
            "record": {"email": f"f-{uuid.uuid4().hex[:8]}@example.com"},
        }
        assert client.post(tenant.write_path(), json=body).status_code == 200
    after = scrape(api_url)

    assert (
        value(after, FINISHED, state="succeeded") - value(before, FINISHED, state="succeeded") == 1
    )


def test_an_end_is_counted_when_its_transaction_commits_and_never_when_it_rolls_back(
    tenant: Tenant, engine: Engine
) -> None:
    # given sessions that count finished operations, and two running operations
    sessions = create_session_factory(engine)
    tally = Tally()
    operations_repo.count_finished(sessions, tally)
    first, second = running_operation(tenant), running_operation(tenant)
    with sessions() as session:
        operations_repo.insert_operation(session, first)
        operations_repo.insert_operation(session, second)
        session.commit()
    expired = ("operations_finished", (("state", "expired"),))

    # when one is ended in a transaction that rolls back
    with sessions() as session:
        ended = operations_repo.transition(session, first.id, State.EXPIRED, now=utcnow())
        assert ended
        session.rollback()
    # then nothing is counted
    assert tally.counts == {}

    # when it is ended again, together with the other, in one committed transaction
    with sessions() as session:
        for op in (first, second):
            operations_repo.transition(session, op.id, State.EXPIRED, now=utcnow())
        # a move that does not happen (already expired) counts nothing either
        operations_repo.transition(session, first.id, State.FAILED, now=utcnow())
        session.commit()
    # then each is counted once, by its state
    assert tally.counts == {expired: 2}


def test_the_queue_gauge_counts_waiting_tasks_in_every_priority_list(
    settings: Settings, redis_url: str, engine: Engine
) -> None:
    # given tasks sent to a queue no worker reads, one of them with a priority
    queue = f"wjtest-gauge-{uuid.uuid4().hex[:8]}"
    sender = create_sender(settings)
    client = redis.Redis.from_url(redis_url)
    try:
        sender.send_task("writejobs.test.nothing", args=["a"], queue=queue)
        sender.send_task("writejobs.test.nothing", args=["b"], queue=queue)
        sender.send_task("writejobs.test.nothing", args=["c"], queue=queue, priority=5)
        # the priority task went to a sub-list, as kombu names them
        assert client.llen(queue) == 2
        assert sum(client.llen(name) for name in celery_queue_lists(queue)) == 3

        # when the fleet's gauges are collected
        keys = Keys(settings.redis_namespace)
        collector = FleetCollector(
            client, keys, create_session_factory(engine), keys.metrics + ":r", queues=[queue]
        )
        families = {family.name: family for family in collector.collect()}

        # then the queue's length counts all three
        samples = families["writejobs_celery_queue_length"].samples
        assert [(s.labels, s.value) for s in samples] == [({"queue": queue}, 3.0)]
    finally:
        client.delete(*celery_queue_lists(queue))
        sender.close()


def test_the_api_exports_the_write_queues_length(settings: Settings, api_url: str) -> None:
    samples = scrape(api_url)
    assert ("writejobs_celery_queue_length", (("queue", settings.celery_queue),)) in samples
