"""One rooted hierarchy for everything writejobs raises on purpose.

    WritejobsError
    ├── ContractError            a request the contract refuses (maps to 400 text/plain)
    │   └── CsvRejected          a bulk CSV that breaks the bulk rules (CRLF, no primaryKey)
    ├── NotFound                 an id unknown to, or foreign to, the caller's project
    ├── StoreUnavailable         SQL could not record an accepted write (maps to 503)
    ├── KeyInFlight              an Idempotency-Key whose first request still runs (409)
    ├── KeyReused                an Idempotency-Key used for a different request (422)
    ├── InstallationPaused       a synchronous write to a paused installation (409, retryable)
    ├── NotCancellable           a cancel of an operation that ended or runs inline (409)
    ├── ReplayRefused            a replay of operations that cannot be replayed (400)
    ├── CredentialsUnreadable    stored credentials this process has no key for
    ├── UnsafeUrl                a recordsURL (or a redirect) we refuse to fetch
    ├── FetchFailed              the fetch of a safe recordsURL went wrong
    ├── LeaseLost                an attempt's operation was taken from it (the watchdog ended it)
    ├── WriteCrashed             our own code raised during a write; the message is sanitized
    ├── RateLimited              no budget for a call now: a sync write or an intake quota (429)
    └── ProviderError            a whole provider call failed
        ├── RetryableProviderError   connection errors, timeouts, 408, 429, 5xx, throttles
        └── PermanentProviderError   any other 4xx: trying again cannot help

Adapters translate `httpx` errors into `ProviderError`s at their boundary, so no
other module needs to know the HTTP details of a provider. A record the provider
refuses is data in the results, not an exception.
"""

from __future__ import annotations


class WritejobsError(Exception):
    """Base of every deliberate writejobs error."""


class ContractError(WritejobsError):
    """The request breaks the API contract; the message names the field."""


class CsvRejected(ContractError):
    """A CSV that breaks the bulk rules (CRLF line endings, no `primaryKey` column)."""


class NotFound(WritejobsError):
    """The thing asked for does not exist in the caller's project."""


class KeyInFlight(WritejobsError):
    """The key's first request is still running (409, retryable)."""

    def __init__(self, operation_id: str) -> None:
        super().__init__("a request with this Idempotency-Key is still in progress")
        self.operation_id = operation_id


class KeyReused(WritejobsError):
    """The key was used for a different request (422)."""

    def __init__(self) -> None:
        super().__init__("this Idempotency-Key was already used for a different request")


class InstallationPaused(WritejobsError):
    """An operator paused the installation: a synchronous write cannot wait, so it is
    refused (409, retryable); asynchronous writes are accepted and wait."""

    def __init__(self, installation_id: str, reason: str | None) -> None:
        because = f": {reason}" if reason else ""
        super().__init__(f"the installation is paused{because}")
        self.installation_id = installation_id
        self.reason = reason


class NotCancellable(WritejobsError):
    """The operation cannot be cancelled: it has ended, or it is a synchronous write
    whose one attempt belongs to its request (409)."""

    def __init__(self, operation_id: str, message: str) -> None:
        super().__init__(message)
        self.operation_id = operation_id


class ReplayRefused(WritejobsError):
    """The operations named cannot be replayed (400); the message says which and why."""


class CredentialsUnreadable(WritejobsError):
    """Stored credentials this process cannot read: another key wrote them, or no key is valid.

    The message says which key to set; it never holds the credentials themselves.
    """


class UnsafeUrl(WritejobsError):
    """A `recordsURL` (or a redirect it led to) that we refuse to send a request to."""


class FetchFailed(WritejobsError):
    """The fetch of a safe `recordsURL` went wrong: unreachable, a non-2xx, or too large.

    `retryable` says whether the same fetch may work later (a timeout, a 5xx).
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class LeaseLost(WritejobsError):
    """The operation is no longer this attempt's (the watchdog ended it): stop quietly."""


class WriteCrashed(WritejobsError):
    """Our own code raised while writing (a bug, not the provider).

    The message is the exception's type and a fixed text, never its str or repr:
    those may carry a record's values (a `UnicodeEncodeError` holds the whole
    string it could not encode), and this message reaches logs, Flower and the
    operation's errors.
    """

    def __init__(self, exception_type: str) -> None:
        self.exception_type = exception_type
        self.message = f"internal error ({exception_type}); the write was not completed"
        super().__init__(self.message)

    @classmethod
    def of(cls, exc: BaseException) -> WriteCrashed:
        return cls(type(exc).__name__)


class StoreUnavailable(WritejobsError):
    """The store could not take a new operation's row: nothing was accepted, send again."""


class RateLimited(WritejobsError):
    """No budget now (the provider account's rate limit, or the project's intake quota):
    answered 429, retryable, with `Retry-After` of `retry_after_s` (rounded up)."""

    def __init__(self, message: str, *, retry_after_s: float, subsystem: str = "provider") -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.subsystem = subsystem


class ProviderError(WritejobsError):
    """A whole provider call failed.

    Carries what the logs and the retry policy need: the provider, the HTTP
    status (None for a connection error or timeout), the provider's own message
    and, when the provider sent one, its `Retry-After` in seconds.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        raw_response: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.raw_response = raw_response


class RetryableProviderError(ProviderError):
    """A failure that may pass: connection error, timeout, 408, 429, 5xx, lock or limit."""

    retryable = True


class PermanentProviderError(ProviderError):
    """A failure that trying again cannot fix (a 4xx other than 408 and 429)."""
