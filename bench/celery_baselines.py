"""The Celery baselines of bench/e2e_bench.py: what a team would build instead of writejobs.

One Celery app, configured from the environment the bench gives its worker
(`E2E_BROKER_URL`, `E2E_QUEUE`, `E2E_SANDBOX_URL`, `E2E_DONE_KEY`,
`E2E_PREFETCH`), with two tasks:

* `e2e.write_one`: plain Celery, one task per record, one provider call per
  record (HubSpot's single create, as writejobs' asynchronous single write makes);
* `e2e.write_batch`: a celery-batches `Batches` task (flush every 100 requests
  or every second), one HubSpot batch create per flushed buffer.

Both acknowledge late (as writejobs' worker does, so a killed worker loses
nothing either) and send no task events (Celery's default). The record rides in
the task's arguments: with no store of their own there is nowhere else for it.
Each task, once the provider has answered, stamps every record it wrote with
the time (`HSET E2E_DONE_KEY <task id> <epoch s>`), which is how the bench
learns when each record was written.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
import redis
from celery import Celery
from celery_batches import Batches

BROKER_URL = os.environ.get("E2E_BROKER_URL", "redis://127.0.0.1:6379/11")
QUEUE = os.environ.get("E2E_QUEUE", "e2e-baseline")
SANDBOX_URL = os.environ.get("E2E_SANDBOX_URL", "http://127.0.0.1:8900")
DONE_KEY = os.environ.get("E2E_DONE_KEY", "e2e:done")
OBJECTS = "/crm/v3/objects/contacts"
HUBSPOT_BATCH_LIMIT = 100

app = Celery("e2e-baselines")
app.conf.update(
    broker_url=BROKER_URL,
    task_default_queue=QUEUE,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=int(os.environ.get("E2E_PREFETCH", "1")),
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


class _PerProcess:
    """An HTTP client and a Redis client of this process's own (made after the fork)."""

    def __init__(self) -> None:
        self.pid = 0
        self.http: httpx.Client | None = None
        self.redis: redis.Redis | None = None

    def get(self) -> tuple[httpx.Client, redis.Redis]:
        if self.http is None or self.redis is None or self.pid != os.getpid():
            self.pid = os.getpid()
            self.http = httpx.Client(
                base_url=SANDBOX_URL, headers={"Authorization": "Bearer bench"}, timeout=30
            )
            self.redis = redis.Redis.from_url(BROKER_URL)
        return self.http, self.redis


_clients = _PerProcess()


@app.task(name="e2e.write_one", bind=True)  # type: ignore[untyped-decorator]
def write_one(self: Any, record: dict[str, Any]) -> None:
    """Create one record with one provider call."""
    http, done = _clients.get()
    http.post(OBJECTS, json={"properties": record}).raise_for_status()
    done.hset(DONE_KEY, self.request.id, time.time())


@app.task(name="e2e.write_batch", base=Batches, flush_every=100, flush_interval=1)  # type: ignore[untyped-decorator]
def write_batch(requests: list[Any]) -> None:
    """Create a flushed buffer of records with one batch call per 100 (celery-batches)."""
    http, done = _clients.get()
    for start in range(0, len(requests), HUBSPOT_BATCH_LIMIT):
        chunk = requests[start : start + HUBSPOT_BATCH_LIMIT]
        inputs = [{"properties": request.args[0]} for request in chunk]
        http.post(f"{OBJECTS}/batch/create", json={"inputs": inputs}).raise_for_status()
        now = time.time()
        done.hset(DONE_KEY, mapping={request.id: now for request in chunk})
