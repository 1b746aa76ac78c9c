"""The scheduler process: ticks the auto-batcher until told to stop.

Run any number side by side (`writejobs scheduler`); claims are atomic in
Redis, so they share the work with no leader.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from scheduler.scheduler import Scheduler
from writejobs.clock import utcnow
from writejobs.runtime.wiring import wire
from writejobs.settings import Settings

log = logging.getLogger(__name__)


def run_scheduler(settings: Settings, stop: threading.Event | None = None) -> None:
    """Tick every `scheduler_interval_s`, or sooner when work falls due (see
    `Scheduler.pause_s`), until `stop` is set (or SIGTERM/SIGINT)."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():

        def _stop(_signum: int, _frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    if settings.policy_time_scale != 1:
        log.warning(
            "policy time scale is %s: policy durations are scaled", settings.policy_time_scale
        )
    scheduler = Scheduler(settings, wire(settings))
    log.info("scheduler started (interval %.2fs)", settings.scheduler_interval_s)
    while not stop.is_set():
        pause_s = settings.scheduler_interval_s
        try:
            report = scheduler.tick(utcnow())
            pause_s = scheduler.pause_s(report, utcnow())
            for claim in report.batches.flushed:
                log.info(
                    "flushed batch %s: %d records (%s)",
                    claim.batch_id,
                    len(claim.member_ids),
                    claim.reason,
                )
        except Exception:
            # Redis or the database is away for a moment: log and tick again.
            log.exception("scheduler tick failed")
        stop.wait(pause_s)
    log.info("scheduler stopped")
