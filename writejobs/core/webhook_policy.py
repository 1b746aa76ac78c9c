"""When to try a webhook delivery again, and when to give up on a destination (pure).

A delivery is retried with exponential backoff and "equal" jitter (half the
wait fixed, half random, so waits keep growing and a burst of deliveries that
failed together spreads out) until its retry window has passed since the
event; the last attempt is at the window's end itself, so a receiver that
comes back within the window always gets the notification. A destination is
disabled after a run of failures (no success in between) of `disable_after_s`,
or of `disable_after_failures` attempts in a row when that is set.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_s: float = 5.0
    max_delay_s: float = 3600.0
    window_s: float = 86400.0


def next_delivery_at(
    attempts: int, created_at: datetime, now: datetime, policy: RetryPolicy, rng: random.Random
) -> datetime | None:
    """When to make attempt `attempts + 1`, after `attempts` failed; None past the window.

    The wait before it is uniform in [w/2, w] with w = min(max_delay, base * 2**(attempts-1)),
    cut to the window's end.
    """
    end = created_at + timedelta(seconds=policy.window_s)
    if now >= end:
        return None
    ceiling_s = min(policy.max_delay_s, policy.base_s * 2.0 ** (max(attempts, 1) - 1))
    at = now + timedelta(seconds=rng.uniform(ceiling_s / 2, ceiling_s))
    return min(at, end)


def should_disable(
    consecutive_failures: int,
    first_failure_at: datetime,
    now: datetime,
    *,
    disable_after_s: float,
    disable_after_failures: int,
) -> bool:
    """Whether a destination's run of failures is long enough to switch it off."""
    if disable_after_failures and consecutive_failures >= disable_after_failures:
        return True
    return (now - first_failure_at).total_seconds() >= disable_after_s
