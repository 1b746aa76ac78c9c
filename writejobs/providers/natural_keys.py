"""Natural keys: the field whose value names one record at the provider.

An installation may name one per object (`installations.natural_keys`, set with
`writejobs admin set-natural-key`). A create whose record carries it is sent as
the provider's upsert by that field (HubSpot's batch upsert by `idProperty`,
Salesforce's upsert by an external id field, Opus's `rowKey` with `Overwrite`),
so an attempt repeated after a worker died between the provider call and the
commit of its result updates the record the first attempt wrote, and never
creates a second one. Without one, a repeated create may duplicate a record.
"""

from __future__ import annotations

import re
from typing import Any

from writejobs.providers.base import WriteItem

# HubSpot property names and Salesforce field names (custom ones end in `__c`).
_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,254}$")
# Opus recognises a record by its rowKey alone: every submitted record has one.
OPUS_ROW_KEY = "rowKey"


def check_natural_key(provider: str, field: str) -> str:
    """The field, checked for `provider`; raises `ValueError` naming the problem.

    A name is a letter then letters, digits or underscores (at most 255), as
    HubSpot property and Salesforce field names are; Opus has only `rowKey`.
    """
    field = field.strip()
    if not _FIELD_NAME.match(field):
        raise ValueError(
            f"a natural key is a field name (a letter, then letters, digits or _), not {field!r}"
        )
    if provider == "opus" and field != OPUS_ROW_KEY:
        raise ValueError(f"AvePoint Opus recognises records by {OPUS_ROW_KEY} only")
    return field


def repeat_key(provider: str, natural_key: str | None) -> str | None:
    """The field by which `provider` recognises a create sent again, or None.

    Opus always does (by `rowKey`: an existing one is skipped, or with a natural
    key overwritten); HubSpot and Salesforce only when the object has a natural key.
    """
    return OPUS_ROW_KEY if provider == "opus" else natural_key


def key_value(record: dict[str, Any], field: str) -> str | None:
    """The record's value of its natural key as text, or None when it carries none.

    Only a non-empty string or a number names a record; anything else (null, a
    boolean, an object) is written as a plain create.
    """
    value = record.get(field)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = str(value).strip()
    return text or None


def upsert_value(provider: str, natural_key: str | None, item: WriteItem) -> str | None:
    """The value a create of `item` is upserted by, or None when it is a plain create.

    None without a natural key, or when the record does not carry it. HubSpot's
    batch upsert takes no associations, so a HubSpot record with associations is
    created as before rather than written without them.
    """
    if natural_key is None:
        return None
    if provider == "hubspot" and item.associations:
        return None
    return key_value(item.record, natural_key)


def recognised(provider: str, natural_key: str | None, item: WriteItem) -> bool:
    """Whether `provider` would recognise a create of `item` sent again (no duplicate)."""
    return provider == "opus" or upsert_value(provider, natural_key, item) is not None
