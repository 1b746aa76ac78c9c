"""One scheduler pass: flush due auto-batches, and (less often) the recovery sweeps
and the purge of expired idempotency keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from writejobs.execution.webhooks import dispatch_due
from writejobs.grouping.autobatch import TickReport
from writejobs.grouping.recovery import expire_overdue, requeue_stalled, retry_handoffs
from writejobs.intake.idempotency import purge_expired
from writejobs.runtime.metrics_history import MinuteRecorder
from writejobs.runtime.wiring import Wiring
from writejobs.settings import Settings

# The sweeps read SQL; running them every tick would load the store for nothing.
SWEEP_EVERY_S = 1.0
# The shortest wait between passes, so that many accounts freeing slots at staggered
# moments cost at most 20 passes a second (each pass reads SQL), and work due "now"
# never spins.
MIN_PAUSE_S = 0.05


@dataclass(slots=True)
class SchedulerReport:
    batches: TickReport = field(default_factory=TickReport)
    retries_released: list[str] = field(default_factory=list)
    # Tasks the fair-share admission moved into Celery this pass.
    admitted: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    handed_off: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    keys_purged: int = 0
    # This scheduler took the minute's snapshot for the console's charts.
    history_recorded: bool = False
    webhooks_sent: list[int] = field(default_factory=list)
    # The soonest known moment a pass has work (a retry wait due, an installation's
    # rate limit freeing room for ready work), epoch s; None: not known.
    next_due_at: float | None = None


class Scheduler:
    """Drives the auto-batcher and the recovery sweeps; `tick(now)` does one pass."""

    def __init__(self, settings: Settings, wiring: Wiring) -> None:
        self.settings = settings
        self.wiring = wiring
        self._last_sweep_s = float("-inf")
        self._history = MinuteRecorder(wiring.redis, wiring.batcher.keys, settings.celery_queue)

    def tick(self, now: datetime) -> SchedulerReport:
        batcher = self.wiring.batcher
        report = SchedulerReport(batches=batcher.flush_due(now))
        report.retries_released = self.wiring.retries.release_due(now)
        # After the flushes and releases, so what they submitted may go in this pass.
        report.admitted = self.wiring.admission.admit(now)
        # Every pass: a notification is owed from the commit that ended its write.
        report.webhooks_sent = dispatch_due(
            self.wiring.deps.sessions,
            self.wiring.send_webhooks,
            now=now,
            hold_s=self.settings.webhook_resend_after_s,
        )
        if now.timestamp() - self._last_sweep_s >= SWEEP_EVERY_S:
            self._last_sweep_s = now.timestamp()
            report.handed_off = retry_handoffs(
                self.wiring.deps.sessions,
                self.wiring.dispatch.send_operation,
                batcher.send_batch,
                batcher.rebuffer,
                now=now,
            )
            report.batches.resent = batcher.resend_unsent(now)
            report.batches.rebuffered = batcher.rebuffer_orphans(now)
            report.requeued = requeue_stalled(
                self.wiring.deps.sessions,
                self.wiring.dispatch.send_operation,
                batcher.send_batch,
                now=now,
                stalled_after_s=self.settings.stalled_after_s,
                running_lease_s=self.settings.running_lease_s,
                waiting=self.wiring.admission.waiting,
            )
            report.expired = expire_overdue(
                self.wiring.deps.sessions, now=now, grace_s=self.settings.watchdog_grace_s
            )
            report.keys_purged = purge_expired(self.wiring.deps.sessions, now=now)
        report.history_recorded = self._history.tick(now)
        due = [self.wiring.admission.next_room_at, self.wiring.retries.next_due_at()]
        report.next_due_at = min((d for d in due if d is not None), default=None)
        return report

    def pause_s(self, report: SchedulerReport, now: datetime) -> float:
        """How long to wait before the next pass: the interval, or less when a retry or
        a rate limit's room falls due sooner (a slot freed mid-interval would otherwise
        stay unused for up to an interval, on every reuse of it)."""
        interval_s = self.settings.scheduler_interval_s
        if report.next_due_at is None:
            return interval_s
        return min(interval_s, max(report.next_due_at - now.timestamp(), MIN_PAUSE_S))
