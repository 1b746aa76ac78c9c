"""The worker's task events (what Flower shows) wait for a flush and go as one message."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.events.receiver import EventReceiver

from writejobs.runtime.task_events import TASK_EVENTS


class _Recording(EventReceiver):  # type: ignore[misc]
    """A receiver that keeps each message as it came (Flower splits a list the same way)."""

    messages: list[Any]

    def _receive(self, body: Any, message: Any, **kwargs: Any) -> None:
        self.messages.append(body)
        super()._receive(body, message)


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = Celery("task-events-test", broker=redis_url, events=TASK_EVENTS)
    yield app
    app.close()


def _listening(
    app: Celery, hostname: str
) -> tuple[list[Any], list[dict[str, Any]], threading.Event]:
    messages: list[Any] = []
    events: list[dict[str, Any]] = []
    stop, ready = threading.Event(), threading.Event()

    def mine(event: dict[str, Any]) -> None:
        if event.get("hostname") == hostname:
            events.append(event)

    def listen() -> None:
        with app.connection() as connection:
            receiver = _Recording(connection, handlers={"*": mine}, app=app)
            receiver.messages = messages
            ready.set()
            while not stop.is_set():
                try:
                    receiver.capture(limit=None, timeout=0.2, wakeup=False)
                except (TimeoutError, OSError):
                    continue

    threading.Thread(target=listen, daemon=True).start()
    ready.wait(10)
    time.sleep(0.5)  # subscribed
    return messages, events, stop


def test_task_events_wait_for_the_flush_and_go_together_as_one_message(app: Celery) -> None:
    hostname = f"events-{uuid.uuid4().hex[:8]}@test"
    messages, events, stop = _listening(app, hostname)
    try:
        with app.connection_for_write() as connection:
            # given the dispatcher a worker's event loop builds (it asks for a flush per event)
            asked: list[int] = []
            dispatcher = app.events.Dispatcher(
                connection,
                hostname=hostname,
                buffer_group=["task"],
                on_send_buffered=lambda: asked.append(1),
            )
            task_id = str(uuid.uuid4())
            # when a task's three events are sent
            for kind in ("task-received", "task-started", "task-succeeded"):
                dispatcher.send(kind, uuid=task_id)
            time.sleep(1.0)
            # then nothing went yet, and no flush was asked for
            assert events == [] and asked == []
            # when the flush comes
            dispatcher.flush()
            deadline = time.monotonic() + 10
            while len(events) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            # then the three went in order, in one message
            assert [e["type"] for e in events] == [
                "task-received",
                "task-started",
                "task-succeeded",
            ]
            assert all(e["uuid"] == task_id for e in events)
            ours = [
                m for m in messages if isinstance(m, list) and m and m[0]["hostname"] == hostname
            ]
            assert len(ours) == 1 and len(ours[0]) == 3
            # and a flush with nothing waiting sends nothing (Celery's sent an empty list);
            # other workers on the broker's database (another test session's) send meanwhile
            before = _ours_or_empty(messages, hostname)
            dispatcher.flush()
            time.sleep(0.5)
            assert _ours_or_empty(messages, hostname) == before
    finally:
        stop.set()


def _ours_or_empty(messages: list[Any], hostname: str) -> list[Any]:
    """The messages that `hostname` sent, and the empty ones (no one's)."""
    return [
        m
        for m in messages
        if m == []
        or (isinstance(m, list) and m[0].get("hostname") == hostname)
        or (isinstance(m, dict) and m.get("hostname") == hostname)
    ]


def test_worker_events_are_still_sent_at_once(app: Celery) -> None:
    hostname = f"events-{uuid.uuid4().hex[:8]}@test"
    _messages, events, stop = _listening(app, hostname)
    try:
        with app.connection_for_write() as connection:
            dispatcher = app.events.Dispatcher(connection, hostname=hostname, buffer_group=["task"])
            dispatcher.send("worker-heartbeat", freq=2.0)
            deadline = time.monotonic() + 10
            while not events and time.monotonic() < deadline:
                time.sleep(0.05)
            assert [e["type"] for e in events] == ["worker-heartbeat"]
    finally:
        stop.set()
