"""Hostile input to the write and bulk endpoints over real HTTP: each is a short 4xx
naming the problem, never a 500, nothing is left behind, and the API still answers.

(The cases that cost memory, a 500 MiB body and 9 MiB groupRefs, run against the
API as a process of its own in tests/e2e/test_hostile_input_memory.py.)
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from tests.support.system import Tenant, create_tenant
from writejobs.settings import Settings

# A refusal quotes at most a short prefix of what it refuses.
MAX_ANSWER_BYTES = 2048
CSV = "External_Id__c,LastName\next-1,Lovelace\n"


@pytest.fixture()
def salesforce(settings: Settings, api_url: str, sandbox_url: str) -> Tenant:
    return create_tenant(settings, api_url, sandbox_url, provider="salesforce")


def send(
    tenant: Tenant, content: bytes, *, bulk: bool = False, object_name: str | None = None
) -> httpx.Response:
    name = object_name or ("Contact" if bulk else "contacts")
    path = tenant.write_path(name) + (":async" if bulk else "")
    with tenant.client() as client:
        return client.request(
            "PUT" if bulk else "POST",
            path,
            content=content,
            headers={"Content-Type": "application/json"},
        )


def write_body(tenant: Tenant, record_json: str, **fields: Any) -> bytes:
    """A write whose record is the given JSON text (which json.dumps could not make)."""
    head = json.dumps({"groupRef": tenant.group_ref, "type": "create", **fields})
    return f'{head[:-1]}, "record": {record_json}}}'.encode()


def bulk_body(tenant: Tenant, extra_json: str) -> bytes:
    head = json.dumps({"groupRef": tenant.group_ref, "primaryKey": "External_Id__c"})
    return f"{head[:-1]}, {extra_json}}}".encode()


def operations(tenant: Tenant) -> list[dict[str, Any]]:
    path = (
        f"/v1/projects/{tenant.project_id}/integrations/{tenant.integration_id}"
        f"/installations/{tenant.installation_id}/operations"
    )
    with tenant.client() as client:
        response = client.get(path)
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def assert_refused(response: httpx.Response, message: str, status: int = 400) -> None:
    assert response.status_code == status, response.text[:500]
    assert len(response.content) < MAX_ANSWER_BYTES
    if status == 400:
        assert response.headers["content-type"].startswith("text/plain")
        assert message in response.text, response.text
    else:
        assert message in response.json()["detail"], response.text


def assert_still_answers(tenant: Tenant) -> None:
    assert httpx.get(f"{tenant.api_url}/healthz", timeout=10).status_code == 200
    with tenant.client() as client:
        body = {"groupRef": tenant.group_ref, "type": "create", "mode": "asynchronous"}
        response = client.post(tenant.write_path(), json=body | {"record": {"email": "a@b.io"}})
    assert response.status_code == 200, response.text


# Item 1: deep nesting and huge integers, on both endpoints


@pytest.mark.parametrize("levels", [33, 1_000, 100_000])
def test_a_deeply_nested_write_is_a_400_naming_the_depth_limit(tenant: Tenant, levels: int) -> None:
    record = '{"a": ' + "[" * levels + "]" * levels + "}"
    response = send(tenant, write_body(tenant, record))
    assert_refused(response, "nested deeper than 32 levels")
    assert operations(tenant) == []
    assert_still_answers(tenant)


def test_a_deeply_nested_bulk_request_is_a_400_naming_the_depth_limit(salesforce: Tenant) -> None:
    response = send(salesforce, bulk_body(salesforce, '"x": ' + "[" * 5000 + "]" * 5000), bulk=True)
    assert_refused(response, "nested deeper than 32 levels")


def test_a_5000_digit_integer_is_a_400_on_both_endpoints(
    tenant: Tenant, salesforce: Tenant
) -> None:
    digits = "7" * 5000
    assert_refused(
        send(tenant, write_body(tenant, f'{{"n": {digits}}}')), "an integer of more than 100 digits"
    )
    response = send(salesforce, bulk_body(salesforce, f'"recordsCSV": {digits}'), bulk=True)
    assert_refused(response, "an integer of more than 100 digits")
    assert operations(tenant) == []
    assert_still_answers(tenant)


# Item 2: NaN and Infinity


@pytest.mark.parametrize(
    ("literal", "message"),
    [
        ("NaN", "holds NaN, which is not a JSON number"),
        ("Infinity", "holds Infinity"),
        ("-Infinity", "holds -Infinity"),
        ("1e999", "record.score holds a number out of a double's range"),
    ],
)
@pytest.mark.parametrize("mode", ["synchronous", "asynchronous"])
def test_nan_and_infinity_in_a_record_are_a_400_and_nothing_is_stored(
    tenant: Tenant, literal: str, message: str, mode: str
) -> None:
    response = send(tenant, write_body(tenant, f'{{"score": {literal}}}', mode=mode))
    assert_refused(response, message)
    assert operations(tenant) == []


# Item 3: a lone surrogate


@pytest.mark.parametrize("mode", ["synchronous", "asynchronous"])
def test_a_lone_surrogate_in_a_record_is_a_400_and_leaves_no_operation(
    tenant: Tenant, mode: str
) -> None:
    response = send(tenant, write_body(tenant, '{"firstname": "A\\ud800"}', mode=mode))
    assert_refused(response, "record.firstname holds a lone UTF-16 surrogate")
    assert operations(tenant) == []
    assert_still_answers(tenant)


def test_a_lone_surrogate_in_a_bulk_csv_is_a_400(salesforce: Tenant) -> None:
    response = send(salesforce, bulk_body(salesforce, '"recordsCSV": "Id\\n\\udc00\\n"'), bulk=True)
    assert_refused(response, "recordsCSV holds a lone UTF-16 surrogate")


# Item 5: lengths of groupRef, path names and header values; short messages


def test_a_group_ref_over_200_characters_is_a_400_quoting_none_of_it(
    tenant: Tenant, salesforce: Tenant
) -> None:
    long_ref = "g" * 100_000
    body = json.dumps({"groupRef": long_ref, "type": "create", "record": {}}).encode()
    assert_refused(send(tenant, body), "groupRef must be at most 200 characters")
    bulk = json.dumps({"groupRef": long_ref, "primaryKey": "Id", "recordsCSV": CSV}).encode()
    assert_refused(send(salesforce, bulk, bulk=True), "groupRef: must be at most 200 characters")


def test_an_unknown_group_ref_is_quoted_by_a_short_prefix(tenant: Tenant) -> None:
    body = json.dumps({"groupRef": "n" * 200, "type": "create", "record": {}}).encode()
    response = send(tenant, body)
    assert_refused(response, "has no installation")
    assert "n" * 100 not in response.text


@pytest.mark.parametrize("bulk", [False, True], ids=["write", "bulk"])
def test_an_object_name_over_200_characters_is_a_400(salesforce: Tenant, bulk: bool) -> None:
    body = (
        bulk_body(salesforce, f'"recordsCSV": {json.dumps(CSV)}')
        if bulk
        else json.dumps({"groupRef": salesforce.group_ref, "type": "create", "record": {}}).encode()
    )
    response = send(salesforce, body, bulk=bulk, object_name="o" * 10_000)
    assert_refused(response, "objectName must be at most 200 characters")
    assert operations(salesforce) == []


def test_an_integration_id_over_200_characters_is_a_400(tenant: Tenant) -> None:
    path = f"/v1/projects/{tenant.project_id}/integrations/{'i' * 10_000}/objects/contacts"
    with tenant.client() as client:
        response = client.post(
            path, json={"groupRef": tenant.group_ref, "type": "create"} | {"record": {}}
        )
    assert_refused(response, "integrationId must be at most 200 characters")


def test_an_unknown_project_named_at_length_is_a_short_404(tenant: Tenant) -> None:
    with tenant.client() as client:
        response = client.post(
            tenant.write_path(project="p" * 10_000),
            json={"groupRef": tenant.group_ref, "type": "create", "record": {}},
        )
    assert_refused(response, "not found", status=404)


def test_an_unknown_bulk_field_with_a_huge_name_is_quoted_by_a_short_prefix(
    salesforce: Tenant,
) -> None:
    response = send(salesforce, bulk_body(salesforce, f'"{"f" * 1_000_000}": 1'), bulk=True)
    assert_refused(response, "is not a field of this request")


# Item 6: headers a write carries


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"key": "Sforce-Auto-Assign", "value": "FALSE\r\nX-Injected: 1"}, "no CR, LF"),
        ({"key": "Sforce-Auto-Assign", "value": "FALSE\n"}, "headers[0].value must be"),
        ({"key": "Sforce-Auto-Assign", "value": "caf\u00e9"}, "printable ASCII"),
        ({"key": "", "value": "x"}, "headers[0].key must not be empty"),
        ({"key": "Bad Name", "value": "x"}, "is not a header name"),
        ({"key": "X\r\nY", "value": "x"}, "is not a header name"),
        ({"key": "Sforce-Call-Options", "value": "v" * 5000}, "at most 1000 characters"),
    ],
)
@pytest.mark.parametrize("mode", ["synchronous", "asynchronous"])
def test_a_malformed_header_is_a_400_at_intake(
    salesforce: Tenant, header: dict[str, str], message: str, mode: str
) -> None:
    body = {
        "groupRef": salesforce.group_ref,
        "type": "create",
        "mode": mode,
        "record": {"LastName": "Lovelace"},
        "headers": [header],
    }
    response = send(salesforce, json.dumps(body).encode(), object_name="Contact")
    assert_refused(response, message)
    assert operations(salesforce) == []


def test_more_than_twenty_headers_are_a_400(salesforce: Tenant) -> None:
    headers = [{"key": f"Sforce-H{n}", "value": "x"} for n in range(21)]
    body = {"groupRef": salesforce.group_ref, "type": "create", "record": {}, "headers": headers}
    response = send(salesforce, json.dumps(body).encode(), object_name="Contact")
    assert_refused(response, "headers must have at most 20 items")


# Item 7: ids and object names that would leave their path segment


@pytest.mark.parametrize("record_id", [".", "..", "1/../..", "a/b"])
def test_a_record_id_that_is_a_dot_segment_or_has_a_slash_is_a_400(
    tenant: Tenant, record_id: str
) -> None:
    body = {"groupRef": tenant.group_ref, "type": "delete", "record": {"id": record_id}}
    response = send(tenant, json.dumps(body).encode())
    assert_refused(response, "record.id")
    assert "is not allowed: no '.', '..' or '/'" in response.text
    assert operations(tenant) == []


def test_a_batch_update_with_a_dot_dot_id_is_a_400(tenant: Tenant) -> None:
    batch = [{"record": {"id": "1", "email": "a@b.io"}}, {"record": {"id": "..", "x": 1}}]
    body = {"groupRef": tenant.group_ref, "type": "update", "batch": batch}
    assert_refused(send(tenant, json.dumps(body).encode()), "batch[1].record.id '..'")


@pytest.mark.parametrize(("name", "shown"), [("%2E%2E", "'..'"), ("%2e", "'.'")])
def test_an_object_name_that_is_a_dot_segment_is_a_400(
    tenant: Tenant, name: str, shown: str
) -> None:
    # Percent-encoded and sent raw, so no client resolves the dot segment on the way
    url = httpx.URL(tenant.api_url + tenant.write_path("PLACEHOLDER"))
    raw = url.raw_path.replace(b"PLACEHOLDER", name.encode())
    body = {"groupRef": tenant.group_ref, "type": "delete", "record": {"id": "1"}}
    with httpx.Client(timeout=30) as client:
        request = client.build_request(
            "POST", url, json=body, headers={"X-Api-Key": tenant.api_key}
        )
        request.url = request.url.copy_with(raw_path=raw)
        response = client.send(request)
    assert_refused(response, f"objectName {shown} is not allowed")
    assert operations(tenant) == []


# Item 8: a recordsURL at an IPv6 form of an internal IPv4 address


@pytest.mark.parametrize(
    ("host", "ipv4"),
    [
        ("[2002:7f00:1::]", "127.0.0.1"),
        ("[2002:a9fe:a9fe::]", "169.254.169.254"),
        ("[64:ff9b::a00:5]", "10.0.0.5"),
        ("[2001:0:4136:e378:8000:63bf:80ff:fffe]", "65.54.227.120, 127.0.0.1"),
    ],
)
def test_a_records_url_at_a_6to4_teredo_or_nat64_internal_address_is_a_400(
    salesforce: Tenant, host: str, ipv4: str
) -> None:
    url = f"https://{host}/{uuid.uuid4().hex}.csv"
    response = send(salesforce, bulk_body(salesforce, f'"recordsURL": "{url}"'), bulk=True)
    assert_refused(response, f"({ipv4})")
    assert "refused" in response.text
    assert operations(salesforce) == []
