"""A parked system: the API on a queue no worker reads, so tests see exactly what was sent."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from api_shim.app import create_app
from tests.support.servers import serve_in_thread
from tests.support.system import Tenant, create_tenant
from writejobs.runtime.wiring import Wiring, wire
from writejobs.settings import Settings
from writejobs.store import operations_repo


@dataclass
class Parked:
    settings: Settings
    wiring: Wiring
    tenant: Tenant
    redis: redis.Redis

    def sent(self) -> list[tuple[str, list[Any]]]:
        """(task name, args) of every task waiting in this module's queue."""
        out = []
        for raw in self.redis.lrange(self.settings.celery_queue, 0, -1):
            message = json.loads(raw)
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            out.append((message["headers"]["task"], args))
        return out

    def write(
        self,
        record: dict[str, Any],
        *,
        delay_min: int = 1,
        type_: str = "create",
        object_name: str = "contacts",
        group_ref: str | None = None,
    ) -> str:
        with self.tenant.client() as client:
            response = client.post(
                self.tenant.write_path(object_name),
                json={
                    "groupRef": group_ref or self.tenant.group_ref,
                    "type": type_,
                    "mode": "asynchronous",
                    "autoBatchPolicy": {"maxDelayMinutes": delay_min},
                    "record": record,
                },
            )
        assert response.status_code == 200, response.text
        # The API answers once the row is committed and buffers it just after: wait for
        # that, so a test sees the buffer (and a flush the write caused) as it stands.
        assert self.wiring.hand_offs.wait_idle(10), "the hand-off thread is stuck"
        return str(response.json()["operationId"])

    def ops(self, ids: list[str]) -> list[Any]:
        with self.wiring.deps.sessions() as session:
            return [operations_repo.get_operation(session, i) for i in ids]


def parked_system(settings: Settings, sandbox_url: str) -> Iterator[Parked]:
    run = uuid.uuid4().hex[:8]
    own = settings.model_copy(
        update={
            "celery_queue": f"parked-{run}",
            "redis_namespace": f"wjab-{run}",
            # No worker reads the queue: the admission must not hold tasks back for its
            # length, or the tests would not see everything that was sent.
            "admission_queue_max": 1_000_000,
        }
    )
    wiring = wire(own)
    with serve_in_thread(create_app(own, wiring=wiring)) as api_url:
        tenant = create_tenant(own, api_url, sandbox_url)
        yield Parked(own, wiring, tenant, redis.Redis.from_url(own.effective_redis_url))
    wiring.redis.delete(own.celery_queue)
    # Each parked system has an engine of its own: left open, their idle connections
    # add up to PostgreSQL's max_connections over a run.
    wiring.close()
