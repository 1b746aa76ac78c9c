"""First start: a demo project, API key, integration and installation on the sandbox.

Their details go to `<data_dir>/demo.json`, so the demo, the README's curl
examples and a newcomer all find them. The plain API key and Flower's login
are written there because this is a local demo (the file is 0600, like all of
the data dir); real keys are shown once by `writejobs admin`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from writejobs.clock import utcnow
from writejobs.private_files import write_private_text
from writejobs.providers.oauth import bearer_credentials
from writejobs.settings import Settings
from writejobs.store import tenants_repo
from writejobs.store.db import create_session_factory, create_store_engine
from writejobs.store.secrets import cipher_for
from writejobs.store.tables import Installation

DEMO_PROJECT = "demo"
DEMO_INTEGRATION = "demo-crm"
DEMO_GROUP_REF = "demo-org"
DEMO_OBJECT = "contacts"
# Bulk CSV upserts go to Salesforce only: the demo has a Salesforce integration too.
DEMO_BULK_INTEGRATION = "demo-salesforce"
DEMO_BULK_OBJECT = "Contact"


def demo_file(settings: Settings) -> Path:
    return settings.data_dir / "demo.json"


def ensure_demo(
    settings: Settings,
    *,
    api_url: str,
    sandbox_url: str,
    flower_url: str,
    flower_login: tuple[str, str],
) -> dict[str, Any]:
    """Create the demo tenant once; refresh the URLs in demo.json on every start."""
    path = demo_file(settings)
    previous = json.loads(path.read_text()) if path.exists() else {}
    engine = create_store_engine(settings)
    with create_session_factory(engine)() as session:
        now = utcnow()
        project = tenants_repo.find_project(session, DEMO_PROJECT) or tenants_repo.create_project(
            session, DEMO_PROJECT, now=now
        )
        integration = tenants_repo.find_integration(
            session, project.id, DEMO_INTEGRATION
        ) or tenants_repo.create_integration(
            session, project.id, DEMO_INTEGRATION, "hubspot", now=now
        )
        installation = tenants_repo.find_installation(session, integration.id, DEMO_GROUP_REF)
        if installation is None:
            installation = tenants_repo.create_installation(
                session,
                integration,
                DEMO_GROUP_REF,
                sandbox_url,
                now=now,
                cipher=cipher_for(settings),
                credentials=bearer_credentials("sandbox-token"),
                deletable_objects=[DEMO_OBJECT],
            )
        bulk_installation = _ensure_installation(
            session, settings, project.id, DEMO_BULK_INTEGRATION, "salesforce", sandbox_url
        )
        # The sandbox may listen elsewhere this time; keep the installations pointed at it.
        installation.base_url = sandbox_url.rstrip("/")
        bulk_installation.base_url = sandbox_url.rstrip("/")
        api_key = previous.get("api_key")
        if api_key is None or tenants_repo.project_for_api_key(session, api_key) is None:
            api_key = tenants_repo.create_api_key(
                session, project.id, now=now, label="demo"
            ).plain_key
        installation_id = installation.id
        session.commit()
    engine.dispose()
    details = {
        "api_url": api_url,
        "api_key": api_key,
        "project": DEMO_PROJECT,
        "integration": DEMO_INTEGRATION,
        "group_ref": DEMO_GROUP_REF,
        "object": DEMO_OBJECT,
        "installation_id": installation_id,
        "bulk_integration": DEMO_BULK_INTEGRATION,
        "bulk_object": DEMO_BULK_OBJECT,
        "sandbox_url": sandbox_url,
        "flower_url": flower_url,
        "flower_user": flower_login[0],
        "flower_password": flower_login[1],
    }
    write_private_text(path, json.dumps(details, indent=2) + "\n")
    return details


def _ensure_installation(
    session: Session,
    settings: Settings,
    project_id: str,
    integration_name: str,
    provider: str,
    sandbox_url: str,
) -> Installation:
    now = utcnow()
    integration = tenants_repo.find_integration(
        session, project_id, integration_name
    ) or tenants_repo.create_integration(session, project_id, integration_name, provider, now=now)
    installation = tenants_repo.find_installation(session, integration.id, DEMO_GROUP_REF)
    if installation is None:
        installation = tenants_repo.create_installation(
            session,
            integration,
            DEMO_GROUP_REF,
            sandbox_url,
            now=now,
            cipher=cipher_for(settings),
            credentials=bearer_credentials("sandbox-token"),
        )
    return installation
