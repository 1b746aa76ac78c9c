"""Delivering `write.async.done` notifications: the sweep that sends, the task that POSTs.

The outbox rows are committed with the operation's end (`store.webhook_outbox`).
The scheduler's sweep (`dispatch_due`, every pass) claims the rows that are due
(new ones, and retries whose wait is over) and sends Celery tasks on the
webhooks queue, each with up to `CHUNK` delivery ids of one destination; a task
lost with a killed worker leaves its rows claimed only until
`webhook_resend_after_s`, after which the sweep sends them again. The task
(`deliver`, never inside a write task) takes each row by compare-and-set, POSTs
it signed, records the attempt and either ends the row or schedules its retry
(`core.webhook_policy`); a destination whose failures run too long is disabled,
its pending rows abandoned. Payloads and secrets are never logged: ids only.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from writejobs.clock import Clock, as_utc, iso
from writejobs.core.operations import public_status
from writejobs.core.recorder import NoRecorder, Recorder
from writejobs.core.webhook_payload import Finished, render
from writejobs.core.webhook_policy import RetryPolicy, next_delivery_at, should_disable
from writejobs.execution.webhook_http import Sent, post, signed_headers
from writejobs.failpoints import no_failpoint
from writejobs.settings import Settings
from writejobs.store import webhook_destinations, webhook_outbox
from writejobs.store.secrets import CredentialCipher
from writejobs.store.tables import Installation, Integration, Operation
from writejobs.store.webhook_tables import WebhookDelivery, WebhookDestination

log = logging.getLogger(__name__)

# Deliveries per task: one destination's, sent one after another on a kept-alive connection.
CHUNK = 50
# Rows claimed per sweep; the rest wait for the next pass (a fifth of a second later).
SWEEP_LIMIT = 1000


def dispatch_due(
    sessions: sessionmaker[Session],
    send: Callable[[list[int]], None],
    *,
    now: datetime,
    hold_s: float,
    limit: int = SWEEP_LIMIT,
) -> list[int]:
    """Claim the deliveries that are due and send their tasks; return the ids sent."""
    with sessions() as session:
        claimed = webhook_outbox.claim_due(session, now=now, hold_s=hold_s, limit=limit)
        session.commit()
    by_destination: dict[str, list[int]] = {}
    for claim in claimed:
        by_destination.setdefault(claim.destination_id, []).append(claim.delivery_id)
    sent: list[int] = []
    for ids in by_destination.values():
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            send(chunk)
            sent.extend(chunk)
    return sent


@dataclass(frozen=True, slots=True)
class WebhookDeps:
    """What delivering needs, injected so tests drive each part."""

    settings: Settings
    sessions: sessionmaker[Session]
    client: httpx.Client
    cipher: CredentialCipher
    clock: Clock
    recorder: Recorder = field(default_factory=NoRecorder)
    failpoint: Callable[[str], None] = no_failpoint
    rng: random.Random = field(default_factory=random.Random)

    @property
    def policy(self) -> RetryPolicy:
        s = self.settings
        return RetryPolicy(
            s.webhook_retry_base_s, s.webhook_retry_max_delay_s, s.webhook_retry_window_s
        )


def deliver(delivery_ids: list[int], deps: WebhookDeps) -> dict[str, int]:
    """Make one attempt at each of these deliveries, in order; count the outcomes.

    The rows are taken together, POSTed one after another, and settled together,
    so a chunk costs a handful of statements, not a handful per delivery.
    """
    now = deps.clock()
    counts: dict[str, int] = {}
    with deps.sessions() as session:
        rows = [r for r in webhook_outbox.load(session, delivery_ids) if r.state == "pending"]
        destinations = webhook_destinations.get_many(session, {r.destination_id for r in rows})
        off = [r.id for r in rows if not _on(destinations.get(r.destination_id))]
        webhook_outbox.abandon(session, off)
        live = [r for r in rows if r.id not in off]
        # Held while the whole chunk may take, so no other task sends these meanwhile.
        hold_s = len(live) * deps.settings.webhook_timeout_s + deps.settings.webhook_resend_after_s
        taken = webhook_outbox.take(session, [r.id for r in live], now=now, hold_s=hold_s)
        mine = [r for r in live if r.id in taken]
        missing = [r for r in mine if r.payload is None]
        made = _payloads(session, missing, deps.settings)
        webhook_outbox.store_payloads(session, made)
        session.commit()
        if off:
            counts["abandoned"] = len(off)
            deps.recorder.count("webhook_deliveries", len(off), outcome="abandoned")
        sent: list[tuple[WebhookDelivery, Sent, datetime]] = []
        for row in mine:
            payload = row.payload or made[row.id]
            secret = webhook_destinations.secret_of(destinations[row.destination_id], deps.cipher)
            deps.failpoint("webhook.before_send")
            result = post(
                deps.client,
                destinations[row.destination_id].url,
                payload,
                signed_headers(secret, row.event_id, payload, deps.clock()),
                allowed_http_hosts=deps.settings.allowed_http_hosts,
            )
            sent.append((row, result, deps.clock()))
        for outcome, n in _conclude(session, sent, taken, destinations, deps).items():
            counts[outcome] = counts.get(outcome, 0) + n
    return counts


def _on(destination: WebhookDestination | None) -> bool:
    return destination is not None and destination.enabled


def _conclude(
    session: Session,
    sent: list[tuple[WebhookDelivery, Sent, datetime]],
    taken: dict[int, int],
    destinations: dict[str, WebhookDestination],
    deps: WebhookDeps,
) -> dict[str, int]:
    """Record the attempts, end or reschedule each row, and bring the destinations'
    failure runs up to date (disabling those past the threshold); one commit."""
    outcomes: list[webhook_outbox.Outcome] = []
    counts: dict[str, int] = {}
    lags: list[float] = []
    for row, result, at in sent:
        attempt = taken[row.id]
        if result.delivered:
            state, next_at = "delivered", None
            lags.append(max((at - as_utc(row.created_at)).total_seconds(), 0.0))
        else:
            next_at = next_delivery_at(attempt, as_utc(row.created_at), at, deps.policy, deps.rng)
            state = "pending" if next_at is not None else "failed"
            _log_failure(row, attempt, result, next_at)
        outcome = "retrying" if state == "pending" else state
        counts[outcome] = counts.get(outcome, 0) + 1
        outcomes.append(
            webhook_outbox.Outcome(
                row.id,
                attempt,
                state,
                at,
                result.status_code,
                result.latency_ms,
                result.excerpt,
                next_at,
            )
        )
    webhook_outbox.settle(session, outcomes)
    for destination_id in {row.destination_id for row, _, _ in sent}:
        mine = [(result, at) for row, result, at in sent if row.destination_id == destination_id]
        _update_run(session, destinations[destination_id], mine, deps)
    session.commit()
    for outcome, n in counts.items():
        deps.recorder.count("webhook_deliveries", n, outcome=outcome)
    for lag_s in lags:
        deps.recorder.observe("webhook_delivery_lag_seconds", lag_s)
    return counts


def _update_run(
    session: Session,
    destination: WebhookDestination,
    attempts: list[tuple[Sent, datetime]],
    deps: WebhookDeps,
) -> None:
    last_ok = max((i for i, (r, _) in enumerate(attempts) if r.delivered), default=-1)
    after = attempts[last_ok + 1 :]
    if last_ok < 0 and not after:
        return
    run, since = webhook_destinations.note_run(
        session,
        destination.id,
        succeeded=last_ok >= 0,
        failures=len(after),
        first_failure_at=after[0][1] if after else None,
    )
    if not after or since is None:
        return
    settings = deps.settings
    now = after[-1][1]
    if should_disable(
        run,
        as_utc(since),
        now,
        disable_after_s=settings.webhook_disable_after_s,
        disable_after_failures=settings.webhook_disable_after_failures,
    ):
        last = after[-1][0]
        what = f"HTTP {last.status_code}" if last.status_code is not None else "no answer"
        reason = f"{run} failed attempts in a row since {iso(as_utc(since))} (last: {what})"
        if webhook_destinations.disable(session, destination.id, reason, now=now):
            log.warning("webhook destination %s disabled: %s", destination.id, reason)


def _log_failure(
    row: WebhookDelivery, attempt: int, result: Sent, next_at: datetime | None
) -> None:
    what = f"HTTP {result.status_code}" if result.status_code is not None else "no answer"
    if next_at is None:
        log.warning(
            "webhook delivery %s (operation %s): %s at attempt %d, the retry window is over",
            row.id,
            row.operation_id,
            what,
            attempt,
        )
    else:
        log.info(
            "webhook delivery %s (operation %s): %s at attempt %d, again at %s",
            row.id,
            row.operation_id,
            what,
            attempt,
            iso(next_at),
        )


def _payloads(session: Session, rows: list[WebhookDelivery], settings: Settings) -> dict[int, str]:
    """The bodies of rows first attempted now, from their (ended, unchanging) operations."""
    if not rows:
        return {}
    ids = {r.operation_id for r in rows}
    ops = {op.id: op for op in session.scalars(select(Operation).where(Operation.id.in_(ids)))}
    # Loaded together and kept referenced: the session's identity map holds them weakly.
    installations = {
        i.id: i
        for i in session.scalars(
            select(Installation).where(
                Installation.id.in_({o.installation_id for o in ops.values()})
            )
        )
    }
    integrations = {
        i.id: i
        for i in session.scalars(
            select(Integration).where(Integration.id.in_({o.integration_id for o in ops.values()}))
        )
    }
    return {
        r.id: _payload(
            ops[r.operation_id],
            installations[ops[r.operation_id].installation_id],
            integrations[ops[r.operation_id].integration_id],
            settings,
        )
        for r in rows
    }


def _payload(
    op: Operation, installation: Installation, integration: Integration, settings: Settings
) -> str:
    finished = Finished(
        operation_id=op.id,
        project_id=op.project_id,
        provider=installation.provider,
        integration_id=op.integration_id,
        integration_name=integration.name,
        installation_id=op.installation_id,
        group_ref=installation.group_ref,
        object_name=op.object_name,
        state=op.state,
        status=public_status(op.state),
        shape=op.shape,
        write_type=op.write_type,
        record_count=op.record_count,
        success_count=op.success_count,
        failure_count=op.failure_count,
        results=list(op.results or []),
        errors=list(op.errors or []),
        finished_at=iso(op.updated_at),
        batch_id=op.batch_id,
        flush_reason=op.flush_reason,
    )
    url = f"{settings.effective_public_api_url}/v1/projects/{op.project_id}/operations/{op.id}"
    return render(finished, url)
