"""Group commit: the operation rows of concurrent requests committed in one transaction.

Every accepted asynchronous write must be durable before the client hears its
id, and one commit per write was the intake's bottleneck: SQLite takes one
writer at a time, and each PostgreSQL commit is a round trip and a WAL flush.
So request threads hand their rows to one committer thread and wait; it writes
whatever arrived while the previous commit ran, in one transaction, and wakes
them. A request still returns only once its own rows are committed. On
PostgreSQL a group without idempotency keys is one statement under autocommit
(`bulk_insert.insert_rows_at_once`): one round trip from the committer.

If a group's transaction fails, its writes are committed one by one, so one
bad row fails only its own request. Each committer thread keeps its connection
from group to group (no pool checkout and pre-ping per commit) and gives it back
after a second with nothing to commit; a failed group gives it up, so a
connection the server dropped costs one retry, not a write.

A write may carry idempotency-key rows: they commit with their operation, and a
key already taken fails only its own write (with the `IntegrityError` its request
looks for).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from writejobs.store import idempotency_repo
from writejobs.store.bulk_insert import insert_rows, insert_rows_at_once
from writejobs.store.db import pinned_session, statements_alone
from writejobs.store.tables import Operation, OperationLog

log = logging.getLogger(__name__)

_OPERATIONS: Table = Operation.__table__  # type: ignore[assignment]
_LOGS: Table = OperationLog.__table__  # type: ignore[assignment]
# Enough to take every request thread's write at once (anyio's pool has 40).
MAX_GROUP = 256
# A committer thread that has had nothing to commit this long gives its connection back.
IDLE_UNPIN_S = 1.0


@dataclass(slots=True)
class _Ticket:
    operation: dict[str, Any]
    logs: list[dict[str, Any]]
    keys: Sequence[dict[str, Any]] = ()
    # What a thread in `commit` waits on; an asyncio caller awaits `committed` instead
    # (an Event is a lock and a condition: not made for every write on the loop).
    done: threading.Event | None = None
    error: BaseException | None = None
    # An asyncio caller's loop and the future it awaits, settled on that loop.
    loop: asyncio.AbstractEventLoop | None = None
    committed: asyncio.Future[None] | None = None

    def finish(self, error: BaseException | None = None) -> None:
        self.error = error
        if self.loop is not None and self.committed is not None:
            _call_on(self.loop, _settle, self.committed, error)
        if self.done is not None:
            self.done.set()


def _finish_committed(group: list[_Ticket]) -> None:
    """Tell a committed group's writers: one wakeup per event loop for all of its
    asyncio writers (each `call_soon_threadsafe` writes the loop's self-pipe, a
    syscall and a loop wakeup of its own), then the threads waiting in `commit`."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for ticket in group:
        if ticket.loop is not None and ticket.committed is not None:
            by_loop.setdefault(ticket.loop, []).append(ticket.committed)
        if ticket.done is not None:
            ticket.done.set()
    for loop, futures in by_loop.items():
        _call_on(loop, _settle_committed, futures)


