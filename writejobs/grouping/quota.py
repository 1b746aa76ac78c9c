"""Intake quotas: how many write requests per second a project may send (off by default).

A token bucket per project in Redis (`intake_quota.lua`, one atomic step), so the
quota holds across every API process: `rate` requests per second, with bursts of
up to `burst`. A request past it is refused before its body is read, with
`RateLimited` (429 problem+json, `Retry-After`). This protects the fleet's intake
from one project's flood; the providers' own limits are the limiter's business
(`grouping/limiter.py`). When Redis fails the request is let through: a quota is
protection, not a reason to refuse work.

    {ns}:quota:{project}   hash  tokens left, and when they were counted (epoch s)
"""

from __future__ import annotations

import logging
from datetime import datetime
from importlib import resources

import redis

from writejobs.errors import RateLimited
from writejobs.grouping.keys import Keys

log = logging.getLogger(__name__)

QUOTA_SCRIPT = resources.files(__package__).joinpath("intake_quota.lua").read_text()


class IntakeQuota:
    """Per-project request quota over the fleet's Redis; `rate_per_s` 0 turns it off."""

    def __init__(
        self, client: redis.Redis, keys: Keys, *, rate_per_s: float, burst: int = 0
    ) -> None:
        if rate_per_s < 0 or burst < 0:
            raise ValueError("an intake quota needs a rate and burst of at least 0")
        self.keys = keys
        self.rate_per_s = rate_per_s
        # A burst below one request would refuse everything.
        self.burst = max(burst, 1) if burst else max(1, round(rate_per_s))
        self._take = client.register_script(QUOTA_SCRIPT)

    @property
    def enabled(self) -> bool:
        return self.rate_per_s > 0

    def check(self, project_id: str, now: datetime) -> None:
        """Take one request of the project's quota; `RateLimited` when it is spent."""
        if not self.enabled:
            return
        key = f"{self.keys.namespace}:quota:{project_id}"
        try:
            granted, wait = self._take(
                keys=[key], args=[repr(now.timestamp()), repr(self.rate_per_s), self.burst]
            )
        except redis.RedisError as exc:
            log.warning("intake quota unavailable (%s): request let through", type(exc).__name__)
            return
        if int(granted) != 1:
            raise RateLimited(
                f"the project's intake quota ({self.rate_per_s:g} requests per second, "
                f"bursts of {self.burst}) is spent",
                retry_after_s=float(wait),
                subsystem="api",
            )
