"""An installation's operations list pages by key, not by offset (real SQLite and
PostgreSQL): a page token names the last row served, so rows written while a
client pages through neither shift the later pages nor hide rows from them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.support.system import Tenant, create_tenant
from writejobs.settings import Settings
from writejobs.store import operations_repo
from writejobs.store.tables import Operation

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture()
def installation(settings: Settings) -> Tenant:
    return create_tenant(settings, "http://api.invalid", "http://127.0.0.1:9")


def add_operation(
    sessions: sessionmaker[Session], tenant: Tenant, created_at: datetime, op_id: str | None = None
) -> str:
    operation = Operation(
        id=op_id or str(uuid.uuid4()),
        project_id=tenant.project_id,
        integration_id=tenant.integration_id,
        installation_id=tenant.installation_id,
        config_id="config",
        object_name="contacts",
        write_type="create",
        mode="asynchronous",
        shape="single",
        request={},
        state="queued",
        attempts=0,
        backoff_failures=0,
        success_count=0,
        failure_count=0,
        created_at=created_at,
        updated_at=created_at,
        deadline_at=created_at + timedelta(hours=1),
    )
    with sessions() as session:
        operations_repo.insert_operation(session, operation)
        session.commit()
    return operation.id


def page(
    sessions: sessionmaker[Session], tenant: Tenant, size: int, token: str | None
) -> operations_repo.Page:
    with sessions() as session:
        return operations_repo.list_installation_operations(
            session, tenant.installation_id, page_size=size, page_token=token
        )


def test_rows_written_between_pages_are_neither_skipped_nor_repeated(
    sessions: sessionmaker[Session], installation: Tenant
) -> None:
    # Given five operations a minute apart, listed newest first two at a time
    ids = [add_operation(sessions, installation, T0 + timedelta(minutes=i)) for i in range(5)]
    first = page(sessions, installation, 2, None)
    assert [op.id for op in first.operations] == [ids[4], ids[3]]
    assert first.next_token is not None

    # When a newer operation arrives, and one older than the cursor (a late commit),
    # before the client asks for the next pages
    add_operation(sessions, installation, T0 + timedelta(minutes=10))
    late = add_operation(sessions, installation, T0 + timedelta(minutes=1, seconds=30))
    seen = [op.id for op in first.operations]
    token: str | None = first.next_token
    while token is not None:
        result = page(sessions, installation, 2, token)
        seen += [op.id for op in result.operations]
        token = result.next_token

    # Then every row that was below the cursor comes exactly once, in order, and the
    # newer one (above the cursor) does not push an already-served row onto a later page
    assert seen == [ids[4], ids[3], ids[2], late, ids[1], ids[0]]


def test_rows_sharing_a_creation_time_are_split_across_pages_by_id(
    sessions: sessionmaker[Session], installation: Tenant
) -> None:
    # Given seven operations committed in the same microsecond (one group commit)
    ids = [add_operation(sessions, installation, T0, op_id=f"{n:08d}-same-time") for n in range(7)]

    # When they are listed three at a time
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        result = page(sessions, installation, 3, token)
        seen += [op.id for op in result.operations]
        pages += 1
        token = result.next_token
        if token is None:
            break

    # Then the tie is broken by id, newest-first order holds, and none is lost
    assert pages == 3
    assert seen == sorted(ids, reverse=True)


def test_a_page_token_from_elsewhere_is_refused(
    sessions: sessionmaker[Session], installation: Tenant
) -> None:
    with pytest.raises(ValueError, match="pageToken is not valid"):
        page(sessions, installation, 2, "not-a-token")
