"""Celery task events (what Flower shows) sent in batches, not on every turn of the loop.

A worker sends each task's `task-received`, `task-started` and `task-succeeded`
(or `task-failed`…) events. Celery gathers them, but sends what it gathered on
the next turn of its event loop, so a busy worker published almost every event
on its own: a blocking Redis PUBLISH in the loop that dispatches the next task,
two or three per task (with one write per task and a 50 ms provider, about a
fifth of the worker's main process time, and more on a loaded host).

Here the same events, with the same fields, are sent together as one
`task.multi` message (as Celery's own buffer sends them, and as every event
receiver, Flower's included, reads them) every `FLUSH_S`, or sooner when
`BUFFER_LIMIT` are waiting, and when the worker stops. So Flower learns of a
task's moves up to `FLUSH_S` later than it happened; worker events (online,
heartbeats, offline) are sent at once, as before. A worker killed with SIGKILL
loses the task events of its last `FLUSH_S`.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps
from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher

log = logging.getLogger(__name__)

# Seconds task events wait to be sent together; Flower shows a task's moves this late.
FLUSH_S = 0.5
# Task events that are sent at once, however soon (one message, tens of kB at most).
BUFFER_LIMIT = 200


class BatchedTaskEvents(EventDispatcher):  # type: ignore[misc]
    """Celery's event dispatcher, with its buffered task events left for `FlushTaskEvents`.

    Celery asks for a flush on the loop's next turn for every buffered event
    (`on_send_buffered`); that request is dropped, and a flush that finds nothing
    buffered publishes nothing (Celery's would publish an empty list).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["on_send_buffered"] = None
        kwargs.setdefault("buffer_limit", BUFFER_LIMIT)
        super().__init__(*args, **kwargs)

    def flush(self, errors: bool = True, groups: bool = True) -> None:
        waiting = any(self._group_buffer.values())
        super().flush(errors=errors, groups=groups and waiting)


class WorkerEvents(Events):  # type: ignore[misc]
    """`app.events` of the worker's app: its dispatcher batches task events."""

    dispatcher_cls = f"{__name__}:BatchedTaskEvents"


# `Celery(events=…)` of the worker's app.
TASK_EVENTS = f"{__name__}:WorkerEvents"


class FlushTaskEvents(bootsteps.StartStopStep):  # type: ignore[misc]
    """A consumer step that sends the gathered task events every `FLUSH_S`, on the
    worker's timer (in its event loop, as Celery's worker heartbeat is), and when
    the consumer stops."""

    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def start(self, c: Any) -> None:
        self.tref = c.timer.call_repeatedly(FLUSH_S, self._flush, (c,))

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            c.timer.cancel(self.tref)
            self.tref = None
        self._flush(c)

    shutdown = stop

    @staticmethod
    def _flush(c: Any) -> None:
        if c.event_dispatcher is not None:
            try:
                c.event_dispatcher.flush()
            except Exception as exc:  # a broker gone away: the events are Flower's, not ours
                log.warning("task events not sent (%s)", type(exc).__name__)
