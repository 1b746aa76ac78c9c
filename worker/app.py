"""The Celery app of the worker: thin tasks that hand ids to the domain.

Run it with `writejobs worker` (or `celery -A worker.app worker`). What a task
does lives in `writejobs.execution` (`run_operation`, `run_batch`); this module
only binds those functions to task names. Task arguments are operation or batch
ids only; Flower shows them, and it must never show a customer's record.

Importing this module reads the settings once and builds the Celery app; the
store and Redis are wired on a process's first task, so each forked pool child
opens connections of its own and Flower (which imports this too) opens none.
"""

from __future__ import annotations

import logging
import os
import time

from celery import Celery

from writejobs import task_names
from writejobs.errors import WriteCrashed
from writejobs.execution.batch import run_batch
from writejobs.execution.crash import where
from writejobs.execution.run import run_operation
from writejobs.execution.webhooks import deliver
from writejobs.runtime.celery_config import celery_config
from writejobs.runtime.log_config import configure_logging
from writejobs.runtime.task_events import TASK_EVENTS, FlushTaskEvents
from writejobs.runtime.wiring import Wiring, wire
from writejobs.settings import Settings, load_settings
from writejobs.store.leases import LeaseHeartbeat

log = logging.getLogger(__name__)


class _LazyWiring:
    """This process's wiring, built on first use (and again in a forked child)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._wiring: Wiring | None = None
        self._heartbeat: LeaseHeartbeat | None = None
        self._pid = 0

    def __call__(self) -> Wiring:
        if self._wiring is None or self._pid != os.getpid():
            self._wiring, self._pid = wire(self.settings), os.getpid()
            deps = self._wiring.deps
            self._heartbeat = LeaseHeartbeat(
                deps.sessions, self.settings.running_lease_s, deps.clock
            )
        return self._wiring

    def heartbeat(self) -> LeaseHeartbeat:
        """Keeps the short running leases of this process's tasks alive (store.leases)."""
        self()
        assert self._heartbeat is not None
        return self._heartbeat


def create_celery(settings: Settings) -> Celery:
    """The worker's Celery app, with its tasks bound to the given settings."""
    app = Celery("writejobs", events=TASK_EVENTS)
    app.conf.update(celery_config(settings))
    # Task events (Flower's) go out in batches, not one PUBLISH per event.
    app.steps["consumer"].add(FlushTaskEvents)
    wiring = _LazyWiring(settings)

    def note_batch_start(batch_id: str) -> None:
        # Time from the claim (the 100th append, or the due time) to the write starting.
        current = wiring()
        claimed_at = current.redis.hget(current.batcher.keys.batch(batch_id), "claimed_at")
        if claimed_at is not None:
            waited_s = max(time.time() - float(claimed_at), 0.0)
            current.metrics.observe("auto_batch_claim_to_start_seconds", waited_s)

    @app.task(name=task_names.WRITE_OPERATION)  # type: ignore[untyped-decorator]
    def write_operation(operation_id: str) -> str | None:
        """Write one asynchronous operation (single record or explicit batch)."""
        try:
            with wiring.heartbeat().holding(operation_id=operation_id):
                state = run_operation(operation_id, wiring().deps)
        except Exception as exc:
            raise _sanitized("operation", operation_id, exc) from None
        return state.value if state is not None else None

    @app.task(name=task_names.WRITE_BATCH)  # type: ignore[untyped-decorator]
    def write_batch(batch_id: str) -> dict[str, int]:
        """Write one flushed auto-batch; each member operation gets its own result."""
        try:
            with wiring.heartbeat().holding(batch_id=batch_id):
                return run_batch(batch_id, wiring().deps, on_start=note_batch_start)
        except Exception as exc:
            raise _sanitized("batch", batch_id, exc) from None

    @app.task(name=task_names.DELIVER_WEBHOOK)  # type: ignore[untyped-decorator]
    def deliver_webhook(delivery_ids: list[int]) -> dict[str, int]:
        """POST these `write.async.done` deliveries (ids only), one attempt each.

        Sent to the webhooks queue (`writejobs webhooks` reads it), never run
        inside a write task, so a slow receiver never holds up a write.
        """
        return deliver(delivery_ids, wiring().webhooks)

    return app


def _sanitized(kind: str, target_id: str, exc: Exception) -> WriteCrashed:
    """The catch-all of the task edge: what Celery logs, and Flower shows, of a failed task.

    Celery logs a failed task's exception with its traceback and sends its repr
    in the `task-failed` event Flower shows; an exception's text may hold a
    record's values. So every exception leaves a task as a `WriteCrashed` (its
    type and a fixed message) with no context. The execution functions have
    already ended what the attempt held `failed`, unless the trouble was
    reaching the store or Redis (`is_transient`), which the recovery sweeps retry.
    """
    if isinstance(exc, WriteCrashed):
        return exc
    crashed = WriteCrashed.of(exc)
    log.error("%s %s: task failed: %s at %s", kind, target_id, crashed.message, where(exc))
    return crashed


_settings = load_settings()
configure_logging(_settings)
app = create_celery(_settings)
