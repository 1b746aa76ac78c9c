"""Rate limits: make the sandbox throttle per bearer token the way the providers do.

`POST /_sandbox/limits` sets one provider's limit for one token (`"*"`: every
token without its own, each counted apart, as each installation is):

- HubSpot: at most `max` calls in any rolling `interval_ms`, and `daily` a day.
  Every answer carries `X-HubSpot-RateLimit-Max`, `-Remaining`,
  `-Interval-Milliseconds` (and `-Daily`, `-Daily-Remaining`, unless
  `daily_headers` is false, as for a public OAuth app); a refusal is a 429
  `{status, message, errorType: "RATE_LIMIT", correlationId, policyName}` whose
  `policyName` is `TEN_SECONDLY_ROLLING` or `DAILY`, with no `Retry-After`.
- Salesforce: `daily` calls in any rolling day; every answer under the REST root
  carries `Sforce-Limit-Info: api-usage=N/M`, and a call past the allowance is a
  403 `[{"message": "TotalRequests Limit exceeded.", "errorCode":
  "REQUEST_LIMIT_EXCEEDED"}]`. With `concurrent`, a call arriving while that many
  are in flight is refused the same way with `ConcurrentRequests` (Salesforce
  counts only calls of 20 s or more; the sandbox counts every call in flight).
- AvePoint Opus: `max` per `interval_ms` (Opus publishes none); a refusal is a 429
  with `Retry-After` (`retry_after_s`, or the seconds until a call is free again).

A refused call counts against nothing. `day_ms` shortens a day so tests can end
one; `daily_used` starts the day part spent. `GET /_sandbox/limits/stats` tells,
per provider and token (named by a hash, never the token), how many calls were
admitted and refused, and the most admitted in any window of `interval_ms`, so a
benchmark can check that a client never got more than the limit through; and how
soon a window's slot was used again (`mean_slot_reuse_s`), so it can tell how much
of the limit a backlog sustained.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Provider = Literal["hubspot", "salesforce", "opus"]
ANY_TOKEN = "*"
# Enough admissions to check a benchmark's windows without growing without bound.
MAX_KEPT_ADMISSIONS = 100_000
TEN_SECONDLY = "TEN_SECONDLY_ROLLING"
DAILY = "DAILY"
TOTAL_REQUESTS = "TotalRequests"
CONCURRENT_REQUESTS = "ConcurrentRequests"
RETRY_AFTER = "RETRY_AFTER"


class LimitConfig(BaseModel):
    """One provider's limit for one bearer token (`"*"`: each token without its own)."""

    provider: Provider
    token: str = Field(default=ANY_TOKEN, min_length=1)
    max: int | None = Field(default=None, ge=1)
    interval_ms: int = Field(default=10_000, ge=1)
    daily: int | None = Field(default=None, ge=1)
    daily_used: int = Field(default=0, ge=0)
    day_ms: int = Field(default=86_400_000, ge=1)
    daily_headers: bool = True
    concurrent: int | None = Field(default=None, ge=1)
    retry_after_s: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _fits_the_provider(self) -> LimitConfig:
        if self.provider == "salesforce":
            if self.max is not None:
                raise ValueError("Salesforce has no short window: give daily (and concurrent)")
            if self.daily is None and self.concurrent is None:
                raise ValueError("a Salesforce limit needs daily or concurrent")
        elif self.max is None and self.daily is None:
            raise ValueError(f"a {self.provider} limit needs max or daily")
        if self.concurrent is not None and self.provider != "salesforce":
            raise ValueError("concurrent is Salesforce's limit")
        return self


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call is refused: which limit, and how long until it frees (seconds)."""

    policy: str
    wait_s: float


@dataclass(slots=True)
class Bucket:
    """One token's counters at one provider. Read and written under `LimitPlan.lock`."""

    config: LimitConfig
    started_at: float
    window: deque[float] = field(default_factory=deque)
    # HubSpot's day starts with its first call; Salesforce's rolls, call by call.
    day_started_at: float | None = None
    day_count: int = 0
    day_calls: deque[float] = field(default_factory=deque)
    in_flight: int = 0
    admitted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    admitted_at: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_KEPT_ADMISSIONS))

    def __post_init__(self) -> None:
        if self.config.provider == "salesforce":
            self.day_calls.extend([self.started_at] * self.config.daily_used)
        else:
            self.day_count = self.config.daily_used
            self.day_started_at = self.started_at if self.config.daily_used else None

    def enter(self, now: float) -> Refusal | None:
        """Admit one call at `now`, or say which limit refuses it."""
        config = self.config
        interval_s = config.interval_ms / 1000
        while self.window and self.window[0] <= now - interval_s:
            self.window.popleft()
        refusal = self._day_refusal(now) or self._window_refusal(now, interval_s)
        if refusal is None and config.concurrent is not None:
            if self.in_flight >= config.concurrent:
                refusal = Refusal(CONCURRENT_REQUESTS, 1.0)
        if refusal is not None:
            self.refused[refusal.policy] += 1
            return refusal
        self.window.append(now)
        if config.provider == "salesforce":
            self.day_calls.append(now)
        self.day_count += 1
        self.in_flight += 1
        self.admitted += 1
        self.admitted_at.append(now)
        return None

    def _day_refusal(self, now: float) -> Refusal | None:
        config = self.config
        if config.daily is None:
            return None
        day_s = config.day_ms / 1000
        if config.provider == "salesforce":
            while self.day_calls and self.day_calls[0] <= now - day_s:
                self.day_calls.popleft()
            if len(self.day_calls) >= config.daily:
                return Refusal(TOTAL_REQUESTS, self.day_calls[0] + day_s - now)
            return None
        if self.day_started_at is None or now - self.day_started_at >= day_s:
            self.day_started_at, self.day_count = now, 0
        if self.day_count >= config.daily:
            return Refusal(DAILY, self.day_started_at + day_s - now)
        return None

    def _window_refusal(self, now: float, interval_s: float) -> Refusal | None:
        limit = self.config.max
        if limit is None or len(self.window) < limit:
            return None
        policy = RETRY_AFTER if self.config.provider == "opus" else TEN_SECONDLY
        return Refusal(policy, self.window[len(self.window) - limit] + interval_s - now)

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The limit headers of this token's answers, as they stand after the last call."""
        config = self.config
        found: list[tuple[str, str]] = []
        if config.provider == "hubspot":
            if config.max is not None:
                remaining = max(config.max - len(self.window), 0)
                found += [
                    ("X-HubSpot-RateLimit-Max", str(config.max)),
                    ("X-HubSpot-RateLimit-Remaining", str(remaining)),
                    ("X-HubSpot-RateLimit-Interval-Milliseconds", str(config.interval_ms)),
                ]
            if config.daily is not None and config.daily_headers:
                left = max(config.daily - self.day_count, 0)
                found += [
                    ("X-HubSpot-RateLimit-Daily", str(config.daily)),
                    ("X-HubSpot-RateLimit-Daily-Remaining", str(left)),
                ]
        elif config.provider == "salesforce" and config.daily is not None:
            found.append(("Sforce-Limit-Info", f"api-usage={len(self.day_calls)}/{config.daily}"))
        return [(k.lower().encode(), v.encode()) for k, v in found]

    def stats(self) -> dict[str, Any]:
        config = self.config
        interval_s = config.interval_ms / 1000
        times = list(self.admitted_at)
        return {
            "provider": config.provider,
            "max": config.max,
            "interval_ms": config.interval_ms,
            "daily": config.daily,
            "admitted": self.admitted,
            "refused": dict(self.refused),
            "in_flight": self.in_flight,
            "max_admitted_in_any_window": _most_in_any_window(times, interval_s),
            "admitted_per_window": _per_window(times, interval_s),
            "admitted_span_s": times[-1] - times[0] if times else 0.0,
            "mean_slot_reuse_s": _mean_slot_reuse(times, config.max),
        }


