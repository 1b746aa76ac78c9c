"""Cancelling an asynchronous operation: it ends `cancelled` (public status `failure`).

An operation that waits (`pending` in an auto-batch buffer, `queued`,
`retrying`, held by a paused installation) ends at once, by compare-and-set, so
no task that comes later can start it: the flush of its auto-batch skips it, and
its own task finds it finished. An operation that is `running` is not stopped
mid-call (the provider may be writing): the cancel is recorded, the attempt
finishes, and when it settles with records left to retry it ends `cancelled`
instead of retrying (`execution.settle`); an attempt that wrote everything ends
as it ended. Records never written are failed with "cancelled", so a replay
(`intake.replay`) can write them later.

A synchronous write cannot be cancelled: its one attempt belongs to its request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from writejobs.core.operations import State
from writejobs.errors import NotCancellable
from writejobs.store import operations_repo
from writejobs.store.tables import Operation

log = logging.getLogger(__name__)

CANCELLED = "cancelled"
WAITING: frozenset[State] = frozenset({State.PENDING, State.QUEUED, State.RETRYING})


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    """`cancelled`: it ended now; `requested`: it is running, and ends once its attempt settles."""

    outcome: str
    state: str


def cancel_operation(session: Session, op: Operation, *, now: datetime, by: str) -> CancelOutcome:
    """Cancel `op` (see the module's docstring); `by` says who asked, for the logs.

    Raises `NotCancellable` for an operation that has ended or is synchronous.
    Commits.
    """
    if op.mode == "synchronous":
        message = "a synchronous write runs in its request and cannot be cancelled"
        raise NotCancellable(op.id, message)
    if not operations_repo.request_cancel(session, op.id, now=now):
        session.rollback()
        raise NotCancellable(op.id, f"the operation has already ended ({op.state})")
    # The row is ours until commit: what we read now is what we move from.
    session.refresh(op)
    if State(op.state) in WAITING and end_cancelled(session, op, now=now, by=by):
        session.commit()
        log.info("operation %s: cancelled by %s", op.id, by)
        return CancelOutcome("cancelled", State.CANCELLED.value)
    operations_repo.add_log(
        session,
        op.id,
        "cancel requested: the running attempt finishes first",
        now=now,
        severity="WARNING",
        details={"by": by},
    )
    session.commit()
    return CancelOutcome("requested", op.state)


def end_cancelled(session: Session, op: Operation, *, now: datetime, by: str) -> bool:
    """End a waiting operation `cancelled` by compare-and-set; True if it moved.

    Its records not written are failed with "cancelled"; those written keep their
    results. The caller commits.
    """
    rows = cancelled_rows(list(op.results or [{"success": False}] * op.record_count))
    succeeded = sum(1 for row in rows if row["success"])
    failed = len(rows) - succeeded
    moved = operations_repo.transition(
        session,
        op.id,
        State.CANCELLED,
        now=now,
        only_from=WAITING,
        results=rows,
        success_count=succeeded,
        failure_count=failed,
        next_attempt_at=None,
        last_error=CANCELLED,
        errors=[CANCELLED],
        result_summary=summary(op, succeeded, failed),
    )
    if moved:
        if op.shape == "bulk":
            operations_repo.delete_payload(session, op.id)  # kept only while it may run
        operations_repo.add_log(
            session,
            op.id,
            f"write finished: {State.CANCELLED.value}",
            now=now,
            severity="WARNING",
            error=CANCELLED,
            details={"by": by, "was": op.state, "succeeded": succeeded, "failed": failed},
        )
    return moved


def cancelled_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-record results with every unfinished record (never answered, or failed
    retryably) failed with "cancelled"; written and permanently refused ones kept."""
    return [_cancelled(row) if _unfinished(row) else row for row in rows]


def _unfinished(row: dict[str, Any]) -> bool:
    return bool(row.get("retryable")) or (not row["success"] and row.get("error") is None)


def _cancelled(row: dict[str, Any]) -> dict[str, Any]:
    cancelled: dict[str, Any] = {"success": False, "error": CANCELLED}
    if row.get("error"):
        cancelled["lastError"] = row["error"]  # the provider's, before the cancel
    return cancelled


def summary(op: Operation, succeeded: int, failed: int) -> str:
    """The `result` of a cancelled operation."""
    if op.shape in ("single", "auto_batch"):
        return f"[{op.object_name}] Write cancelled"
    if op.shape == "bulk":
        return f"[{op.object_name}] Bulk upsert cancelled"
    return f"Batch write cancelled ({succeeded} succeeded, {failed} not written)"
