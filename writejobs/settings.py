"""Settings: the one place that reads the environment (`WRITEJOBS_*`).

With nothing set, everything runs on one machine: a Redis server started by
`writejobs up` (embedded, data under `data_dir`) and a SQLite file under
`data_dir`. With `WRITEJOBS_REDIS_URL` and `WRITEJOBS_DATABASE_URL` set, the
same code runs against external services.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """All of writejobs' configuration, read from `WRITEJOBS_*` variables."""

    model_config = SettingsConfigDict(env_prefix="WRITEJOBS_", extra="ignore")

    data_dir: Path = Field(default=Path(".writejobs"), description="Embedded data lives here.")
    redis_url: str | None = Field(
        default=None, description="Redis for buffers and the Celery broker; embedded if unset."
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the store; SQLite in data_dir if unset."
    )
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    sandbox_port: int = 8900
    flower_port: int = 5555
    # Basic auth for Flower's pages, `user:password` (comma-separated for several);
    # unset, `<data_dir>/flower.auth`, made on first use (see writejobs/cli/flower_auth.py).
    flower_basic_auth: str | None = Field(default=None, repr=False)
    # Flower and the sandbox listen on loopback unless told otherwise (a container's
    # must listen on 0.0.0.0 to be reached from outside it).
    flower_host: str = "127.0.0.1"
    sandbox_host: str = "127.0.0.1"
    worker_concurrency: int = Field(default=2, ge=1)
    celery_queue: str = Field(default="writejobs", description="The queue write tasks go to.")
    redis_namespace: str = Field(default="wj", description="Prefix of every writejobs Redis key.")
    scheduler_interval_s: float = Field(default=0.2, gt=0)
    provider_timeout_s: float = Field(default=30.0, gt=0)
    # PostgreSQL connections each process keeps open (idle ones stay), and how many more
    # it may open for a burst (closed when returned). SQLite has its own sizes.
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    # Intake group commits in flight at once, each on its own connection (PostgreSQL;
    # SQLite takes one writer at a time and always has one). More helps where a commit
    # waits long for its disk; on this project's machine one and two measured the same.
    commit_threads: int = Field(default=1, ge=1)
    # Every Redis call (buffers, waits, metrics, the Celery broker) gives up after this
    # long, so a Redis that stopped answering fails a call instead of hanging it...
    redis_socket_timeout_s: float = Field(default=5.0, gt=0)
    # ...and a TCP connection to Redis that does not open in this long is an error.
    redis_connect_timeout_s: float = Field(default=2.0, gt=0)
    # The whole download of a bulk write's recordsURL, first request to last byte.
    fetch_timeout_s: float = Field(default=300.0, gt=0)
    # Lets demos and tests run a policy "minute" in a second; logged when not 1.
    policy_time_scale: float = Field(default=1.0, gt=0)
    # A running operation's lease: its worker's heartbeat renews it every quarter of
    # this, so an operation whose worker died is taken over about this long after.
    running_lease_s: float = Field(default=60.0, gt=0)
    # A synchronous write's lease, held by its API request for its one attempt and not
    # renewed: longer than any live request lasts (provider calls, an OAuth renewal).
    sync_lease_s: float = Field(default=300.0, gt=0)
    # Recovery sweeps: a claimed batch not sent after this long is sent again...
    unsent_grace_s: float = Field(default=10.0, gt=0)
    # ...a pending operation in no buffer this long is buffered again...
    orphan_grace_s: float = Field(default=30.0, gt=0)
    # ...and a queued or lapsed running operation this long untouched is sent again
    # (its task was lost with a killed worker or a broker that lost data).
    stalled_after_s: float = Field(default=300.0, gt=0)
    # A paused installation's waiting work is looked at again after this long, then
    # after as long as it has waited so far (at most a minute); resuming releases it at once.
    pause_recheck_s: float = Field(default=5.0, gt=0)
    # Flow control (writejobs/execution/gate.py, writejobs/grouping/admission.py): past this
    # share of a provider's daily allowance (Sforce-Limit-Info, HubSpot's daily headers),
    # calls are spaced so that what is left lasts the day.
    rate_limit_daily_share: float = Field(default=0.9, gt=0, le=1)
    # The most write tasks the admission lets wait in the Celery queue; the rest wait
    # per installation in Redis and are admitted in rotation (fair share). Unset:
    # 4 x worker_concurrency, at least 16.
    admission_queue_max: int | None = Field(default=None, ge=1)
    # Optional intake quota per project: asynchronous and synchronous write requests per
    # second, with a burst; past it a request is answered 429 with Retry-After. 0: off.
    intake_quota_rps: float = Field(default=0.0, ge=0)
    intake_quota_burst: int = Field(default=0, ge=0)
    # The watchdog ends any operation still unfinished this long after its deadline.
    watchdog_grace_s: float = Field(default=60.0, gt=0)
    # An `Idempotency-Key` is honoured this long after its first request (then purged).
    idempotency_ttl_s: float = Field(default=86400.0, gt=0)
    # Hosts a bulk write's `recordsURL` may name over plain http and on any address,
    # comma-separated (the sandbox, in demos and tests); every other URL must be
    # https:// to a public address (see writejobs/safe_fetch.py).
    fetch_allowed_http_hosts: str = ""
    # Crash points for fault tests only (see writejobs/failpoints.py); empty in use.
    failpoints: str = ""
    # A Fernet key that encrypts installations' credentials at rest; unset, the key
    # is `<data_dir>/secret.key`, made on first use (see writejobs/secrets.py).
    secret_key: str | None = Field(default=None, repr=False)
    log_level: str = "INFO"
    # Webhooks (writejobs/execution/webhooks.py): the queue their deliveries go to
    # (unset: `<celery_queue>-webhooks`) and the processes of `writejobs webhooks`.
    webhook_queue: str | None = None
    webhook_concurrency: int = Field(default=2, ge=1)
    # One delivery's HTTP timeout; a 2xx within it is delivered, anything else is retried.
    webhook_timeout_s: float = Field(default=15.0, gt=0)
    # Retries: exponential backoff with jitter from `webhook_retry_base_s`, each wait at
    # most `webhook_retry_max_delay_s`, until `webhook_retry_window_s` after the event.
    webhook_retry_base_s: float = Field(default=5.0, gt=0)
    webhook_retry_max_delay_s: float = Field(default=3600.0, gt=0)
    webhook_retry_window_s: float = Field(default=86400.0, gt=0)
    # A destination failing without a success for this long, or (when not 0) this many
    # attempts in a row, is disabled.
    webhook_disable_after_s: float = Field(default=5 * 86400.0, gt=0)
    webhook_disable_after_failures: int = Field(default=0, ge=0)
    # A delivery whose task has not reported back this long after it was sent is sent again.
    webhook_resend_after_s: float = Field(default=60.0, gt=0)
    # The API's address as receivers reach it: the link to an operation in a payload cut
    # to the size cap. Unset: http://<api_host>:<api_port>.
    public_api_url: str | None = None

    # The operations console (`/console`, api_shim/console/). Operators, `user:password`
    # comma-separated, log in and see every project (a project's API key logs in too,
    # and sees its own); unset, only API keys log in.
    console_operators: str | None = Field(default=None, repr=False)
    # Signs the console's session cookie; unset, derived from the credentials key
    # (`secret_key` or the data dir's `secret.key`), which every API process shares.
    console_secret: str | None = Field(default=None, repr=False)
    console_session_ttl_s: float = Field(default=43200.0, gt=0)

    @cached_property
    def sqlalchemy_url(self) -> str:
        """The store's URL, with PostgreSQL pinned to psycopg 3."""
        if self.database_url is None:
            return f"sqlite:///{(self.data_dir / 'writejobs.db').resolve()}"
        url = self.database_url
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @property
    def allowed_http_hosts(self) -> frozenset[str]:
        """`fetch_allowed_http_hosts` as a set of lower-case host names."""
        hosts = (h.strip().lower() for h in self.fetch_allowed_http_hosts.split(","))
        return frozenset(h for h in hosts if h)

    @property
    def effective_admission_queue_max(self) -> int:
        return self.admission_queue_max or max(16, 4 * self.worker_concurrency)

    @property
    def effective_commit_threads(self) -> int:
        return 1 if self.sqlalchemy_url.startswith("sqlite") else self.commit_threads

    @property
    def effective_webhook_queue(self) -> str:
        """The webhook deliveries' queue: set, or the write queue's name plus `-webhooks`."""
        return self.webhook_queue or f"{self.celery_queue}-webhooks"

    @property
    def effective_public_api_url(self) -> str:
        return (self.public_api_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    @property
    def embedded_redis_socket(self) -> Path:
        """Where the embedded Redis listens (a Unix socket: no port to collide)."""
        return (self.data_dir / "redis.sock").resolve()

    @property
    def effective_redis_url(self) -> str:
        """The Redis URL for redis-py: the configured one or the embedded server's."""
        if self.redis_url:
            return self.redis_url
        return f"unix://{self.embedded_redis_socket}"

    @property
    def broker_url(self) -> str:
        """The same Redis spelled for Celery/kombu, which names Unix sockets differently."""
        url = self.effective_redis_url
        if url.startswith("unix://"):
            path, _, query = url[len("unix://") :].partition("?")
            db = "0"
            for part in query.split("&"):
                if part.startswith("db="):
                    db = part[3:]
            return f"redis+socket://{path}?virtual_host={db}"
        return url


def load_settings() -> Settings:
    """Read settings from the environment (a function, so tests can build their own)."""
    return Settings()
