"""`GET /_sandbox/records/{provider}/{object}/keys`: what a benchmark counts duplicates by."""

from __future__ import annotations

import httpx

from sandbox.app import key_hash

KEYS = "/_sandbox/records/hubspot/companies/keys"


def test_a_value_stored_twice_is_listed_twice_as_its_hash_never_as_itself(
    sandbox: httpx.Client,
) -> None:
    for name in ("acme", "acme", "globex"):
        response = sandbox.post("/crm/v3/objects/companies", json={"properties": {"name": name}})
        assert response.status_code == 201, response.text
    sandbox.post("/crm/v3/objects/companies", json={"properties": {"domain": "x.example"}})

    body = sandbox.get(KEYS, params={"field": "name"}).json()

    assert sorted(body["keys"]) == sorted([key_hash("acme"), key_hash("acme"), key_hash("globex")])
    assert (body["records"], body["without_field"]) == (4, 1)
    assert "acme" not in str(body)


def test_an_object_with_no_records_has_no_keys(sandbox: httpx.Client) -> None:
    body = sandbox.get("/_sandbox/records/hubspot/deals/keys", params={"field": "name"}).json()

    assert body == {"records": 0, "without_field": 0, "keys": []}
