"""Fleet-wide metrics: counters and histograms kept in Redis, rendered for Prometheus.

Metrics are recorded in many processes (API processes, Celery pool children,
schedulers), most of them forked or short-lived, none with a port of its own.
So each adds to fields of one Redis hash (`{ns}:metrics`), and any API process's
`GET /metrics` renders the whole fleet's figures, together with gauges read at
scrape time: auto-batch groups waiting, claims not yet sent, retry waits, tasks
waiting in the Celery queues, and operations not yet finished (plus expired ones)
by state, from SQL.

Recording costs a request no Redis round trip: increments are summed in memory
and sent at most every second by a thread of each process (and at exit), so a
crash loses at most that second's figures. It never fails a write: a Redis error
is logged and the figures dropped.

Hash fields: `name{k=v,…}` for a counter; `name:bucket:{le}{…}`, `name:sum{…}`
and `name:count{…}` for a histogram (each bucket counts only its own values; the
rendering makes them cumulative).
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import os
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from writejobs.core.operations import State
from writejobs.grouping.admission import Admission
from writejobs.grouping.keys import Keys
from writejobs.grouping.limiter import RedisRateLimiter
from writejobs.store import webhook_destinations, webhook_outbox
from writejobs.store.tables import Operation

log = logging.getLogger(__name__)

PREFIX = "writejobs"


@dataclass(frozen=True, slots=True)
class MetricInfo:
    kind: str  # "counter" or "histogram"
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


CATALOG: dict[str, MetricInfo] = {
    "writes_accepted": MetricInfo(
        "counter", "Writes the API accepted (an operation was recorded), by shape.", ("shape",)
    ),
    "provider_calls": MetricInfo(
        "counter",
        "Provider write calls, by provider and outcome (ok, retryable, permanent).",
        ("provider", "outcome"),
    ),
    "provider_call_seconds": MetricInfo(
        "histogram",
        "Duration of provider write calls, by provider.",
        ("provider",),
        (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    ),
    "possible_duplicates": MetricInfo(
        "counter",
        "Records created again after an attempt that may have reached the provider "
        "(taken over from a dead worker, no natural key to upsert by), by provider.",
        ("provider",),
    ),
    "operations_finished": MetricInfo(
        "counter",
        "Operations ended, by state (succeeded, partially_succeeded, failed, expired), "
        "counted when the transaction that ended them commits.",
        ("state",),
    ),
    "retries_scheduled": MetricInfo(
        "counter", "Waits for a next attempt, by what waits (op or batch).", ("kind",)
    ),
    "auto_batch_flushes": MetricInfo(
        "counter", "Auto-batch groups flushed, by reason (size or time).", ("reason",)
    ),
    "auto_batch_records_flushed": MetricInfo("counter", "Auto-batched records flushed."),
    "auto_batch_size": MetricInfo(
        "histogram", "Records per flushed auto-batch.", (), (1, 5, 10, 25, 50, 75, 99, 100)
    ),
    "auto_batch_flush_lateness_seconds": MetricInfo(
        "histogram",
        "How long after its earliest member's due time a group was flushed by time.",
        (),
        (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    ),
    "limiter_refusals": MetricInfo(
        "counter",
        "Provider calls the fleet's rate limiter held back (told to wait), by provider.",
        ("provider",),
    ),
    "limiter_wait_seconds": MetricInfo(
        "histogram",
        "How long the rate limiter told a held-back provider call to wait, by provider.",
        ("provider",),
        (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0),
    ),
    "provider_429s": MetricInfo(
        "counter",
        "Provider refusals for a rate limit (429, or Salesforce's 403 REQUEST_LIMIT_EXCEEDED), "
        "by provider and policy (rolling, daily, concurrent).",
        ("provider", "policy"),
    ),
    "auto_batch_claim_to_start_seconds": MetricInfo(
        "histogram",
        "From an auto-batch's claim (its 100th record, or its due time) to its write starting.",
        (),
        (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    ),
    "webhook_deliveries": MetricInfo(
        "counter",
        "Webhook delivery attempts, by outcome (delivered, retrying, failed, abandoned).",
        ("outcome",),
    ),
    "webhook_delivery_lag_seconds": MetricInfo(
        "histogram",
        "From an operation's end (or a replay) to its notification's 2xx.",
        (),
        (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0),
    ),
}

# Not finished yet, or finished by running out of time: each a short range of the
# state index. Succeeded and failed rows, the bulk of the table, are not counted.
COUNTED_STATES = (State.PENDING, State.QUEUED, State.RUNNING, State.RETRYING, State.EXPIRED)


def field(name: str, labels: dict[str, str], part: str = "") -> str:
    """The hash field of a counter (`part` empty) or of a histogram's `part`."""
    inner = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return f"{name}{part}{{{inner}}}"


