"""The client side of bench/e2e_bench.py: client processes that submit single records.

Each client process (spawned, so its imports and connections cost the system
under test nothing) runs `threads` threads; every thread submits its share of
the records one at a time, as fast as the answers come, and notes when each
answer arrived. Each process says when it is ready and waits for the word to
start, so all start together and the bench takes the system's CPU reading just
before.

A submit is one of: an HTTP POST to writejobs (`operationId` names the record),
an HTTP POST to the FastAPI baseline (`taskId`), or a Celery `send_task` (the
task id). Times are epoch seconds (`time.time()`), comparable across processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SubmitSpec:
    """How one row's records are submitted (picklable: it crosses into the clients)."""

    kind: str  # "writejobs" | "fastapi" | "celery"
    target: str  # a URL, or the Celery broker URL
    body: dict[str, Any] = field(default_factory=dict)  # the JSON around "record"
    headers: dict[str, str] = field(default_factory=dict)
    task_name: str = ""
    queue: str = ""


@dataclass(frozen=True)
class Job:
    spec: SubmitSpec
    indices: list[list[int]]  # one list of record numbers per thread
    run_tag: str


@dataclass
class Submitted:
    """What one client process saw: each record's key and answer time, its first start."""

    answered: list[tuple[str, float]] = field(default_factory=list)
    first_start: float = float("inf")
    last_answer: float = 0.0
    errors: list[str] = field(default_factory=list)


def record(run_tag: str, n: int) -> dict[str, Any]:
    return {"email": f"e2e-{run_tag}-{n}@example.com", "firstname": f"Bench {n}"}


def run_client(job: Job, ready_then_wait: Callable[[], object]) -> Submitted:
    """One client process: once `ready_then_wait` returns, its threads submit their
    records; what they saw."""
    submit = _submitter(job.spec)
    senders = [submit() for _ in job.indices]
    out = Submitted()
    lock = threading.Lock()

    def loop(numbers: list[int], send: Callable[[dict[str, Any]], str]) -> None:
        mine: list[tuple[str, float]] = []
        started = time.time()
        try:
            for n in numbers:
                mine.append((send(record(job.run_tag, n)), time.time()))
        except Exception as exc:  # reported in the row, not a crash of the whole bench
            with lock:
                out.errors.append(f"{type(exc).__name__}: {exc}"[:300])
        with lock:
            out.answered.extend(mine)
            out.first_start = min(out.first_start, started)
            if mine:
                out.last_answer = max(out.last_answer, mine[-1][1])

    workers = [
        threading.Thread(target=loop, args=(part, send))
        for part, send in zip(job.indices, senders, strict=True)
    ]
    ready_then_wait()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return out


def _submitter(spec: SubmitSpec) -> Any:
    """A factory of per-thread send functions: record -> the key that names it."""
    if spec.kind == "celery":
        from celery import Celery

        app = Celery("e2e-client", broker=spec.target)
        app.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)

        def celery_sender() -> Any:
            def send(one: dict[str, Any]) -> str:
                result = app.send_task(spec.task_name, args=[one], queue=spec.queue)
                return str(result.id)

            return send

        return celery_sender

    # httpcore, the connection layer under httpx: the load generator shares the two
    # cores with the systems under test, and httpx's request and response models
    # cost about twice its CPU per request (176 against 319 µs, measured here), CPU
    # that both HTTP rows would otherwise lose to the clients alike.
    import json

    import httpcore

    answer_key = "operationId" if spec.kind == "writejobs" else "taskId"
    headers = [*spec.headers.items(), ("Content-Type", "application/json")]
    timeouts = {"timeout": dict.fromkeys(("connect", "read", "write", "pool"), 30.0)}

    def http_sender() -> Any:
        pool = httpcore.ConnectionPool(max_connections=1)

        def send(one: dict[str, Any]) -> str:
            content = json.dumps({**spec.body, "record": one}).encode()
            response = pool.request(
                "POST", spec.target, headers=headers, content=content, extensions=timeouts
            )
            if response.status >= 300:
                raise RuntimeError(f"HTTP {response.status}: {response.content[:200]!r}")
            return str(json.loads(response.content)[answer_key])

        return send

    return http_sender
