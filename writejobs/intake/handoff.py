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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from writejobs.errors import StoreUnavailable
from writejobs.execution.deps import ExecutionDeps
from writejobs.store import handoffs, operations_repo
from writejobs.store.tables import Operation

if TYPE_CHECKING:
    from writejobs.intake.write import Dispatch

log = logging.getLogger(__name__)

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


def hand_off(op: Operation, dispatch: Dispatch, deps: ExecutionDeps) -> None:
    """Send a committed operation's task, or buffer it for auto-batching; never raises.

    On failure the operation is marked for the hand-off sweep, with a log line
    saying why. Should the mark itself not commit (SQL went away too), the
    stalled and orphan sweeps still find the operation, later.
    """
    try:
        if op.shape == "auto_batch":
            dispatch.buffer_operation(op)
        else:
            dispatch.send(op)
        return
    except Exception as exc:
        reason = type(exc).__name__
    log.warning("operation %s: could not hand off (%s); the sweep will send it", op.id, reason)
    now = deps.clock()
    try:
        with deps.sessions() as session:
            handoffs.mark_failed(session, [op.id], now=now)
            operations_repo.add_log(
                session,
                op.id,
                "queue unavailable: the write is kept and will be sent when it answers",
                now=now,
                severity="WARNING",
                error=reason,
            )
            session.commit()
    except Exception:
        log.exception("operation %s: could not mark the failed hand-off", op.id)