@functools.lru_cache(maxsize=4096)
def _counter_field(name: str, *labels: tuple[str, str]) -> str:
    """`field(name, dict(labels))`, remembered: the API counts each accepted write."""
    return field(name, dict(labels))


def histogram_fields(name: str, value: float, labels: dict[str, str]) -> list[tuple[str, float]]:
    """The (field, increment) pairs that record one `value` of histogram `name`."""
    buckets = CATALOG[name].buckets
    le = next((b for b in buckets if value <= b), math.inf)
    return [
        (field(name, labels, f":bucket:{le:g}"), 1),
        (field(name, labels, ":sum"), value),
        (field(name, labels, ":count"), 1),
    ]


# Every recorder of this process (an API process may wire more than once), so a scrape
# can send all of this process's sums first.
_recorders: weakref.WeakSet[Metrics] = weakref.WeakSet()


class Metrics:
    """Adds to the fleet's counters and histograms (a `Recorder`); with no Redis client,
    does nothing."""

    def __init__(self, client: redis.Redis | None, keys: Keys, flush_s: float = 1.0) -> None:
        self._client = client
        self._key = keys.metrics
        self._flush_s = flush_s
        self._lock = threading.Lock()
        self._pending: dict[str, float] = {}
        self._flusher_pid: int | None = None
        # A forked child (a Celery pool process) starts empty, with a lock no parent
        # thread can be holding, and its own flusher: the parent sends its own sums.
        os.register_at_fork(after_in_child=self._forget_parent)
        _recorders.add(self)

    def count(self, name: str, n: int = 1, **labels: str) -> None:
        self._add([(_counter_field(name, *labels.items()), n)])

    def observe(self, name: str, value: float, **labels: str) -> None:
        self._add(histogram_fields(name, value, labels))

    def flush(self) -> None:
        """Send the sums so far to Redis now (a scrape does, before reading)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending or self._client is None:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for name, amount in pending.items():
                # A histogram's sum is a float; every other field counts whole events.
                if ":sum{" in name:
                    pipe.hincrbyfloat(self._key, name, amount)
                else:
                    pipe.hincrby(self._key, name, int(amount))
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("metrics not recorded: %s", type(exc).__name__)

    def _add(self, increments: list[tuple[str, float]]) -> None:
        if self._client is None:
            return
        with self._lock:
            if self._flusher_pid != os.getpid():
                self._flusher_pid = os.getpid()
                threading.Thread(target=self._flush_forever, name="metrics", daemon=True).start()
                atexit.register(self.flush)
            for name, amount in increments:
                self._pending[name] = self._pending.get(name, 0) + amount

    def _flush_forever(self) -> None:
        while True:
            time.sleep(self._flush_s)
            self.flush()

    def _forget_parent(self) -> None:
        self._lock = threading.Lock()
        self._pending = {}
        self._flusher_pid = None


class FleetCollector(Collector):
    """Renders the Redis hash and the scrape-time gauges as Prometheus metric families."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        sessions: sessionmaker[Session],
        retry_key: str,
        local: Metrics | None = None,
        queues: Sequence[str] = (),
        limiter: RedisRateLimiter | None = None,
        admission: Admission | None = None,
    ) -> None:
        self._client = client
        # Flow control's gauges: budget left per account, backlog per installation.
        self._limiter = limiter
        self._admission = admission
        self._keys = keys
        self._sessions = sessions
        self._retry_key = retry_key
        # Celery queues whose waiting tasks are counted (`celery_queue_length{queue}`).
        self._queues = tuple(queues)
        # This process's own recorder: flushed first, so its figures are current.
        self._local = local

    def collect(self) -> Iterator[Any]:
        if self._local is not None:
            # Every recorder of this process, not only the API's own: figures recorded
            # but not yet sent would otherwise arrive in the middle of a reader's two scrapes.
            for recorder in list(_recorders):
                recorder.flush()
        raw = self._client.hgetall(self._keys.metrics)
        fields = {_text(k): float(_text(v)) for k, v in raw.items()}
        for name, info in CATALOG.items():
            if info.kind == "counter":
                yield _counter(name, info, fields)
            else:
                yield _histogram(name, info, fields)
        yield from self._gauges()
        yield from self._flow_gauges()

    def _flow_gauges(self) -> Iterator[GaugeMetricFamily]:
        if self._limiter is not None:
            budget = GaugeMetricFamily(
                f"{PREFIX}_rate_limit_budget",
                "Calls left in the current rate-limit window of the provider accounts with "
                "the least left (at most 10 of the 100 that called last; 0 while paused).",
                labels=["provider", "account"],
            )
            for row in self._limiter.budgets(datetime.now(UTC)):
                budget.add_metric([row.provider, row.account], float(row.left))
            yield budget
        if self._admission is not None:
            total, top = self._admission.backlog()
            yield GaugeMetricFamily(
                f"{PREFIX}_admission_backlog",
                "Tasks waiting for fair-share admission to Celery, every installation.",
                value=float(total),
            )
            per = GaugeMetricFamily(
                f"{PREFIX}_admission_backlog_by_installation",
                "Tasks waiting for admission, for the 5 installations with the most.",
                labels=["installation"],
            )
            for inst, n in top:
                per.add_metric([inst], float(n))
            yield per

    def _gauges(self) -> Iterator[GaugeMetricFamily]:
        pipe = self._client.pipeline(transaction=False)
        pipe.zcard(self._keys.due)
        pipe.zcard(self._keys.unsent)
        pipe.zcard(self._retry_key)
        for queue in self._queues:
            for name in celery_queue_lists(queue):
                pipe.llen(name)
        waiting, unsent, retries, *lengths = pipe.execute()
        for name, help_text, value in (
            ("auto_batch_groups_waiting", "Auto-batch groups holding records.", waiting),
            (
                "auto_batch_unsent_claims",
                "Flushed auto-batches whose task is not sent yet.",
                unsent,
            ),
            ("retry_waits", "Operations and batches waiting for their next attempt.", retries),
        ):
            yield GaugeMetricFamily(f"{PREFIX}_{name}", help_text, value=float(value))
        queued = GaugeMetricFamily(
            f"{PREFIX}_celery_queue_length",
            "Tasks waiting in a Celery queue in Redis (not yet taken by a worker), by queue.",
            labels=["queue"],
        )
        per_queue = len(celery_queue_lists(""))
        for i, queue in enumerate(self._queues):
            queued.add_metric([queue], float(sum(lengths[i * per_queue : (i + 1) * per_queue])))
        yield queued
        states = GaugeMetricFamily(
            f"{PREFIX}_operations",
            "Operations not finished yet, and expired ones, by state.",
            labels=["state"],
        )
        counts = dict.fromkeys((s.value for s in COUNTED_STATES), 0)
        with self._sessions() as session:
            statement = (
                select(Operation.state, func.count())
                .where(Operation.state.in_(list(counts)))
                .group_by(Operation.state)
            )
            for state, n in session.execute(statement):
                counts[state] = n
        for state, n in counts.items():
            states.add_metric([state], float(n))
        yield states
        with self._sessions() as session:
            disabled = webhook_destinations.count_disabled(session)
            pending = webhook_outbox.count_pending(session)
        yield GaugeMetricFamily(
            f"{PREFIX}_webhook_destinations_disabled",
            "Webhook destinations switched off after failing too long.",
            value=float(disabled),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_webhook_deliveries_pending",
            "Webhook deliveries not yet delivered, failed or abandoned.",
            value=float(pending),
        )


