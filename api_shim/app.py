"""The API application: `create_app(settings)` builds it (the FastAPI app behind the fast lane)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool

from api_shim import (
    routes_bulk,
    routes_controls,
    routes_health,
    routes_metrics,
    routes_operations,
    routes_write,
)
from api_shim.console import routes as console
from api_shim.fast_lane import FastLane
from api_shim.problems import install_handlers
from api_shim.routes_metrics import metrics_registry
from api_shim.state import AppState
from writejobs.grouping.quota import IntakeQuota
from writejobs.runtime.wiring import Wiring, wire
from writejobs.settings import Settings, load_settings

# How long a stopping API waits for its last hand-offs (the sweeps take what is left).
SHUTDOWN_HAND_OFF_S = 5.0


def create_app(settings: Settings | None = None, *, wiring: Wiring | None = None) -> FastLane:
    """The write and operations API over the given settings (or the environment).

    What is served is the FastAPI app behind the write path's fast lane, which sits
    outside even Starlette's error middleware: that layer alone (a wrapped `send` per
    request) cost as much as the lane's own parsing. The lane catches what it raises
    and hands anything unusual to the app, so errors keep the app's shape.
    """
    settings = settings or load_settings()
    # A wiring handed in stays its caller's to close; one made here is closed at shutdown.
    owned = wiring is None
    wiring = wiring or wire(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        # Writes answered but not yet handed to Redis go now, not at the sweeps' next look.
        await run_in_threadpool(wiring.hand_offs.wait_idle, SHUTDOWN_HAND_OFF_S)
        if owned:
            wiring.close()

    # /docs with Swagger UI served from the package, not a CDN: installations without
    # internet access (and the browser tests) see the API's docs too.
    app = FastAPIOffline(
        title="writejobs",
        summary="Asynchronous write jobs to your customers' SaaS apps.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.writejobs = AppState(
        deps=wiring.deps,
        dispatch=wiring.dispatch,
        redis=wiring.redis,
        metrics=wiring.metrics,
        quota=IntakeQuota(
            wiring.redis,
            wiring.batcher.keys,
            rate_per_s=settings.intake_quota_rps,
            burst=settings.intake_quota_burst,
        ),
        committer=wiring.committer,
        hand_offs=wiring.hand_offs,
    )
    app.state.metrics_registry = metrics_registry(wiring, settings)
    install_handlers(app)
    app.include_router(routes_write.router)
    app.include_router(routes_bulk.router)
    app.include_router(routes_operations.router)
    app.include_router(routes_controls.router)
    app.include_router(routes_health.router)
    app.include_router(routes_metrics.router)
    console.install(app, settings)
    state: AppState = app.state.writejobs
    return FastLane(app, state=lambda: state)
