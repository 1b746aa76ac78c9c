"""Flow control: what a provider said of its rate limits, and the port that paces calls.

Providers throttle per account: HubSpot by a rolling 10-second window and a
daily cap, Salesforce by a 24-hour allowance, AvePoint Opus by 429s with a
`Retry-After`. Each adapter module reads its provider's answers into one
`RateLimitObservation` (pure, from headers and, for a refusal, the body); the
execution stage asks a `RateLimiter` before each provider call and hands it
every observation, so the whole fleet shares one view of each account's limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

# Which limit refused a call: the short rolling window (HubSpot's TEN_SECONDLY_ROLLING,
# an Opus 429), the day's allowance (HubSpot's DAILY, Salesforce's TotalRequests), or
# Salesforce's concurrent long-running requests.
Policy = Literal["rolling", "daily", "concurrent"]


@dataclass(frozen=True, slots=True)
class RateLimitObservation:
    """What one provider answer said about the account's limits; None where it said nothing.

    `max` calls are allowed per `interval_s` (HubSpot's `X-HubSpot-RateLimit-Max` and
    `-Interval-Milliseconds`), `remaining` of them are left in the current window;
    `daily_max` / `daily_remaining` are the day's allowance (HubSpot private apps,
    Salesforce's `Sforce-Limit-Info: api-usage=N/M`). `policy` is set only when the
    answer refused the call for a limit; `reset_after_s` is how long until that limit
    frees up, when the provider lets us know, and `retry_after_s` its `Retry-After`.
    """

    max: int | None = None
    remaining: int | None = None
    interval_s: float | None = None
    daily_max: int | None = None
    daily_remaining: int | None = None
    policy: Policy | None = None
    reset_after_s: float | None = None
    retry_after_s: float | None = None

    @property
    def refused(self) -> bool:
        """Whether the call was refused for a rate limit (429, or Salesforce's 403)."""
        return self.policy is not None


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `max` calls in any `interval_s` seconds."""

    max: int
    interval_s: float

    def __post_init__(self) -> None:
        if self.max < 1 or not self.interval_s > 0:
            raise ValueError(f"a rate limit needs max >= 1 and interval > 0, not {self}")

    @classmethod
    def from_column(cls, value: dict[str, Any] | None) -> RateLimit | None:
        """The installation's `rate_limit` column (`{"max": N, "interval_ms": M}`), or None.

        Raises `ValueError` for a value that is not such an object.
        """
        if value is None:
            return None
        try:
            return cls(int(value["max"]), float(value["interval_ms"]) / 1000)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"rate_limit must be {{max, interval_ms}}, not {value!r}") from exc

    def to_column(self) -> dict[str, Any]:
        return {"max": self.max, "interval_ms": round(self.interval_s * 1000)}


@dataclass(frozen=True, slots=True)
class Account:
    """One provider account whose calls share a limit: an installation, in practice.

    `provider` picks the default limit; `configured` is the installation's own
    (`writejobs admin set-rate-limit`), which replaces the default and caps what the
    provider's headers teach.
    """

    provider: str
    key: str
    configured: RateLimit | None = None


class RateLimiter(Protocol):
    """The port the execution stage paces provider calls through (fleet-wide)."""

    def acquire(self, account: Account, now: datetime, calls: int = 1) -> float:
        """Take the slots of an attempt's `calls` provider calls (one per chunk of a batch):
        0.0 means go now; otherwise seconds to wait, with nothing taken."""
        ...

    def learn(self, account: Account, observation: RateLimitObservation, now: datetime) -> None:
        """Fold what a provider answer said into the account's limit."""
        ...


class NoRateLimiter:
    """Paces nothing: for tests and tools that call providers without the fleet's Redis."""

    def acquire(self, account: Account, now: datetime, calls: int = 1) -> float:
        return 0.0

    def learn(self, account: Account, observation: RateLimitObservation, now: datetime) -> None:
        return None
