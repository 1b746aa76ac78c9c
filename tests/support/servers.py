"""Run an ASGI app on loopback for the length of a `with` block.

`serve_in_thread` binds the socket itself before uvicorn starts, so the port is
known and reserved up front (no pick-a-free-port-then-race), and it returns only
once uvicorn accepts connections. On exit it asks uvicorn to stop, forces it if
connections linger, and fails loudly if the server thread will not end.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager

import uvicorn
from starlette.types import ASGIApp

STARTUP_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 10.0
_POLL_S = 0.01


@contextmanager
def serve_in_thread(app: ASGIApp, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `app` on a free port of `host` in a daemon thread; yield `http://host:port`.

    Raises `RuntimeError` when the server does not start (a failing lifespan
    startup, for one) within `STARTUP_TIMEOUT_S`, or does not stop within
    `SHUTDOWN_TIMEOUT_S` after the block.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with closing(socket.socket(family, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            # Uvicorn's own logging config would reconfigure the test process's loggers.
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="auto",
            # Bounds how long shutdown waits for requests still in flight.
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:  # handed to the test thread, not lost in this one
                failure.append(exc)

        thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
        thread.start()
        try:
            _wait_until_started(server, thread, failure)
            url_host = f"[{host}]" if family == socket.AF_INET6 else host
            yield f"http://{url_host}:{port}"
        finally:
            _stop(server, thread)


def _wait_until_started(
    server: uvicorn.Server, thread: threading.Thread, failure: list[BaseException]
) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive():
            # Uvicorn exits its thread via SystemExit when lifespan startup fails.
            cause = failure[0] if failure else None
            raise RuntimeError("the server thread ended before the server started") from cause
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start within {STARTUP_TIMEOUT_S} s")
        time.sleep(_POLL_S)


def _stop(server: uvicorn.Server, thread: threading.Thread) -> None:
    server.should_exit = True
    thread.join(SHUTDOWN_TIMEOUT_S / 2)
    if thread.is_alive():
        # Connections or requests are holding graceful shutdown open; stop waiting for them.
        server.force_exit = True
        thread.join(SHUTDOWN_TIMEOUT_S / 2)
    if thread.is_alive():
        raise RuntimeError(f"the server thread did not stop within {SHUTDOWN_TIMEOUT_S} s")
