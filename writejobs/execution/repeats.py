"""Creates sent again after an attempt that may have reached the provider.

A worker killed between its provider call and the commit of the result leaves
its operation `running`; once the lease lapses another delivery takes it over
and sends the same records again. Where the provider can recognise the repeat
(a natural key, see `writejobs.providers.natural_keys`) it is an upsert and
creates nothing twice; where it cannot, the record may now exist twice, and
that is said: in the operation's logs ("possible duplicate: …", with the
attempt number, never the record's values) and in the `possible_duplicates`
metric, by provider.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.orm import Session

from writejobs.core.recorder import Recorder
from writejobs.providers.base import WriteItem
from writejobs.providers.natural_keys import OPUS_ROW_KEY, recognised, repeat_key
from writejobs.store import operations_repo
from writejobs.store.tables import Installation, Operation

log = logging.getLogger(__name__)

POSSIBLE_DUPLICATE = "possible duplicate: a previous attempt may have reached the provider"


def natural_key(installation: Installation, object_name: str) -> str | None:
    """The installation's natural key of `object_name`, or None when it names none."""
    value = (installation.natural_keys or {}).get(object_name)
    return value if isinstance(value, str) and value else None


def note_takeover(
    session: Session,
    op: Operation,
    items: list[WriteItem],
    *,
    provider: str,
    key: str | None,
    recorder: Recorder,
    now: datetime,
) -> None:
    """Log (uncommitted) and count what sending `op`'s creates again may do.

    Called for an operation taken over from a holder whose lease lapsed: a
    previous attempt started its provider call and never settled. Updates and
    deletes are left alone (writing them again changes nothing twice).
    """
    if op.write_type != "create" or not items:
        return
    plain = sum(1 for item in items if not recognised(provider, key, item))
    upserted = len(items) - plain
    if plain:
        log.warning("operation %s: %s (attempt %d)", op.id, POSSIBLE_DUPLICATE, op.attempts)
        details = {"attempt": op.attempts, "records": plain}
        operations_repo.add_log(
            session, op.id, POSSIBLE_DUPLICATE, now=now, severity="WARNING", details=details
        )
        recorder.count("possible_duplicates", plain, provider=provider)
    if upserted:
        field = repeat_key(provider, key)
        if provider == "opus" and key is None:
            msg = f"repeat recognised by {OPUS_ROW_KEY}: Opus skips a record it already holds"
        else:
            msg = f"repeat written as an upsert by {field}"
        details = {"attempt": op.attempts, "records": upserted}
        operations_repo.add_log(session, op.id, msg, now=now, details=details)
