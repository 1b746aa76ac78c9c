"""Who is looking at the console: a login by project API key or by operator credentials,
kept in a signed session cookie.

The cookie holds no credential: the id of the API key that logged in (checked to
be still active on every request, so revoking a key ends its sessions), or an
operator's name with an HMAC of the password (changing the password in
`WRITEJOBS_CONSOLE_OPERATORS` ends that operator's sessions). It is signed with
itsdangerous and timestamped (`WRITEJOBS_CONSOLE_SESSION_TTL_S`), `HttpOnly`,
`SameSite=Strict` and scoped to `/console`; login and logout are POSTs and
refuse a foreign `Origin`, so another site can neither read the console nor
log someone in or out of it.

The signing key is `WRITEJOBS_CONSOLE_SECRET` or, unset, derived from the
credentials key (`WRITEJOBS_SECRET_KEY` or the data dir's `secret.key`), which
every API process of a deployment already shares.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

from writejobs.settings import Settings
from writejobs.store.secrets import key_file, load_or_create_key
from writejobs.store.tables import Project

COOKIE = "wj_console"
COOKIE_PATH = "/console"
_SALT = "writejobs-console-session"
_DERIVE = b"writejobs console session signing key v1"


@dataclass(frozen=True, slots=True)
class Viewer:
    """A logged-in person: an operator (every project) or a project's API key (that one)."""

    name: str
    project: Project | None = None  # None: an operator

    @property
    def is_operator(self) -> bool:
        return self.project is None

    @property
    def project_id(self) -> str | None:
        return None if self.project is None else self.project.id


def parse_operators(raw: str | None) -> dict[str, str]:
    """`user:password[,user:password…]` as {user: password}; malformed pairs are skipped."""
    operators: dict[str, str] = {}
    for pair in (raw or "").split(","):
        user, sep, password = pair.strip().partition(":")
        if sep and user and password:
            operators[user] = password
    return operators


class ConsoleAuth:
    """Checks operator logins and issues and reads session tokens."""

    def __init__(self, settings: Settings) -> None:
        self._operators = parse_operators(settings.console_operators)
        self._secret = _signing_secret(settings)
        self._serializer = URLSafeTimedSerializer(self._secret, salt=_SALT)
        self.ttl_s = int(settings.console_session_ttl_s)

    @property
    def has_operators(self) -> bool:
        return bool(self._operators)

    def operator_login(self, user: str, password: str) -> bool:
        """True for a configured user and its password (compared in constant time)."""
        expected = self._operators.get(user)
        # Compare against something even for an unknown user, so timing tells nothing.
        matched = hmac.compare_digest((expected or "\0" + password).encode(), password.encode())
        return expected is not None and matched

    def operator_session(self, user: str) -> str:
        return self._serializer.dumps({"o": user, "p": self._fingerprint(user)})

    def key_session(self, key_id: str) -> str:
        return self._serializer.dumps({"k": key_id})

    def read(self, token: str | None) -> dict[str, Any] | None:
        """The session's claims, or None for no, a forged or an expired token, or an
        operator whose password changed or who is no longer configured."""
        if not token:
            return None
        try:
            claims = self._serializer.loads(token, max_age=self.ttl_s)
        except BadSignature:  # SignatureExpired is one
            return None
        if not isinstance(claims, dict):
            return None
        user = claims.get("o")
        if user is not None:
            if user not in self._operators:
                return None
            fingerprint = str(claims.get("p", ""))
            if not hmac.compare_digest(fingerprint, self._fingerprint(str(user))):
                return None
        elif not isinstance(claims.get("k"), str):
            return None
        return claims

    def _fingerprint(self, user: str) -> str:
        password = self._operators.get(user, "")
        return hmac.new(self._secret, f"{user}:{password}".encode(), hashlib.sha256).hexdigest()[
            :32
        ]


def _signing_secret(settings: Settings) -> bytes:
    if settings.console_secret:
        return settings.console_secret.encode()
    base = (
        settings.secret_key.encode()
        if settings.secret_key
        else load_or_create_key(key_file(settings))
    )
    return hmac.new(base, _DERIVE, hashlib.sha256).digest()
