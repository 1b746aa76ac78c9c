"""Flow control through the execution core: the sandbox throttles like HubSpot, the
fleet's limiter (real Redis) learns from its answers, and the gate holds back what
has no budget. Asynchronous work runs through the recording sender, so each test
says exactly when tasks are delivered and waits released."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import httpx
import pytest
import redis

from tests.support.core import Core, core
from tests.support.system import Tenant, create_tenant
from writejobs.clock import as_utc
from writejobs.core.flow import Account, RateLimitObservation
from writejobs.core.operations import State
from writejobs.errors import RateLimited
from writejobs.execution.batch import run_batch
from writejobs.grouping.keys import Keys
from writejobs.grouping.limiter import RedisRateLimiter
from writejobs.providers.connect import ProviderClients
from writejobs.settings import Settings
from writejobs.store import operations_repo
from writejobs.store.credentials import StoredCredentials

WAITING = "waiting for the provider's rate limit"


@dataclass
class Flow:
    core: Core
    limiter: RedisRateLimiter
    sandbox: httpx.Client
    tenant: Tenant

    def account(self) -> Account:
        return Account("hubspot", self.tenant.installation_id)

    def write(self, n: int = 1, **body: Any) -> str:
        record = {"email": f"flow-{n}-{uuid.uuid4().hex[:8]}@example.com"}
        return self.core.accept({"mode": "asynchronous", "record": record, **body}).operation.id

    def calls(self) -> tuple[int, int]:
        """(admitted, refused) calls the sandbox counted for its limits."""
        stats: dict[str, Any] = self.sandbox.get("/_sandbox/limits/stats").json()
        admitted = sum(b["admitted"] for b in stats.values())
        refused = sum(sum(b["refused"].values()) for b in stats.values())
        return admitted, refused

    def learned_max(self) -> int | None:
        name = f"hubspot:{self.tenant.installation_id}"
        raw = self.limiter._redis.hget(self.limiter.keys.rate_limit(name), "max")
        return int(raw) if raw is not None else None


@pytest.fixture
def flow(settings: Settings, private_sandbox_url: str, redis_url: str) -> Iterator[Flow]:
    """The core on the real store, writing to the module's sandbox through real adapters,
    paced by a limiter in a Redis namespace of its own."""
    client = redis.Redis.from_url(redis_url)
    keys = Keys(f"wjtest-flow-{uuid.uuid4().hex[:8]}")
    limiter = RedisRateLimiter(client, keys, recorder=None)
    with httpx.Client(base_url=private_sandbox_url, timeout=30) as sandbox:
        sandbox.post("/_sandbox/reset").raise_for_status()
        sandbox.delete("/_sandbox/limits").raise_for_status()
        with core(settings) as c:
            tenant = create_tenant(settings, "http://api.invalid", private_sandbox_url)

            def learn(account: Account, observation: RateLimitObservation) -> None:
                limiter.learn(account, observation, c.clock())

            clients = ProviderClients(StoredCredentials(settings), on_rate_limit=learn)
            deps = replace(c.deps, open_adapter=clients.open_adapter, limiter=limiter)
            c = replace(c, deps=deps, tenant=tenant)
            yield Flow(c, limiter, sandbox, tenant)
        sandbox.delete("/_sandbox/limits")
    for key in client.scan_iter(f"{keys.namespace}:*"):
        client.delete(key)
    client.close()


def limit(flow: Flow, **config: Any) -> None:
    flow.sandbox.post("/_sandbox/limits", json={"provider": "hubspot", **config}).raise_for_status()


def test_the_providers_headers_teach_the_limiter_and_writes_past_them_wait_not_fail(
    flow: Flow,
) -> None:
    # Given HubSpot allowing 3 calls per 2 s, said only in its headers
    limit(flow, max=3, interval_ms=2000)
    ids = [flow.write(i) for i in range(6)]
    # When a worker delivers all six at once
    flow.core.deliver()
    # Then the first answer taught the window: three were written, three wait, none refused
    states = [flow.core.operation(i) for i in ids]
    assert [op.state for op in states].count(State.SUCCEEDED.value) == 3
    waiting = [op for op in states if op.state == State.QUEUED.value]
    assert len(waiting) == 3
    assert flow.learned_max() == 3
    assert flow.calls() == (3, 0)
    # and a wait is no attempt: queued, never tried, no backoff, due when the window frees
    for op in waiting:
        assert op.attempts == 0 and op.backoff_failures == 0
        assert op.next_attempt_at is not None
        delay_s = (as_utc(op.next_attempt_at) - flow.core.clock()).total_seconds()
        assert 1.5 < delay_s <= 2.5
        assert WAITING in [entry.msg for entry in flow.core.logs(op.id)]
    assert sorted(w[1] for w in flow.core.sender.waits) == sorted(op.id for op in waiting)
    # When the window has passed (for the sandbox and for the limiter's clock)
    time.sleep(2.3)
    flow.core.clock.advance(2.3)
    flow.core.sender.release_due(flow.core.clock())
    flow.core.deliver()
    # Then the rest are written on their first attempt
    for op in waiting:
        done = flow.core.operation(op.id)
        assert done.state == State.SUCCEEDED.value and done.attempts == 1
    assert flow.calls() == (6, 0)


def test_a_daily_refusal_pauses_the_account_until_its_reset(flow: Flow) -> None:
    # Given an account with one call left today
    limit(flow, daily=2, daily_used=1, max=100, interval_ms=10_000)
    first, second = flow.write(1), flow.write(2)
    # When both are delivered: the first spends the day, the second meets the DAILY 429
    flow.core.deliver()
    assert flow.core.operation(first).state == State.SUCCEEDED.value
    refused = flow.core.operation(second)
    if refused.state == State.QUEUED.value:
        # The first answer said the day was spent (daily headers): the gate held it back.
        assert refused.attempts == 0
    else:
        assert refused.state == State.RETRYING.value and refused.attempts == 1
        # When its backoff is over and its task is delivered again
        assert refused.next_attempt_at is not None
        flow.core.clock.now = as_utc(refused.next_attempt_at)
        flow.core.sender.release_due(flow.core.clock())
        flow.core.deliver()
    # Then the gate holds it until the pause ends (an hour: HubSpot does not say when
    # its day resets), with no further attempt and no call made
    held = flow.core.operation(second)
    assert held.state in (State.QUEUED.value, State.RETRYING.value)
    assert held.attempts == refused.attempts
    assert held.next_attempt_at is not None
    pause_s = (as_utc(held.next_attempt_at) - flow.core.clock()).total_seconds()
    assert 3000 < pause_s <= 3600
    assert flow.limiter.acquire(flow.account(), flow.core.clock()) > 3000
    assert flow.calls() == ((1, 0) if held.attempts == 0 else (1, 1))


def test_a_throttled_wait_is_not_an_attempt_and_does_not_grow_the_backoff(flow: Flow) -> None:
    # Given an operation retrying after one failed attempt
    op_id = flow.write(1)
    with flow.core.deps.sessions() as session:
        operations_repo.transition(
            session, op_id, State.RUNNING, now=flow.core.clock(), lease_s=30, attempts=1
        )
        operations_repo.transition(
            session,
            op_id,
            State.RETRYING,
            now=flow.core.clock(),
            next_attempt_at=flow.core.clock(),
            backoff_failures=1,
        )
        session.commit()
    # and an account whose window is full
    flow.limiter.learn(
        flow.account(), RateLimitObservation(max=5, remaining=0, interval_s=60), flow.core.clock()
    )
    # When its retry is delivered
    flow.core.sender.send_operation(op_id)
    flow.core.deliver()
    # Then it still waits, retrying, with the same attempt and backoff counts
    op = flow.core.operation(op_id)
    assert op.state == State.RETRYING.value
    assert (op.attempts, op.backoff_failures) == (1, 1)
    assert op.next_attempt_at is not None and as_utc(op.next_attempt_at) > flow.core.clock()
    assert flow.calls() == (0, 0)  # no call reached the provider


def test_the_deadline_ends_a_write_that_never_got_budget(flow: Flow) -> None:
    # Given an account paused far past the write's deadline (an hour)
    op_id = flow.write(1)
    flow.limiter.learn(
        flow.account(),
        RateLimitObservation(policy="daily", reset_after_s=6 * 3600),
        flow.core.clock(),
    )
    # When it is delivered, its wait is cut to its deadline
    flow.core.deliver()
    op = flow.core.operation(op_id)
    assert op.state == State.QUEUED.value and op.deadline_at is not None
    assert op.next_attempt_at == op.deadline_at
    # and when the deadline comes with the account still paused
    flow.core.clock.now = as_utc(op.deadline_at) + timedelta(seconds=1)
    flow.core.sender.release_due(flow.core.clock())
    flow.core.deliver()
    # Then it ends expired, never having been attempted, saying why
    ended = flow.core.operation(op_id)
    assert ended.state == State.EXPIRED.value and ended.attempts == 0
    assert ended.results == [{"success": False, "error": "deadline exceeded"}]
    assert any(WAITING in entry.msg for entry in flow.core.logs(op_id))


def test_an_auto_batch_without_budget_waits_whole_with_its_members_untried(flow: Flow) -> None:
    # Given a flushed batch of three, and an account with no budget for a minute
    ids = [flow.write(i, autoBatchPolicy={"maxDelayMinutes": 1}) for i in range(3)]
    with flow.core.deps.sessions() as session:
        operations_repo.assign_batch(session, ids, "batch-flow", "time", now=flow.core.clock())
        session.commit()
    flow.limiter.learn(
        flow.account(), RateLimitObservation(max=5, remaining=0, interval_s=60), flow.core.clock()
    )
    # When its task is delivered
    counts = run_batch("batch-flow", flow.core.deps)
    # Then every member waits, queued and untried, and the batch's task waits once
    assert counts == {}
    assert {flow.core.operation(i).state for i in ids} == {State.QUEUED.value}
    assert {flow.core.operation(i).attempts for i in ids} == {0}
    assert [w[:2] for w in flow.core.sender.waits] == [("batch", "batch-flow")]


def test_a_synchronous_write_without_budget_is_refused_with_nothing_recorded(flow: Flow) -> None:
    # Given an account whose window is full for a minute
    flow.limiter.learn(
        flow.account(), RateLimitObservation(max=5, remaining=0, interval_s=60), flow.core.clock()
    )
    before = _operations(flow)
    # When a synchronous write comes
    with pytest.raises(RateLimited) as refused:
        flow.core.accept({"record": {"email": "sync@example.com"}})
    # Then it is refused at once with how long to wait, and no operation was recorded
    assert 50 < refused.value.retry_after_s <= 60.5
    assert _operations(flow) == before
    assert flow.calls() == (0, 0)


def _operations(flow: Flow) -> int:
    with flow.core.deps.sessions() as session:
        page = operations_repo.list_installation_operations(
            session, flow.tenant.installation_id, page_size=1000, page_token=None
        )
    return len(page.operations)
