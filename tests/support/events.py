"""Listening to the Celery task events a worker sends (what Flower shows)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery

from writejobs.runtime.celery_config import celery_config
from writejobs.settings import Settings


@contextmanager
def task_events(settings: Settings) -> Iterator[list[dict[str, Any]]]:
    """Every Celery event the workers of `settings` send meanwhile, as Flower gets them."""
    app = Celery("event-listener")
    app.conf.update(celery_config(settings))
    events: list[dict[str, Any]] = []
    stop = threading.Event()
    ready = threading.Event()

    def listen() -> None:
        with app.connection() as connection:
            receiver = app.events.Receiver(connection, handlers={"*": events.append})
            ready.set()
            while not stop.is_set():
                try:
                    receiver.capture(limit=None, timeout=0.5, wakeup=False)
                except TimeoutError:
                    continue
                except OSError:
                    continue

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    ready.wait(10)
    time.sleep(0.5)  # the receiver's subscription is in place
    try:
        yield events
    finally:
        stop.set()
        thread.join(5)
