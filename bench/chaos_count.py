"""The chaos bench's end count: what was accepted, and what became of each record.

Read once everything has drained: the operations through the API (an
installation's list, 1,000 a page), the possible-duplicate log entries from
the store (SQL: one query instead of a `/logs` call per operation), the
fleet's `writejobs_possible_duplicates_total` from `/metrics`, and from the
sandbox the hash of each stored record's key field (one per stored record, so
a record written twice is there twice) plus its count of creates refused as
existing (HubSpot's contact email is unique: each is a create sent again).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
from chaos_clients import Accepted, Tally, Target

from sandbox.app import key_hash
from writejobs.execution.repeats import POSSIBLE_DUPLICATE

TERMINAL_STATES = ("succeeded", "partially_succeeded", "failed", "expired")
ANOMALIES = ("stuck", "lost", "duplicated, not reported", "written though reported failed")
UPSERT_REPEAT = "repeat written as an upsert by %"
_METRIC = re.compile(r'^writejobs_possible_duplicates_total\{provider="hubspot"\} (\S+)$', re.M)


def drain(
    database_url: str, accepted: set[str], timeout_s: float, tick: Callable[[], None]
) -> tuple[float, Counter[str]]:
    """Wait until every accepted operation is terminal, or `timeout_s`; calls `tick`
    (the supervisor's watch) between looks. Returns the wait and the states left."""
    started = time.monotonic()
    left: Counter[str] = Counter()
    while True:
        rows = query(
            database_url,
            "SELECT id, state FROM operations WHERE state <> ALL(%s)",
            (list(TERMINAL_STATES),),
        )
        left = Counter(state for op_id, state in rows if op_id in accepted)
        waited = time.monotonic() - started
        if not left or waited >= timeout_s:
            return waited, left
        for _ in range(10):
            tick()
            time.sleep(0.2)


def query(database_url: str, sql: str, params: tuple[Any, ...], tries: int = 60) -> list[Any]:
    """Rows of one read, tried again for a minute while PostgreSQL refuses a connection
    (a shared server at its connection limit is not what the bench measures)."""
    for attempt in range(tries):
        try:
            with psycopg.connect(database_url) as connection:
                return connection.execute(sql, params).fetchall()
        except psycopg.OperationalError:
            if attempt == tries - 1:
                raise
            time.sleep(1.0)
    raise AssertionError("unreachable")


def fetch_views(
    api_url: str, api_key: str, project_id: str, integration_id: str, installation_id: str
) -> dict[str, dict[str, Any]]:
    """Every operation of one installation, by id, as the API shows it."""
    views: dict[str, dict[str, Any]] = {}
    path = (
        f"/v1/projects/{project_id}/integrations/{integration_id}"
        f"/installations/{installation_id}/operations"
    )
    params: dict[str, Any] = {"pageSize": 1000}
    with httpx.Client(base_url=api_url, headers={"X-Api-Key": api_key}, timeout=120) as client:
        while True:
            response = client.get(path, params=params)
            response.raise_for_status()
            body = response.json()
            for view in body["results"]:
                views[view["id"]] = view
            if body["pagination"]["done"]:
                return views
            params["pageToken"] = body["pagination"]["nextPageToken"]


def repeat_logs(database_url: str) -> tuple[dict[str, int], dict[str, int]]:
    """Per operation: records said to be possible duplicates, and records whose repeat
    was written as an upsert (sums over the operation's takeovers)."""
    possible: Counter[str] = Counter()
    upserted: Counter[str] = Counter()
    rows = query(
        database_url,
        "SELECT operation_id, msg, details FROM operation_logs WHERE msg = %s OR msg LIKE %s",
        (POSSIBLE_DUPLICATE, UPSERT_REPEAT),
    )
    for op_id, msg, details in rows:
        records = int((details or {}).get("records", 1))
        (possible if msg == POSSIBLE_DUPLICATE else upserted)[op_id] += records
    return dict(possible), dict(upserted)


def metric_possible_duplicates(api_url: str) -> float | None:
    try:
        found = _METRIC.search(httpx.get(f"{api_url}/metrics", timeout=30).text)
    except httpx.HTTPError:
        return None
    return float(found.group(1)) if found else 0.0


def sandbox_keys(sandbox_url: str, object_name: str, key_field: str) -> Counter[str]:
    response = httpx.get(
        f"{sandbox_url}/_sandbox/records/hubspot/{object_name}/keys",
        params={"field": key_field},
        timeout=120,
    )
    response.raise_for_status()
    return Counter(response.json()["keys"])


@dataclass
class PerTarget:
    """The end count of one installation's records."""

    records: int = 0
    written: int = 0
    reported_failed: int = 0
    written_but_reported_failed: int = 0
    lost: int = 0
    lost_in_stuck: int = 0
    duplicated_records: int = 0
    extra_copies: int = 0
    duplicated_unreported: int = 0


@dataclass
class Outcome:
    """Everything the report prints, computed from the views, logs and sandbox."""

    states: Counter[str]
    stuck: list[str]
    per_target: dict[str, PerTarget]
    possible_ops: int
    possible_records: int
    upsert_ops: int
    metric: float | None
    unknown_ops: Counter[str]  # operations in the store no client heard of, by state
    written_not_accepted: int
    duplicate_creates: int
    stored_by_object: dict[str, int]
    # Per kind, the operations it concerns (id -> target, mode, size, state).
    anomalies: dict[str, dict[str, str]]


def count(
    tally: Tally,
    targets: list[Target],
    views: dict[str, dict[str, Any]],
    possible: dict[str, int],
    upserted: dict[str, int],
    stored: dict[str, Counter[str]],
    sandbox_stats: dict[str, Any],
    metric: float | None,
) -> Outcome:
    accepted: dict[str, Accepted] = dict(tally.accepted)
    states: Counter[str] = Counter()
    stuck: list[str] = []
    per_target = {t.label: PerTarget() for t in targets}
    objects = {t.label: t.object_name for t in targets}
    accepted_keys: set[str] = set()
    anomalies: dict[str, dict[str, str]] = {kind: {} for kind in ANOMALIES}
    for op_id, op in accepted.items():
        view = views.get(op_id)
        state = view["state"] if view else "missing"
        states[state] += 1
        terminal = state in TERMINAL_STATES
        if not terminal:
            stuck.append(op_id)
        rows = (view or {}).get("records") or []
        describe = f"{op.target}, {op.mode}, {len(op.keys)} record(s), state {state}"
        if not terminal:
            anomalies["stuck"].setdefault(op_id, describe)
        figures = per_target[op.target]
        copies_of = stored[objects[op.target]]
        for index, key in enumerate(op.keys):
            hashed = key_hash(key)
            accepted_keys.add(hashed)
            copies = copies_of.get(hashed, 0)
            failed = terminal and (
                (view or {}).get("status") == "failure"
                or (index < len(rows) and not rows[index].get("success"))
            )
            figures.records += 1
            figures.written += copies > 0
            figures.reported_failed += failed
            figures.written_but_reported_failed += failed and copies > 0
            if failed and copies > 0:
                anomalies["written though reported failed"].setdefault(op_id, describe)
            if copies == 0 and not failed:
                figures.lost += 1
                figures.lost_in_stuck += not terminal
                anomalies["lost"].setdefault(op_id, describe)
            if copies > 1:
                figures.duplicated_records += 1
                figures.extra_copies += copies - 1
                if op_id not in possible:
                    figures.duplicated_unreported += 1
                    anomalies["duplicated, not reported"].setdefault(op_id, describe)
    unknown = Counter(v["state"] for op_id, v in views.items() if op_id not in accepted)
    written_not_accepted = sum(
        1 for copies in stored.values() for hashed in copies if hashed not in accepted_keys
    )
    return Outcome(
        states=states,
        stuck=stuck,
        per_target=per_target,
        possible_ops=len(possible),
        possible_records=sum(possible.values()),
        upsert_ops=len(upserted),
        metric=metric,
        unknown_ops=unknown,
        written_not_accepted=written_not_accepted,
        duplicate_creates=int(sandbox_stats.get("duplicate_creates", 0)),
        stored_by_object=dict(sandbox_stats.get("records_by_object", {})),
        anomalies=anomalies,
    )


def operation_logs(api_url: str, api_key: str, project_id: str, op_id: str) -> list[str]:
    """One operation's log messages, oldest first, each with its details."""
    response = httpx.get(
        f"{api_url}/v1/projects/{project_id}/operations/{op_id}/logs",
        headers={"X-Api-Key": api_key},
        timeout=30,
    )
    if response.status_code != 200:
        return [f"(logs: {response.status_code})"]
    return [
        f"{entry['timestamp']} {entry['message']['msg']} {entry['message'].get('details') or ''}"
        for entry in response.json()
    ]
