"""Who may write where, cached: API keys, integrations and installations by their keys.

Every write needs the caller's project, the integration and the installation;
reading them from SQL on every request cost more than the write itself. They
change rarely, so each answer is kept for `ttl_s` seconds (5 by default): a key
revoked or a deletion setting changed takes effect within that time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from writejobs.store import tenants_repo
from writejobs.store.tables import Installation, Integration, Project

T = TypeVar("T")


class TtlCache(Generic[T]):
    """A tiny thread-safe cache whose entries (misses included) live `ttl_s` seconds."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[Hashable, tuple[float, T | None]] = {}
        self._lock = threading.Lock()

    def peek(self, key: Hashable) -> tuple[bool, T | None]:
        """(True, value) for a live entry, (False, None) when it must be loaded."""
        with self._lock:
            hit = self._entries.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return True, hit[1]
        return False, None

    def get(self, key: Hashable, load: Callable[[], T | None]) -> T | None:
        found, cached = self.peek(key)
        if found:
            return cached
        now = time.monotonic()
        value = load()
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = (now + self.ttl_s, value)
        return value


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
        """The project, only if the cache already holds it: no SQL, so an event loop may call it."""
        return self._projects.peek(tenants_repo.hash_api_key(plain_key))[1]

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

    def _load(self, query: Callable[[Session], T | None]) -> T | None:
        with self.sessions() as session:
            found = query(session)
            if found is not None:
                session.expunge(found)  # a detached snapshot, safe to share between threads
            return found
