"""The fleet-wide rate limiter: one view in Redis of how fast each provider account may go.

Every API process and worker asks before a provider call, so the limit holds for
the fleet, not per process. An account's limit is a sliding window log: a call is
admitted only while fewer than `max` calls were admitted in the `interval_s`
before it (`rate_acquire.lua`, one atomic step), which is what HubSpot enforces
("100 per rolling 10 seconds"); unlike a token bucket it never lets a window hold
more than `max`. The window starts as the provider kind's default
(`DEFAULT_LIMITS`), or the installation's configured limit, and then follows what
the provider says (`learn`, `rate_learn.lua`):

- `X-HubSpot-RateLimit-Max` / `-Interval-Milliseconds` replace the window;
- `-Remaining` corrects drift: when the provider counts more calls in its window
  than we admitted (another client of the account, an answer we never saw), the
  difference is counted as made now; `remaining=0` fills the window until it ends;
- a rolling refusal (HubSpot's `TEN_SECONDLY_ROLLING`) fills the window; one that
  says `Retry-After` (Opus, any provider's 429 that has one) pauses the account that
  long instead, whatever `-Remaining` said: the provider named the time;
- a spent day (HubSpot's `DAILY`, Salesforce's `TotalRequests`, or a day reported
  with nothing left) pauses the account until the day frees: the provider does not
  say when (HubSpot resets at midnight in the account's time zone, Salesforce's day
  rolls), so the pause is `daily_pause_s` and a call then probes it;
- when more than `daily_share` (0.9) of the day is used, calls are spaced so that
  what is left lasts a day (`day_s`); the spacing is recomputed on every answer;
- Salesforce's `ConcurrentRequests` pauses the account briefly.

A slot is taken when the call is admitted and moved to when the call leaves for the
provider (`sent`, `rate_sent.lua`, from the HTTP client's request hook): the provider
counts a call from its arrival, and what runs in between (the attempt's SQL, a busy
host) must not let the next call take the slot that much early.

An installation's configured limit replaces the default and stays as a second
window the provider's headers cannot raise. The limiter is advice: when Redis
fails it lets the call go (the provider's own refusal is then retried as before).
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

import redis

from writejobs.core.flow import Account, RateLimit, RateLimitObservation
from writejobs.core.ids import new_id
from writejobs.core.recorder import NoRecorder, Recorder
from writejobs.grouping.keys import Keys

log = logging.getLogger(__name__)

# What each provider kind allows before it has said anything. HubSpot: a Free or
# Starter private app (the least any account allows; its headers then tell). Salesforce
# has no short window (its limits are the day and 25 long-running calls at once): a
# generous rate that still keeps a fleet from piling up concurrent calls. AvePoint Opus
# publishes none: a cautious one.
DEFAULT_LIMITS: dict[str, RateLimit] = {
    "hubspot": RateLimit(100, 10.0),
    "salesforce": RateLimit(25, 1.0),
    "opus": RateLimit(10, 5.0),
}
FALLBACK_LIMIT = RateLimit(10, 1.0)
DAILY_SHARE = 0.9
DAY_S = 86_400.0
DAILY_PAUSE_S = 3_600.0
CONCURRENT_PAUSE_S = 5.0
# Added to every window, so that calls admitted at the edge of a window and delayed on
# the way do not land in the provider's next one.
SLACK_S = 0.2
# How long what was learned of an idle account is kept (at least as long as a pause).
LEARNED_TTL_S = 86_400


@dataclass(frozen=True, slots=True)
class Budget:
    """Calls an account may still make in its current window, of its `limit`."""

    provider: str
    account: str
    left: int
    limit: int


def _lua(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.lua").read_text()


ACQUIRE_SCRIPT = _lua("rate_acquire")
LEARN_SCRIPT = _lua("rate_learn")
SENT_SCRIPT = _lua("rate_sent")


class RedisRateLimiter:
    """A `writejobs.core.flow.RateLimiter` over the fleet's Redis.

    `now` is the caller's clock (epoch time): the fleet's hosts must keep their
    clocks in step (NTP), as every deadline already assumes.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        defaults: dict[str, RateLimit] | None = None,
        daily_share: float = DAILY_SHARE,
        day_s: float = DAY_S,
        daily_pause_s: float = DAILY_PAUSE_S,
        concurrent_pause_s: float = CONCURRENT_PAUSE_S,
        slack_s: float = SLACK_S,
        recorder: Recorder | None = None,
    ) -> None:
        if not 0 < daily_share <= 1:
            raise ValueError(f"daily_share is a share of the day, in (0, 1], not {daily_share}")
        self.keys = keys
        self.defaults = DEFAULT_LIMITS if defaults is None else defaults
        self.daily_share = daily_share
        self.day_s = day_s
        self.daily_pause_s = daily_pause_s
        self.concurrent_pause_s = concurrent_pause_s
        self.slack_s = slack_s
        self.recorder: Recorder = recorder or NoRecorder()
        self._redis = client
        self._acquire = client.register_script(ACQUIRE_SCRIPT)
        self._learn = client.register_script(LEARN_SCRIPT)
        self._sent = client.register_script(SENT_SCRIPT)

    def limit_for(self, account: Account) -> RateLimit:
        """The window an account starts with: its configured limit, or its kind's default."""
        return account.configured or self.defaults.get(account.provider, FALLBACK_LIMIT)

    def try_acquire(
        self,
        account: Account,
        now: datetime,
        calls: int = 1,
        *,
        release: tuple[str, str] | None = None,
    ) -> tuple[bool, float]:
        """Take `calls` slots at `now`: (True, 0.0), or (False, seconds until they may be free).

        An attempt that makes more calls than a window holds takes a whole window.
        `release` (a sorted set and a member) is removed in the same step, granted or
        not: the asking task's admission reservation (`grouping.admission`), for no
        round trip of its own.
        """
        if calls < 1:
            raise ValueError(f"an attempt makes at least one call, not {calls}")
        start = self.limit_for(account)
        cap = account.configured
        name = account_name(account)
        keys = [
            self.keys.rate_limit(name),
            self.keys.rate_window(name),
            self.keys.rate_cap_window(name),
            self.keys.rate_accounts,
        ]
        args: list[str | int] = [
            repr(now.timestamp()),
            start.max,
            repr(start.interval_s),
            cap.max if cap else 0,
            repr(cap.interval_s if cap else 0.0),
            repr(self.slack_s),
            new_id(),
            calls,
            name,
        ]
        if release is not None:
            keys.append(release[0])
            args.append(release[1])
        try:
            granted, wait = self._acquire(keys=keys, args=args)
        except redis.RedisError as exc:
            log.warning("rate limiter unavailable (%s): call not paced", type(exc).__name__)
            return True, 0.0
        if int(granted) == 1:
            return True, 0.0
        wait_s = max(float(wait), 0.0)
        self.recorder.count("limiter_refusals", provider=account.provider)
        self.recorder.observe("limiter_wait_seconds", wait_s, provider=account.provider)
        return False, wait_s

    def acquire(
        self,
        account: Account,
        now: datetime,
        calls: int = 1,
        *,
        release: tuple[str, str] | None = None,
    ) -> float:
        """0.0: the calls may go now (their slots are taken); otherwise seconds to wait."""
        return self.try_acquire(account, now, calls, release=release)[1]

    def sent(self, account: Account, now: datetime) -> None:
        """A call of `account` leaves for the provider at `now`: one slot admitted for it
        (by `try_acquire`, not yet sent) is moved to `now`; none: nothing changes."""
        name = account_name(account)
        try:
            self._sent(
                keys=[self.keys.rate_window(name), self.keys.rate_cap_window(name)],
                args=[repr(now.timestamp())],
            )
        except redis.RedisError as exc:
            log.warning("rate limit slot not moved (%s)", type(exc).__name__)

    def learn(self, account: Account, observation: RateLimitObservation, now: datetime) -> None:
        """Fold one provider answer into the account's limit (see the module docstring)."""
        at = now.timestamp()
        window = ("", "")
        if observation.max and observation.interval_s:
            window = (str(observation.max), repr(observation.interval_s))
        used = ""
        if observation.max is not None and observation.remaining is not None:
            used = str(max(observation.max - observation.remaining, 0))
        pause_s: float | None = None
        if observation.policy == "daily" or observation.daily_remaining == 0:
            pause_s = observation.reset_after_s or observation.retry_after_s or self.daily_pause_s
        elif observation.policy == "concurrent":
            pause_s = observation.retry_after_s or self.concurrent_pause_s
        elif observation.policy == "rolling":
            if observation.retry_after_s is not None:
                # The provider said when to come back: that, not a whole window.
                pause_s, used = observation.retry_after_s, ""
            else:
                used = "full"
        if observation.refused:
            assert observation.policy is not None
            self.recorder.count(
                "provider_429s", provider=account.provider, policy=observation.policy
            )
        ttl_s = max(LEARNED_TTL_S, math.ceil(pause_s or 0) + 60)
        name = account_name(account)
        start = self.limit_for(account)
        try:
            self._learn(
                keys=[self.keys.rate_limit(name), self.keys.rate_window(name)],
                args=[
                    repr(at),
                    start.max,
                    repr(start.interval_s),
                    *window,
                    used,
                    "" if pause_s is None else repr(at + pause_s),
                    self._daily_gap(observation),
                    ttl_s,
                    "p:" + new_id()[:13],
                    repr(self.slack_s),
                ],
            )
        except redis.RedisError as exc:
            log.warning("rate limit not learned (%s)", type(exc).__name__)

    def budgets(self, now: datetime, *, recent: int = 100, top: int = 10) -> list[Budget]:
        """Calls left in the current window of the `recent` accounts that asked last, the
        `top` with the least left: the budget gauge's rows (a bounded label set)."""
        names = [_text(n) for n in self._redis.zrevrange(self.keys.rate_accounts, 0, recent - 1)]
        if not names:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.hmget(self.keys.rate_limit(name), "max", "interval_s", "paused_until")
            pipe.zrangebyscore(self.keys.rate_window(name), "-inf", "+inf", withscores=True)
        replies = pipe.execute()
        at = now.timestamp()
        rows: list[Budget] = []
        for i, name in enumerate(names):
            learned, window = replies[2 * i], replies[2 * i + 1]
            provider, _, key = name.partition(":")
            start = self.defaults.get(provider, FALLBACK_LIMIT)
            limit = int(_text(learned[0])) if learned[0] else start.max
            span = float(_text(learned[1])) if learned[1] else start.interval_s
            used = sum(1 for _member, score in window if score > at - span - self.slack_s)
            paused = bool(learned[2]) and float(_text(learned[2])) > at
            rows.append(Budget(provider, key, 0 if paused else max(limit - used, 0), limit))
        rows.sort(key=lambda b: (b.left / b.limit, b.account))
        # Old entries of the registry go: it indexes only accounts still in use.
        self._redis.zremrangebyscore(self.keys.rate_accounts, "-inf", at - LEARNED_TTL_S)
        return rows[:top]

    def _daily_gap(self, observation: RateLimitObservation) -> str:
        """Seconds between calls so the day's rest lasts a day; '0' to stop; '' to leave."""
        total, left = observation.daily_max, observation.daily_remaining
        if not total or left is None:
            return ""
        if left == 0 or (total - left) / total < self.daily_share:
            return "0"
        return repr(self.day_s / left)


