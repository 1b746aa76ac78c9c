"""Build the shared pieces each process needs from settings: store, Redis, Celery sender."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import httpx
import redis
from celery import Celery

from writejobs import task_names
from writejobs.clock import Clock, utcnow
from writejobs.core.flow import Account, RateLimitObservation
from writejobs.execution.deps import ExecutionDeps
from writejobs.execution.webhooks import WebhookDeps
from writejobs.failpoints import Failpoints
from writejobs.grouping.admission import Admission
from writejobs.grouping.autobatch import AutoBatcher
from writejobs.grouping.keys import Keys
from writejobs.grouping.limiter import RedisRateLimiter, SentInBackground
from writejobs.grouping.retry_waits import RetryQueue
from writejobs.intake.directory import TenantDirectory
from writejobs.intake.handoff import HandOffs
from writejobs.intake.write import Dispatch
from writejobs.providers.connect import ProviderClients
from writejobs.runtime.celery_config import create_sender
from writejobs.runtime.metered import metered
from writejobs.runtime.metrics import Metrics
from writejobs.settings import Settings
from writejobs.store import operations_repo
from writejobs.store.credentials import StoredCredentials
from writejobs.store.db import create_session_factory, create_store_engine
from writejobs.store.group_commit import GroupCommitter
from writejobs.store.secrets import cipher_for


@dataclass(frozen=True, slots=True)
class Wiring:
    deps: ExecutionDeps
    redis: redis.Redis
    sender: Celery
    batcher: AutoBatcher
    dispatch: Dispatch
    retries: RetryQueue
    metrics: Metrics
    webhooks: WebhookDeps
    # send_webhooks(delivery_ids): one task on the webhooks queue.
    send_webhooks: Callable[[list[int]], None]
    limiter: RedisRateLimiter
    admission: Admission
    committer: GroupCommitter
    # Hands committed operations to Redis after the API's answer (accept_async_write).
    hand_offs: HandOffs

    def close(self) -> None:
        """Let go of the store's pooled connections and of the Redis, Celery and HTTP
        clients, for a process that is done with this wiring but goes on (an API served
        in a thread, a test). Left open, the group committer's threads keep the engine,
        and so its idle database connections, for the life of the process."""
        self.deps.sessions.kw["bind"].dispose()
        self.redis.close()
        self.sender.close()
        self.webhooks.client.close()


def wire(settings: Settings, *, clock: Clock = utcnow) -> Wiring:
    failpoint = Failpoints(settings.failpoints, settings.data_dir)
    client = redis.Redis.from_url(
        settings.effective_redis_url,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_connect_timeout_s,
    )
    sender = create_sender(settings)
    keys = Keys(settings.redis_namespace)

    # Straight to Celery: only the admission calls these (see grouping/admission.py).
    def send_operation_task(operation_id: str) -> None:
        sender.send_task(task_names.WRITE_OPERATION, args=[operation_id])

    def send_batch_task(batch_id: str) -> None:
        sender.send_task(task_names.WRITE_BATCH, args=[batch_id])

    def send_webhooks(delivery_ids: list[int]) -> None:
        sender.send_task(
            task_names.DELIVER_WEBHOOK, args=[delivery_ids], queue=settings.effective_webhook_queue
        )

    metrics = Metrics(client, keys)
    limiter = RedisRateLimiter(
        client, keys, daily_share=settings.rate_limit_daily_share, recorder=metrics
    )
    sessions = create_session_factory(create_store_engine(settings))
    admission = Admission(
        client,
        keys,
        sessions,
        limiter,
        {"op": send_operation_task, "batch": send_batch_task},
        celery_queue=settings.celery_queue,
        queue_max=settings.effective_admission_queue_max,
        clock=clock,
    )
    # Everything asynchronous reaches Celery through the admission: intake, flushes,
    # released retries and the sweeps' resends alike.
    send_operation, send_batch = admission.sender("op"), admission.sender("batch")
    retries = RetryQueue(client, keys, send_operation, send_batch)

    def schedule_retry(kind: str, target_id: str, at: datetime) -> None:
        retries.schedule(kind, target_id, at)
        metrics.count("retries_scheduled", kind=kind)

    clients = _provider_clients(settings, limiter, clock)
    operations_repo.count_finished(sessions, metrics)
    deps = ExecutionDeps(
        settings=settings,
        sessions=sessions,
        open_adapter=metered(clients.open_adapter, metrics),
        clock=clock,
        failpoint=failpoint,
        schedule_retry=schedule_retry,
        open_bulk=clients.open_bulk_ingest,
        recorder=metrics,
        limiter=limiter,
        arrived=admission.arrived,
        acquire_arriving=admission.acquire_arriving,
    )

    batcher = AutoBatcher(
        client,
        deps.sessions,
        send_batch,
        keys=keys,
        clock=clock,
        unsent_grace_s=settings.unsent_grace_s,
        orphan_grace_s=settings.orphan_grace_s,
        failpoint=failpoint,
        recorder=metrics,
        send_flushed=admission.submit_batch_of,
    )
    directory = TenantDirectory(deps.sessions)
    committer = GroupCommitter(deps.sessions, threads=settings.effective_commit_threads)
    dispatch = Dispatch(
        send_operation,
        batcher.buffer_many,
        directory,
        committer.commit,
        submit=admission.submit_operation,
    )
    webhooks = WebhookDeps(
        settings=settings,
        sessions=deps.sessions,
        # No proxy from the environment: it would resolve names past the SSRF guard.
        client=httpx.Client(timeout=settings.webhook_timeout_s, trust_env=False),
        cipher=cipher_for(settings),
        clock=clock,
        recorder=metrics,
        failpoint=failpoint,
    )
    return Wiring(
        deps,
        client,
        sender,
        batcher,
        dispatch,
        retries,
        metrics,
        webhooks,
        send_webhooks,
        limiter,
        admission,
        committer,
        HandOffs(dispatch, deps),
    )


# One per store URL, secret key and Redis namespace for the life of the process, so every
# wiring (the API's, each task's) shares the pooled provider connections and renewed
# tokens. Every answer they receive teaches the fleet's limiter (the first wiring's: the
# same Redis and namespace, so the same limiter).
_clients: dict[tuple[str, str, str], ProviderClients] = {}


def _provider_clients(
    settings: Settings, limiter: RedisRateLimiter, clock: Clock
) -> ProviderClients:
    secret = hashlib.sha256((settings.secret_key or "").encode()).hexdigest()
    redis_at = f"{settings.effective_redis_url}|{settings.redis_namespace}"
    key = (settings.sqlalchemy_url, f"{settings.data_dir}|{secret}", redis_at)
    if key not in _clients:

        def learn(account: Account, observation: RateLimitObservation) -> None:
            limiter.learn(account, observation, clock())

        marks = SentInBackground(limiter)

        def sent(account: Account) -> None:
            marks.mark(account, clock())

        _clients[key] = ProviderClients(
            StoredCredentials(settings), on_rate_limit=learn, on_send=sent
        )
    return _clients[key]
