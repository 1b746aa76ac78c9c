"""Installations' credentials as the providers see them: decrypted on read, encrypted
on write (the `CredentialVault` port of `writejobs.providers.connect`).

A renewed OAuth2 token is stored back through sessions of this vault's own, since
the adapter opener's signature carries no session.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from writejobs.errors import CredentialsUnreadable
from writejobs.settings import Settings
from writejobs.store import tenants_repo
from writejobs.store.db import create_session_factory, create_store_engine
from writejobs.store.secrets import cipher_for

log = logging.getLogger(__name__)


class StoredCredentials:
    """Reads and writes installations' credentials in the store, encrypted at rest."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._sessions: sessionmaker[Session] | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def decrypt(self, encrypted: str) -> dict[str, Any]:
        """Raises `CredentialsUnreadable` (naming `WRITEJOBS_SECRET_KEY`) for a foreign key."""
        return cipher_for(self.settings).decrypt(encrypted)

    def load_latest(self, installation_id: str) -> dict[str, Any] | None:
        """The credentials as stored now (another process may have renewed them)."""
        try:
            with self._open() as session:
                installation = tenants_repo.get_installation(session, installation_id)
                if installation is None:
                    return None
                return self.decrypt(installation.credentials)
        except (SQLAlchemyError, CredentialsUnreadable) as exc:
            log.warning(
                "could not read the stored credentials of installation %s: %s",
                installation_id,
                type(exc).__name__,
            )
            return None

    def store(self, installation_id: str, credentials: dict[str, Any]) -> None:
        """Keep renewed credentials; a failure is logged (the token still serves this process)."""
        try:
            with self._open() as session:
                tenants_repo.update_credentials(
                    session, installation_id, credentials, cipher_for(self.settings)
                )
                session.commit()
        except SQLAlchemyError as exc:
            log.warning(
                "could not store the renewed credentials of installation %s: %s",
                installation_id,
                type(exc).__name__,
            )

    def _open(self) -> Session:
        with self._lock:
            if self._sessions is None or self._pid != os.getpid():
                engine = create_store_engine(self.settings)
                self._sessions, self._pid = create_session_factory(engine), os.getpid()
            return self._sessions()
