"""Operator controls, shared by the API and `writejobs admin`: pause, resume, cancel.

* **Pause** an installation: its synchronous writes are refused (409, retryable;
  each API process sees the pause within its tenant cache's 5 s), its
  asynchronous writes are accepted and wait (`execution.gate`). The pause is a
  row in SQL, so it outlives every process.
* **Resume** it: the pause is cleared and the work it held is released at once.
* **Cancel** an asynchronous operation (`execution.cancel`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from writejobs.errors import NotFound
from writejobs.execution.cancel import CancelOutcome, cancel_operation
from writejobs.execution.deps import ExecutionDeps
from writejobs.execution.gate import release_installation
from writejobs.store import operations_repo, tenants_repo
from writejobs.store.tables import Installation

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PauseState:
    installation: Installation
    released: int = 0  # operations a resume let go


def pause(deps: ExecutionDeps, installation_id: str, *, reason: str | None, by: str) -> PauseState:
    """Pause the installation (again: keeps its first pause time, takes the new reason)."""
    with deps.sessions() as session:
        if not tenants_repo.set_paused(session, installation_id, now=deps.clock(), reason=reason):
            raise NotFound("installation not found")
        session.commit()
        installation = tenants_repo.get_installation(session, installation_id)
        assert installation is not None
        session.expunge(installation)
    log.warning("installation %s: paused by %s", installation_id, by)
    return PauseState(installation)


def resume(deps: ExecutionDeps, installation_id: str, *, by: str) -> PauseState:
    """Clear the pause and release the work it held (a no-op for one not paused)."""
    with deps.sessions() as session:
        if not tenants_repo.set_paused(session, installation_id, now=None):
            raise NotFound("installation not found")
        session.commit()
        released = release_installation(session, installation_id, deps)
        installation = tenants_repo.get_installation(session, installation_id)
        assert installation is not None
        session.expunge(installation)
    log.warning("installation %s: resumed by %s (%d released)", installation_id, by, released)
    return PauseState(installation, released)


def cancel(deps: ExecutionDeps, project_id: str, operation_id: str, *, by: str) -> CancelOutcome:
    """Cancel the project's operation; `NotFound` for one unknown to (or foreign to) it."""
    with deps.sessions() as session:
        op = operations_repo.get_project_operation(session, project_id, operation_id)
        if op is None:
            raise NotFound("Operation not found for the given operation ID.")
        return cancel_operation(session, op, now=deps.clock(), by=by)
