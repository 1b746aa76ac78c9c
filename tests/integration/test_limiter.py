"""The fleet-wide rate limiter against real Redis: windows that hold across threads and
processes, and limits that follow what the providers say."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from writejobs.clock import utcnow
from writejobs.core.flow import Account, RateLimit, RateLimitObservation
from writejobs.grouping.keys import Keys
from writejobs.grouping.limiter import RedisRateLimiter, SentInBackground, account_name

T0 = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
HUBSPOT = Account("hubspot", "inst-1")
SALESFORCE = Account("salesforce", "inst-2")
OPUS = Account("opus", "inst-3")


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


@pytest.fixture
def keys(client: redis.Redis) -> Iterator[Keys]:
    keys = Keys(f"wjtest-rl-{uuid.uuid4().hex[:8]}")
    yield keys
    for key in client.scan_iter(f"{keys.namespace}:*"):
        client.delete(key)


def limiter_for(client: redis.Redis, keys: Keys, **options: object) -> RedisRateLimiter:
    return RedisRateLimiter(client, keys, slack_s=0.0, **options)  # type: ignore[arg-type]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def grants(limiter: RedisRateLimiter, account: Account, now: datetime, tries: int) -> int:
    return sum(1 for _ in range(tries) if limiter.acquire(account, now) == 0.0)


def most_in_any_window(times: list[float], interval_s: float) -> int:
    times = sorted(times)
    most, start = 0, 0
    for end, moment in enumerate(times):
        while times[start] <= moment - interval_s:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_the_default_window_admits_its_max_then_says_when_the_first_call_leaves_it(
    client: redis.Redis, keys: Keys
) -> None:
    limiter = limiter_for(client, keys, defaults={"hubspot": RateLimit(3, 10.0)})

    admitted = [limiter.acquire(HUBSPOT, at(i)) for i in range(3)]
    wait_s = limiter.acquire(HUBSPOT, at(4))

    assert admitted == [0.0, 0.0, 0.0]
    assert wait_s == pytest.approx(6.0, abs=0.01)  # the call at 0 leaves at 10
    assert limiter.acquire(HUBSPOT, at(9.9)) > 0  # a refusal took no slot
    assert limiter.acquire(HUBSPOT, at(10.01)) == 0.0


def test_accounts_are_limited_apart(client: redis.Redis, keys: Keys) -> None:
    limiter = limiter_for(client, keys, defaults={"hubspot": RateLimit(1, 10.0)})

    assert limiter.acquire(HUBSPOT, at(0)) == 0.0
    assert limiter.acquire(Account("hubspot", "inst-other"), at(0)) == 0.0
    assert limiter.acquire(HUBSPOT, at(0)) > 0


def test_the_provider_headers_replace_the_default_window(client: redis.Redis, keys: Keys) -> None:
    limiter = limiter_for(client, keys)
    assert grants(limiter, HUBSPOT, at(0), 5) == 5  # HubSpot's default is 100 per 10 s

    limiter.learn(HUBSPOT, RateLimitObservation(max=6, remaining=1, interval_s=2.0), at(0))

    assert grants(limiter, HUBSPOT, at(0.5), 5) == 1
    assert limiter.acquire(HUBSPOT, at(1.0)) == pytest.approx(1.0, abs=0.01)
    assert grants(limiter, HUBSPOT, at(2.51), 10) == 6  # a whole new window


def test_remaining_from_the_provider_corrects_a_window_we_undercounted(
    client: redis.Redis, keys: Keys
) -> None:
    limiter = limiter_for(client, keys)
    limiter.acquire(HUBSPOT, at(0))

    # The account made 7 calls we did not (another process of the same app, say).
    limiter.learn(HUBSPOT, RateLimitObservation(max=10, remaining=2, interval_s=10.0), at(1))

    assert grants(limiter, HUBSPOT, at(1), 10) == 2


def test_remaining_zero_fills_the_window_until_it_ends(client: redis.Redis, keys: Keys) -> None:
    limiter = limiter_for(client, keys)

    limiter.learn(HUBSPOT, RateLimitObservation(max=10, remaining=0, interval_s=10.0), at(0))

    assert limiter.acquire(HUBSPOT, at(5)) == pytest.approx(5.0, abs=0.01)
    assert grants(limiter, HUBSPOT, at(10.01), 20) == 10


def test_a_remaining_count_never_frees_calls_we_admitted(client: redis.Redis, keys: Keys) -> None:
    limiter = limiter_for(client, keys)
    limiter.learn(HUBSPOT, RateLimitObservation(max=5, remaining=5, interval_s=10.0), at(0))
    assert grants(limiter, HUBSPOT, at(0), 4) == 4

    # An answer that left before our last calls arrived still says 4 remain.
    limiter.learn(HUBSPOT, RateLimitObservation(max=5, remaining=4, interval_s=10.0), at(0.1))

    assert grants(limiter, HUBSPOT, at(0.2), 5) == 1


def test_a_ten_secondly_refusal_fills_the_window(client: redis.Redis, keys: Keys) -> None:
    limiter = limiter_for(client, keys, defaults={"hubspot": RateLimit(100, 10.0)})

    limiter.learn(HUBSPOT, RateLimitObservation(policy="rolling", reset_after_s=10.0), at(0))

    assert limiter.acquire(HUBSPOT, at(3)) == pytest.approx(7.0, abs=0.01)
    assert limiter.acquire(HUBSPOT, at(10.01)) == 0.0


def test_an_opus_retry_after_pauses_the_account_that_long(client: redis.Redis, keys: Keys) -> None:
    limiter = limiter_for(client, keys)

    limiter.learn(OPUS, RateLimitObservation(policy="rolling", retry_after_s=30.0), at(0))

    assert limiter.acquire(OPUS, at(10)) == pytest.approx(20.0, abs=0.01)
    assert limiter.acquire(OPUS, at(30.01)) == 0.0


def test_a_daily_refusal_pauses_the_account_until_the_day_may_have_reset(
    client: redis.Redis, keys: Keys
) -> None:
    limiter = limiter_for(client, keys, daily_pause_s=3600.0)
    limiter.acquire(HUBSPOT, at(0))

    limiter.learn(HUBSPOT, RateLimitObservation(policy="daily", daily_remaining=0), at(1))

    assert limiter.acquire(HUBSPOT, at(2)) == pytest.approx(3599.0, abs=0.01)
    assert limiter.acquire(HUBSPOT, at(3600)) > 0
    assert limiter.acquire(HUBSPOT, at(3601.01)) == 0.0  # one call probes the new day
    # A later, shorter pause never cuts a longer one short.
    limiter.learn(HUBSPOT, RateLimitObservation(policy="daily"), at(3602))
    limiter.learn(HUBSPOT, RateLimitObservation(policy="rolling", retry_after_s=1.0), at(3603))
    assert limiter.acquire(HUBSPOT, at(3700)) > 0


def test_request_limit_exceeded_pauses_a_salesforce_org(client: redis.Redis, keys: Keys) -> None:
    limiter = limiter_for(client, keys, daily_pause_s=600.0)

    observation = RateLimitObservation(daily_max=5000, daily_remaining=0, policy="daily")
    limiter.learn(SALESFORCE, observation, at(0))

    assert limiter.acquire(SALESFORCE, at(599)) == pytest.approx(1.0, abs=0.01)
    assert limiter.acquire(SALESFORCE, at(600.01)) == 0.0


def test_too_many_concurrent_salesforce_calls_pause_the_org_briefly(
    client: redis.Redis, keys: Keys
) -> None:
    limiter = limiter_for(client, keys, concurrent_pause_s=5.0)

    limiter.learn(SALESFORCE, RateLimitObservation(policy="concurrent"), at(0))

    assert limiter.acquire(SALESFORCE, at(1)) == pytest.approx(4.0, abs=0.01)
    assert limiter.acquire(SALESFORCE, at(5.01)) == 0.0


def test_past_the_daily_share_calls_are_spaced_so_the_rest_lasts_a_day(
    client: redis.Redis, keys: Keys
) -> None:
    limiter = limiter_for(client, keys, day_s=1000.0, daily_share=0.9)
    limiter.learn(SALESFORCE, RateLimitObservation(daily_max=100, daily_remaining=50), at(0))
    assert grants(limiter, SALESFORCE, at(0), 3) == 3  # half the day left: full speed

    limiter.learn(SALESFORCE, RateLimitObservation(daily_max=100, daily_remaining=4), at(1))

    assert limiter.acquire(SALESFORCE, at(2)) == 0.0
    assert limiter.acquire(SALESFORCE, at(3)) == pytest.approx(249.0, abs=0.01)  # 1000 s / 4
    assert limiter.acquire(SALESFORCE, at(252.01)) == 0.0
    # Usage fell back under the share (the rolling day let old calls go): full speed again.
    limiter.learn(SALESFORCE, RateLimitObservation(daily_max=100, daily_remaining=40), at(253))
    assert grants(limiter, SALESFORCE, at(253), 3) == 3


def test_a_configured_limit_replaces_the_default_and_caps_what_headers_teach(
    client: redis.Redis, keys: Keys
) -> None:
    limiter = limiter_for(client, keys)
    mine = Account("hubspot", "inst-1", configured=RateLimit(4, 10.0))
    assert grants(limiter, mine, at(0), 10) == 4

    limiter.learn(mine, RateLimitObservation(max=190, remaining=186, interval_s=10.0), at(1))
    assert grants(limiter, mine, at(2), 10) == 0
    assert grants(limiter, mine, at(10.01), 10) == 4

    # A provider limit below the configured one wins.
    wide = Account("salesforce", "inst-9", configured=RateLimit(50, 1.0))
    limiter.learn(wide, RateLimitObservation(max=2, remaining=2, interval_s=1.0), at(20))
    assert grants(limiter, wide, at(20), 10) == 2


def test_a_refusal_is_counted_and_its_wait_observed(client: redis.Redis, keys: Keys) -> None:
    counted: list[tuple[str, dict[str, str]]] = []

    class Recording:
        def count(self, name: str, n: int = 1, **labels: str) -> None:
            counted.append((name, labels))

        def observe(self, name: str, value: float, **labels: str) -> None:
            counted.append((name, labels))

    limiter = RedisRateLimiter(
        client, keys, defaults={"opus": RateLimit(1, 10.0)}, recorder=Recording()
    )
    limiter.acquire(OPUS, at(0))
    limiter.acquire(OPUS, at(1))
    limiter.learn(OPUS, RateLimitObservation(policy="rolling", retry_after_s=2), at(1))

    assert counted == [
        ("limiter_refusals", {"provider": "opus"}),
        ("limiter_wait_seconds", {"provider": "opus"}),
        ("provider_429s", {"provider": "opus", "policy": "rolling"}),
    ]


def test_threads_racing_for_slots_never_get_more_than_the_limit_into_a_window(
    client: redis.Redis, keys: Keys
) -> None:
    limit, interval_s = 5, 0.5
    limiter = limiter_for(client, keys, defaults={"hubspot": RateLimit(limit, interval_s)})
    granted: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = 0
        while mine < 5:
            now = utcnow()
            wait_s = limiter.acquire(HUBSPOT, now)
            if wait_s == 0.0:
                mine += 1
                with lock:
                    granted.append(now.timestamp())
            else:
                time.sleep(min(wait_s, 0.05))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(granted) == 40
    assert most_in_any_window(granted, interval_s) == limit


def _acquire_in_process(
    redis_url: str,
    namespace: str,
    count: int,
    start_at: float,
    out: multiprocessing.Queue[list[float]],
) -> None:
    connection = redis.Redis.from_url(redis_url)
    time.sleep(max(start_at - time.time(), 0.0))  # both children race from the same moment
    limiter = RedisRateLimiter(
        connection, Keys(namespace), defaults={"hubspot": RateLimit(4, 0.5)}, slack_s=0.0
    )
    granted: list[float] = []
    while len(granted) < count:
        now = utcnow()
        wait_s = limiter.acquire(HUBSPOT, now)
        if wait_s == 0.0:
            granted.append(now.timestamp())
        else:
            time.sleep(min(wait_s, 0.05))
    out.put(granted)


def test_two_processes_share_one_window(redis_url: str, keys: Keys) -> None:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    start_at = time.time() + 3.0
    children = [
        context.Process(
            target=_acquire_in_process, args=(redis_url, keys.namespace, 12, start_at, out)
        )
        for _ in range(2)
    ]
    for child in children:
        child.start()
    granted = out.get(timeout=60) + out.get(timeout=60)
    for child in children:
        child.join(timeout=30)

    assert len(granted) == 24
    assert most_in_any_window(granted, 0.5) == 4


def test_an_unreachable_redis_lets_calls_go(keys: Keys) -> None:
    dead = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    limiter = RedisRateLimiter(dead, keys)

    assert limiter.acquire(HUBSPOT, at(0)) == 0.0
    limiter.learn(HUBSPOT, RateLimitObservation(policy="daily"), at(0))  # no raise


def test_an_attempt_of_several_calls_takes_a_slot_for_each(client: redis.Redis, keys: Keys) -> None:
    limiter = limiter_for(client, keys, defaults={"opus": RateLimit(10, 10.0)})

    assert limiter.acquire(OPUS, at(0), calls=7) == 0.0  # 100 records, 15 a call
    assert limiter.acquire(OPUS, at(1), calls=4) == pytest.approx(9.0, abs=0.01)
    assert limiter.acquire(OPUS, at(1), calls=3) == 0.0
    # More calls than a window holds take a whole window, once it is free.
    assert limiter.acquire(OPUS, at(11), calls=25) == 0.0
    assert limiter.acquire(OPUS, at(11), calls=1) > 0


def test_a_429_with_retry_after_pauses_that_long_not_a_whole_window(
    client: redis.Redis, keys: Keys
) -> None:
    # Given a HubSpot account whose 429 says no call remains and to come back in 2 s
    limiter = limiter_for(client, keys)
    refusal = RateLimitObservation(
        max=10, remaining=0, interval_s=10.0, policy="rolling", retry_after_s=2.0
    )

    limiter.learn(HUBSPOT, refusal, at(0))

    # Then it waits the Retry-After, and its window is not filled for 10 s
    assert limiter.acquire(HUBSPOT, at(1)) == pytest.approx(1.0, abs=0.01)
    assert grants(limiter, HUBSPOT, at(2.01), 10) == 10


def test_a_sent_call_holds_its_slot_from_when_it_left(client: redis.Redis, keys: Keys) -> None:
    # Given one call per 10 s, admitted at 0 and sent only at 3 (the attempt's SQL between)
    limiter = limiter_for(client, keys, defaults={"hubspot": RateLimit(1, 10.0)})
    assert limiter.acquire(HUBSPOT, at(0)) == 0.0

    limiter.sent(HUBSPOT, at(3))

    # Then its slot frees 10 s after it left, not after it was admitted
    assert limiter.acquire(HUBSPOT, at(10.5)) == pytest.approx(2.5, abs=0.01)
    assert limiter.acquire(HUBSPOT, at(13.01)) == 0.0


def test_a_call_marked_sent_in_the_background_holds_its_slot_from_when_it_left(
    client: redis.Redis, keys: Keys
) -> None:
    # Given one call per 10 s, admitted at 0 and marked sent at 3 from the caller's thread
    limiter = limiter_for(client, keys, defaults={"hubspot": RateLimit(1, 10.0)})
    assert limiter.acquire(HUBSPOT, at(0)) == 0.0
    marks = SentInBackground(limiter)

    marks.mark(HUBSPOT, at(3))

    # Then soon after, its slot frees 10 s after it left, as with `sent`
    window = keys.rate_window(account_name(HUBSPOT))
    deadline = time.monotonic() + 10
    while not any(m.startswith(b"s:") for m in client.zrange(window, 0, -1)):
        assert time.monotonic() < deadline, "the slot was never moved"
        time.sleep(0.01)
    assert limiter.acquire(HUBSPOT, at(10.5)) == pytest.approx(2.5, abs=0.01)


def test_a_call_sent_without_an_admitted_slot_takes_none(client: redis.Redis, keys: Keys) -> None:
    limiter = limiter_for(client, keys, defaults={"hubspot": RateLimit(1, 10.0)})

    limiter.sent(HUBSPOT, at(0))

    assert limiter.acquire(HUBSPOT, at(0)) == 0.0


def test_a_call_the_window_still_counts_with_its_slack_is_no_drift(
    client: redis.Redis, keys: Keys
) -> None:
    # Given one call per 10 s and 0.2 s of slack, a call at 0 the window counts until 10.2
    limiter = RedisRateLimiter(client, keys, defaults={"hubspot": RateLimit(1, 10.0)})
    assert limiter.acquire(HUBSPOT, at(0)) == 0.0

    # When an answer heard at 10.1 says the provider still counts one call (that one)
    limiter.learn(HUBSPOT, RateLimitObservation(max=1, remaining=0, interval_s=10.0), at(10.1))

    # Then no call is added: the slot frees at 10.2, not a window after the answer
    assert limiter.acquire(HUBSPOT, at(10.25)) == 0.0
