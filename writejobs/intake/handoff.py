"""Recording an accepted write, then handing it to Redis: one path for every intake.

SQL is the source of truth, so the answer a client hears follows the commit:

* the row could not be committed (the store is down or locked): nothing was
  accepted, and `StoreUnavailable` becomes a 503 the client may send again;
* the row is committed but Redis could not take the task or the buffer append
  (a Redis restart): the write *is* accepted and answered 200. The operation
  stays `queued` (or `pending`) marked `handoff_failed_at`, and the scheduler's
  hand-off sweep (`writejobs.grouping.recovery.retry_handoffs`) sends it as
  soon as Redis answers again. Failing it instead, as the intake once did,
  threw away a write SQL had already taken.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from writejobs.core.operations import Routed
from writejobs.errors import StoreUnavailable
from writejobs.execution.deps import ExecutionDeps
from writejobs.store import handoffs, operations_repo

if TYPE_CHECKING:
    from writejobs.intake.write import Dispatch

log = logging.getLogger(__name__)

# At most this many operations in one hand-off round trip.
MAX_HAND_OFFS = 500

# What a database that cannot be reached (or is locked) raises; a bad row is a bug, not this.
STORE_DOWN = (OperationalError, InterfaceError, PoolTimeout)


@contextmanager
def recording() -> Iterator[None]:
    """Around the steps before and including the operation's commit: a store that
    cannot take the row raises `StoreUnavailable` (503) instead of a 500."""
    try:
        yield
    except STORE_DOWN as exc:
        log.warning("the store could not record a write: %s", type(exc).__name__)
        raise StoreUnavailable(
            f"the store could not record the write: {type(exc).__name__}"
        ) from exc


def hand_off(op: Routed, dispatch: Dispatch, deps: ExecutionDeps) -> None:
    """Send a committed operation's task, or buffer it for auto-batching; never raises.

    On failure the operation is marked for the hand-off sweep, with a log line
    saying why. Should the mark itself not commit (SQL went away too), the
    stalled and orphan sweeps still find the operation, later.
    """
    hand_off_many([op], dispatch, deps)


def hand_off_many(ops: Sequence[Routed], dispatch: Dispatch, deps: ExecutionDeps) -> None:
    """`hand_off` for many committed operations: the auto-batched ones are buffered in
    one round trip to Redis (`Dispatch.buffer_operations`), the others sent one by one."""
    buffered = [op for op in ops if op.shape == "auto_batch"]
    if buffered:
        try:
            dispatch.buffer_operations(buffered)
        except Exception as exc:
            _mark_failed(buffered, type(exc).__name__, deps)
    for op in ops:
        if op.shape == "auto_batch":
            continue
        try:
            dispatch.send(op)
        except Exception as exc:
            _mark_failed([op], type(exc).__name__, deps)


def _mark_failed(ops: Sequence[Routed], reason: str, deps: ExecutionDeps) -> None:
    ids = [op.id for op in ops]
    for op_id in ids:
        log.warning("operation %s: could not hand off (%s); the sweep will send it", op_id, reason)
    now = deps.clock()
    try:
        with deps.sessions() as session:
            handoffs.mark_failed(session, ids, now=now)
            for op_id in ids:
                operations_repo.add_log(
                    session,
                    op_id,
                    "queue unavailable: the write is kept and will be sent when it answers",
                    now=now,
                    severity="WARNING",
                    error=reason,
                )
            session.commit()
    except Exception:
        log.exception("operations %s: could not mark the failed hand-off", ", ".join(ids))


class HandOffs:
    """Hands committed operations to Redis from one thread, as many at a time as have
    been committed meanwhile, the way group commit pools their rows.

    The API answers a write once its row is committed, before its hand-off: an
    operation whose hand-off never happened (the process died) is still `pending` or
    `queued` in SQL, where the orphan and stalled sweeps find it.
    The thread starts on first use, so a process that forks after building one
    never copies a running thread.
    """

    def __init__(self, dispatch: Dispatch, deps: ExecutionDeps) -> None:
        self._dispatch = dispatch
        self._deps = deps
        self._queue: queue.SimpleQueue[Routed] = queue.SimpleQueue()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._unfinished = 0
        self._finished = threading.Condition()

    def put(self, op: Routed) -> None:
        """Hand `op` off soon, in this process's hand-off thread."""
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="hand-off", daemon=True)
                    self._thread.start()
        with self._finished:
            self._unfinished += 1
        self._queue.put(op)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every operation put so far is handed off (shutdown, tests)."""
        with self._finished:
            return self._finished.wait_for(lambda: self._unfinished == 0, timeout_s)

    def _run(self) -> None:
        while True:
            ops = [self._queue.get()]
            while len(ops) < MAX_HAND_OFFS:
                try:
                    ops.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                hand_off_many(ops, self._dispatch, self._deps)
            except Exception:  # hand_off_many never raises; this thread must not die
                log.exception("hand-off of %d operations failed", len(ops))
            with self._finished:
                self._unfinished -= len(ops)
                self._finished.notify_all()
