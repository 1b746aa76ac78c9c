"""Fault injection: make the sandbox misbehave the way real providers do.

`POST /_sandbox/faults` sets rules, per endpoint (`"POST /crm/v3/objects/{objectType}/batch/create"`
or `"*"`): a probability per error status (429, 500, 502, 503), a probability
of starting a burst of 429s, a `Retry-After` to send with 429s and 503s, a
probability of hanging past the client's timeout, added latency, and records
to reject (any record whose `field` contains `contains`). `DELETE` clears them.
Decisions use a seeded RNG, so a run can be repeated.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send


class FaultRule(BaseModel):
    endpoint: str = "*"
    status_rates: dict[int, float] = Field(default_factory=dict)
    burst_429_probability: float = Field(default=0.0, ge=0, le=1)
    burst_length: int = Field(default=0, ge=0)
    retry_after_s: float | None = Field(default=None, ge=0)
    timeout_probability: float = Field(default=0.0, ge=0, le=1)
    hang_s: float = Field(default=60.0, ge=0)
    latency_ms: float = Field(default=0.0, ge=0)
    reject_field: str | None = None
    reject_contains: str | None = None
    # Records whose field contains the marker fail retryably (a lock, a throttle)
    # the first `transient_times` times the provider sees them, then go through.
    transient_field: str | None = None
    transient_contains: str | None = None
    transient_times: int = Field(default=1, ge=0)


class FaultConfig(BaseModel):
    rules: list[FaultRule] = Field(default_factory=list)
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    latency_s: float = 0.0
    hang_s: float | None = None
    status: int | None = None
    retry_after_s: float | None = None


@dataclass
class FaultPlan:
    """The rules in force and the RNG that rolls them; thread-safe."""

    rules: list[FaultRule] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)
    bursts_left: dict[str, int] = field(default_factory=dict)
    injected: dict[str, int] = field(default_factory=dict)
    transient_seen: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def configure(self, config: FaultConfig) -> None:
        with self.lock:
            self.rules = list(config.rules)
            self.rng = random.Random(config.seed)
            self.bursts_left.clear()
            self.transient_seen.clear()
            self.injected.clear()

    def clear(self) -> None:
        self.configure(FaultConfig())

    def decide(self, method: str, path: str) -> Decision:
        """Roll the dice for one provider call."""
        with self.lock:
            for rule in self.rules:
                if not _matches(rule.endpoint, method, path):
                    continue
                latency_s = rule.latency_ms / 1000
                key = rule.endpoint
                if self.bursts_left.get(key, 0) > 0:
                    self.bursts_left[key] -= 1
                    return self._count(Decision(latency_s, None, 429, rule.retry_after_s))
                if rule.burst_length and self.rng.random() < rule.burst_429_probability:
                    self.bursts_left[key] = rule.burst_length - 1
                    return self._count(Decision(latency_s, None, 429, rule.retry_after_s))
                if self.rng.random() < rule.timeout_probability:
                    return self._count(Decision(latency_s, rule.hang_s, 504, None))
                roll = self.rng.random()
                for status, rate in sorted(rule.status_rates.items()):
                    if roll < rate:
                        retry_after = rule.retry_after_s if status in (429, 503) else None
                        return self._count(Decision(latency_s, None, status, retry_after))
                    roll -= rate
                return Decision(latency_s)
            return Decision()

    def reject_reason(self, record: dict[str, Any]) -> str | None:
        """Why a rule rejects this record (its field contains the marker), or None."""
        with self.lock:
            rules = [r for r in self.rules if r.reject_field and r.reject_contains]
        for rule in rules:
            value = record.get(rule.reject_field or "")
            if isinstance(value, str) and rule.reject_contains and rule.reject_contains in value:
                return f"{rule.reject_field} value {value!r} is rejected by a sandbox fault rule"
        return None

    def transient_reason(self, record: dict[str, Any]) -> str | None:
        """Why this record fails retryably this time (a marked record, seen too few times)."""
        with self.lock:
            for rule in self.rules:
                if not (rule.transient_field and rule.transient_contains):
                    continue
                value = record.get(rule.transient_field)
                if not (isinstance(value, str) and rule.transient_contains in value):
                    continue
                seen = self.transient_seen.get(value, 0)
                if seen < rule.transient_times:
                    self.transient_seen[value] = seen + 1
                    self.injected["transient_record"] = self.injected.get("transient_record", 0) + 1
                    return "unable to obtain exclusive access to this record (sandbox fault rule)"
        return None

    def _count(self, decision: Decision) -> Decision:
        name = "timeout" if decision.hang_s is not None else str(decision.status)
        self.injected[name] = self.injected.get(name, 0) + 1
        return decision


def _matches(endpoint: str, method: str, path: str) -> bool:
    if endpoint == "*":
        return True
    want_method, _, template = endpoint.partition(" ")
    if want_method.upper() != method.upper():
        return False
    pattern = re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template))
    return re.fullmatch(pattern, path) is not None


class FaultMiddleware:
    """Answers provider calls with the planned fault before they reach the provider."""

    def __init__(self, app: ASGIApp, plan: FaultPlan) -> None:
        self.app = app
        self.plan = plan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sandbox"):
            await self.app(scope, receive, send)
            return
        decision = self.plan.decide(scope["method"], scope["path"])
        if decision.latency_s:
            await asyncio.sleep(decision.latency_s)
        if decision.hang_s is not None:
            await asyncio.sleep(decision.hang_s)
        if decision.status is None:
            await self.app(scope, receive, send)
            return
        # Read the request as a provider would (and so the request log sees its records).
        more_body = True
        while more_body:
            message = await receive()
            more_body = message.get("more_body", False) and message["type"] == "http.request"
        headers = [(b"content-type", b"application/json")]
        if decision.retry_after_s is not None:
            headers.append((b"retry-after", f"{decision.retry_after_s:g}".encode()))
        text = f"injected fault: HTTP {decision.status}"
        body = json.dumps({"status": "error", "category": "SANDBOX_FAULT", "message": text})
        body_bytes = body.encode()
        await send({"type": "http.response.start", "status": decision.status, "headers": headers})
        await send({"type": "http.response.body", "body": body_bytes})
