"""Reading the `Idempotency-Key` header and fingerprinting a request."""

from __future__ import annotations

import pytest

from writejobs.errors import ContractError
from writejobs.intake.idempotency import accepted_answer, fingerprint, parse_key


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("abc-123", "abc-123"),
        ('"abc-123"', "abc-123"),
        ('  "with \\"quotes\\" and \\\\"  ', 'with "quotes" and \\'),
        ("x" * 255, "x" * 255),
        ("has spaces inside", "has spaces inside"),
    ],
)
def test_a_key_is_read_bare_or_as_a_structured_field_string(raw: str, key: str) -> None:
    assert parse_key(raw) == key


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("", "empty"),
        ('""', "empty"),
        ("x" * 256, "longer than 255"),
        ("tab\there", "printable ASCII"),
        ("caf\u00e9", "printable ASCII"),
        ('"bad \\n escape"', "structured-field string"),
        ('"inner " quote"', "structured-field string"),
    ],
)
def test_a_key_we_cannot_keep_is_a_contract_error_naming_why(raw: str, why: str) -> None:
    with pytest.raises(ContractError, match=why):
        parse_key(raw)


def test_the_fingerprint_ignores_json_spacing_and_key_order_but_not_content() -> None:
    path = "/v1/projects/p/integrations/i/objects/contacts"
    base = fingerprint("POST", path, b'{"a": 1, "b": [1, 2]}')
    assert fingerprint("post", path, b'{"b":[1,2],"a":1}') == base
    assert fingerprint("POST", path, b'{"a": 1, "b": [2, 1]}') != base
    assert fingerprint("PUT", path, b'{"a": 1, "b": [1, 2]}') != base
    assert fingerprint("POST", path + "x", b'{"a": 1, "b": [1, 2]}') != base


def test_the_fingerprint_of_a_body_that_is_not_json_is_of_its_bytes() -> None:
    assert fingerprint("POST", "/p", b"not json") != fingerprint("POST", "/p", b"not  json")


def test_the_accepted_answer_is_spelled_as_the_api_spells_it() -> None:
    assert accepted_answer("op-1").body == b'{"operationId":"op-1"}'
    assert accepted_answer("op-1").status == 200
