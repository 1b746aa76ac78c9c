"""Fair-share admission: work reaches Celery per installation, in rotation.

Celery's queue is one FIFO: an installation with a backlog of 20,000 writes
would put every other installation's next write behind them, though its own
rate limit lets only a few of them run per window. So asynchronous work (an
operation's task, a flushed auto-batch, a released retry, a resend by the
sweeps) is *submitted* here rather than sent:

* when the installation has nothing waiting, the Celery queue is short
  (`queue_max`) and its rate limit has room (the calls in its limiter window
  plus the tasks admitted but not yet at a worker: `admission_room.lua`), it is
  sent at once; a lightly loaded system behaves as if it sent directly;
* otherwise it waits in the installation's ready set in Redis, and each
  scheduler pass (`admit`) moves ready work into Celery round-robin: projects
  take turns, and within a project its installations do, so neither a busy
  installation nor a project with many installations delays anyone else's
  next write; an installation gets no more per window than its limit admits,
  and the Celery queue never holds more than `queue_max` waiting tasks.

Redis holds ids only; SQL stays the truth. A task lost between the admission's
pop and its send (the process died) is still `queued` (or `retrying`) in SQL,
and the stalled sweep submits it again; the sweep skips what waits in a ready
set (`waiting`), so a long backlog is not sent twice. A duplicate delivery is
harmless anyway: the compare-and-set into `running` takes it once.

Keys, under the namespace:

    {ns}:adm:projects        list  ring of projects with ready work
    {ns}:adm:insts:{project} list  ring of the project's installations with ready work
    {ns}:adm:q:{inst}        zset  ready members (`op:<id>`, `batch:<id>`) by submit order
    {ns}:adm:seq             str   the submit counter that orders them
    {ns}:adm:w:{inst}        zset  reservations: tasks admitted, not yet at a worker, by time
    {ns}:adm:meta:{inst}     hash  project, the limiter hash of its account, start limit
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Literal

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from writejobs.clock import Clock, utcnow
from writejobs.core.flow import Account, RateLimit
from writejobs.core.operations import Routed
from writejobs.grouping.keys import Keys
from writejobs.grouping.limiter import SLACK_S, RedisRateLimiter, account_name
from writejobs.store.tables import Installation, Operation

log = logging.getLogger(__name__)

Kind = Literal["op", "batch"]
# The most tasks a scheduler pass admits in one Lua step (it loops for more).
ADMIT_CHUNK = 500
# How long a process trusts what it read of an installation (project, provider, limit).
INSTALLATION_TTL_S = 5.0


def _lua(name: str) -> str:
    here = resources.files(__package__)
    return (
        here.joinpath("admission_room.lua").read_text() + here.joinpath(f"{name}.lua").read_text()
    )


SUBMIT_SCRIPT = _lua("admission_submit")
NEXT_SCRIPT = _lua("admission_next")


@dataclass(frozen=True, slots=True)
class Route:
    """Whose work a task is: its project and installation."""

    project_id: str
    installation_id: str


@dataclass(frozen=True, slots=True)
class _Known:
    project_id: str
    account: Account
    read_at: float


class Admission:
    """Submits work for admission to Celery and admits it in rotation (see the module)."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        sessions: sessionmaker[Session],
        limiter: RedisRateLimiter,
        send: dict[str, Callable[[str], None]],
        *,
        celery_queue: str,
        queue_max: int,
        slack_s: float = SLACK_S,
        clock: Clock = utcnow,
    ) -> None:
        if queue_max < 1:
            raise ValueError(f"the Celery queue must hold at least one task, not {queue_max}")
        self.redis = client
        self.keys = keys
        self.sessions = sessions
        self.limiter = limiter
        self._send = send
        self.celery_queue = celery_queue
        self.queue_max = queue_max
        self.slack_s = slack_s
        self.clock = clock
        self._submit = client.register_script(SUBMIT_SCRIPT)
        self._next = client.register_script(NEXT_SCRIPT)
        self._known: dict[str, _Known] = {}
        # What the last `admit` pass learned: when the soonest installation left
        # waiting gets room (epoch s), or None when that is not known.
        self.next_room_at: float | None = None

    # -- submitting ---------------------------------------------------------------------

    def submit_operation(self, op: Routed) -> str:
        """Submit an accepted operation's task (its route is on the row: no lookup)."""
        return self.submit("op", op.id, Route(op.project_id, op.installation_id))

    def sender(self, kind: Kind) -> Callable[[str], None]:
        """A `send(id)` for code that knows only ids (retries, sweeps)."""

        def send(target_id: str) -> None:
            self.submit(kind, target_id)

        return send

    def submit_batch_of(self, batch_id: str, installation_id: str) -> None:
        """Submit a batch whose installation the caller knows (a flush: its group names
        it), so its route comes from the installation cache, not a query per batch."""
        known = self._installation(installation_id)
        route = None if known is None else Route(known.project_id, installation_id)
        self.submit("batch", batch_id, route)

    def submit(self, kind: Kind, target_id: str, route: Route | None = None) -> str:
        """Send now, or wait in the installation's ready set: "sent", "waiting" (it
        already waited), "queued", or "unknown" (no such work in SQL: dropped)."""
        route = route or self._route(kind, target_id)
        if route is None:
            log.warning("%s %s: no such work; not submitted", kind, target_id)
            return "unknown"
        known = self._installation(route.installation_id)
        if known is None:
            log.warning("%s %s: installation %s is gone", kind, target_id, route.installation_id)
            return "unknown"
        start = self.limiter.limit_for(known.account)
        inst = route.installation_id
        member = f"{kind}:{target_id}"
        answer = int(
            self._submit(
                keys=[
                    self._key("q", inst),
                    self._key("insts", route.project_id),
                    self._projects,
                    self._key("w", inst),
                    self._key("meta", inst),
                    self.keys.rate_limit(account_name(known.account)),
                    self.celery_queue,
                    f"{self.keys.namespace}:adm:seq",
                ],
                args=[
                    member,
                    repr(self.clock().timestamp()),
                    route.project_id,
                    inst,
                    start.max,
                    repr(start.interval_s),
                    1 if known.account.configured else 0,
                    repr(self.slack_s),
                    self.queue_max,
                ],
            )
        )
        if answer == 1:
            self._send[kind](target_id)
            return "sent"
        return "queued" if answer == 2 else "waiting"

    # -- admitting ----------------------------------------------------------------------

    def admit(self, now: datetime) -> list[str]:
        """One pass: move ready work into Celery in rotation; the members sent.

        Sets `next_room_at`, so a scheduler can come back when room frees."""
        sent: list[str] = []
        while True:
            members, next_room = self._next(
                keys=[self._projects, self.celery_queue],
                args=[
                    self.keys.namespace,
                    repr(now.timestamp()),
                    self.queue_max,
                    repr(self.slack_s),
                    ADMIT_CHUNK,
                ],
            )
            for raw in members:
                member = _text(raw)
                kind, _, target_id = member.partition(":")
                self._send[kind](target_id)
                sent.append(member)
            if len(members) < ADMIT_CHUNK:
                self.next_room_at = float(_text(next_room)) if _text(next_room) else None
                return sent

    def arrived(self, kind: str, target_id: str, installation_id: str) -> None:
        """A task reached a worker (the gate is next): its reservation is over."""
        try:
            self.redis.zrem(self._key("w", installation_id), f"{kind}:{target_id}")
        except redis.RedisError as exc:  # the reservation expires within a window anyway
            log.warning("admission reservation not released (%s)", type(exc).__name__)

    def acquire_arriving(
        self,
        kind: str,
        target_id: str,
        installation_id: str,
        account: Account,
        now: datetime,
        calls: int,
    ) -> float:
        """A task reached a worker and asks the limiter for its calls' budget: the
        limiter's `acquire`, which ends the task's reservation in the same step (so,
        as with `arrived`, never before the limiter was asked)."""
        reservation = (self._key("w", installation_id), f"{kind}:{target_id}")
        return self.limiter.acquire(account, now, calls, release=reservation)

    # -- reading ------------------------------------------------------------------------

    def waiting(self, members: Iterable[tuple[str, str]]) -> set[str]:
        """Of (installation id, member) pairs, the members that wait in a ready set."""
        pairs = list(members)
        if not pairs:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for inst, member in pairs:
            pipe.zscore(self._key("q", inst), member)
        scores = pipe.execute()
        return {member for (_inst, member), score in zip(pairs, scores, strict=True) if score}

    def backlog(self, *, top: int = 5, scan_max: int = 1000) -> tuple[int, list[tuple[str, int]]]:
        """Tasks waiting for admission: the total, and the `top` installations by backlog
        (reads at most `scan_max` installations: a gauge, not an audit)."""
        installations: list[str] = []
        for raw_project in self.redis.lrange(self._projects, 0, scan_max - 1):
            ring = self._key("insts", _text(raw_project))
            installations += [_text(i) for i in self.redis.lrange(ring, 0, scan_max - 1)]
            if len(installations) >= scan_max:
                break
        pipe = self.redis.pipeline(transaction=False)
        for inst in installations:
            pipe.zcard(self._key("q", inst))
        counts = [int(n) for n in pipe.execute()] if installations else []
        ranked = sorted(zip(installations, counts, strict=True), key=lambda p: -p[1])
        return sum(counts), [(inst, n) for inst, n in ranked[:top] if n > 0]

    # -- helpers ------------------------------------------------------------------------

    @property
    def _projects(self) -> str:
        return f"{self.keys.namespace}:adm:projects"

    def _key(self, kind: str, name: str) -> str:
        return f"{self.keys.namespace}:adm:{kind}:{name}"

    def _route(self, kind: str, target_id: str) -> Route | None:
        column = Operation.id if kind == "op" else Operation.batch_id
        statement = (
            select(Operation.project_id, Operation.installation_id)
            .where(column == target_id)
            .limit(1)
        )
        with self.sessions() as session:
            row = session.execute(statement).first()
        return Route(row[0], row[1]) if row is not None else None

    def _installation(self, installation_id: str) -> _Known | None:
        known = self._known.get(installation_id)
        if known is not None and time.monotonic() - known.read_at < INSTALLATION_TTL_S:
            return known
        with self.sessions() as session:
            row = session.get(Installation, installation_id)
            if row is None:
                return None
            account = Account(row.provider, row.id, RateLimit.from_column(row.rate_limit))
            known = _Known(row.project_id, account, time.monotonic())
        if len(self._known) > 10_000:
            self._known.clear()
        self._known[installation_id] = known
        return known


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
