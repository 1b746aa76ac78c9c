"""A project's webhook destinations: add, list, remove, enable, and their failure runs.

The signing secret (`whsec_` and 24 random bytes in base64, as Svix makes them)
is shown once, when the destination is added, and kept as a Fernet token.
Nothing here commits: the caller owns the transaction.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from writejobs.store.secrets import CredentialCipher
from writejobs.store.webhook_tables import WebhookAttempt, WebhookDelivery, WebhookDestination

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def add(
    session: Session,
    project_id: str,
    url: str,
    *,
    cipher: CredentialCipher,
    now: datetime,
    integration_id: str | None = None,
) -> tuple[WebhookDestination, str]:
    """A new enabled destination and its plain secret (to show once)."""
    secret = new_secret()
    destination = WebhookDestination(
        id=str(uuid.uuid4()),
        project_id=project_id,
        integration_id=integration_id,
        url=url,
        secret=cipher.encrypt({"secret": secret}),
        enabled=True,
        consecutive_failures=0,
        created_at=now,
    )
    session.add(destination)
    session.flush()
    return destination, secret


def secret_of(destination: WebhookDestination, cipher: CredentialCipher) -> str:
    return str(cipher.decrypt(destination.secret)["secret"])


def list_for(session: Session, project_id: str) -> list[WebhookDestination]:
    statement = (
        select(WebhookDestination)
        .where(WebhookDestination.project_id == project_id)
        .order_by(WebhookDestination.created_at, WebhookDestination.id)
    )
    return list(session.scalars(statement))


def get(session: Session, project_id: str, destination_id: str) -> WebhookDestination | None:
    found = session.get(WebhookDestination, destination_id)
    return found if found is not None and found.project_id == project_id else None


def remove(session: Session, destination_id: str) -> None:
    """Forget a destination with its deliveries and their attempts."""
    deliveries = select(WebhookDelivery.id).where(WebhookDelivery.destination_id == destination_id)
    session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries)))
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.destination_id == destination_id))
    session.execute(delete(WebhookDestination).where(WebhookDestination.id == destination_id))


def enable(session: Session, destination_id: str) -> None:
    """Switch a destination back on, its failure run forgotten."""
    session.execute(
        update(WebhookDestination)
        .where(WebhookDestination.id == destination_id)
        .values(enabled=True, disabled_reason=None, consecutive_failures=0, first_failure_at=None)
    )


def get_many(session: Session, destination_ids: set[str]) -> dict[str, WebhookDestination]:
    statement = select(WebhookDestination).where(WebhookDestination.id.in_(destination_ids))
    return {d.id: d for d in session.scalars(statement)}


def note_run(
    session: Session,
    destination_id: str,
    *,
    succeeded: bool,
    failures: int,
    first_failure_at: datetime | None,
) -> tuple[int, datetime | None]:
    """Bring a destination's failure run up to date after some attempts; return its
    length and start. `succeeded`: one of them was a 2xx, and `failures` (from
    `first_failure_at` on) came after the last one; otherwise they lengthen the run."""
    column = WebhookDestination.consecutive_failures
    began = WebhookDestination.first_failure_at
    values: dict[str, object]
    if succeeded:
        values = {"consecutive_failures": failures, "first_failure_at": first_failure_at}
    else:
        values = {
            "consecutive_failures": column + failures,
            "first_failure_at": func.coalesce(began, first_failure_at),
        }
    statement = (
        update(WebhookDestination)
        .where(WebhookDestination.id == destination_id)
        .values(**values)
        .returning(column, began)
    )
    row = session.execute(statement).one()
    return int(row[0]), row[1]


def disable(session: Session, destination_id: str, reason: str, *, now: datetime) -> bool:
    """Switch a destination off and abandon what it is still owed; True if it was on."""
    statement = (
        update(WebhookDestination)
        .where(WebhookDestination.id == destination_id, WebhookDestination.enabled.is_(True))
        .values(enabled=False, disabled_reason=reason)
        .returning(WebhookDestination.id)
    )
    if session.scalar(statement) is None:
        return False
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.destination_id == destination_id, WebhookDelivery.state == "pending")
        .values(state="abandoned", claimed_until=None, taken_until=None)
    )
    return True


def count_disabled(session: Session) -> int:
    statement = select(func.count()).where(WebhookDestination.enabled.is_(False))
    return int(session.scalar(statement) or 0)
