"""Who may write where, cached: API keys, integrations and installations by their keys.

Every write needs the caller's project, the integration and the installation;
reading them from SQL on every request cost more than the write itself. They
change rarely, so each answer is kept for `ttl_s` seconds (5 by default): a key
revoked or a deletion setting changed takes effect within that time. Each cache
is bounded in bytes and drops expired entries as it goes (`TtlCache`). The
intake's fast lane only peeks (it runs on the event loop); its peeks renew an
entry in use shortly before it lapses, so the lane does not hand every request
to the app for a moment every five seconds.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from writejobs.store import tenants_repo
from writejobs.store.tables import Installation, Integration, Project

T = TypeVar("T")
log = logging.getLogger(__name__)
# An entry this close to lapsing (a share of the TTL) is reloaded ahead on a peek.
REFRESH_AHEAD_SHARE = 0.2


class TtlCache(Generic[T]):
    """A thread-safe cache whose entries (misses included) live `ttl_s` seconds.

    Misses are cached too, so a flood of unknown keys costs one query per key and
    TTL; but then the keys are the caller's to choose, so the cache is bounded by
    what it holds, not by a count: each entry weighs its key's size plus
    `entry_bytes` for the value, and the total stays under `max_bytes`. Entries are
    kept in the order they were stored, which is the order they expire in (one TTL
    for all), so each store drops the expired ones from the front, then the
    oldest while over budget.
    """

    def __init__(
        self,
        ttl_s: float,
        *,
        max_bytes: int = 16 * 1024 * 1024,
        entry_bytes: int = 2048,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.entry_bytes = entry_bytes
        self._clock = clock
        # key -> (expires at, value, weight in bytes)
        self._entries: dict[Hashable, tuple[float, T | None, int]] = {}
        self._weight_bytes = 0
        self._lock = threading.Lock()
        self._refreshing: set[Hashable] = set()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def weight_bytes(self) -> int:
        """What the entries held weigh, by the estimate the budget is kept in."""
        return self._weight_bytes

    def peek(
        self, key: Hashable, refresh: Callable[[], T | None] | None = None
    ) -> tuple[bool, T | None]:
        """(True, value) for a live entry, (False, None) when it must be loaded.

        With `refresh`, a live entry in the last fifth of its life is reloaded by a
        thread of its own (one at a time per key), so an entry in steady use is
        renewed before it lapses and an event loop that may only peek never finds
        it gone. What is served is still never older than the TTL.
        """
        with self._lock:
            hit = self._entries.get(key)
        now = self._clock()
        if hit is None or hit[0] <= now:
            return False, None
        if refresh is not None and hit[0] - now < self.ttl_s * REFRESH_AHEAD_SHARE:
            self._refresh_soon(key, refresh)
        return True, hit[1]

    def get(self, key: Hashable, load: Callable[[], T | None]) -> T | None:
        found, cached = self.peek(key)
        if found:
            return cached
        value = load()
        self._store(key, value)
        return value

    def _store(self, key: Hashable, value: T | None) -> None:
        weight = self.entry_bytes + _key_bytes(key)
        with self._lock:
            now = self._clock()
            old = self._entries.pop(key, None)
            if old is not None:
                self._weight_bytes -= old[2]
            self._entries[key] = (now + self.ttl_s, value, weight)
            self._weight_bytes += weight
            self._evict(now)

    def _refresh_soon(self, key: Hashable, load: Callable[[], T | None]) -> None:
        with self._lock:
            if key in self._refreshing:
                return
            self._refreshing.add(key)

        def refresh() -> None:
            try:
                self._store(key, load())
            except Exception:  # the entry lapses as it would have; a request loads it
                log.warning("a tenant directory refresh failed", exc_info=True)
            finally:
                with self._lock:
                    self._refreshing.discard(key)

        threading.Thread(target=refresh, name="directory-refresh", daemon=True).start()

    def _evict(self, now: float) -> None:
        while self._entries:
            key, (expires_at, _value, weight) = next(iter(self._entries.items()))
            if expires_at > now and self._weight_bytes <= self.max_bytes:
                return
            del self._entries[key]
            self._weight_bytes -= weight


def _key_bytes(key: Hashable) -> int:
    """The memory a key holds: the object, and each part of a tuple key."""
    if isinstance(key, tuple):
        return sys.getsizeof(key) + sum(sys.getsizeof(part) for part in key)
    return sys.getsizeof(key)


class TenantDirectory:
    """Cached lookups of projects by API key, integrations and installations."""

    def __init__(self, sessions: sessionmaker[Session], ttl_s: float = 5.0) -> None:
        self.sessions = sessions
        self._projects: TtlCache[Project] = TtlCache(ttl_s)
        self._integrations: TtlCache[Integration] = TtlCache(ttl_s)
        self._installations: TtlCache[Installation] = TtlCache(ttl_s)

    def project_for_api_key(self, plain_key: str) -> Project | None:
        key_hash = tenants_repo.hash_api_key(plain_key)
        return self._projects.get(
            key_hash, lambda: self._load(lambda s: tenants_repo.project_for_api_key(s, plain_key))
        )

    def cached_project_for_api_key(self, plain_key: str) -> Project | None:
        """The project, only if the cache already holds it: no SQL, so an event loop may
        call it (an entry about to lapse is reloaded in a thread)."""
        key_hash = tenants_repo.hash_api_key(plain_key)
        return self._projects.peek(
            key_hash, lambda: self._load(lambda s: tenants_repo.project_for_api_key(s, plain_key))
        )[1]

    def integration(self, project_id: str, id_or_name: str) -> Integration | None:
        return self._integrations.get(
            (project_id, id_or_name),
            lambda: self._load(lambda s: tenants_repo.find_integration(s, project_id, id_or_name)),
        )

    def installation(self, integration_id: str, group_ref: str) -> Installation | None:
        return self._installations.get(
            (integration_id, group_ref),
            lambda: self._load(
                lambda s: tenants_repo.find_installation(s, integration_id, group_ref)
            ),
        )

    def knows(self, project_id: str, integration_id_or_name: str, group_ref: str) -> bool:
        """Whether a write's route is answered from the cache alone (no SQL): an event
        loop may then route it itself. A cached miss counts: it answers 404 at once."""
        found, integration = self._integrations.peek(
            (project_id, integration_id_or_name),
            lambda: self._load(
                lambda s: tenants_repo.find_integration(s, project_id, integration_id_or_name)
            ),
        )
        if not found:
            return False
        if integration is None:
            return True
        integration_id = integration.id
        return self._installations.peek(
            (integration_id, group_ref),
            lambda: self._load(
                lambda s: tenants_repo.find_installation(s, integration_id, group_ref)
            ),
        )[0]

    def _load(self, query: Callable[[Session], T | None]) -> T | None:
        with self.sessions() as session:
            found = query(session)
            if found is not None:
                session.expunge(found)  # a detached snapshot, safe to share between threads
            return found
