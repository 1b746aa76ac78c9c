"""Replaying dead letters: an operation's failed records become a new operation.

For each original (an ended operation with records that were not written), a
new asynchronous write of exactly those records goes through the normal intake
(`accept_write`: routing, the pause, webhooks, retries all apply), with
`metadata.replayOf` naming the original; both operations' logs say so. What
is replayed, by shape:

* a single record (synchronous or not) → an asynchronous write of it;
* a batch → a batch of its failed records only, in their order, with the same
  `batchPolicy` (the log maps new indices to the original's);
* an auto-batched record → auto-batched again, with a delay of one minute, so
  many replayed records share provider batches;
* a bulk upsert → refused: its CSV is deleted when it ends, so there is nothing
  to write again; a delete → refused: deletes are synchronous only.

An original is replayed once (`replay_of` is unique): replaying it again answers
with the replay it already has, so sending a replay request twice writes
nothing twice. To try again after a replay failed, replay the replay.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import IntegrityError

from writejobs.core.contract import parse_write_request
from writejobs.core.operations import TERMINAL, State
from writejobs.errors import ContractError, ReplayRefused, StoreUnavailable
from writejobs.execution.deps import ExecutionDeps
from writejobs.intake.write import Dispatch, WriteTarget, accept_write
from writejobs.store import operations_repo
from writejobs.store.tables import Operation, Project

log = logging.getLogger(__name__)

# A replayed auto-batched record waits this long for others to share its batch.
REPLAY_MAX_DELAY_MINUTES = 1


@dataclass(frozen=True, slots=True)
class Replayed:
    """What became of one original: its replay (new or earlier), or why it was skipped."""

    operation_id: str
    replay_id: str | None = None
    records: list[int] = field(default_factory=list)  # the original's indices replayed
    already: bool = False  # the replay existed before this request
    skipped: str | None = None

    def view(self) -> dict[str, Any]:
        body: dict[str, Any] = {"operationId": self.operation_id}
        if self.replay_id is not None:
            body["replayOperationId"] = self.replay_id
            body["records"] = self.records
            body["alreadyReplayed"] = self.already
        if self.skipped is not None:
            body["skipped"] = self.skipped
        return body


def failed_indices(op: Operation) -> list[int]:
    """The original's records that were not written (all of them when none was tried)."""
    rows = op.results or []
    if not rows:
        return list(range(op.record_count))
    return [i for i, row in enumerate(rows) if not row.get("success")]


def refusal(op: Operation) -> str | None:
    """Why `op` cannot be replayed, or None when it can."""
    if State(op.state) not in TERMINAL:
        return f"operation {op.id} is still in progress ({op.state}): cancel it or let it end"
    if op.shape == "bulk":
        return (
            f"operation {op.id} is a bulk upsert, which cannot be replayed: its CSV is not "
            "kept once it ends; send the rows again"
        )
    if op.write_type == "delete":
        return f"operation {op.id} is a delete, which is synchronous only: send it again"
    if not failed_indices(op):
        return f"operation {op.id} has no failed records to replay"
    return None


def replay_request(op: Operation, indices: list[int]) -> dict[str, Any]:
    """The write request of `op`'s records at `indices`, asynchronous (JSON, by alias)."""
    body = {**op.request, "mode": "asynchronous"}
    if op.shape == "batch":
        body["batch"] = [op.request["batch"][i] for i in indices]
    elif op.shape == "auto_batch":
        body["autoBatchPolicy"] = {
            **op.request["autoBatchPolicy"],
            "maxDelayMinutes": REPLAY_MAX_DELAY_MINUTES,
        }
    return body


def replay(
    project: Project,
    originals: Sequence[Operation],
    deps: ExecutionDeps,
    dispatch: Dispatch,
    *,
    by: str,
    strict: bool,
) -> list[Replayed]:
    """Replay each original's failed records; `by` says who asked (for the logs).

    `strict` (operations named by id): one that cannot be replayed refuses the
    whole request with `ReplayRefused`, before anything is written. Otherwise
    (operations found by a filter) such ones are skipped, each with its reason.
    """
    if strict:
        for op in originals:
            why = refusal(op)
            if why is not None:
                raise ReplayRefused(why)
    return [_replay_one(project, op, deps, dispatch, by=by) for op in originals]


def _replay_one(
    project: Project, op: Operation, deps: ExecutionDeps, dispatch: Dispatch, *, by: str
) -> Replayed:
    indices = failed_indices(op)
    existing = _existing(deps, op.id, indices)
    if existing is not None:
        return existing
    why = refusal(op)
    if why is not None:
        return Replayed(op.id, skipped=why)
    try:
        request = parse_write_request(json.dumps(replay_request(op, indices)).encode())
        accepted = accept_write(
            WriteTarget(project, op.integration_id, op.object_name),
            request,
            deps,
            dispatch,
            replay_of=op.id,
        )
    except IntegrityError:
        # Another replay of this original committed first: answer with it.
        return _existing(deps, op.id, indices) or Replayed(op.id, skipped="replayed concurrently")
    except (ContractError, StoreUnavailable) as exc:
        return Replayed(op.id, skipped=f"could not replay: {exc}")
    new_id = accepted.operation.id
    with deps.sessions() as session:
        now = deps.clock()
        details = {"by": by, "records": len(indices), "original_indices": indices}
        operations_repo.add_log(
            session, op.id, f"replayed as operation {new_id}", now=now, details=details
        )
        operations_repo.add_log(
            session, new_id, f"replay of operation {op.id}", now=now, details=details
        )
        session.commit()
    log.info("operation %s: replayed as %s (%d records)", op.id, new_id, len(indices))
    return Replayed(op.id, new_id, indices)


def _existing(deps: ExecutionDeps, original_id: str, indices: list[int]) -> Replayed | None:
    with deps.sessions() as session:
        replay_id = operations_repo.replay_of(session, original_id)
    if replay_id is None:
        return None
    return Replayed(original_id, replay_id, indices, already=True)
