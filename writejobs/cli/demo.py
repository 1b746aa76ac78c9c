"""`writejobs up --demo`: a sample workload through the real API, followed to its end.

Every step goes over HTTP with the demo API key, exactly as a product team's
code would: sync writes, async writes, auto-batched records, an invalid
request, and bulk CSV upserts to Salesforce. Then it polls the operations until
each is terminal and prints what happened.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

AUTO_BATCH_RECORDS = 250


@dataclass
class Step:
    name: str
    http_status: int
    operation_ids: list[str]
    note: str = ""


def run_demo(
    details: dict[str, Any], console: Console, stop: threading.Event, timeout_s: float = 600.0
) -> bool:
    """Send the workload, follow it, print a summary; True when every operation ended."""
    base = f"/v1/projects/{details['project']}/integrations/{details['integration']}"
    with httpx.Client(
        base_url=details["api_url"], headers={"X-Api-Key": details["api_key"]}, timeout=30.0
    ) as client:
        steps = _send_workload(
            client, f"{base}/objects/{details['object']}", details["group_ref"], console, stop
        )
        steps += _send_bulk(client, details, console)
        ids = [op_id for step in steps for op_id in step.operation_ids]
        views = _follow(client, details["project"], ids, console, stop, timeout_s)
    _print_summary(steps, views, console)
    return all(v.get("status") != "in_progress" for v in views.values()) and len(views) == len(ids)


def _send_workload(
    client: httpx.Client, path: str, group_ref: str, console: Console, stop: threading.Event
) -> list[Step]:
    run = uuid.uuid4().hex[:8]

    def contact(n: int | str) -> dict[str, str]:
        return {"email": f"demo-{run}-{n}@example.com", "firstname": f"Demo {n}"}

    def send(name: str, body: dict[str, Any]) -> Step:
        response = client.post(path, json={"groupRef": group_ref, **body})
        op_ids: list[str] = []
        note = ""
        if response.headers.get("content-type", "").startswith("text/plain"):
            note = response.text
        else:
            payload = response.json()
            if "operationId" in payload:
                op_ids.append(payload["operationId"])
        console.print(f"  {name}: HTTP {response.status_code} {escape(note)}")
        return Step(name, response.status_code, op_ids, note)

    console.print("[bold]sending the demo workload[/]")
    steps = [send("sync create", {"type": "create", "record": contact("sync")})]
    created = client.get(f"{path.split('/integrations')[0]}/operations/{steps[0].operation_ids[0]}")
    record_id = (created.json().get("metadata", {}).get("successfulRecordIds") or ["unknown"])[0]
    steps.append(
        send(
            "sync batch of 20",
            {"type": "create", "batch": [{"record": contact(f"b{i}")} for i in range(20)]},
        )
    )
    steps.append(
        send("async create", {"type": "create", "mode": "asynchronous", "record": contact("async")})
    )
    steps.append(
        send(
            "async batch of 50",
            {
                "type": "create",
                "mode": "asynchronous",
                "batch": [{"record": contact(f"ab{i}")} for i in range(50)],
            },
        )
    )
    steps.append(
        send("sync update", {"type": "update", "record": {"id": record_id, "firstname": "Updated"}})
    )
    steps.append(send("sync delete", {"type": "delete", "record": {"id": record_id}}))
    steps.append(send("invalid request (no record)", {"type": "create"}))
    auto = Step(f"auto-batched ({AUTO_BATCH_RECORDS} records)", 200, [])
    for i in range(AUTO_BATCH_RECORDS):
        if stop.is_set():
            break
        response = client.post(
            path,
            json={
                "groupRef": group_ref,
                "type": "create",
                "mode": "asynchronous",
                "autoBatchPolicy": {"maxDelayMinutes": 1},
                "record": contact(f"auto{i}"),
            },
        )
        auto.http_status = max(auto.http_status, response.status_code)
        if response.status_code == 200:
            auto.operation_ids.append(response.json()["operationId"])
    console.print(f"  {auto.name}: HTTP {auto.http_status}")
    steps.append(auto)
    return steps


def _send_bulk(client: httpx.Client, details: dict[str, Any], console: Console) -> list[Step]:
    """Two bulk CSV upserts to the demo's Salesforce installation: inline, and by URL
    from the sandbox's file host (allowed over http by `up --demo`)."""
    path = (
        f"/v1/projects/{details['project']}/integrations/{details['bulk_integration']}"
        f"/objects/{details['bulk_object']}:async"
    )
    run = uuid.uuid4().hex[:8]
    rows = [f"demo-{run}-{i},Demo {i},demo-{run}-{i}@example.com" for i in range(100)]
    rows[7] = f"demo-{run}-7,Demo 7,not-an-email"
    inline = "External_Id__c,LastName,Email\n" + "\n".join(rows) + "\n"
    files = details["sandbox_url"].replace("127.0.0.1", "localhost")
    sources = {
        "bulk CSV upsert, inline (100 rows, 1 invalid)": {"recordsCSV": inline},
        "bulk CSV upsert, recordsURL (10,000 rows, 2 invalid)": {
            "recordsURL": f"{files}/_sandbox/generated/contacts.csv?rows=10000&invalid=3,4242"
        },
    }
    steps = []
    for name, source in sources.items():
        body = {"groupRef": details["group_ref"], "primaryKey": "External_Id__c", **source}
        response = client.put(path, json=body)
        note = response.text if response.status_code != 200 else ""
        op_ids = [response.json()["operationId"]] if response.status_code == 200 else []
        console.print(f"  {name}: HTTP {response.status_code} {escape(note)}")
        steps.append(Step(name, response.status_code, op_ids, note))
    return steps


