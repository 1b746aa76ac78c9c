"""`PUT …/objects/{objectName}:async` over real HTTP: what it accepts, and what it refuses
before anything is stored or fetched."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.support.contract import assert_problem
from tests.support.system import Tenant, create_tenant
from writejobs.settings import Settings
from writejobs.store.db import create_session_factory, create_store_engine
from writejobs.store.operations_repo import get_operation, load_payload

KEY = "External_Id__c"
CSV = f"{KEY},LastName,Email\next-1,Lovelace,ada@example.com\n"


@pytest.fixture()
def salesforce(settings: Settings, api_url: str, sandbox_url: str) -> Tenant:
    return create_tenant(settings, api_url, sandbox_url, provider="salesforce")


def put(tenant: Tenant, body: dict[str, Any], api_key: str | None = None) -> httpx.Response:
    with tenant.client(api_key) as client:
        return client.put(tenant.write_path("Contact") + ":async", json=body)


def body(tenant: Tenant, **fields: Any) -> dict[str, Any]:
    return {"groupRef": tenant.group_ref, "primaryKey": KEY, **fields}


def test_an_inline_csv_is_stored_with_its_operation_and_answered_with_its_id(
    salesforce: Tenant, settings: Settings
) -> None:
    response = put(salesforce, body(salesforce, recordsCSV=CSV))

    assert response.status_code == 200, response.text
    op_id = response.json()["operationId"]
    assert set(response.json()) == {"operationId"}
    engine = create_store_engine(settings)
    try:
        with create_session_factory(engine)() as session:
            op = get_operation(session, op_id)
            assert op is not None
            assert (op.shape, op.mode, op.write_type, op.object_name) == (
                "bulk",
                "bulk",
                "upsert",
                "Contact",
            )
            # the CSV is kept apart from the row, which holds no record
            assert "recordsCSV" not in op.request
            stored = load_payload(session, op_id)
            # the worker may already have finished (and dropped) it
            assert stored in (CSV.encode(), None)
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"recordsCSV": CSV.replace("\n", "\r\n")}, "CRLF"),
        ({"recordsCSV": "LastName\nLovelace\n"}, f"no '{KEY}' column"),
        ({"recordsCSV": CSV, "recordsURL": "https://files.example.com/a.csv"}, "exactly one"),
        ({}, "exactly one"),
        ({"recordsURL": "ftp://files.example.com/a.csv"}, "https://"),
        ({"recordsURL": "not a url"}, "recordsURL"),
    ],
)
def test_a_bad_request_is_a_400_naming_the_problem(
    salesforce: Tenant, fields: dict[str, Any], message: str
) -> None:
    response = put(salesforce, body(salesforce, **fields))
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/plain")
    assert message in response.text


@pytest.mark.parametrize(
    ("url", "refusal"),
    [
        ("https://127.0.0.1/contacts.csv", "127.0.0.1, a loopback address"),
        ("https://10.0.0.1/contacts.csv", "10.0.0.1, a private address"),
        ("https://169.254.169.254/latest/meta-data/", "169.254.169.254, a link-local address"),
        ("https://[::1]/contacts.csv", "::1, a loopback address"),
    ],
)
def test_a_records_url_at_an_internal_address_is_refused_at_intake(
    salesforce: Tenant, url: str, refusal: str
) -> None:
    response = put(salesforce, body(salesforce, recordsURL=url))
    assert response.status_code == 400
    assert refusal in response.text


def test_plain_http_is_refused_for_a_host_the_settings_do_not_allow(
    salesforce: Tenant, sandbox_url: str
) -> None:
    # the sandbox serves this file on 127.0.0.1, which is not the allowed name
    name = f"{uuid.uuid4().hex[:8]}.csv"
    httpx.put(f"{sandbox_url}/_sandbox/files/{name}", content=CSV.encode())

    response = put(salesforce, body(salesforce, recordsURL=f"{sandbox_url}/_sandbox/files/{name}"))

    assert response.status_code == 400
    assert "must start with https://" in response.text
    fetches = httpx.get(f"{sandbox_url}/_sandbox/stats").json()["file_fetches"]
    assert name not in fetches


def test_an_installation_other_than_salesforce_is_refused(tenant: Tenant) -> None:
    response = put(tenant, body(tenant, recordsCSV=CSV))
    assert response.status_code == 400
    assert "Salesforce only" in response.text


def test_an_unknown_group_ref_is_a_400(salesforce: Tenant) -> None:
    response = put(salesforce, {"groupRef": "nobody", "primaryKey": KEY, "recordsCSV": CSV})
    assert response.status_code == 400
    assert "'nobody' has no installation" in response.text


def test_a_body_over_the_limit_is_a_413_problem(salesforce: Tenant) -> None:
    huge = CSV + "x,y,z\n" * (4 * 1024 * 1024)
    response = put(salesforce, body(salesforce, recordsCSV=huge))
    problem = assert_problem(response, 413)
    assert "recordsURL" in problem["remedy"]


def test_an_inline_csv_just_over_10_mib_is_a_400_telling_to_use_a_url(salesforce: Tenant) -> None:
    big = CSV + "x" * (10 * 1024 * 1024)
    response = put(salesforce, body(salesforce, recordsCSV=big))
    assert response.status_code == 400
    assert "send a larger file as recordsURL" in response.text


def test_without_an_api_key_it_is_a_401_problem(salesforce: Tenant) -> None:
    response = put(salesforce, body(salesforce, recordsCSV=CSV), api_key="")
    assert_problem(response, 401)
