"""Projects, API keys, integrations and installations: who may write where."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from writejobs.store.secrets import CredentialCipher
from writejobs.store.tables import ApiKey, Installation, Integration, Project

API_KEY_PREFIX = "wj_"


def hash_api_key(plain_key: str) -> str:
    """Keys are long random tokens, so a plain SHA-256 is enough (no salt or KDF needed)."""
    return hashlib.sha256(plain_key.encode()).hexdigest()


def create_project(session: Session, name: str, *, now: datetime) -> Project:
    project = Project(id=str(uuid.uuid4()), name=name, created_at=now)
    session.add(project)
    session.flush()
    return project


def find_project(session: Session, id_or_name: str) -> Project | None:
    """By id, or by name case-insensitively (names are unique, as the contract says)."""
    statement = select(Project).where(
        or_(Project.id == id_or_name, func.lower(Project.name) == id_or_name.lower())
    )
    return session.scalars(statement).first()


@dataclass(frozen=True, slots=True)
class NewApiKey:
    record: ApiKey
    plain_key: str  # shown once; only its hash is stored


def create_api_key(
    session: Session, project_id: str, *, now: datetime, label: str = ""
) -> NewApiKey:
    plain = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id=str(uuid.uuid4()),
        project_id=project_id,
        key_hash=hash_api_key(plain),
        label=label,
        active=True,
        created_at=now,
    )
    session.add(key)
    session.flush()
    return NewApiKey(key, plain)


def project_for_api_key(session: Session, plain_key: str) -> Project | None:
    statement = (
        select(Project)
        .join(ApiKey, ApiKey.project_id == Project.id)
        .where(ApiKey.key_hash == hash_api_key(plain_key), ApiKey.active.is_(True))
    )
    return session.scalars(statement).first()


def create_integration(
    session: Session, project_id: str, name: str, provider: str, *, now: datetime
) -> Integration:
    integration = Integration(
        id=str(uuid.uuid4()), project_id=project_id, name=name, provider=provider, created_at=now
    )
    session.add(integration)
    session.flush()
    return integration


def find_integration(session: Session, project_id: str, id_or_name: str) -> Integration | None:
    """By id or by name within the project (clients put either in the path)."""
    statement = select(Integration).where(
        Integration.project_id == project_id,
        or_(Integration.id == id_or_name, Integration.name == id_or_name),
    )
    return session.scalars(statement).first()


def create_installation(
    session: Session,
    integration: Integration,
    group_ref: str,
    base_url: str,
    *,
    now: datetime,
    cipher: CredentialCipher,
    credentials: dict[str, Any] | None = None,
    deletable_objects: list[str] | None = None,
) -> Installation:
    """A new installation; its `credentials` are stored encrypted with `cipher`."""
    installation = Installation(
        id=str(uuid.uuid4()),
        project_id=integration.project_id,
        integration_id=integration.id,
        group_ref=group_ref,
        provider=integration.provider,
        base_url=base_url.rstrip("/"),
        credentials=cipher.encrypt(credentials or {}),
        deletable_objects=list(deletable_objects or []),
        config_id=str(uuid.uuid4()),
        created_at=now,
    )
    session.add(installation)
    session.flush()
    return installation


def update_credentials(
    session: Session, installation_id: str, credentials: dict[str, Any], cipher: CredentialCipher
) -> bool:
    """Replace an installation's credentials (encrypted); False when there is no such row."""
    installation = session.get(Installation, installation_id)
    if installation is None:
        return False
    installation.credentials = cipher.encrypt(credentials)
    session.flush()
    return True


def set_rate_limit(
    session: Session, installation_id: str, rate_limit: dict[str, Any] | None
) -> bool:
    """Set (or, with None, clear) an installation's own rate limit; False when no such row."""
    installation = session.get(Installation, installation_id)
    if installation is None:
        return False
    installation.rate_limit = rate_limit
    session.flush()
    return True


def set_natural_key(
    session: Session, installation_id: str, object_name: str, field: str | None
) -> bool:
    """Name (or, with None, forget) the natural key of one object of an installation.

    False when there is no such installation. The column is replaced as a whole,
    so the change is seen by the ORM and reaches SQL as one JSON value.
    """
    installation = session.get(Installation, installation_id)
    if installation is None:
        return False
    keys = dict(installation.natural_keys or {})
    if field is None:
        keys.pop(object_name, None)
    else:
        keys[object_name] = field
    installation.natural_keys = keys or None
    session.flush()
    return True


def set_paused(
    session: Session, installation_id: str, *, now: datetime | None, reason: str | None = None
) -> bool:
    """Pause an installation at `now` (None: resume it); False when there is no such row.

    Pausing an installation already paused keeps its first `paused_at`, so "paused
    since" stays true, and replaces the reason.
    """
    installation = session.get(Installation, installation_id)
    if installation is None:
        return False
    if now is None:
        installation.paused_at, installation.paused_reason = None, None
    else:
        installation.paused_at = installation.paused_at or now
        installation.paused_reason = reason
    session.flush()
    return True


def find_installation(session: Session, integration_id: str, group_ref: str) -> Installation | None:
    statement = select(Installation).where(
        Installation.integration_id == integration_id, Installation.group_ref == group_ref
    )
    return session.scalars(statement).first()


def get_installation(session: Session, installation_id: str) -> Installation | None:
    return session.get(Installation, installation_id)


def find_project_installation(
    session: Session, project_id: str, integration_id: str, installation_id: str
) -> Installation | None:
    installation = session.get(Installation, installation_id)
    if installation is None or installation.project_id != project_id:
        return None
    return installation if installation.integration_id == integration_id else None
