"""The bulk upsert request and its CSV rules, inline (at intake) and streamed (in the worker)."""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest

from writejobs.core.bulk_contract import (
    MAX_HEADER_BYTES,
    MAX_INLINE_CSV_BYTES,
    checked_csv,
    parse_bulk_request,
)
from writejobs.errors import ContractError, CsvRejected

CSV = "External_Id__c,LastName,Email\next-1,Lovelace,ada@example.com\n"


def body(**fields: object) -> bytes:
    return json.dumps({"groupRef": "org-1", "primaryKey": "External_Id__c", **fields}).encode()


def test_an_inline_csv_is_returned_as_utf8_and_kept_off_the_stored_request() -> None:
    request, content = parse_bulk_request(body(recordsCSV=CSV))
    assert content == CSV.encode()
    assert request.stored() == {"groupRef": "org-1", "primaryKey": "External_Id__c"}


def test_a_records_url_has_no_inline_content() -> None:
    request, content = parse_bulk_request(body(recordsURL="https://files.example.com/a.csv"))
    assert content is None
    assert request.stored()["recordsURL"] == "https://files.example.com/a.csv"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "exactly one of recordsCSV and recordsURL"),
        ({"recordsCSV": CSV, "recordsURL": "https://x.example/a.csv"}, "exactly one"),
        ({"recordsCSV": CSV.replace("\n", "\r\n")}, "CRLF"),
        (
            {"recordsCSV": "LastName,Email\nLovelace,ada@example.com\n"},
            "no 'External_Id__c' column",
        ),
        ({"recordsCSV": "External_Id__c,LastName\n"}, "no records"),
        ({"recordsCSV": ""}, "no header row"),
        (
            {"recordsCSV": CSV, "recordsUrl": "https://x.example/a.csv"},
            "recordsUrl: is not a field",
        ),
    ],
)
def test_bad_requests_are_refused_with_a_message_naming_the_problem(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ContractError, match=message):
        parse_bulk_request(body(**fields))


def test_a_missing_primary_key_is_named() -> None:
    raw = json.dumps({"groupRef": "org-1", "recordsCSV": CSV}).encode()
    with pytest.raises(ContractError, match="primaryKey"):
        parse_bulk_request(raw)


def test_an_inline_csv_over_10_mib_is_refused_and_told_to_use_a_url() -> None:
    big = "External_Id__c,LastName\n" + "x,y\n" * (MAX_INLINE_CSV_BYTES // 4)
    with pytest.raises(ContractError, match="send a larger file as recordsURL"):
        parse_bulk_request(body(recordsCSV=big))


def test_the_primary_key_matches_a_header_case_insensitively_and_past_a_bom() -> None:
    _, content = parse_bulk_request(body(recordsCSV="\ufeffexternal_id__c,LastName\nx,y\n"))
    assert content is not None


def test_malformed_json_is_a_contract_error() -> None:
    with pytest.raises(ContractError, match="not valid JSON"):
        parse_bulk_request(b"{")


def stream(chunks: Iterable[bytes], key: str = "External_Id__c") -> bytes:
    return b"".join(checked_csv(chunks, key, source="recordsURL"))


def test_a_streamed_csv_passes_through_unchanged_whatever_its_chunking() -> None:
    data = CSV.encode() * 50
    for size in (1, 7, 64, len(data)):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        assert stream(chunks) == data


def test_crlf_split_across_two_chunks_is_caught() -> None:
    first, second = b"External_Id__c,LastName\nx,y\r", b"\nz,w\r\n"
    with pytest.raises(CsvRejected, match="CRLF"):
        stream([first, second])


def test_a_header_without_the_primary_key_sends_nothing() -> None:
    sent: list[bytes] = []
    with pytest.raises(CsvRejected, match="no 'External_Id__c' column"):
        for chunk in checked_csv([b"LastName,Em", b"ail\nx,y\n"], "External_Id__c", source="u"):
            sent.append(chunk)
    assert sent == []


def test_a_header_that_never_ends_is_checked_at_the_size_limit() -> None:
    with pytest.raises(CsvRejected, match="no 'Id' column"):
        stream([b"a" * (MAX_HEADER_BYTES + 1)], key="Id")


def test_a_file_that_is_only_a_header_passes() -> None:
    assert stream([b"Id,LastName"], key="Id") == b"Id,LastName"
