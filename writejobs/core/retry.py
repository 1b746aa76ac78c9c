"""Retry policy: when to try again, as a pure function of the attempt and the clock.

Exponential backoff with full jitter (AWS's "Exponential Backoff and Jitter"),
capped; never earlier than a `Retry-After` the provider sent; never past the
operation's deadline, and a last attempt at the deadline itself rather than
giving up before it.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

BASE_DELAY_S = 1.0
MAX_DELAY_S = 300.0


def next_attempt_at(
    failures: int,
    now: datetime,
    deadline: datetime,
    retry_after_s: float | None,
    rng: random.Random,
    *,
    base_s: float = BASE_DELAY_S,
    cap_s: float = MAX_DELAY_S,
) -> datetime | None:
    """When to make the next attempt, or None when no attempt can be made in time.

    `failures` counts the failed attempts that were not told to wait by a
    `Retry-After` (those do not grow the backoff); it is at least 1 after a
    failure. The wait is uniform in [0, min(cap, base * 2**(failures-1))], then
    raised to `retry_after_s`; a wait past the deadline is cut to the deadline,
    unless the provider asked us to wait past it.
    """
    if now >= deadline:
        return None
    exponent = max(failures, 1) - 1
    ceiling_s = min(cap_s, base_s * 2.0**exponent)
    delay_s = rng.uniform(0.0, ceiling_s)
    if retry_after_s is not None:
        delay_s = max(delay_s, retry_after_s)
    at = now + timedelta(seconds=delay_s)
    if at <= deadline:
        return at
    if retry_after_s is not None and now + timedelta(seconds=retry_after_s) > deadline:
        return None
    return deadline
