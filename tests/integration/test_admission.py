"""Fair-share admission against real Redis and SQL: what reaches Celery, in which order.

The "Celery queue" here is a Redis list the sender pushes to, as kombu does, so the
admission sees its length; the tests pop it as workers would.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
import redis

from tests.support.core import core
from writejobs.clock import utcnow
from writejobs.core.flow import Account, RateLimit, RateLimitObservation
from writejobs.grouping.admission import Admission, Route
from writejobs.grouping.keys import Keys
from writejobs.grouping.limiter import RedisRateLimiter
from writejobs.grouping.recovery import requeue_stalled
from writejobs.settings import Settings
from writejobs.store import tenants_repo
from writejobs.store.db import create_session_factory, create_store_engine
from writejobs.store.secrets import cipher_for

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@dataclass
class Fleet:
    admission: Admission
    limiter: RedisRateLimiter
    redis: redis.Redis
    queue: str
    settings: Settings
    now: list[datetime] = field(default_factory=lambda: [T0])

    def sent(self) -> list[str]:
        """Pop everything the admission sent (as workers take tasks), oldest first."""
        out = [m.decode() for m in self.redis.lrange(self.queue, 0, -1)]
        self.redis.delete(self.queue)
        return out

    def fill_queue(self, n: int) -> None:
        self.redis.rpush(self.queue, *[f"busy:{i}" for i in range(n)])

    def installation(self, project_id: str, limit: dict[str, int] | None = None) -> Route:
        engine = create_store_engine(self.settings)
        try:
            with create_session_factory(engine)() as session:
                integration = tenants_repo.find_integration(session, project_id, "crm")
                if integration is None:
                    integration = tenants_repo.create_integration(
                        session, project_id, "crm", "hubspot", now=utcnow()
                    )
                installation = tenants_repo.create_installation(
                    session,
                    integration,
                    f"org-{uuid.uuid4().hex[:8]}",
                    "http://provider.invalid",
                    now=utcnow(),
                    cipher=cipher_for(self.settings),
                )
                installation.rate_limit = limit
                session.commit()
                return Route(project_id, installation.id)
        finally:
            engine.dispose()

    def project(self) -> str:
        engine = create_store_engine(self.settings)
        try:
            with create_session_factory(engine)() as session:
                name = f"proj-{uuid.uuid4().hex[:10]}"
                project = tenants_repo.create_project(session, name, now=utcnow())
                session.commit()
                return project.id
        finally:
            engine.dispose()

    def submit(self, route: Route, n: int, prefix: str) -> list[str]:
        return [self.admission.submit("op", f"{prefix}-{i}", route) for i in range(n)]


@pytest.fixture
def fleet(settings: Settings, redis_url: str) -> Iterator[Fleet]:
    client = redis.Redis.from_url(redis_url)
    keys = Keys(f"wjtest-adm-{uuid.uuid4().hex[:8]}")
    queue = f"{keys.namespace}:celery"
    limiter = RedisRateLimiter(client, keys)
    engine = create_store_engine(settings)
    now = [T0]

    def push(kind: str) -> object:
        return lambda target_id: client.rpush(queue, f"{kind}:{target_id}")

    admission = Admission(
        client,
        keys,
        create_session_factory(engine),
        limiter,
        {"op": push("op"), "batch": push("batch")},  # type: ignore[dict-item]
        celery_queue=queue,
        queue_max=4,
        clock=lambda: now[0],
    )
    yield Fleet(admission, limiter, client, queue, settings, now)
    engine.dispose()
    for key in client.scan_iter(f"{keys.namespace}:*"):
        client.delete(key)
    client.close()


def test_an_installations_backlog_does_not_delay_another_installations_next_write(
    fleet: Fleet,
) -> None:
    # Given installation A, allowed 3 calls per 10 s, with 50 writes at once
    project = fleet.project()
    a = fleet.installation(project, {"max": 3, "interval_ms": 10_000})
    b = fleet.installation(project)
    answers = fleet.submit(a, 50, "a")
    # Then what its window admits went at once, and the rest waits in Redis, not in Celery
    assert Counter(answers) == {"sent": 3, "queued": 47}
    assert len(fleet.sent()) == 3
    # When installation B sends one write
    # Then it goes straight to Celery, ahead of A's backlog
    assert fleet.admission.submit("op", "b-0", b) == "sent"
    assert fleet.sent() == ["op:b-0"]
    # and a scheduler pass admits nothing more of A until its window frees
    assert fleet.admission.admit(T0 + timedelta(seconds=5)) == []
    assert len(fleet.admission.admit(T0 + timedelta(seconds=10.5))) == 3
    assert fleet.admission.backlog() == (44, [(a.installation_id, 44)])


def test_the_celery_queue_never_holds_more_than_its_most(fleet: Fleet) -> None:
    # Given an installation with room for a hundred calls, and twenty writes at once
    route = fleet.installation(fleet.project())
    answers = fleet.submit(route, 20, "x")
    # Then four (the queue's most) went to Celery and the rest wait their turn
    assert Counter(answers) == {"sent": 4, "queued": 16}
    assert fleet.admission.admit(T0) == []
    # and as workers take tasks, passes admit as many as were taken, oldest first
    fleet.sent()
    assert fleet.admission.admit(T0) == [f"op:x-{i}" for i in range(4, 8)]


def test_projects_take_turns_then_their_installations(fleet: Fleet) -> None:
    # Given project P1 with two installations and P2 with one, ten writes each, while
    # the Celery queue is full (so everything waits its turn)
    p1, p2 = fleet.project(), fleet.project()
    a1, a2, b1 = fleet.installation(p1), fleet.installation(p1), fleet.installation(p2)
    fleet.fill_queue(4)
    for route, prefix in ((a1, "a1"), (a2, "a2"), (b1, "b1")):
        assert set(fleet.submit(route, 10, prefix)) == {"queued"}
    fleet.sent()
    # When a scheduler pass has room for four tasks
    admitted = fleet.admission.admit(T0)
    # Then P2's one installation gets half, and P1's two share the other half
    by_installation = Counter(m.split(":")[1].split("-")[0] for m in admitted)
    assert by_installation == {"b1": 2, "a1": 1, "a2": 1}
    assert sorted(m.decode() for m in fleet.redis.lrange(fleet.queue, 0, -1)) == sorted(admitted)


def test_a_paused_account_is_not_admitted(fleet: Fleet) -> None:
    # Given an installation whose account spent its day, and work of another
    project = fleet.project()
    paused, other = fleet.installation(project), fleet.installation(project)
    fleet.limiter.learn(
        Account("hubspot", paused.installation_id), RateLimitObservation(policy="daily"), T0
    )
    # When both submit work
    assert fleet.submit(paused, 3, "p") == ["queued"] * 3
    assert fleet.submit(other, 1, "o") == ["sent"]
    # Then the paused one's waits in Redis through scheduler passes
    assert fleet.admission.admit(T0 + timedelta(minutes=30)) == []
    # until its pause (an hour) is over
    assert len(fleet.admission.admit(T0 + timedelta(minutes=61))) == 3


def test_the_stalled_sweep_leaves_work_waiting_its_turn_and_resends_lost_work(
    settings: Settings, fleet: Fleet
) -> None:
    with core(settings) as c:
        # Given two queued operations, one waiting in its installation's ready set
        # (the Celery queue was full) and one whose task was lost
        waiting = c.accept({"mode": "asynchronous", "record": {"email": "w@example.com"}})
        lost = c.accept({"mode": "asynchronous", "record": {"email": "l@example.com"}})
        fleet.fill_queue(4)
        assert fleet.admission.submit_operation(waiting.operation) == "queued"
        c.sender.sent.clear()
        # When the stalled sweep runs long after
        resent = requeue_stalled(
            c.deps.sessions,
            c.sender.send_operation,
            c.sender.send_batch,
            now=c.clock() + timedelta(hours=1),
            stalled_after_s=60,
            waiting=fleet.admission.waiting,
        )
    # Then only the lost one is sent again (other tests' leftovers may be swept too)
    assert lost.operation.id in resent
    assert waiting.operation.id not in resent


def test_admission_follows_the_limiters_window_call_by_call(fleet: Fleet) -> None:
    # Given installation A, allowed 3 calls per 10 s, with 6 writes at once
    route = fleet.installation(fleet.project(), {"max": 3, "interval_ms": 10_000})
    account = Account("hubspot", route.installation_id, RateLimit(3, 10.0))
    assert Counter(fleet.submit(route, 6, "a")) == {"sent": 3, "queued": 3}
    # When the three sent reach a worker one second apart and take their calls
    for i, member in enumerate(fleet.sent()):
        kind, _, target_id = member.partition(":")
        fleet.admission.arrived(kind, target_id, route.installation_id)
        assert fleet.limiter.acquire(account, T0 + timedelta(seconds=i)) == 0.0
    # Then each waiting write is admitted as soon as one call leaves the window (10 s
    # and the limiter's slack after it was made), one at a time, not in a wave
    assert fleet.admission.admit(T0 + timedelta(seconds=10)) == []
    assert fleet.admission.admit(T0 + timedelta(seconds=10.3)) == ["op:a-3"]
    assert fleet.admission.admit(T0 + timedelta(seconds=10.9)) == []
    assert fleet.admission.admit(T0 + timedelta(seconds=11.3)) == ["op:a-4"]


def test_a_task_that_ends_its_reservation_with_its_limiter_ask_counts_once(fleet: Fleet) -> None:
    # Given installation A, allowed 3 calls per 10 s, and one write sent to the workers
    route = fleet.installation(fleet.project(), {"max": 3, "interval_ms": 10_000})
    account = Account("hubspot", route.installation_id, RateLimit(3, 10.0))
    assert fleet.submit(route, 1, "a") == ["sent"]
    # When it reaches a worker and asks for its call (the gate's one Redis step)
    kind, _, target_id = fleet.sent()[0].partition(":")
    now = T0 + timedelta(seconds=1)
    wait_s = fleet.admission.acquire_arriving(
        kind, target_id, route.installation_id, account, now, 1
    )
    assert wait_s == 0.0
    # Then it counts once, as its call, not also as a reservation: two more fit
    fleet.now[0] = T0 + timedelta(seconds=2)
    assert fleet.submit(route, 2, "b") == ["sent", "sent"]


def test_a_pass_that_admits_nothing_says_when_room_frees(fleet: Fleet) -> None:
    # Given an installation allowed 2 calls per 10 s whose calls went at 0 and at 3
    project = fleet.project()
    a = fleet.installation(project, {"max": 2, "interval_ms": 10_000})
    account = Account("hubspot", a.installation_id, RateLimit(2, 10.0))
    assert fleet.limiter.acquire(account, T0) == 0.0
    assert fleet.limiter.acquire(account, T0 + timedelta(seconds=3)) == 0.0
    fleet.now[0] = T0 + timedelta(seconds=4)
    assert fleet.submit(a, 1, "a") == ["queued"]

    # When a scheduler pass finds no room
    assert fleet.admission.admit(T0 + timedelta(seconds=5)) == []

    # Then it says when the call at 0 leaves the window (with the limiter's slack)
    assert fleet.admission.next_room_at == pytest.approx(T0.timestamp() + 10.2, abs=0.01)
    # and once room is there the work goes, with nothing left to wait for
    assert fleet.admission.admit(T0 + timedelta(seconds=10.3)) == ["op:a-0"]
    assert fleet.admission.next_room_at is None
