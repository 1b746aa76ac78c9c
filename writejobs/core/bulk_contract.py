"""The bulk CSV upsert request (`PUT …/objects/{objectName}:async`) and its CSV rules.

The contract (section 2a) takes `{groupRef, recordsCSV | recordsURL, primaryKey}`:
an inline CSV of at most 10 MiB, or a URL to GET one of at most 150 MiB from.
Salesforce reads the CSV with `lineEnding: LF`, its header row names field API
names, and `primaryKey` (`Id` or an external id field) must be one of them.

An inline CSV is checked whole at intake; a URL's CSV is checked as it streams
through the worker (`checked_csv`), by the same rules, so both fail the same way.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from writejobs.core.contract import MAX_GROUP_REF_CHARS
from writejobs.core.json_input import load_json, shown
from writejobs.errors import ContractError, CsvRejected

MAX_INLINE_CSV_BYTES = 10 * 1024 * 1024
MAX_URL_CSV_BYTES = 150 * 1024 * 1024
# A header row longer than this is not a header row (Salesforce objects have at
# most a few hundred fields); the check stops buffering there.
MAX_HEADER_BYTES = 64 * 1024
# Presigned storage URLs run to a couple of kilobytes; this leaves room.
MAX_URL_CHARS = 8192

CRLF_MESSAGE = (
    "uses CRLF (\\r\\n) line endings; bulk upserts take LF (\\n) line endings only: "
    "convert the file (for example `dos2unix`) and send it again"
)


class BulkUpsertRequest(BaseModel):
    """The body of `PUT …/objects/{objectName}:async`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    group_ref: str = Field(alias="groupRef", min_length=1, max_length=MAX_GROUP_REF_CHARS)
    primary_key: str = Field(alias="primaryKey", min_length=1, max_length=255)
    records_csv: str | None = Field(default=None, alias="recordsCSV")
    records_url: str | None = Field(
        default=None, alias="recordsURL", min_length=1, max_length=MAX_URL_CHARS
    )

    @model_validator(mode="after")
    def _one_source(self) -> BulkUpsertRequest:
        if (self.records_csv is None) == (self.records_url is None):
            raise ValueError("give exactly one of recordsCSV and recordsURL")
        return self

    def stored(self) -> dict[str, str]:
        """The request as kept on the operation row (a `StoredBulkRequest`): the inline
        CSV is kept apart, in `operation_payloads`."""
        return self.model_dump(by_alias=True, exclude_none=True, exclude={"records_csv"})


class StoredBulkRequest(BaseModel):
    """A bulk request as the worker reads it back; no `recordsURL` means an inline CSV."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    group_ref: str = Field(alias="groupRef")
    primary_key: str = Field(alias="primaryKey")
    records_url: str | None = Field(default=None, alias="recordsURL")


def parse_bulk_request(body: bytes) -> tuple[BulkUpsertRequest, bytes | None]:
    """The request and its inline CSV as UTF-8 bytes (None for a `recordsURL`).

    Raises `ContractError` naming what is wrong: malformed JSON, a missing or
    unknown field, a value too long, both or neither source, NaN, deep nesting or
    lone surrogates (see `load_json`), an inline CSV over 10 MiB, with CRLF
    line endings, without rows, or without the `primaryKey` column.
    """
    document = load_json(body)
    try:
        request = BulkUpsertRequest.model_validate(document)
    except ValidationError as exc:
        raise ContractError(_describe(exc)) from None
    if request.records_csv is None:
        return request, None
    content = request.records_csv.encode("utf-8")
    if len(content) > MAX_INLINE_CSV_BYTES:
        raise ContractError(
            f"recordsCSV is {len(content)} bytes, more than {MAX_INLINE_CSV_BYTES} (10 MiB): "
            "send a larger file as recordsURL"
        )
    check_inline_csv(content, request.primary_key)
    return request, content


def check_inline_csv(content: bytes, primary_key: str) -> None:
    """Raise `CsvRejected` unless `content` is an LF CSV whose header names `primary_key`
    and which has at least one row."""
    if b"\r\n" in content:
        raise CsvRejected(f"recordsCSV {CRLF_MESSAGE}")
    header, _, rows = content.partition(b"\n")
    check_header(header, primary_key, source="recordsCSV")
    if not rows.strip():
        raise CsvRejected("recordsCSV has a header row but no records")


def check_header(line: bytes, primary_key: str, *, source: str) -> None:
    """Raise `CsvRejected` unless the header row `line` has a `primary_key` column.

    Salesforce field names are case-insensitive, so the match is too.
    """
    text = line.decode("utf-8", errors="replace").removeprefix("\ufeff")
    names = next(csv.reader([text]), [])
    if not any(name.strip() for name in names):
        raise CsvRejected(f"{source} has no header row")
    if primary_key.lower() not in {name.strip().lower() for name in names}:
        raise CsvRejected(
            f"{source}'s header row has no {primary_key!r} column: primaryKey must be one "
            "of the CSV's columns"
        )


def checked_csv(chunks: Iterable[bytes], primary_key: str, *, source: str) -> Iterator[bytes]:
    """Pass `chunks` through unchanged, raising `CsvRejected` at the first CRLF or
    when the header row lacks `primary_key`.

    The header row is held back until it is whole, so a CSV refused for its
    header (or for CRLF endings, which show at the header's end) sends nothing.
    """
    held = b""
    header_checked = False
    previous_last = b""
    for chunk in chunks:
        if not chunk:
            continue
        if b"\r\n" in chunk or (previous_last == b"\r" and chunk[:1] == b"\n"):
            raise CsvRejected(f"{source} {CRLF_MESSAGE}")
        previous_last = chunk[-1:]
        if header_checked:
            yield chunk
            continue
        held += chunk
        end = held.find(b"\n")
        if end == -1 and len(held) <= MAX_HEADER_BYTES:
            continue
        check_header(held[:end] if end != -1 else held, primary_key, source=source)
        header_checked = True
        yield held
        held = b""
    if not header_checked:
        check_header(held, primary_key, source=source)
        yield held


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    # An unknown field's name is the caller's: quote a short prefix of it only.
    where = ".".join(str(part) if len(str(part)) <= 60 else shown(part) for part in first["loc"])
    message = str(first.get("msg", "is not valid")).removeprefix("Value error, ")
    kind = first.get("type")
    if kind == "extra_forbidden":
        message = "is not a field of this request (groupRef, recordsCSV, recordsURL, primaryKey)"
    elif kind == "string_too_long":
        message = f"must be at most {(first.get('ctx') or {}).get('max_length')} characters"
    return f"{where}: {message}" if where else message
