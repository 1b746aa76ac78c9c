"""Accepting a bulk CSV upsert: check where it goes and what it names, record it, queue it.

Like every write, it is an operation row (and, for an inline CSV, the CSV in
`operation_payloads`) committed before the client hears its id. A `recordsURL`
is checked here as far as it can be without fetching it: scheme, and the
addresses its host resolves to. Its redirects, if any, are checked by the worker
on the way, hop by hop (`writejobs.execution.fetch_guard`).
"""

from __future__ import annotations

import logging
from datetime import timedelta

import httpx

from writejobs.core.bulk_contract import BulkUpsertRequest
from writejobs.core.contract import RetryPolicy
from writejobs.core.operations import State
from writejobs.errors import ContractError, FetchFailed, UnsafeUrl
from writejobs.execution.deps import ExecutionDeps
from writejobs.execution.fetch_guard import check_url
from writejobs.intake.handoff import hand_off, recording
from writejobs.intake.idempotency import KeyClaim, accepted_answer
from writejobs.intake.write import Dispatch, WriteTarget, find_installation, new_operation
from writejobs.providers.salesforce import PROVIDER as SALESFORCE
from writejobs.store import idempotency_repo, operations_repo
from writejobs.store.tables import Installation, Operation

log = logging.getLogger(__name__)

# The contract gives a bulk write no retry policy; it gets the asynchronous default.
DEADLINE_HOURS = RetryPolicy().deadline_hours


def accept_bulk_upsert(
    target: WriteTarget,
    request: BulkUpsertRequest,
    csv_content: bytes | None,
    deps: ExecutionDeps,
    dispatch: Dispatch,
    claim: KeyClaim | None = None,
) -> Operation:
    """Commit the operation (and its inline CSV, and the `claim`'s idempotency key,
    `done` with the answer), then hand its task off; the operation.

    Raises `NotFound` for an unknown integration, `ContractError` for an
    installation that is not Salesforce or a `recordsURL` we refuse to fetch,
    and `StoreUnavailable` when the row cannot be committed; Redis being down is
    no error (see `writejobs.intake.handoff`).
    """
    with recording():
        installation = find_installation(target, request.group_ref, dispatch.directory)
    if installation.provider != SALESFORCE:
        raise ContractError(
            f"bulk CSV upserts go to Salesforce only; this installation is {installation.provider}"
        )
    if request.records_url is not None:
        refuse_unsafe_url(request.records_url, deps.settings.allowed_http_hosts)
    op = _new_operation(target, request, installation, deps)
    with recording(), deps.sessions() as session:
        if claim is not None:
            key = claim.row(op.id, op.created_at, accepted_answer(op.id))
            idempotency_repo.insert_keys(session, [key])
        operations_repo.insert_operation(session, op)
        if csv_content is not None:
            operations_repo.store_payload(session, op.id, csv_content)
        source = "recordsCSV" if csv_content is not None else "recordsURL"
        details: dict[str, object] = {
            "mode": "bulk",
            "type": "upsert",
            "source": source,
            "primaryKey": request.primary_key,
        }
        if csv_content is not None:
            details["bytes"] = len(csv_content)
        operations_repo.add_log(
            session, op.id, "bulk upsert accepted", now=op.created_at, details=details
        )
        session.commit()
    hand_off(op, dispatch, deps)
    return op


def refuse_unsafe_url(url: str, allowed_http_hosts: frozenset[str]) -> None:
    """Raise `ContractError` for a `recordsURL` that must never be fetched.

    A host that does not resolve now is let through: DNS may be down for a
    moment, and the worker checks again (and fails the write) when it fetches.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ContractError(f"recordsURL is not a valid URL: {exc}") from None
    try:
        check_url(parsed, allowed_http_hosts)
    except UnsafeUrl as exc:
        raise ContractError(str(exc)) from None
    except FetchFailed:
        pass


def _new_operation(
    target: WriteTarget,
    request: BulkUpsertRequest,
    installation: Installation,
    deps: ExecutionDeps,
) -> Operation:
    now = deps.clock()
    deadline_s = DEADLINE_HOURS * 3600 * deps.settings.policy_time_scale
    return new_operation(
        target,
        installation,
        now,
        write_type="upsert",
        mode="bulk",
        shape="bulk",
        request=request.stored(),
        state=State.QUEUED.value,
        # Unknown until Salesforce has read the CSV; the job's counters fill it in.
        record_count=0,
        deadline_at=now + timedelta(seconds=deadline_s),
    )
