"""The per-minute history of the fleet's metrics, in real Redis: one snapshot a minute
whoever takes it, an hour kept, counters charted as growth per minute."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import redis

from writejobs.grouping.keys import Keys
from writejobs.runtime.metrics_history import (
    HISTORY_MINUTES,
    MinuteRecorder,
    read_history,
    record_minute,
    series,
)
from writejobs.settings import Settings

T0 = datetime(2026, 11, 24, 9, 0, 5, tzinfo=UTC)


@pytest.fixture()
def keyspace(settings: Settings) -> Iterator[tuple[redis.Redis, Keys, str]]:
    client = redis.Redis.from_url(settings.effective_redis_url)
    keys = Keys(f"wjhist-{uuid.uuid4().hex[:8]}")
    queue = f"q-{keys.namespace}"
    yield client, keys, queue
    leftovers = list(client.scan_iter(f"{keys.namespace}:*"))
    client.delete(queue, *leftovers)


def test_two_schedulers_take_one_snapshot_a_minute(keyspace: tuple[redis.Redis, Keys, str]) -> None:
    client, keys, queue = keyspace
    first, second = MinuteRecorder(client, keys, queue), MinuteRecorder(client, keys, queue)

    took = [first.tick(T0), second.tick(T0 + timedelta(seconds=1)), first.tick(T0)]
    assert took == [True, False, False]
    later = T0 + timedelta(minutes=1)
    assert [second.tick(later), first.tick(later)] == [True, False]
    assert [s.minute for s in read_history(client, keys)] == [
        int(T0.timestamp() // 60),
        int(later.timestamp() // 60),
    ]


def test_an_hour_is_kept(keyspace: tuple[redis.Redis, Keys, str]) -> None:
    client, keys, queue = keyspace
    for minute in range(HISTORY_MINUTES + 15):
        assert record_minute(client, keys, queue, T0 + timedelta(minutes=minute))
    history = read_history(client, keys)
    assert len(history) == HISTORY_MINUTES
    assert history[-1].minute == int(T0.timestamp() // 60) + HISTORY_MINUTES + 14


def test_counters_chart_their_growth_and_gauges_their_value(
    keyspace: tuple[redis.Redis, Keys, str],
) -> None:
    client, keys, queue = keyspace
    calls = "provider_calls{outcome=ok,provider=hubspot}"
    steps = [
        # minute, calls ok so far, 429s so far, tasks in the queue
        (0, 5, 0, 3),
        (1, 12, 2, 0),
        (3, 20, 2, 1),  # minute 2 had no snapshot
        (4, 4, 2, 1),  # the metrics hash was reset
    ]
    for minute, ok, throttled, depth in steps:
        client.hset(keys.metrics, calls, ok)
        client.hset(keys.metrics, "provider_429s{policy=rolling,provider=hubspot}", throttled)
        client.hset(keys.metrics, "provider_calls{outcome=retryable,provider=hubspot}", 1)
        client.delete(queue)
        if depth:
            client.rpush(queue, *[f"t{i}" for i in range(depth)])
        record_minute(client, keys, queue, T0 + timedelta(minutes=minute))
    history = read_history(client, keys)
    now = T0 + timedelta(minutes=4, seconds=30)

    # a snapshot holds the totals as its minute began: minute 0 grew by 12 - 5
    assert series(history, "provider_calls_ok", now=now)[-5:] == [7, None, None, None, None]
    assert series(history, "provider_429s", now=now)[-5:] == [2, None, None, 0, None]
    assert series(history, "queue_depth", now=now)[-5:] == [3, 0, None, 1, 1]
    # the current minute, so far, against the figures now
    live = replace(history[-1], minute=history[-1].minute, provider_calls_ok=9, queue_depth=6)
    assert series(history, "provider_calls_ok", now=now, live=live)[-1] == 5
    assert series(history, "queue_depth", now=now, live=live)[-1] == 6
    # retryable calls count as failed; ok ones do not
    assert [s.provider_calls_failed for s in history] == [1, 1, 1, 1]
    assert len(series(history, "queue_depth", now=now)) == HISTORY_MINUTES
