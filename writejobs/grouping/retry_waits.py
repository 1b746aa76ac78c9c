"""Waiting retries, kept in a Redis sorted set rather than as Celery ETA tasks.

A Celery ETA task on Redis sits in a worker's memory and is redelivered after
the visibility timeout, so a long wait is neither durable nor single. Here a
wait is a member `op:<id>` or `batch:<id>` scored by its due time; the
scheduler claims due members with ZREM (only the process whose ZREM removed
the member sends its task) and sends them to the queue. If a process dies
after its ZREM, SQL still says `retrying`, and the stalled sweep sends it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import redis

from writejobs.grouping.keys import Keys


class RetryQueue:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        send_operation: Callable[[str], None],
        send_batch: Callable[[str], None],
    ) -> None:
        self.redis = client
        self.key = keys.retry
        self._senders = {"op": send_operation, "batch": send_batch}

    def schedule(self, kind: str, target_id: str, at: datetime) -> None:
        """Wait until `at`, then send the task of operation or batch `target_id`."""
        assert kind in self._senders
        self.redis.zadd(self.key, {f"{kind}:{target_id}": at.timestamp()})

    def next_due_at(self) -> float | None:
        """When the earliest wait is due (epoch s), or None when nothing waits."""
        first = self.redis.zrange(self.key, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def release_due(self, now: datetime, *, limit: int = 1000) -> list[str]:
        """Send every wait that is due; return the members this process sent."""
        sent: list[str] = []
        for raw in self.redis.zrangebyscore(self.key, "-inf", now.timestamp(), start=0, num=limit):
            member = raw.decode() if isinstance(raw, bytes) else str(raw)
            if self.redis.zrem(self.key, member) != 1:
                continue  # another scheduler claimed it first
            kind, _, target_id = member.partition(":")
            self._senders[kind](target_id)
            sent.append(member)
        return sent