def _call_on(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # its event loop is closed (shutdown): nobody waits for it
        log.debug("a committed write's event loop is gone")


class GroupCommitter:
    """Commits `(operation row, log rows)` writes for many threads, a group at a time.

    With `threads` > 1 (PostgreSQL), that many groups commit at once, each on its own
    connection: the next group is written while the last one waits for its commit,
    so a write waits for about one commit, not for the one ahead of it and then its
    own. SQLite takes one writer at a time, so it keeps one thread.
    The committer threads start on first use, so a process that forks after
    building one (a Celery prefork worker) never copies a running thread.
    """

    def __init__(
        self, sessions: sessionmaker[Session], *, threads: int = 1, idle_s: float = IDLE_UNPIN_S
    ) -> None:
        if threads < 1:
            raise ValueError(f"a group committer has at least one thread, not {threads}")
        self._sessions = sessions
        self._threads = threads
        self._idle_s = idle_s
        self._queue: queue.SimpleQueue[_Ticket] = queue.SimpleQueue()
        self._start_lock = threading.Lock()
        self._started = False
        self._count_lock = threading.Lock()
        self.groups_committed = 0

    def commit(
        self,
        operation: dict[str, Any],
        logs: list[dict[str, Any]],
        keys: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Insert the operation, its log rows and its idempotency keys; return once
        they are committed.

        Raises what the database raised when they could not be.
        """
        self._ensure_started()
        done = threading.Event()
        ticket = _Ticket(operation, logs, keys, done)
        self._queue.put(ticket)
        done.wait()
        if ticket.error is not None:
            raise ticket.error

    async def commit_async(
        self,
        operation: dict[str, Any],
        logs: list[dict[str, Any]],
        keys: Sequence[dict[str, Any]] = (),
    ) -> None:
        """`commit` for a coroutine: the event loop goes on serving other requests while
        the group commits, and no request thread is held waiting for it."""
        self._ensure_started()
        loop = asyncio.get_running_loop()
        committed: asyncio.Future[None] = loop.create_future()

        self._queue.put(_Ticket(operation, logs, keys, loop=loop, committed=committed))
        await committed

    def _ensure_started(self) -> None:
        if self._started:
            return
        with self._start_lock:
            if not self._started:
                for i in range(self._threads):
                    name = f"group-commit-{i}"
                    threading.Thread(target=self._run, name=name, daemon=True).start()
                self._started = True

    def _run(self) -> None:
        # One connection kept across groups: a pooled checkout per group costs the
        # pool's pre-ping, a round trip, on every commit. A group that fails drops it
        # (it may be the broken part), and its writes are retried one by one on fresh,
        # pinged connections; a new one is pinned for the next group. An idle
        # committer gives its connection back, so a quiet process holds none (and a
        # committer nobody uses any more, none for good).
        pinned = ExitStack()
        session: Session | None = None
        while True:
            try:
                first = self._queue.get(timeout=None if session is None else self._idle_s)
            except queue.Empty:
                _unpin(pinned)
                session = None
                continue
            group = [first]
            while len(group) < MAX_GROUP:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if session is None:
                session = _pin(pinned, self._sessions)
            if session is not None:
                committed = self._commit_group(group, session)
            else:  # the store cannot be reached now: this group tries on its own
                with self._sessions() as fresh:
                    committed = self._commit_group(group, fresh)
            if not committed and session is not None:
                _unpin(pinned)
                session = None

    def _commit_group(self, group: list[_Ticket], session: Session) -> bool:
        """Commit the group's writes; False if its transaction failed (each write has
        then been tried alone, and knows its fate)."""
        try:
            self._write(session, group)
        except Exception as exc:
            _roll_back(session)
            if len(group) == 1 and isinstance(exc, IntegrityError):  # the write itself
                group[0].finish(exc)
                return True
            # Otherwise even a group of one tries again: what failed may be the kept
            # connection (the server restarted, an idle timeout), not the write.
            log.warning(
                "group commit of %d writes failed (%s); committing them one by one",
                len(group),
                type(exc).__name__,
            )
            for ticket in group:
                try:
                    with self._sessions() as alone:
                        self._write(alone, [ticket])
                except Exception as one:
                    ticket.finish(one)
                    continue
                ticket.finish()
            return False
        with self._count_lock:
            self.groups_committed += 1
        _finish_committed(group)
        return True

    def _write(self, session: Session, group: list[_Ticket]) -> None:
        operations = [t.operation for t in group]
        logs = [row for t in group for row in t.logs]
        keys = sorted((row for t in group for row in t.keys), key=_key_of)
        if not keys:
            # The common group: its operations and their lines in one statement, which
            # on a pinned PostgreSQL connection is its own transaction (one round trip).
            with statements_alone(session):
                insert_rows_at_once(session, [(_OPERATIONS, operations), (_LOGS, logs)])
            return
        # Keys first: on PostgreSQL a key another transaction holds waits here,
        # before this group has written anything; in one order, so two API
        # processes' groups never wait on each other's keys crosswise.
        idempotency_repo.insert_keys(session, keys)
        insert_rows(session, _OPERATIONS, operations)
        insert_rows(session, _LOGS, logs)
        session.commit()


def _pin(pinned: ExitStack, sessions: sessionmaker[Session]) -> Session | None:
    try:
        return pinned.enter_context(pinned_session(sessions))
    except Exception:
        log.debug("group commit could not pin a connection", exc_info=True)
        return None


def _unpin(pinned: ExitStack) -> None:
    try:
        pinned.close()
    except Exception:
        log.debug("closing a failed group commit's connection failed", exc_info=True)


def _roll_back(session: Session) -> None:
    """End a failed group's transaction; a connection that broke may fail this too."""
    try:
        session.rollback()
    except Exception:
        log.debug("rollback after a failed group commit failed as well", exc_info=True)


def _key_of(row: dict[str, Any]) -> tuple[str, str]:
    return (row["project_id"], row["key"])


def _settle(committed: asyncio.Future[None], error: BaseException | None) -> None:
    if committed.cancelled():  # the request went away; its rows are committed all the same
        return
    if error is None:
        committed.set_result(None)
    else:
        committed.set_exception(error)


def _settle_committed(futures: list[asyncio.Future[None]]) -> None:
    for committed in futures:
        if not committed.cancelled():  # a request that went away: committed all the same
            committed.set_result(None)
