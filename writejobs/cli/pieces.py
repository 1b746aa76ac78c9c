"""The one place the command reaches into the edges: how each piece is started.

`writejobs up` and the single-piece commands (`writejobs api`, `worker`, …) run
the pieces through these functions, so the rest of `writejobs.cli` never
imports `api_shim`, `scheduler`, `worker` or `sandbox` (the import-linter map in
pyproject.toml lets only this package do so).
"""

from __future__ import annotations

import os
import sys

from writejobs.runtime.log_config import configure_logging
from writejobs.settings import Settings


def serve_api(settings: Settings, workers: int = 1) -> None:
    """The HTTP API on uvicorn, until it is stopped; `workers` > 1 forks that many
    processes on one port (each wires itself from the environment's settings)."""
    import uvicorn

    from api_shim.app import create_app

    configure_logging(settings)
    host, port, level = settings.api_host, settings.api_port, settings.log_level.lower()
    if workers > 1:
        uvicorn.run(
            "api_shim.app:create_app",
            factory=True,
            workers=workers,
            host=host,
            port=port,
            log_level=level,
            access_log=False,
        )
    else:
        uvicorn.run(create_app(settings), host=host, port=port, log_level=level, access_log=False)


def run_scheduler(settings: Settings) -> None:
    """The auto-batch grouper and recovery sweeps, until SIGTERM or SIGINT."""
    from scheduler.main import run_scheduler as run

    configure_logging(settings)
    run(settings)


def serve_sandbox(settings: Settings) -> None:
    """The sandbox provider on `sandbox_host` (loopback unless set)."""
    import uvicorn

    from sandbox.app import create_app

    uvicorn.run(
        create_app(),
        host=settings.sandbox_host,
        port=settings.sandbox_port,
        log_level="warning",
        access_log=False,
    )


def exec_celery(*args: str) -> None:
    """Replace this process with Celery over the worker's app (`worker.app`)."""
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", "worker.app", *args])
