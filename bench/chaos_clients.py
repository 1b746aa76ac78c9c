"""The chaos bench's clients: threads writing records the way a careful client does.

Each request is an asynchronous write (one record, an explicit batch, or one
auto-batched record) to one of two installations, sent round-robin to the API
processes with an `Idempotency-Key` of its own. A request that got no answer (a
connection error, a timeout) or a 5xx is sent again, with the same key, to the
next API process, until it is answered or `retry_for_s` has passed. What each
request ended as is kept here: the operation it names and the keys of its
records (a contact's email, a company's name), so the end count can look each
record up in the sandbox.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

MODES = ("async", "batch", "auto")
BATCH_SIZE = 10


@dataclass(frozen=True)
class Target:
    """One installation the clients write to, and how its records are named."""

    label: str  # "natural key" or "no natural key"
    group_ref: str
    object_name: str
    key_field: str  # the property that names a record: email, or a company's name


@dataclass
class Accepted:
    """An operation the API answered 200 for, and the keys of the records it holds."""

    operation_id: str
    target: str
    mode: str
    keys: list[str]


@dataclass
class Tally:
    """What the clients saw, shared by every client thread (under `lock`)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    records_planned: int = 0
    requests: int = 0
    sends: int = 0
    accepted: dict[str, Accepted] = field(default_factory=dict)
    replayed: int = 0
    five_xx: Counter[tuple[str, str, int]] = field(default_factory=Counter)  # api, mode, status
    no_answer: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # api, mode, error
    other: Counter[tuple[str, int]] = field(default_factory=Counter)  # mode, status
    other_samples: list[str] = field(default_factory=list)
    five_xx_samples: list[str] = field(default_factory=list)  # one per distinct detail
    gave_up: list[tuple[str, list[str]]] = field(default_factory=list)  # mode, record keys
    accepted_records: int = 0

    def records_accepted(self) -> int:
        with self.lock:
            return self.accepted_records


@dataclass
class Load:
    """How much to send, where, and how patiently."""

    api_urls: list[str]
    write_paths: dict[str, str]  # target label -> /v1/projects/…/objects/{object}
    targets: list[Target]
    api_key: str
    run_id: str
    records: int
    mix: dict[str, float]
    max_delay_minutes: int
    deadline_hours: float
    retry_for_s: float
    stop_at: float  # monotonic: no new request after this
    _next_api: int = 0
    _next_record: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def claim_records(self, count: int) -> list[int] | None:
        """Numbers for the next `count` records, or None when the run has sent enough."""
        with self._lock:
            if self._next_record >= self.records or time.monotonic() >= self.stop_at:
                return None
            first = self._next_record
            self._next_record += count
            return list(range(first, first + count))

    def next_api(self) -> int:
        with self._lock:
            self._next_api += 1
            return self._next_api % len(self.api_urls)


def run_clients(load: Load, tally: Tally, threads: int, seed: int) -> list[threading.Thread]:
    """Start `threads` client threads; they stop by themselves when the load is sent."""
    started = []
    for index in range(threads):
        thread = threading.Thread(
            target=_client_loop,
            args=(load, tally, random.Random(seed + index)),
            name=f"client-{index}",
            daemon=True,
        )
        thread.start()
        started.append(thread)
    return started


def _client_loop(load: Load, tally: Tally, rng: random.Random) -> None:
    clients = [
        httpx.Client(base_url=url, headers={"X-Api-Key": load.api_key}, timeout=30.0)
        for url in load.api_urls
    ]
    try:
        while True:
            mode = rng.choices(list(load.mix), weights=list(load.mix.values()))[0]
            numbers = load.claim_records(BATCH_SIZE if mode == "batch" else 1)
            if numbers is None:
                return
            target = rng.choice(load.targets)
            keys = [record_key(target, load.run_id, n) for n in numbers]
            _send(load, tally, clients, target, mode, keys)
    finally:
        for client in clients:
            client.close()


def record_key(target: Target, run_id: str, number: int) -> str:
    """The value that names record `number`: unique across runs and targets."""
    if target.key_field == "email":
        return f"chaos-{run_id}-{number}@example.com"
    return f"chaos-{run_id}-co-{number}"


def _body(load: Load, target: Target, mode: str, keys: list[str]) -> dict[str, Any]:
    records = [{target.key_field: key, "description": "chaos bench"} for key in keys]
    body: dict[str, Any] = {
        "groupRef": target.group_ref,
        "type": "create",
        "mode": "asynchronous",
    }
    if mode == "batch":
        body["batch"] = [{"record": r} for r in records]
    else:
        body["record"] = records[0]
    if mode == "auto":
        body["autoBatchPolicy"] = {"maxDelayMinutes": load.max_delay_minutes}
    else:
        body["retryPolicy"] = {"deadlineHours": load.deadline_hours}
    return body


def _send(
    load: Load,
    tally: Tally,
    clients: list[httpx.Client],
    target: Target,
    mode: str,
    keys: list[str],
) -> None:
    body = _body(load, target, mode, keys)
    idempotency_key = uuid.uuid4().hex
    path = load.write_paths[target.label]
    give_up_at = time.monotonic() + load.retry_for_s
    pause = 0.1
    with tally.lock:
        tally.requests += 1
        tally.records_planned += len(keys)
    while True:
        index = load.next_api()
        api = f"api-{index + 1}"
        with tally.lock:
            tally.sends += 1
        try:
            response = clients[index].post(
                path, json=body, headers={"Idempotency-Key": idempotency_key}
            )
        except httpx.HTTPError as exc:
            with tally.lock:
                tally.no_answer[(api, mode, type(exc).__name__)] += 1
        else:
            status = response.status_code
            if status == 200:
                operation_id = str(response.json()["operationId"])
                with tally.lock:
                    if response.headers.get("Idempotent-Replayed") == "true":
                        tally.replayed += 1
                    if operation_id not in tally.accepted:
                        tally.accepted[operation_id] = Accepted(
                            operation_id, target.label, mode, keys
                        )
                        tally.accepted_records += len(keys)
                return
            if status >= 500 or status == 409:
                with tally.lock:
                    if status >= 500:
                        tally.five_xx[(api, mode, status)] += 1
                        _sample_5xx(tally, api, mode, response)
                    else:
                        tally.other[(mode, status)] += 1
            else:
                with tally.lock:
                    tally.other[(mode, status)] += 1
                    if len(tally.other_samples) < 5:
                        tally.other_samples.append(f"{status} {response.text[:300]}")
                return
        if time.monotonic() + pause > give_up_at:
            with tally.lock:
                tally.gave_up.append((mode, keys))
            return
        time.sleep(pause)
        pause = min(pause * 2, 2.0)


def _sample_5xx(tally: Tally, api: str, mode: str, response: httpx.Response) -> None:
    """Keep the first answer of each distinct problem detail (call under `tally.lock`)."""
    try:
        detail = str(response.json().get("detail", ""))[:200]
    except ValueError:
        detail = response.text[:200]
    if len(tally.five_xx_samples) < 8 and not any(
        detail in sample for sample in tally.five_xx_samples
    ):
        tally.five_xx_samples.append(f"{response.status_code} {api} {mode}: {detail}")