class SentInBackground:
    """`RedisRateLimiter.sent`, from a thread of this process's own, so a call does not
    wait a Redis round trip to leave.

    `mark` takes the moment the call leaves; the slot moves to exactly that moment a
    little later (while the call is on its way), never to a later one. Until then the
    slot counts in its window as admitted, at the earlier time it was taken: the few
    milliseconds are well inside the `SLACK_S` every window adds. Marks not sent when
    the process ends are lost, and those slots keep their admitted time. A forked
    child starts a thread of its own.
    """

    def __init__(self, limiter: RedisRateLimiter) -> None:
        self._limiter = limiter
        self._lock = threading.Lock()
        self._marks: queue.SimpleQueue[tuple[Account, datetime]] = queue.SimpleQueue()
        self._pid: int | None = None

    def mark(self, account: Account, now: datetime) -> None:
        """A call of `account` leaves for the provider at `now`."""
        if self._pid != os.getpid():
            self._start()
        self._marks.put((account, now))

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            # A forked child inherits the parent's queue but not its thread.
            self._marks = queue.SimpleQueue()
            threading.Thread(target=self._run, name="limiter-sent", daemon=True).start()
            self._pid = os.getpid()

    def _run(self) -> None:
        marks = self._marks
        while True:
            account, at = marks.get()
            try:
                self._limiter.sent(account, at)
            except Exception:  # pacing is advice: the next mark goes all the same
                log.warning("rate limit slot not moved", exc_info=True)


def account_name(account: Account) -> str:
    """The account's name in Redis keys: `provider:key`."""
    return f"{account.provider}:{account.key}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
