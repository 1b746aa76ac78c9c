"""Running leases kept alive by a heartbeat, so a dead worker's work is taken over soon.

An operation a worker is on is `running` under a lease (`lease_expires_at`); once
the lease lapses, the recovery sweep sends its task again and another worker
may take it over. A lease long enough for the slowest attempt (a provider call
can take its whole timeout, more with an OAuth renewal) made a SIGKILLed
worker's operation wait that long. So the lease is short, and each worker
process renews the leases of the operations and batches it is running from a
heartbeat thread, every quarter lease: a live worker keeps its work through a
slow provider (or three failed renewals), a dead one lets it go within one lease.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from writejobs.clock import Clock
from writejobs.core.operations import State
from writejobs.store.tables import Operation

log = logging.getLogger(__name__)

_NO_SYNC = {"synchronize_session": False}


def renew_held(
    session: Session,
    operation_ids: list[str],
    batch_ids: list[str],
    *,
    now: Clock,
    lease_s: float,
) -> int:
    """Extend the leases of the running operations named, or in the batches named; commits."""
    if not operation_ids and not batch_ids:
        return 0
    at = now()
    # Rows another transaction holds are skipped, never waited for: a batch settling
    # its members locks them one by one, and a heartbeat waiting on one of those
    # while holding others would deadlock with it. Those rows are ending anyway.
    # (SQLite has no row locks; the clause is left out there.)
    held = (
        select(Operation.id)
        .where(
            Operation.state == State.RUNNING.value,
            or_(Operation.id.in_(operation_ids), Operation.batch_id.in_(batch_ids)),
        )
        .with_for_update(skip_locked=True)
    )
    statement = (
        update(Operation)
        .where(Operation.id.in_(held), Operation.state == State.RUNNING.value)
        .values(lease_expires_at=at + timedelta(seconds=lease_s))
    )
    renewed: int = session.execute(statement, execution_options=_NO_SYNC).rowcount  # type: ignore[attr-defined]
    session.commit()
    return renewed


class LeaseHeartbeat:
    """Renews, every `lease_s / 4`, the leases of what this process's tasks are running.

    The thread starts on first use in each process, so a Celery prefork child
    (forked after the app was built) runs its own.
    """

    def __init__(self, sessions: sessionmaker[Session], lease_s: float, clock: Clock) -> None:
        self._sessions = sessions
        self._lease_s = lease_s
        self._clock = clock
        self._lock = threading.Lock()
        self._operations: Counter[str] = Counter()
        self._batches: Counter[str] = Counter()
        self._thread_pid: int | None = None

    @contextmanager
    def holding(
        self, *, operation_id: str | None = None, batch_id: str | None = None
    ) -> Iterator[None]:
        """Keep the lease of `operation_id` (or of `batch_id`'s members) alive in the block.

        Renewing a lease this process does not hold is harmless: only `running`
        rows are touched, and a delivery that finds its work held elsewhere
        leaves the block at once.
        """
        self._ensure_started()
        with self._lock:
            if operation_id is not None:
                self._operations[operation_id] += 1
            if batch_id is not None:
                self._batches[batch_id] += 1
        try:
            yield
        finally:
            with self._lock:
                if operation_id is not None:
                    self._operations[operation_id] -= 1
                    self._operations += Counter()  # drops the zeros
                if batch_id is not None:
                    self._batches[batch_id] -= 1
                    self._batches += Counter()

    def beat(self) -> int:
        """Renew the held leases once; the number of operations renewed."""
        with self._lock:
            operation_ids, batch_ids = list(self._operations), list(self._batches)
        if not operation_ids and not batch_ids:
            return 0
        with self._sessions() as session:
            return renew_held(
                session, operation_ids, batch_ids, now=self._clock, lease_s=self._lease_s
            )

    def _ensure_started(self) -> None:
        pid = os.getpid()
        if self._thread_pid == pid:
            return
        with self._lock:
            if self._thread_pid != pid:
                # A forked child inherits the parent's counters but not its thread.
                self._operations.clear()
                self._batches.clear()
                thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)
                thread.start()
                self._thread_pid = pid

    def _run(self) -> None:
        stop = threading.Event()
        while not stop.wait(self._lease_s / 4):
            try:
                self.beat()
            except Exception:
                # The store is away for a moment: the lease has three more beats of margin.
                log.exception("lease heartbeat failed")
