"""One rooted hierarchy for everything writejobs raises on purpose.

    WritejobsError
    ├── ContractError            a request the contract refuses (maps to 400 text/plain)
    ├── NotFound                 an id unknown to, or foreign to, the caller's project
    ├── CredentialsUnreadable    stored credentials this process's key cannot decrypt
    ├── InvalidTransition        a state change another delivery got to first
    ├── DeadlineExceeded         no time is left to try again
    ├── StoreUnavailable         SQL could not record an accepted write (maps to 503)
    └── ProviderError            a whole provider call failed
        ├── RetryableProviderError   connection errors, timeouts, 408, 429, 5xx, throttles
        └── PermanentProviderError   any other 4xx: trying again cannot help

Adapters translate `httpx` errors into `ProviderError`s at their boundary, so no
other module needs to know the HTTP details of a provider.
"""

from __future__ import annotations


class WritejobsError(Exception):
    """Base of every deliberate writejobs error."""


class ContractError(WritejobsError):
    """The request breaks the API contract; the message names the field."""


class NotFound(WritejobsError):
    """The thing asked for does not exist in the caller's project."""


class CredentialsUnreadable(WritejobsError):
    """Stored credentials this process cannot read: another key wrote them, or no key is valid.

    The message says which key to set; it never holds the credentials themselves.
    """


class InvalidTransition(WritejobsError):
    """An operation was not in a state that allows the requested move."""


class DeadlineExceeded(WritejobsError):
    """The operation's deadline passed before it could finish."""


class StoreUnavailable(WritejobsError):
    """The store could not take a new operation's row: nothing was accepted, send again."""


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
