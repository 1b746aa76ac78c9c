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
CHUNK = 25
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
    """Make one attempt at each of these deliveries, in order; count the outcomes."""
    outcomes: dict[str, int] = {}
    with deps.sessions() as session:
        for delivery in webhook_outbox.load(session, delivery_ids):
            outcome = _deliver_one(session, delivery, deps)
            if outcome is not None:
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


def _deliver_one(session: Session, delivery: WebhookDelivery, deps: WebhookDeps) -> str | None:
    now = deps.clock()
    if delivery.state != "pending" or as_utc(delivery.next_attempt_at) > now:
        return None
    destination = session.get(WebhookDestination, delivery.destination_id)
    if destination is None or not destination.enabled:
        webhook_outbox.settle(
            session, delivery.id, delivery.attempts, state="abandoned", status_code=None, now=now
        )
        session.commit()
        deps.recorder.count("webhook_deliveries", outcome="abandoned")
        return "abandoned"
    hold_s = deps.settings.webhook_timeout_s + deps.settings.webhook_resend_after_s
    if not webhook_outbox.take(session, delivery, now=now, hold_s=hold_s):
        session.rollback()
        return None
    attempt = delivery.attempts + 1
    payload = delivery.payload
    if payload is None:
        payload = _payload(session, delivery.operation_id, deps.settings)
        webhook_outbox.store_payload(session, delivery.id, payload)
    session.commit()
    secret = webhook_destinations.secret_of(destination, deps.cipher)
    deps.failpoint("webhook.before_send")
    sent = post(
        deps.client,
        destination.url,
        payload,
        signed_headers(secret, delivery.event_id, payload, deps.clock()),
        allowed_http_hosts=deps.settings.allowed_http_hosts,
    )
    return _conclude(session, delivery, destination, attempt, sent, deps)


def _conclude(
    session: Session,
    delivery: WebhookDelivery,
    destination: WebhookDestination,
    attempt: int,
    sent: Sent,
    deps: WebhookDeps,
) -> str:
    now = deps.clock()
    webhook_outbox.record_attempt(
        session,
        delivery.id,
        at=now,
        status_code=sent.status_code,
        latency_ms=sent.latency_ms,
        excerpt=sent.excerpt,
    )
    if sent.delivered:
        webhook_outbox.settle(
            session, delivery.id, attempt, state="delivered", status_code=sent.status_code, now=now
        )
        webhook_destinations.note_success(session, destination.id)
        session.commit()
        lag_s = max((now - as_utc(delivery.created_at)).total_seconds(), 0.0)
        deps.recorder.observe("webhook_delivery_lag_seconds", lag_s)
        deps.recorder.count("webhook_deliveries", outcome="delivered")
        return "delivered"
    run, since = webhook_destinations.note_failure(session, destination.id, now=now)
    what = f"HTTP {sent.status_code}" if sent.status_code is not None else "no answer"
    log.info(
        "webhook delivery %s (operation %s) attempt %d to destination %s: %s",
        delivery.id,
        delivery.operation_id,
        attempt,
        destination.id,
        what,
    )
    settings = deps.settings
    if should_disable(
        run,
        as_utc(since),
        now,
        disable_after_s=settings.webhook_disable_after_s,
        disable_after_failures=settings.webhook_disable_after_failures,
    ):
        reason = f"{run} failed attempts in a row since {iso(as_utc(since))} (last: {what})"
        if webhook_destinations.disable(session, destination.id, reason, now=now):
            log.warning("webhook destination %s disabled: %s", destination.id, reason)
        session.commit()
        deps.recorder.count("webhook_deliveries", outcome="abandoned")
        return "abandoned"
    at = next_delivery_at(attempt, as_utc(delivery.created_at), now, deps.policy, deps.rng)
    state = "pending" if at is not None else "failed"
    webhook_outbox.settle(
        session,
        delivery.id,
        attempt,
        state=state,
        status_code=sent.status_code,
        now=now,
        next_attempt_at=at,
    )
    session.commit()
    outcome = "retrying" if at is not None else "failed"
    if at is None:
        log.warning(
            "webhook delivery %s (operation %s): no 2xx within the retry window, %d attempts",
            delivery.id,
            delivery.operation_id,
            attempt,
        )
    deps.recorder.count("webhook_deliveries", outcome=outcome)
    return outcome


def _payload(session: Session, operation_id: str, settings: Settings) -> str:
    op = session.get(Operation, operation_id)
    assert op is not None, f"delivery of unknown operation {operation_id}"
    installation = session.get(Installation, op.installation_id)
    integration = session.get(Integration, op.integration_id)
    assert installation is not None and integration is not None
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
