"""When our own code raises during a write: end it `failed`, and say why without its text.

An unexpected exception in an attempt (a bug: a header value httpx cannot
encode, a result we misread) used to leave the operation `running`, so a sweep
sent it again every few minutes until its deadline, and for a synchronous write
after the client had been answered 500. Trying again cannot fix a bug, and we
cannot know what the provider did, so the operation ends `failed` at once.

The exception's str and repr never leave this module: they may hold a record's
values (a `UnicodeEncodeError` carries the whole string it could not encode).
What is kept is its type, a fixed message (`WriteCrashed`) and where it was
raised (file, line and function: code, not data).

Trouble reaching our own store or Redis is not a bug: an attempt that hits it
(`is_transient`) is left as it is, for the recovery sweeps, as a killed worker's is.
"""

from __future__ import annotations

import logging
import traceback
from datetime import datetime

import redis.exceptions
import sqlalchemy.exc
from sqlalchemy.orm import Session

from writejobs.core.operations import State
from writejobs.errors import WriteCrashed
from writejobs.store import operations_repo

log = logging.getLogger(__name__)

_TRANSIENT: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """Our store or Redis was unreachable for a moment: the recovery sweeps retry that."""
    return isinstance(exc, _TRANSIENT)


def where(exc: BaseException) -> str:
    """Where `exc` was raised, as `file:line in function` frames (never its message)."""
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    return " < ".join(
        f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} in {frame.name}"
        for frame in reversed(frames)
    )


def end_crashed(
    session: Session, operation_ids: list[str], exc: BaseException, *, now: datetime
) -> WriteCrashed:
    """End failed those of `operation_ids` that are still `running`, and commit.

    Returns the sanitized error for the caller to raise (`from None`) in place of `exc`.
    """
    crashed = WriteCrashed.of(exc)
    log.error("write of %s crashed: %s at %s", ",".join(operation_ids), crashed.message, where(exc))
    session.rollback()
    for operation_id in operation_ids:
        moved = operations_repo.transition(
            session,
            operation_id,
            State.FAILED,
            now=now,
            only_from=frozenset({State.RUNNING}),
            errors=[crashed.message],
            last_error=crashed.message,
            result_summary=f"Write failed: {crashed.message}",
            next_attempt_at=None,
        )
        if moved:
            operations_repo.add_log(
                session,
                operation_id,
                "write crashed: ended failed, not retried",
                now=now,
                severity="ERROR",
                error=crashed.message,
                details={"exception": crashed.exception_type, "where": where(exc)},
            )
    session.commit()
    return crashed
