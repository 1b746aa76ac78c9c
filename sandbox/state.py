"""The sandbox's memory: stored records and the counters tests read back.

One `SandboxState` is shared by every provider router of an app. Uvicorn runs
sync endpoints in a thread pool, so every read and write of the state happens
under `lock`; provider routers take it for the whole of one request so that a
batch is stored, or refused, as one step.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sandbox.faults import FaultPlan
from sandbox.limits import LimitPlan

# Enough to look at a benchmark's recent traffic without growing without bound.
MAX_LOGGED_REQUESTS = 10_000


def iso_now() -> str:
    """The current UTC time the way HubSpot writes it: `2024-05-01T12:00:00.123Z`."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class StoredRecord:
    """One record as a provider keeps it."""

    id: str
    properties: dict[str, Any]
    created_at: str
    updated_at: str


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """What the request log keeps of one call: ids and counts, never record bodies.

    `keys` are short hashes of the records' identifying values (email, rowKey),
    so a test can follow one record across attempts without the log holding it.
    """

    at: str
    method: str
    path: str
    status: int
    inputs: int
    keys: tuple[str, ...] = ()
    retry_after: str | None = None


@dataclass(slots=True)
class SandboxState:
    """Records per (provider, object) and what tests assert on: calls, sizes, duplicates."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    records: dict[tuple[str, str], dict[str, StoredRecord]] = field(default_factory=dict)
    # Values a provider looks records up by (HubSpot: contact email -> id, which it
    # enforces; Salesforce: email -> a contact holding it, to count duplicates), keyed
    # by (provider, object, property), so a duplicate check is not a scan.
    unique_values: dict[tuple[str, str, str], dict[str, str]] = field(default_factory=dict)
    # Ids of deleted records per (provider, object), for providers that tell "deleted"
    # from "never existed" (Salesforce's ENTITY_IS_DELETED).
    deleted_ids: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    duplicate_creates: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    requests: deque[LoggedRequest] = field(
        default_factory=lambda: deque(maxlen=MAX_LOGGED_REQUESTS)
    )
    faults: FaultPlan = field(default_factory=FaultPlan)
    limits: LimitPlan = field(default_factory=LimitPlan)
    # The file host's files (`sandbox.files`) and how often each was fetched.
    files: dict[str, bytes] = field(default_factory=dict)
    file_fetches: Counter[str] = field(default_factory=Counter)
    _last_id: int = 0

    def objects(self, provider: str, object_name: str) -> dict[str, StoredRecord]:
        """The records of one object type, created empty on first use. Call under `lock`."""
        return self.records.setdefault((provider, object_name), {})

    def unique_index(self, provider: str, object_name: str, prop: str) -> dict[str, str]:
        """The value -> record id index of one unique property. Call under `lock`."""
        return self.unique_values.setdefault((provider, object_name, prop), {})

    def tombstones(self, provider: str, object_name: str) -> set[str]:
        """The ids deleted from one object type. Call under `lock`."""
        return self.deleted_ids.setdefault((provider, object_name), set())

    def next_id(self) -> str:
        """A new record id: numeric and increasing, like HubSpot's. Call under `lock`."""
        self._last_id += 1
        return str(self._last_id)

    def log_request(self, route: str | None, request: LoggedRequest) -> None:
        """Count a call under its route template (`POST /crm/v3/objects/{objectType}`)."""
        with self.lock:
            if route is not None:
                self.calls[route] += 1
            self.requests.append(request)

    def stats(self) -> dict[str, Any]:
        """The body of `GET /_sandbox/stats`."""
        with self.lock:
            by_object: Counter[str] = Counter()
            for (_provider, object_name), stored in self.records.items():
                by_object[object_name] += len(stored)
            return {
                "calls": dict(self.calls),
                "records_stored": sum(by_object.values()),
                "records_by_object": dict(by_object),
                "duplicate_creates": self.duplicate_creates,
                "batch_sizes": list(self.batch_sizes),
                "faults_injected": dict(self.faults.injected),
                "file_fetches": dict(self.file_fetches),
            }

    def stored_keys(
        self, provider: str, object_name: str, prop: str, hasher: Callable[[str], str]
    ) -> dict[str, Any]:
        """The body of `GET /_sandbox/records/{provider}/{object}/keys?field=prop`: the
        hash of `prop` in each stored record, and how many records do not hold it."""
        with self.lock:
            values = [r.properties.get(prop) for r in self.objects(provider, object_name).values()]
        keys = [hasher(v) for v in values if isinstance(v, str) and v]
        return {"records": len(values), "without_field": len(values) - len(keys), "keys": keys}

    def recent_requests(self) -> list[dict[str, Any]]:
        """The body of `GET /_sandbox/requests`, oldest first."""
        with self.lock:
            return [
                {
                    "at": r.at,
                    "method": r.method,
                    "path": r.path,
                    "status": r.status,
                    "inputs": r.inputs,
                    "keys": list(r.keys),
                    "retry_after": r.retry_after,
                }
                for r in self.requests
            ]

    def reset(self) -> None:
        """Forget every record and counter; ids keep increasing so old ids never come back."""
        with self.lock:
            self.records.clear()
            self.unique_values.clear()
            self.deleted_ids.clear()
            self.calls.clear()
            self.duplicate_creates = 0
            self.batch_sizes.clear()
            self.requests.clear()
            self.files.clear()
            self.file_fetches.clear()
        self.faults.clear()
        self.limits.clear()
