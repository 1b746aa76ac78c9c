"""Keeping a long bulk attempt's lease: a big upload or a long poll must not lose it."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from sqlalchemy.orm import Session

from writejobs.errors import LeaseLost
from writejobs.execution.deps import ExecutionDeps
from writejobs.store import operations_repo


class LeaseKeeper:
    """Keeps a long attempt's lease (a big upload, a long poll) from lapsing under it."""

    def __init__(self, session: Session, operation_id: str, deps: ExecutionDeps) -> None:
        self._session = session
        self._operation_id = operation_id
        self._deps = deps
        self._every_s = deps.settings.running_lease_s / 3
        self._last = time.monotonic()
        self.bytes_sent = 0

    def renew(self, *, force: bool = False) -> None:
        """Extend the lease if a third of it has gone by (or `force`); `LeaseLost` if taken."""
        if not force and time.monotonic() - self._last < self._every_s:
            return
        lease_s = self._deps.settings.running_lease_s
        renewed = operations_repo.renew_lease(
            self._session, self._operation_id, now=self._deps.clock(), lease_s=lease_s
        )
        self._session.commit()
        if not renewed:
            raise LeaseLost(self._operation_id)
        self._last = time.monotonic()

    def paced(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """`chunks`, counted, renewing the lease as they go."""
        for chunk in chunks:
            self.bytes_sent += len(chunk)
            self.renew()
            yield chunk
