"""What the benchmarks share: the Redis a run uses."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from writejobs.cli.embedded_redis import EmbeddedRedis


@contextmanager
def bench_redis(data_dir: Path) -> Iterator[str]:
    """`WRITEJOBS_REDIS_URL`, or an embedded Redis under `data_dir` for the run's length."""
    configured = os.environ.get("WRITEJOBS_REDIS_URL")
    if configured:
        yield configured
        return
    server = EmbeddedRedis(data_dir / "redis", data_dir / "redis.sock")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
