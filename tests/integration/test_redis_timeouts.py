"""A broker that accepts connections but never answers fails a task send instead of
hanging the request that sends it (kombu's default is to wait forever; redis-py's own
client already defaults to a 5 s timeout, which `redis_socket_timeout_s` now sets).

The silent server is a listening socket that never reads (the kernel completes the
TCP handshake for it), like a Redis host that froze or a half-open connection.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import redis
from kombu.exceptions import OperationalError as KombuOperationalError

from writejobs import task_names
from writejobs.runtime.wiring import wire
from writejobs.settings import Settings


@pytest.fixture()
def silent_redis_url() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


@pytest.fixture()
def silent(settings: Settings, silent_redis_url: str) -> Settings:
    return settings.model_copy(
        update={"redis_url": silent_redis_url, "redis_socket_timeout_s": 0.3}
    )


@pytest.mark.timeout(60)
def test_sending_a_task_to_a_silent_broker_fails_instead_of_hanging(silent: Settings) -> None:
    wiring = wire(silent)
    try:
        with pytest.raises((KombuOperationalError, redis.RedisError, OSError)):
            wiring.sender.send_task(task_names.WRITE_OPERATION, args=["an-operation-id"])
    finally:
        wiring.close()
