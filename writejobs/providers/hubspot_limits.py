"""What a HubSpot answer says of the account's rate limits (`read_rate_limit`).

HubSpot: https://developers.hubspot.com/docs/api/usage-details (the
`X-HubSpot-RateLimit-*` headers on every answer, and the 429 body's `policyName`).
"""

from __future__ import annotations

from datetime import datetime

import httpx

from writejobs.core.flow import Policy, RateLimitObservation
from writejobs.providers.http_common import header_int, parse_retry_after, read_json

MAX_HEADER = "X-HubSpot-RateLimit-Max"
REMAINING_HEADER = "X-HubSpot-RateLimit-Remaining"
INTERVAL_HEADER = "X-HubSpot-RateLimit-Interval-Milliseconds"
DAILY_HEADER = "X-HubSpot-RateLimit-Daily"
DAILY_REMAINING_HEADER = "X-HubSpot-RateLimit-Daily-Remaining"
_SECONDLY_HEADER = "X-HubSpot-RateLimit-Secondly"
_SECONDLY_REMAINING_HEADER = "X-HubSpot-RateLimit-Secondly-Remaining"
DAILY_POLICY = "DAILY"


def read_rate_limit(response: httpx.Response, now: datetime) -> RateLimitObservation | None:
    """What a HubSpot answer says of the account's limits; None when it says nothing.

    Every answer carries `X-HubSpot-RateLimit-Max` / `-Remaining` /
    `-Interval-Milliseconds` (and `-Daily` / `-Daily-Remaining` for private apps). A
    429 is HubSpot's `{status, message, errorType: "RATE_LIMIT", correlationId,
    policyName}`: `policyName` `DAILY` is the day's cap (it resets at midnight in the
    account's time zone, which the answer does not say, so no reset hint), anything
    else (`TEN_SECONDLY_ROLLING`) the rolling window, which is free again at most one
    interval later. HubSpot documents no `Retry-After`; one sent is kept (the limiter
    then pauses for it, not for a whole window).
    """
    limit = header_int(response, MAX_HEADER)
    remaining = header_int(response, REMAINING_HEADER)
    interval_ms = header_int(response, INTERVAL_HEADER)
    if limit is None and (secondly := header_int(response, _SECONDLY_HEADER)) is not None:
        limit, remaining, interval_ms = (
            secondly,
            header_int(response, _SECONDLY_REMAINING_HEADER),
            1000,
        )
    interval_s = interval_ms / 1000 if interval_ms else None
    policy: Policy | None = None
    reset_after_s: float | None = None
    retry_after_s: float | None = None
    if response.status_code == 429:
        body = read_json(response)
        name = body.get("policyName") if isinstance(body, dict) else None
        policy = "daily" if str(name).upper() == DAILY_POLICY else "rolling"
        reset_after_s = interval_s if policy == "rolling" else None
        retry_after_s = parse_retry_after(response.headers.get("Retry-After"), now=now)
    observation = RateLimitObservation(
        max=limit,
        remaining=remaining,
        interval_s=interval_s,
        daily_max=header_int(response, DAILY_HEADER),
        daily_remaining=header_int(response, DAILY_REMAINING_HEADER),
        policy=policy,
        reset_after_s=reset_after_s,
        retry_after_s=retry_after_s,
    )
    return None if observation == RateLimitObservation() else observation
