"""The last hour of the fleet, a minute at a time: what the console's charts draw.

The fleet's metrics (`metrics.py`) are cumulative counters in one Redis hash, and
its gauges are read when asked, so neither says what happened ten minutes ago.
Once a minute a scheduler takes a snapshot of a few of them (the Celery queue's
depth, auto-batch groups waiting, retry waits, and the running totals of writes
accepted, provider calls and provider 429s) and pushes it onto a capped list,
`{ns}:metrics:history`, newest first, 60 kept. Any number of schedulers may run:
the first to claim the minute (`SET {ns}:metrics:minute:{m} NX`) takes it, the
others skip it. Charts of counters plot the difference between neighbouring
minutes (the current minute's so far, against the figures now); a minute with
no snapshot (no scheduler ran) is a gap, not a zero.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from datetime import datetime

import redis

from writejobs.grouping.keys import Keys

HISTORY_MINUTES = 60
# A claim outlives its minute, so a scheduler whose clock lags a little cannot take it again.
_CLAIM_TTL_S = 180


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The fleet at one minute: gauges as they were, counters as running totals."""

    minute: int  # minutes since the epoch, UTC
    queue_depth: int = 0
    groups_waiting: int = 0
    unsent_claims: int = 0
    retry_waits: int = 0
    writes_accepted: int = 0
    provider_calls_ok: int = 0
    provider_calls_failed: int = 0
    provider_429s: int = 0
    limiter_refusals: int = 0


COUNTERS = (
    "writes_accepted",
    "provider_calls_ok",
    "provider_calls_failed",
    "provider_429s",
    "limiter_refusals",
)
GAUGES = ("queue_depth", "groups_waiting", "unsent_claims", "retry_waits")


def minute_of(now: datetime) -> int:
    return int(now.timestamp() // 60)


def take_snapshot(client: redis.Redis, keys: Keys, queue: str, now: datetime) -> Snapshot:
    """The fleet's figures now, in one pipeline (the queue depth is the Celery queue's
    Redis list: messages sent and not yet taken by a worker)."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.metrics)
    pipe.llen(queue)
    pipe.zcard(keys.due)
    pipe.zcard(keys.unsent)
    pipe.zcard(keys.retry)
    raw, depth, waiting, unsent, retries = pipe.execute()
    totals = _counter_fields(raw)
    return Snapshot(
        minute=minute_of(now),
        queue_depth=int(depth),
        groups_waiting=int(waiting),
        unsent_claims=int(unsent),
        retry_waits=int(retries),
        writes_accepted=_sum(totals, "writes_accepted"),
        provider_calls_ok=_sum(totals, "provider_calls", outcome={"ok"}),
        provider_calls_failed=_sum(totals, "provider_calls", outcome={"retryable", "permanent"}),
        provider_429s=_sum(totals, "provider_429s"),
        limiter_refusals=_sum(totals, "limiter_refusals"),
    )


def record_minute(client: redis.Redis, keys: Keys, queue: str, now: datetime) -> bool:
    """Push this minute's snapshot unless another process already did; say if this one did."""
    minute = minute_of(now)
    if not client.set(keys.metrics_minute(minute), b"1", nx=True, ex=_CLAIM_TTL_S):
        return False
    snapshot = take_snapshot(client, keys, queue, now)
    pipe = client.pipeline(transaction=True)
    pipe.lpush(keys.metrics_history, json.dumps(asdict(snapshot), separators=(",", ":")))
    pipe.ltrim(keys.metrics_history, 0, HISTORY_MINUTES - 1)
    pipe.execute()
    return True


class MinuteRecorder:
    """Calls `record_minute` at most once per minute from one process (a scheduler's tick)."""

    def __init__(self, client: redis.Redis, keys: Keys, queue: str) -> None:
        self._client = client
        self._keys = keys
        self._queue = queue
        self._last_minute: int | None = None

    def tick(self, now: datetime) -> bool:
        minute = minute_of(now)
        if minute == self._last_minute:
            return False
        self._last_minute = minute
        return record_minute(self._client, self._keys, self._queue, now)


def read_history(client: redis.Redis, keys: Keys) -> list[Snapshot]:
    """The kept snapshots, oldest first (one per minute; unreadable entries skipped)."""
    names = {f.name for f in fields(Snapshot)}
    found: dict[int, Snapshot] = {}
    for entry in client.lrange(keys.metrics_history, 0, HISTORY_MINUTES - 1):
        try:
            data = json.loads(entry)
            snapshot = Snapshot(**{k: int(v) for k, v in data.items() if k in names})
        except (ValueError, TypeError):
            continue
        found.setdefault(snapshot.minute, snapshot)
    return [found[m] for m in sorted(found)]


def series(
    history: list[Snapshot], name: str, *, now: datetime, live: Snapshot | None = None
) -> list[int | None]:
    """`HISTORY_MINUTES` values of metric `name`, oldest minute first, ending at `now`'s.

    A snapshot holds the totals as a minute began, so a counter's figure for minute
    m is how much it grew until the snapshot of m + 1 (for the current minute: until
    `live`, the figures now, so far). A gauge is its value at that minute (`live`
    for the current one). None where that is unknown: no snapshot at either end, or
    a total that went down (the metrics hash was reset).
    """
    by_minute = {s.minute: s for s in history}
    last = minute_of(now)
    values: list[int | None] = []
    for minute in range(last - HISTORY_MINUTES + 1, last + 1):
        current = live if minute == last and live is not None else None
        if name not in COUNTERS:
            here = current or by_minute.get(minute)
            values.append(None if here is None else int(getattr(here, name)))
            continue
        start = by_minute.get(minute)
        end = by_minute.get(minute + 1) or current
        grew = None if start is None or end is None else getattr(end, name) - getattr(start, name)
        values.append(grew if grew is not None and grew >= 0 else None)
    return values


def _counter_fields(raw: dict[bytes, bytes]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def _sum(totals: dict[str, float], name: str, **wanted: set[str]) -> int:
    """The sum of counter `name` over its label sets, keeping those whose labels match."""
    prefix = name + "{"
    total = 0.0
    for key, value in totals.items():
        if not (key.startswith(prefix) and key.endswith("}")):
            continue
        labels = dict(p.split("=", 1) for p in key[len(prefix) : -1].split(",") if "=" in p)
        if all(labels.get(label) in allowed for label, allowed in wanted.items()):
            total += value
    return int(total)
