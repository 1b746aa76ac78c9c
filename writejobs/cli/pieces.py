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


def serve_api(settings: Settings) -> None:
    """The HTTP API on uvicorn, until it is stopped."""
    import uvicorn

    from api_shim.app import create_app

    configure_logging(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


def run_scheduler(settings: Settings) -> None:
    """The auto-batch grouper and recovery sweeps, until SIGTERM or SIGINT."""
    from scheduler.main import run_scheduler as run

    configure_logging(settings)
    run(settings)


def serve_sandbox(settings: Settings) -> None:
    """The sandbox provider on 127.0.0.1."""
    import uvicorn

    from sandbox.app import create_app

    uvicorn.run(
        create_app(),
        host="127.0.0.1",
        port=settings.sandbox_port,
        log_level="warning",
        access_log=False,
    )


def exec_celery(*args: str) -> None:
    """Replace this process with Celery over the worker's app (`worker.app`)."""
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", "worker.app", *args])