def _follow(
    client: httpx.Client,
    project: str,
    ids: list[str],
    console: Console,
    stop: threading.Event,
    timeout_s: float,
) -> dict[str, dict[str, Any]]:
    views: dict[str, dict[str, Any]] = {}
    columns = (
        TextColumn("operations finished"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    deadline = time.monotonic() + timeout_s
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("ops", total=len(ids))
        while not stop.is_set() and time.monotonic() < deadline:
            for op_id in ids:
                if views.get(op_id, {}).get("status") in ("success", "failure"):
                    continue
                response = client.get(f"/v1/projects/{project}/operations/{op_id}")
                if response.status_code == 200:
                    views[op_id] = response.json()
            done = sum(1 for v in views.values() if v.get("status") != "in_progress")
            progress.update(task, completed=done)
            if done == len(ids):
                break
            time.sleep(1.0)
    return views


def _print_summary(steps: list[Step], views: dict[str, dict[str, Any]], console: Console) -> None:
    table = Table(title="demo summary")
    for column in ("step", "HTTP", "operations", "status", "result"):
        table.add_column(column)
    for step in steps:
        statuses = Counter(views.get(i, {}).get("status", "unknown") for i in step.operation_ids)
        results = {views.get(i, {}).get("result", "") for i in step.operation_ids}
        result = next(iter(results)) if len(results) == 1 else f"{len(results)} distinct results"
        table.add_row(
            step.name,
            str(step.http_status),
            str(len(step.operation_ids)),
            ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())) or "-",
            escape(step.note or result or ""),
        )
    console.print(table)
    batches: dict[str, dict[str, Any]] = {}
    for view in views.values():
        batch = view.get("metadata", {}).get("batch")
        if batch:
            entry = batches.setdefault(batch["id"], {"reason": batch["flushReason"], "size": 0})
            entry["size"] += 1
    if batches:
        batch_table = Table(title="auto-batches")
        for column in ("batch", "records", "flush reason"):
            batch_table.add_column(column)
        for batch_id, entry in batches.items():
            batch_table.add_row(batch_id, str(entry["size"]), entry["reason"])
        console.print(batch_table)
    terminal = sum(1 for v in views.values() if v.get("status") != "in_progress")
    console.print(
        f"[bold]{terminal} of {sum(len(s.operation_ids) for s in steps)} operations finished[/]"
    )
