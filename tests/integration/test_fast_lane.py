"""The write route's fast lane (`api_shim/fast_lane.py`) against a real API, Redis and SQL.

The common asynchronous write is answered by the lane without FastAPI; everything
else must reach the app and get exactly the answer it got before the lane existed.
A spy on the lane's `accept_async_write` tells which of the two answered.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import api_shim.fast_lane as fast_lane
from tests.support.parked import Parked
from writejobs.grouping.keys import group_key
from writejobs.intake import write as intake_write
from writejobs.store import operations_repo


@pytest.fixture()
def lane_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Ids of the operations the lane itself accepted."""
    calls: list[str] = []

    async def spy(*args: Any, **kwargs: Any) -> intake_write.Accepted:
        accepted = await intake_write.accept_async_write(*args, **kwargs)
        calls.append(accepted.operation.id)
        return accepted

    monkeypatch.setattr(fast_lane, "accept_async_write", spy)
    yield calls


def body(parked: Parked, **fields: Any) -> dict[str, Any]:
    return {
        "groupRef": parked.tenant.group_ref,
        "type": "create",
        "mode": "asynchronous",
        "record": {"email": f"lane-{uuid.uuid4().hex[:8]}@example.com"},
        **fields,
    }


def post(parked: Parked, payload: Any, **kwargs: Any) -> Any:
    with parked.tenant.client(**kwargs) as client:
        return client.post(parked.tenant.write_path(), json=payload)


def warm(parked: Parked) -> None:
    """One write through the app, so the directory holds the key and the route."""
    assert post(parked, body(parked)).status_code == 200


@pytest.mark.parametrize("shape", ["single", "batch", "auto_batch"])
def test_a_common_async_write_is_answered_by_the_lane_after_its_row_is_committed(
    parked: Parked, lane_calls: list[str], shape: str
) -> None:
    warm(parked)
    payload = body(parked)
    if shape == "auto_batch":
        payload["autoBatchPolicy"] = {"maxDelayMinutes": 1}
    if shape == "batch":
        payload["batch"] = [{"record": payload.pop("record")}, {"record": {"email": "2@x.com"}}]

    response = post(parked, payload)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    op_id = response.json()["operationId"]
    assert response.json() == {"operationId": op_id}
    assert lane_calls == [op_id]
    # Durable before the answer: read at once, from another connection.
    with parked.wiring.deps.sessions() as session:
        op = operations_repo.get_operation(session, op_id)
    assert op is not None and op.shape == shape
    assert op.state == ("pending" if shape == "auto_batch" else "queued")
    # ...and handed on after it.
    assert parked.wiring.hand_offs.wait_idle(10)
    if shape == "auto_batch":
        assert parked.wiring.batcher._is_buffered(
            keys=[parked.wiring.batcher.keys.buffer(_group(op))],
            args=[op.id, parked.wiring.batcher.keys.unsent, parked.wiring.batcher.keys.namespace],
        )
    else:
        assert any(args == [op_id] for _name, args in parked.sent())


def _group(op: Any) -> str:
    return group_key(op.installation_id, op.object_name, op.write_type)


@pytest.mark.parametrize(
    "case",
    ["sync", "idempotency-key", "bad-body", "unknown-group", "wrong-key"],
)
def test_anything_else_is_answered_by_the_app_in_its_own_shape(
    parked: Parked, lane_calls: list[str], case: str
) -> None:
    warm(parked)
    if case == "sync":
        response = post(parked, body(parked, mode="synchronous"))
        assert response.status_code == 200 and response.json()["result"]["success"] is True
    elif case == "idempotency-key":
        payload = body(parked)
        with parked.tenant.client() as client:
            first = client.post(
                parked.tenant.write_path(), json=payload, headers={"Idempotency-Key": "k-1"}
            )
            again = client.post(
                parked.tenant.write_path(), json=payload, headers={"Idempotency-Key": "k-1"}
            )
        assert first.status_code == again.status_code == 200
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json() == first.json()
    elif case == "bad-body":
        response = post(parked, {**body(parked), "type": "upsert-ish"})
        assert response.status_code == 400
        assert response.headers["content-type"].startswith("text/plain")
    elif case == "unknown-group":
        response = post(parked, body(parked, groupRef="no-such-group"))
        assert response.status_code == 400 and "no-such-group" in response.text
    else:
        response = post(parked, body(parked), api_key="not-a-key")
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
    assert lane_calls == []


@pytest.mark.parametrize(
    ("record_json", "message"),
    [
        ('{"n": 1e400}', "record.n holds a number out of a double's range"),
        ('{"a": [1.5, -2e308]}', "record.a[1] holds a number out of a double's range"),
        ('{"n": 1e400, "m": NaN}', "holds NaN, which is not a JSON number"),
        ('{"n": ' + "7" * 101 + "}", "record.n holds an integer of more than 100 digits"),
        ('{"s": "\\ud800"}', "record.s holds a lone UTF-16 surrogate"),
        ('{"email": "x-1e234@example.com", "n": 1e400}', "record.n holds a number out of"),
    ],
)
def test_a_small_body_the_parser_refuses_gets_the_apps_400_not_a_500(
    parked: Parked, lane_calls: list[str], record_json: str, message: str
) -> None:
    """Bodies the lane reads itself (small, async, cached key): what `load_json` refuses
    is left to the app, which answers its 400 naming the value."""
    warm(parked)
    head = json.dumps({k: v for k, v in body(parked).items() if k != "record"})
    raw = head[:-1] + ', "record": ' + record_json + "}"
    with parked.tenant.client() as client:
        response = client.post(
            parked.tenant.write_path(),
            content=raw.encode(),
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert message in response.text
    assert lane_calls == []


def test_a_body_too_large_for_the_lane_still_reaches_the_app_whole(
    parked: Parked, lane_calls: list[str]
) -> None:
    warm(parked)
    big = {"email": f"big-{uuid.uuid4().hex[:8]}@example.com", "notes": "x" * 80_000}

    response = post(parked, body(parked, record=big))

    assert response.status_code == 200
    op_id = response.json()["operationId"]
    assert lane_calls == []
    with parked.wiring.deps.sessions() as session:
        op = operations_repo.get_operation(session, op_id)
    assert op is not None and op.request["record"]["notes"] == "x" * 80_000


def test_a_record_holding_a_nul_is_accepted_and_stored_as_sent(
    parked: Parked, lane_calls: list[str]
) -> None:
    # JSON allows "\u0000" in a string; PostgreSQL's text does not, its `json` type
    # does. The group commit sends rows as JSON: a record's own text must survive.
    warm(parked)
    record = {"email": f"nul-{uuid.uuid4().hex[:8]}@example.com", "note": "a\u0000b"}
    response = post(parked, body(parked, record=record))
    assert response.status_code == 200
    op_id = response.json()["operationId"]
    assert lane_calls == [op_id]
    with parked.wiring.deps.sessions() as session:
        op = operations_repo.get_operation(session, op_id)
    assert op is not None and op.request["record"] == record