def celery_queue_lists(queue: str) -> list[str]:
    """The Redis lists that hold a Celery queue's waiting tasks: kombu's Redis transport
    keeps one list per priority step, the queue's own name for priority 0 and
    `<queue>\\x06\\x16<step>` for the others (a task sent with a priority lands there)."""
    return [queue if step == 0 else f"{queue}{Channel.sep}{step}" for step in PRIORITY_STEPS]


def _counter(name: str, info: MetricInfo, fields: dict[str, float]) -> CounterMetricFamily:
    family = CounterMetricFamily(f"{PREFIX}_{name}", info.help, labels=list(info.labels))
    for labels, value in _series(name, "", fields).items():
        family.add_metric(_values(labels, info.labels), value)
    return family


def _histogram(name: str, info: MetricInfo, fields: dict[str, float]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(f"{PREFIX}_{name}", info.help, labels=list(info.labels))
    sums = _series(name, ":sum", fields)
    bounds = [f"{b:g}" for b in info.buckets] + ["inf"]
    per_bucket = {le: _series(name, f":bucket:{le}", fields) for le in bounds}
    for labels, total in sums.items():
        running = 0.0
        buckets: list[tuple[str, float]] = []
        for le in bounds:
            running += per_bucket[le].get(labels, 0.0)
            buckets.append(("+Inf" if le == "inf" else le, running))
        family.add_metric(_values(labels, info.labels), buckets, total)
    return family


def _series(name: str, part: str, fields: dict[str, float]) -> dict[str, float]:
    """Label string -> value, for the fields of `name` + `part`."""
    prefix = f"{name}{part}{{"
    found: dict[str, float] = defaultdict(float)
    for key, value in fields.items():
        if key.startswith(prefix) and key.endswith("}"):
            found[key[len(prefix) : -1]] += value
    return found


def _values(labels: str, names: Sequence[str]) -> list[str]:
    pairs = dict(pair.split("=", 1) for pair in labels.split(",") if pair)
    return [pairs.get(name, "") for name in names]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
