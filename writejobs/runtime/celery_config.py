"""The Celery configuration every process shares, and the sender the API uses.

Late acks, reject on worker lost and prefetch 1: a worker killed mid-write gets
its task redelivered, and the operation state machine makes that safe. JSON
only, and task arguments are ids only, so Flower never shows a customer's data.
"""

from __future__ import annotations

from celery import Celery

from writejobs.settings import Settings


def celery_config(settings: Settings) -> dict[str, object]:
    return {
        "broker_url": settings.broker_url,
        "task_default_queue": settings.celery_queue,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "worker_send_task_events": True,
        # Flower learns of a task when a worker receives it. A `task-sent` event
        # from the API as well was a second Redis publish on every accepted write
        # (~12% of an asynchronous intake's time, measured with py-spy).
        "task_send_sent_event": False,
        # A broker that goes away and comes back (a Redis restart) is waited for,
        # however long it takes: at start, after a lost connection (Celery's default
        # gives up after 100 tries and the worker exits), and on channel errors.
        "broker_connection_retry_on_startup": True,
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        "broker_channel_error_retry": True,
        # A task running when the connection drops finishes; its message comes back
        # (late acks) and the state machine makes the second delivery a no-op. Said
        # explicitly: Celery warns on every reconnect while it is left to default.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": False,
        "broker_transport_options": {
            # Long waits never ride on ETA tasks (see DESIGN.md), so an hour is
            # only the redelivery delay for a task whose worker died silently.
            "visibility_timeout": 3600,
            # A broker that stops answering fails a publish instead of hanging the
            # request (kombu's BRPOP waits 1 s at a time, well inside this).
            "socket_timeout": settings.redis_socket_timeout_s,
            "socket_connect_timeout": settings.redis_connect_timeout_s,
        },
    }


def create_sender(settings: Settings) -> Celery:
    """A Celery app with no tasks of its own: it only sends tasks by name."""
    app = Celery("writejobs-sender")
    app.conf.update(celery_config(settings))
    return app
