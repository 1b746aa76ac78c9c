"""The auto-batcher against real Redis and SQL, driven by an injected clock.

No worker reads the `parked` queue, so every test can look at exactly which
`write_batch` tasks were sent, and with which arguments.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from tests.support.parked import Parked
from tests.support.system import create_tenant
from writejobs import task_names
from writejobs.clock import as_utc, utcnow
from writejobs.grouping.keys import Keys, group_key
from writejobs.settings import Settings


def _later(minutes: float) -> datetime:
    return utcnow() + timedelta(minutes=minutes)


def test_group_flushes_at_the_hundredth_record(parked: Parked) -> None:
    ids = [parked.write({"email": f"r{i}@example.com"}) for i in range(99)]
    assert parked.sent() == []
    ids.append(parked.write({"email": "r99@example.com"}))
    [(name, args)] = parked.sent()
    assert name == task_names.WRITE_BATCH
    ops = parked.ops(ids)
    assert {op.state for op in ops} == {"queued"}
    assert {op.batch_id for op in ops} == {args[0]}
    assert {op.flush_reason for op in ops} == {"size"}


def test_concurrent_writes_handed_off_together_fill_one_batch_and_start_the_next(
    parked: Parked,
) -> None:
    # 16 clients at once: the hand-off thread buffers what one group commit recorded
    # in one round trip, so the 100th and the 101st append may share a pipeline.
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(lambda i: parked.write({"email": f"c{i}@example.com"}), range(130)))
    assert parked.wiring.hand_offs.wait_idle(10)
    [(name, [batch_id])] = parked.sent()
    assert name == task_names.WRITE_BATCH
    ops = parked.ops(ids)
    flushed = [op for op in ops if op.batch_id == batch_id]
    assert len(flushed) == 100 and {op.state for op in flushed} == {"queued"}
    rest = [op.id for op in ops if op.batch_id is None]
    assert len(rest) == 30 and {op.state for op in ops if op.batch_id is None} == {"pending"}
    [claim] = parked.wiring.batcher.flush_due(_later(1.05)).flushed
    assert sorted(claim.member_ids) == sorted(rest)


def test_appends_redis_answers_noscript_are_sent_again_once(parked: Parked) -> None:
    # A Redis that lost its scripts (a restart) answers NOSCRIPT to the pipelined
    # EVALSHA: the script is loaded and each of those appends is sent once more.
    batcher = parked.wiring.batcher
    real_sha = batcher._append.sha
    batcher._append.sha = "0" * 40  # a script Redis does not hold
    ids = [parked.write({"email": f"n{i}@example.com"}) for i in range(3)]
    assert parked.wiring.hand_offs.wait_idle(10)
    assert batcher._append.sha == real_sha
    [claim] = batcher.flush_due(_later(1.05)).flushed
    assert sorted(claim.member_ids) == sorted(ids)  # each buffered exactly once
    assert {op.state for op in parked.ops(ids)} == {"queued"}


def test_group_flushes_when_its_earliest_member_is_due(parked: Parked) -> None:
    ids = [parked.write({"email": f"t{i}@example.com"}) for i in range(3)]
    assert parked.wiring.batcher.flush_due(_later(0.9)).flushed == []
    [claim] = parked.wiring.batcher.flush_due(_later(1.05)).flushed
    assert claim.reason == "time" and sorted(claim.member_ids) == sorted(ids)
    assert parked.sent() == [(task_names.WRITE_BATCH, [claim.batch_id])]


def test_a_short_delay_is_not_held_back_by_an_earlier_long_one(parked: Parked) -> None:
    patient = parked.write({"email": "patient@example.com"}, delay_min=10)
    hurried = parked.write({"email": "hurried@example.com"}, delay_min=1)
    [claim] = parked.wiring.batcher.flush_due(_later(1.05)).flushed
    assert sorted(claim.member_ids) == sorted([patient, hurried])


def test_records_of_different_groups_are_never_in_one_batch(
    parked: Parked, settings: Settings, api_url: str
) -> None:
    with parked.tenant.client() as client:
        record_id = client.post(
            parked.tenant.write_path(),
            json={
                "groupRef": parked.tenant.group_ref,
                "type": "create",
                "record": {"email": f"seed-{uuid.uuid4().hex[:8]}@example.com"},
            },
        ).json()["result"]["recordId"]
    other = create_tenant(parked.settings, parked.tenant.api_url, "http://127.0.0.1:9")
    kinds = {
        parked.write({"email": "a@example.com"}): "contacts|create|1",
        parked.write({"email": "b@example.com"}, object_name="companies"): "companies|create|1",
        parked.write({"id": record_id, "firstname": "x"}, type_="update"): "contacts|update|1",
    }
    with other.client() as client:
        response = client.post(
            other.write_path(),
            json={
                "groupRef": other.group_ref,
                "type": "create",
                "mode": "asynchronous",
                "autoBatchPolicy": {"maxDelayMinutes": 1},
                "record": {"email": "c@example.com"},
            },
        )
        kinds[response.json()["operationId"]] = "contacts|create|2"
    claims = parked.wiring.batcher.flush_due(_later(2)).flushed
    assert sorted(len(c.member_ids) for c in claims) == [1, 1, 1, 1]
    assert sorted(kinds[c.member_ids[0]] for c in claims) == sorted(kinds.values())


def test_a_claim_whose_flusher_died_is_sent_by_the_recovery_sweep(parked: Parked) -> None:
    # Given a claim made the way a flush makes it, and then the flusher died
    ids = [parked.write({"email": f"u{i}@example.com"}) for i in range(5)]
    op = parked.ops(ids[:1])[0]
    batcher = parked.wiring.batcher
    keys = Keys(parked.settings.redis_namespace)
    group = group_key(op.installation_id, op.object_name, op.write_type)
    batch_id = str(uuid.uuid4())
    claimed_at = _later(2)
    claimed = batcher._claim_due(
        keys=[keys.buffer(group), keys.due, keys.batch(batch_id), keys.unsent],
        args=[group, repr(claimed_at.timestamp()), 100],
    )
    assert len(claimed) == 5 and parked.sent() == []
    # When the sweep runs before the grace period, nothing happens; after it, the batch goes
    assert batcher.resend_unsent(claimed_at) == []
    assert batcher.resend_unsent(claimed_at + timedelta(seconds=60)) == [batch_id]
    assert parked.sent() == [(task_names.WRITE_BATCH, [batch_id])]
    assert {o.state for o in parked.ops(ids)} == {"queued"}


def test_pending_operations_lost_from_redis_are_buffered_again_from_sql(parked: Parked) -> None:
    ids = [parked.write({"email": f"l{i}@example.com"}) for i in range(3)]
    # Redis loses everything of this namespace
    for key in parked.redis.scan_iter(f"{parked.settings.redis_namespace}:*"):
        parked.redis.delete(key)
    batcher = parked.wiring.batcher
    created = as_utc(parked.ops(ids[:1])[0].created_at)
    # within the grace period: left alone
    assert not set(ids) & set(batcher.rebuffer_orphans(created))
    # (other tests' leftovers in the shared store may be buffered too: that is the point)
    assert set(ids) <= set(batcher.rebuffer_orphans(utcnow() + timedelta(minutes=5)))
    # ...and then flushed when due, as if nothing happened
    claims = batcher.flush_due(_later(2)).flushed
    [claim] = [c for c in claims if set(ids) & set(c.member_ids)]
    assert sorted(claim.member_ids) == sorted(ids)
    assert not set(ids) & set(batcher.rebuffer_orphans(utcnow() + timedelta(minutes=5)))