def _most_in_any_window(times: list[float], interval_s: float) -> int:
    """The most admissions in any half-open window of `interval_s` (times ascending)."""
    most, start = 0, 0
    for end, at in enumerate(times):
        while times[start] <= at - interval_s:
            start += 1
        most = max(most, end - start + 1)
    return most


def _mean_slot_reuse(times: list[float], limit: int | None) -> float | None:
    """The mean time between an admission and the one `limit` before it: how soon a
    window's slot was used again (the interval itself at best); None without a limit
    or with fewer admissions."""
    if limit is None or len(times) <= limit:
        return None
    gaps = [times[i] - times[i - limit] for i in range(limit, len(times))]
    return sum(gaps) / len(gaps)


def _per_window(times: list[float], interval_s: float) -> list[int]:
    """Admissions per consecutive window of `interval_s`, from the first admission."""
    if not times:
        return []
    counts = [0] * (math.floor((times[-1] - times[0]) / interval_s) + 1)
    for at in times:
        counts[math.floor((at - times[0]) / interval_s)] += 1
    return counts


def token_hash(token: str) -> str:
    """How the stats name a token: a hash, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass
class LimitPlan:
    """The limits in force and each token's counters; thread-safe."""

    clock: Callable[[], float] = time.monotonic
    configs: dict[tuple[str, str], LimitConfig] = field(default_factory=dict)
    buckets: dict[tuple[str, str], Bucket] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def configure(self, config: LimitConfig) -> None:
        """Set one (provider, token) limit; its tokens' counters start again."""
        with self.lock:
            self.configs[(config.provider, config.token)] = config
            for key in [k for k in self.buckets if k[0] == config.provider]:
                if config.token in (ANY_TOKEN, key[1]):
                    del self.buckets[key]

    def clear(self) -> None:
        with self.lock:
            self.configs.clear()
            self.buckets.clear()

    def enter(self, provider: str, token: str) -> tuple[Bucket | None, Refusal | None]:
        """Count one call of `token` (None: no limit applies to it)."""
        with self.lock:
            bucket = self.buckets.get((provider, token))
            if bucket is None:
                config = self.configs.get((provider, token)) or self.configs.get(
                    (provider, ANY_TOKEN)
                )
                if config is None:
                    return None, None
                bucket = Bucket(config, self.clock())
                self.buckets[(provider, token)] = bucket
            return bucket, bucket.enter(self.clock())

    def leave(self, bucket: Bucket) -> None:
        with self.lock:
            bucket.in_flight -= 1

    def headers(self, bucket: Bucket) -> list[tuple[bytes, bytes]]:
        with self.lock:
            return bucket.headers()

    def stats(self) -> dict[str, Any]:
        """The body of `GET /_sandbox/limits/stats`: `{provider:token_hash: counters}`."""
        with self.lock:
            return {
                f"{provider}:{token_hash(token)}": bucket.stats()
                for (provider, token), bucket in self.buckets.items()
            }


