"""OAuth2 installations end to end: open_adapter, the sandbox's token endpoint, the store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from sandbox.app import create_app
from tests.support.servers import serve_in_thread
from writejobs.clock import utcnow
from writejobs.errors import PermanentProviderError
from writejobs.providers.base import WriteItem, WriteOptions
from writejobs.providers.connect import ProviderClients
from writejobs.providers.oauth import oauth2_credentials
from writejobs.settings import Settings
from writejobs.store import tenants_repo
from writejobs.store.credentials import StoredCredentials
from writejobs.store.db import create_session_factory, create_store_engine
from writejobs.store.secrets import cipher_for
from writejobs.store.tables import Installation

CLIENT_SECRET = "sandbox-client-secret"
TOKEN_CALL = "POST /oauth/token"
CREATE_CALL = "POST /crm/v3/objects/{objectType}"


@pytest.fixture
def oauth_sandbox() -> Iterator[str]:
    """A sandbox of the test's own: once it issues tokens, it refuses the ones it ended."""
    with serve_in_thread(create_app()) as url:
        yield url


class Store:
    """The test's view of the installation rows, through an engine of its own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = create_store_engine(settings)
        self.sessions = create_session_factory(self.engine)

    def create_installation(self, base_url: str, credentials: dict[str, Any]) -> Installation:
        with self.sessions() as session:
            now = utcnow()
            project = tenants_repo.create_project(session, f"oauth-{uuid.uuid4().hex[:8]}", now=now)
            integration = tenants_repo.create_integration(
                session, project.id, "crm", "hubspot", now=now
            )
            installation = tenants_repo.create_installation(
                session,
                integration,
                "org-1",
                base_url,
                now=now,
                cipher=cipher_for(self.settings),
                credentials=credentials,
            )
            session.commit()
            return installation

    def raw_credentials(self, installation_id: str) -> str:
        with self.sessions() as session:
            statement = select(Installation.credentials).where(Installation.id == installation_id)
            return session.execute(statement).scalar_one()


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    store = Store(settings)
    yield store
    store.engine.dispose()


def create_contact(installation: Installation, settings: Settings) -> bool:
    item = WriteItem({"email": f"{uuid.uuid4().hex[:10]}@example.com"})
    with _clients(settings).open_adapter(installation, settings) as adapter:
        return adapter.write_one("contacts", "create", item, WriteOptions()).success


_vaults: dict[int, ProviderClients] = {}


def _clients(settings: Settings) -> ProviderClients:
    """One set of pooled clients per settings, as a running process keeps."""
    return _vaults.setdefault(id(settings), ProviderClients(StoredCredentials(settings)))


def test_an_expired_token_is_renewed_once_and_stored_back_encrypted(
    settings: Settings, store: Store, oauth_sandbox: str
) -> None:
    credentials = oauth2_credentials(
        token_url=f"{oauth_sandbox}/oauth/token", client_id="writejobs", client_secret=CLIENT_SECRET
    )
    installation = store.create_installation(oauth_sandbox, credentials)
    assert create_contact(installation, settings)
    first_token = cipher_for(settings).decrypt(store.raw_credentials(installation.id))[
        "access_token"
    ]

    with httpx.Client(base_url=oauth_sandbox) as sandbox:
        sandbox.post("/_sandbox/oauth/expire").raise_for_status()
        assert create_contact(installation, settings)
        calls = sandbox.get("/_sandbox/stats").json()["calls"]
        statuses = [(r["path"], r["status"]) for r in sandbox.get("/_sandbox/requests").json()]

    assert calls[TOKEN_CALL] == 2
    assert statuses[-3:] == [
        ("/crm/v3/objects/contacts", 401),
        ("/oauth/token", 200),
        ("/crm/v3/objects/contacts", 201),
    ]
    raw = store.raw_credentials(installation.id)
    stored = cipher_for(settings).decrypt(raw)
    assert stored["access_token"] not in (None, first_token)
    assert stored["access_token"] not in raw and CLIENT_SECRET not in raw
    assert stored["client_secret"] == CLIENT_SECRET and "expires_at" in stored


def test_a_bearer_token_the_sandbox_ended_fails_the_call(
    settings: Settings, store: Store, oauth_sandbox: str
) -> None:
    with httpx.Client(base_url=oauth_sandbox) as sandbox:
        issued = sandbox.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", "client_id": "a", "client_secret": "b"},
        ).json()["access_token"]
        sandbox.post("/_sandbox/oauth/expire").raise_for_status()
    installation = store.create_installation(oauth_sandbox, {"access_token": issued})

    with pytest.raises(PermanentProviderError) as raised:
        create_contact(installation, settings)

    assert raised.value.status_code == 401
    assert raised.value.message == "The OAuth token used to make this call expired."


def test_legacy_plain_json_credentials_still_authenticate(
    settings: Settings, store: Store, oauth_sandbox: str
) -> None:
    installation = store.create_installation(oauth_sandbox, {})
    with store.sessions() as session:
        row = session.get(Installation, installation.id)
        assert row is not None
        row.credentials = '{"access_token": "legacy-token"}'
        session.commit()
        installation = row

    assert create_contact(installation, settings)
    with httpx.Client(base_url=oauth_sandbox) as sandbox:
        assert sandbox.get("/_sandbox/stats").json()["calls"][CREATE_CALL] == 1
