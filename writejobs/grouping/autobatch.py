"""Auto-batching: buffer single records per group, flush them as provider batches.

A group flushes at once when its 100th record arrives (the append claims it in
the same Lua step), and otherwise when its earliest member's due time passes
(found through one sorted set of group due times, so a tick costs O(log n) in
the number of groups plus the due ones). A claim is atomic, so any number of
API processes and schedulers share the work with no leader.

Flushing a claimed batch is: mark its members `queued` in SQL, send the
`write_batch` task (batch id only), forget the claim. A crash between any two
steps leaves the claim in the `unsent` set for the recovery sweep to finish,
and SQL `pending` rows that Redis lost are buffered again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import resources
from typing import Any

import redis
from redis.exceptions import NoScriptError
from sqlalchemy.orm import Session, sessionmaker

from writejobs.clock import Clock, as_utc
from writejobs.core.ids import new_id
from writejobs.core.operations import Routed
from writejobs.core.recorder import NoRecorder, Recorder
from writejobs.failpoints import no_failpoint
from writejobs.grouping.keys import BATCH_LIMIT, Keys, group_key, installation_of
from writejobs.store import operations_repo
from writejobs.store.tables import Operation

log = logging.getLogger(__name__)


def _lua(name: str, *, with_claim: bool = False) -> str:
    """A script beside this module; `with_claim` prepends the shared claim function."""
    here = resources.files(__package__)
    source = here.joinpath(f"{name}.lua").read_text()
    return here.joinpath("claim.lua").read_text() + source if with_claim else source


APPEND_SCRIPT = _lua("append", with_claim=True)
# One run of a script: its keys and its arguments.
_ScriptCall = tuple[list[str], list[str | int]]
CLAIM_DUE_SCRIPT = _lua("claim_due", with_claim=True)
IS_BUFFERED_SCRIPT = _lua("is_buffered")


@dataclass(frozen=True, slots=True)
class Claim:
    batch_id: str
    group: str
    reason: str
    member_ids: list[str]


@dataclass(slots=True)
class TickReport:
    """What one scheduler pass did."""

    flushed: list[Claim] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    rebuffered: list[str] = field(default_factory=list)


class AutoBatcher:
    """Buffers auto-batched operations in Redis and flushes them as batches."""

    def __init__(
        self,
        client: redis.Redis,
        sessions: sessionmaker[Session],
        send_batch: Callable[[str], None],
        *,
        keys: Keys | None = None,
        clock: Clock,
        batch_limit: int = BATCH_LIMIT,
        unsent_grace_s: float = 10.0,
        orphan_grace_s: float = 30.0,
        failpoint: Callable[[str], None] = no_failpoint,
        recorder: Recorder | None = None,
        send_flushed: Callable[[str, str], None] | None = None,
    ) -> None:
        self.redis = client
        self.sessions = sessions
        self.send_batch = send_batch
        # send_flushed(batch id, installation id): a flush knows the batch's installation
        # (its group names it), which spares the sender a lookup; else `send_batch`.
        self.send_flushed = send_flushed or (lambda batch_id, _installation: send_batch(batch_id))
        self.keys = keys or Keys()
        self.clock = clock
        self.batch_limit = batch_limit
        self.unsent_grace_s = unsent_grace_s
        self.orphan_grace_s = orphan_grace_s
        self.failpoint = failpoint
        self.recorder: Recorder = recorder or NoRecorder()
        self._append = client.register_script(APPEND_SCRIPT)
        self._claim_due = client.register_script(CLAIM_DUE_SCRIPT)
        self._is_buffered = client.register_script(IS_BUFFERED_SCRIPT)

    def buffer(self, op: Routed) -> Claim | None:
        """Add an accepted pending operation to its group; flush at once if that fills it."""
        claims = self.buffer_many([op])
        return claims[0] if claims else None

    def buffer_many(self, ops: Sequence[Routed]) -> list[Claim]:
        """`buffer` for many operations in one round trip to Redis (the intake hands off
        what one group commit recorded); then flush each group they filled."""
        now = self.clock().timestamp()
        targets: list[tuple[str, str]] = []
        calls: list[_ScriptCall] = []
        for op in ops:
            assert op.max_delay_s is not None
            group = group_key(op.installation_id, op.object_name, op.write_type)
            due_at = as_utc(op.created_at).timestamp() + op.max_delay_s
            batch_id = new_id()
            keys = [
                self.keys.buffer(group),
                self.keys.due,
                self.keys.batch(batch_id),
                self.keys.unsent,
            ]
            targets.append((batch_id, group))
            calls.append((keys, [group, op.id, repr(due_at), repr(now), self.batch_limit]))
        claims = [
            Claim(batch_id, group, "size", [_text(i) for i in ids])
            for (batch_id, group), ids in zip(targets, self._run_appends(calls), strict=True)
            if ids
        ]
        for claim in claims:
            self.flush(claim)
        return claims

    def _run_appends(self, calls: Sequence[_ScriptCall]) -> list[Any]:
        """Each append's reply, the appends sent as EVALSHA in one pipeline.

        A pipeline of registered scripts would first ask `SCRIPT EXISTS` (a round
        trip of its own) on every call; the script is cached by Redis, so only an
        append Redis answered NOSCRIPT (it restarted, or its scripts were flushed)
        is sent again, after loading the script, and never one that ran.
        """
        replies = self._evalsha_all(calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            self._append.sha = self.redis.script_load(APPEND_SCRIPT)
            again = self._evalsha_all([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _evalsha_all(self, calls: Sequence[_ScriptCall]) -> list[Any]:
        """The append script's replies to `calls`, in one pipeline; errors as values."""
        pipe = self.redis.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(self._append.sha, len(keys), *keys, *args)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        return replies

    def flush_due(self, now: datetime, *, max_groups: int = 1000) -> TickReport:
        """Flush every group whose earliest member is due at `now` (at most 100 per batch)."""
        report = TickReport()
        now_s = now.timestamp()
        due_groups = self.redis.zrangebyscore(self.keys.due, "-inf", now_s, start=0, num=max_groups)
        for raw_group in due_groups:
            group = _text(raw_group)
            while True:
                batch_id = new_id()
                ids = self._claim_due(
                    keys=[
                        self.keys.buffer(group),
                        self.keys.due,
                        self.keys.batch(batch_id),
                        self.keys.unsent,
                    ],
                    args=[group, repr(now_s), self.batch_limit],
                )
                if not ids:
                    break
                claim = Claim(batch_id, group, "time", [_text(i) for i in ids])
                self.flush(claim)
                report.flushed.append(claim)
        return report

    def flush(self, claim: Claim) -> None:
        """Record the batch in SQL, send its task, then forget the claim (in that order)."""
        self.failpoint("flush.after_claim")
        now = self.clock()
        with self.sessions() as session:
            moved = operations_repo.assign_batch_ids(
                session, claim.member_ids, claim.batch_id, claim.reason, now=now
            )
            details = {
                "batch_id": claim.batch_id,
                "batch_size": len(claim.member_ids),
                "reason": claim.reason,
            }
            operations_repo.add_logs(
                session,
                [
                    {
                        "operation_id": op_id,
                        "timestamp": now,
                        "details": details,
                        "msg": f"flushed in batch ({claim.reason})",
                    }
                    for op_id in moved
                ],
            )
            session.commit()
        self.failpoint("flush.before_send")
        self.send_flushed(claim.batch_id, installation_of(claim.group))
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(self.keys.unsent, self.keys.batch(claim.batch_id))
        # Kept a day for metrics and debugging; SQL holds the batch for good.
        pipe.expire(self.keys.batch(claim.batch_id), 86400)
        pipe.execute()
        self._record_flush(claim, now, len(moved))

    def resend_unsent(self, now: datetime) -> list[str]:
        """Finish claims whose flusher died between claim and send (older than the grace)."""
        cutoff = now.timestamp() - self.unsent_grace_s
        resent: list[str] = []
        for raw_key in self.redis.zrangebyscore(self.keys.unsent, "-inf", cutoff):
            batch_key = _text(raw_key)
            meta = {_text(k): _text(v) for k, v in self.redis.hgetall(batch_key).items()}
            batch_id = batch_key.rsplit(":", 1)[-1]
            if not meta:
                self.redis.zrem(self.keys.unsent, batch_key)
                continue
            log.warning("batch %s: claimed but not sent; sending it now", batch_id)
            claim = Claim(batch_id, meta["group"], meta["reason"], meta["members"].split(","))
            self.flush(claim)
            resent.append(batch_id)
        return resent

    def rebuffer_orphans(self, now: datetime, *, limit: int = 1000) -> list[str]:
        """Buffer again pending operations that are in no buffer and no claim.

        That happens when the API died between its commit and its append, or
        when Redis lost its data; SQL is the source of truth.
        """
        with self.sessions() as session:
            older_than = now - timedelta(seconds=self.orphan_grace_s)
            candidates = operations_repo.stale_pending(session, older_than=older_than, limit=limit)
        return self.rebuffer(candidates)

    def rebuffer(self, candidates: list[Operation]) -> list[str]:
        """Buffer those of `candidates` (pending operations) that are in no buffer or claim;
        return their ids. A buffer append that did happen is never made twice."""
        rebuffered: list[str] = []
        for op in candidates:
            group = group_key(op.installation_id, op.object_name, op.write_type)
            found = self._is_buffered(
                keys=[self.keys.buffer(group)], args=[op.id, self.keys.unsent, self.keys.namespace]
            )
            if found:
                continue
            log.warning("operation %s: pending but in no buffer; buffering it again", op.id)
            self.buffer(op)
            rebuffered.append(op.id)
        return rebuffered

    def _record_flush(self, claim: Claim, now: datetime, moved: int) -> None:
        self.recorder.count("auto_batch_flushes", reason=claim.reason)
        self.recorder.count("auto_batch_records_flushed", moved)
        self.recorder.observe("auto_batch_size", len(claim.member_ids))
        if claim.reason == "time":
            earliest_due = self.redis.hget(self.keys.batch(claim.batch_id), "earliest_due")
            if earliest_due is not None:
                lateness_s = now.timestamp() - float(earliest_due)
                self.recorder.observe("auto_batch_flush_lateness_seconds", max(lateness_s, 0.0))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