class LimitMiddleware:
    """Refuses provider calls over their token's limit, and adds the limit headers.

    `providers` maps a path prefix to the provider it serves
    (`/crm/v3/objects` → `hubspot`).
    """

    def __init__(self, app: ASGIApp, plan: LimitPlan, providers: dict[str, str]) -> None:
        self.app = app
        self.plan = plan
        self.providers = providers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        provider = self._provider(scope)
        token = _bearer(scope) if provider is not None else None
        if provider is None or token is None:
            await self.app(scope, receive, send)
            return
        bucket, refusal = self.plan.enter(provider, token)
        if bucket is None:
            await self.app(scope, receive, send)
            return
        if refusal is not None:
            await _drain(receive)
            await _refuse(send, provider, refusal, bucket, self.plan.headers(bucket))
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", [])) + self.plan.headers(bucket)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            self.plan.leave(bucket)

    def _provider(self, scope: Scope) -> str | None:
        if scope["type"] != "http":
            return None
        path: str = scope["path"]
        return next((p for prefix, p in self.providers.items() if path.startswith(prefix)), None)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() or None if scheme.lower() == "bearer" else None
    return None


async def _drain(receive: Receive) -> None:
    """Read the request as a provider would before answering it."""
    more_body = True
    while more_body:
        message = await receive()
        more_body = message.get("more_body", False) and message["type"] == "http.request"


async def _refuse(
    send: Send,
    provider: str,
    refusal: Refusal,
    bucket: Bucket,
    limit_headers: list[tuple[bytes, bytes]],
) -> None:
    status, body = _refusal_body(provider, refusal)
    headers = [(b"content-type", b"application/json"), *limit_headers]
    if provider == "opus":
        after = bucket.config.retry_after_s
        seconds = after if after is not None else max(math.ceil(refusal.wait_s), 1)
        headers.append((b"retry-after", f"{seconds:g}".encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def _refusal_body(provider: str, refusal: Refusal) -> tuple[int, Any]:
    if provider == "hubspot":
        which = "daily" if refusal.policy == DAILY else TEN_SECONDLY.lower()
        return 429, {
            "status": "error",
            "message": f"You have reached your {which} limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": str(uuid.uuid4()),
            "policyName": refusal.policy,
            "requestId": str(uuid.uuid4()),
        }
    if provider == "salesforce":
        message = (
            "TotalRequests Limit exceeded."
            if refusal.policy == TOTAL_REQUESTS
            else "ConcurrentRequests (Concurrent API Requests) Limit exceeded."
        )
        return 403, [{"message": message, "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    return 429, {"statusCode": 429, "message": "Too many requests: slow down and retry later."}
