"""`GET /metrics`: the whole fleet's metrics in Prometheus' text format.

Every process records into Redis (`writejobs.runtime.metrics`), so scraping any one API
process gives fleet-wide figures; scrape one, not all, or the sums double.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool

from writejobs.runtime.metrics import FleetCollector
from writejobs.runtime.wiring import Wiring
from writejobs.settings import Settings

router = APIRouter(tags=["Health"])


def metrics_registry(wiring: Wiring, settings: Settings) -> CollectorRegistry:
    """A registry of this API's own holding only the fleet collector (no process metrics:
    they would describe this one process, not the fleet)."""
    registry = CollectorRegistry(auto_describe=False)
    collector = FleetCollector(
        wiring.redis,
        wiring.batcher.keys,
        wiring.deps.sessions,
        wiring.retries.key,
        local=wiring.metrics,
        queues=(settings.celery_queue,),
        limiter=wiring.limiter,
        admission=wiring.admission,
    )
    registry.register(collector)
    return registry


def get_registry(request: Request) -> CollectorRegistry:
    registry: CollectorRegistry = request.app.state.metrics_registry
    return registry


@router.get("/metrics", include_in_schema=False)
async def metrics(registry: Annotated[CollectorRegistry, Depends(get_registry)]) -> Response:
    body = await run_in_threadpool(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
