"""The Celery app of the worker: thin tasks that hand ids to the domain.

Run it with `writejobs worker` (or `celery -A worker.app worker`). Task
arguments are operation or batch ids only; Flower shows them, and it must never
show a customer's record.
"""

from __future__ import annotations

import logging
import time

from celery import Celery

from writejobs import task_names
from writejobs.execution.batch import run_batch
from writejobs.execution.run import run_operation
from writejobs.grouping.keys import Keys
from writejobs.runtime.celery_config import celery_config
from writejobs.runtime.log_config import configure_logging
from writejobs.runtime.wiring import wire
from writejobs.settings import Settings, load_settings

log = logging.getLogger(__name__)


def create_celery(settings: Settings) -> Celery:
    """The worker's Celery app, with its tasks bound to the given settings."""
    app = Celery("writejobs")
    app.conf.update(celery_config(settings))
    wiring = wire(settings)
    deps = wiring.deps
    client = wiring.redis
    keys = Keys(settings.redis_namespace)

    def note_batch_start(batch_id: str) -> None:
        # Time from the claim (the 100th append, or the due time) to the write starting.
        claimed_at = client.hget(keys.batch(batch_id), "claimed_at")
        if claimed_at is not None:
            delay_ms = round((time.time() - float(claimed_at)) * 1000)
            client.lpush(keys.samples("claim_to_start_ms"), delay_ms)
            client.ltrim(keys.samples("claim_to_start_ms"), 0, 999)

    @app.task(name=task_names.WRITE_OPERATION)  # type: ignore[untyped-decorator]
    def write_operation(operation_id: str) -> str | None:
        """Write one asynchronous operation (single record or explicit batch)."""
        state = run_operation(operation_id, deps)
        return state.value if state is not None else None

    @app.task(name=task_names.WRITE_BATCH)  # type: ignore[untyped-decorator]
    def write_batch(batch_id: str) -> dict[str, int]:
        """Write one flushed auto-batch; each member operation gets its own result."""
        return run_batch(batch_id, deps, on_start=note_batch_start)

    return app


configure_logging(load_settings())
app = create_celery(load_settings())
