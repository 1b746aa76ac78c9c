"""Idempotency keys: a client that sends a write again with the same key gets the
first answer back instead of a second operation.

The `Idempotency-Key` header of the IETF httpapi draft
(draft-ietf-httpapi-idempotency-key-header), with Stripe's semantics:

* A key is at most 255 characters, scoped to the caller's project, and kept for
  `idempotency_ttl_s` (24 hours). It may be sent bare (Stripe) or as the
  draft's structured-field string (`"…"`).
* The same key with the same request (method, path, body) within that time gets
  the stored status and body, byte for byte, and no second operation.
* The same key with a different request is refused with 422 (`KeyReused`); one
  whose first request is still running gets 409, retryable (`KeyInFlight`).
* What is stored is the answer of a write that began to execute: 200s, and the
  422 of a provider that refused every record. Requests refused before an
  operation exists (400, 404, 413) store nothing: fix the request and send it
  again with the same key. A 5xx (provider unavailable) frees the
  key: its operation has failed, and sending again should try again.

The key's row is inserted in the same transaction as its operation (and by
the group committer with it, for asynchronous writes), so the primary key
(project, key) is the claim: of any number of requests racing, in any number
of API processes, exactly one commits an operation; the others hit the unique
constraint, read the winner's row, and answer from it.

An asynchronous write's answer (`{operationId}`) is known at commit, so its key
starts `done`. A synchronous write's key is `in_flight` until the provider has
answered. If the API process dies in between, the operation is in SQL (no
sweep runs it again; the watchdog ends it after its deadline, see
`intake.write`), but no answer was stored: once the key has been
`in_flight` longer than a synchronous write's lease, which no live request outlasts, it
is settled with `200 {operationId}` (the asynchronous answer), so the client
learns the id and polls it, instead of a key blocked for a day.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from writejobs.clock import Clock, as_utc
from writejobs.errors import ContractError, KeyInFlight, KeyReused
from writejobs.store import idempotency_repo

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
# Claims lost to another request, then found expired or released, before giving up.
_MAX_ROUNDS = 3


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer as it goes on the wire: status and JSON body."""

    status: int
    body: bytes


def parse_key(raw: str) -> str:
    """The key in an `Idempotency-Key` header; `ContractError` for one we cannot keep.

    Accepts the draft's structured-field string (`"abc"`, with `\\"` and `\\\\`
    escapes) and a bare token, as Stripe's clients send it.
    """
    value = raw.strip()
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        value = _unescape(value[1:-1])
    if not value:
        raise ContractError(f"{HEADER} is empty")
    if len(value) > MAX_KEY_LENGTH:
        raise ContractError(f"{HEADER} is longer than {MAX_KEY_LENGTH} characters")
    if any(not 0x20 <= ord(c) <= 0x7E for c in value):
        raise ContractError(f"{HEADER} may hold only printable ASCII characters")
    return value


def _unescape(inner: str) -> str:
    out: list[str] = []
    chars = iter(inner)
    for c in chars:
        if c == "\\":
            c = next(chars, "")
            if c not in ('"', "\\"):
                raise ContractError(f"{HEADER} is not a valid structured-field string")
        elif c == '"':
            raise ContractError(f"{HEADER} is not a valid structured-field string")
        out.append(c)
    return "".join(out)


def fingerprint(method: str, path: str, body: bytes) -> str:
    """SHA-256 of the request; a JSON body counts by its content, not its spacing or key order."""
    try:
        canonical = json.dumps(
            json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    except ValueError:
        canonical = body
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), canonical):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def accepted_answer(operation_id: str) -> Answer:
    """`200 {operationId}`, spelled as the API spells it."""
    body = json.dumps({"operationId": operation_id}, separators=(",", ":")).encode()
    return Answer(200, body)


@dataclass(slots=True)
class KeyClaim:
    """One request's claim on a key, handed to the intake so the key row joins the
    operation's transaction; `operation_id` is filled in when it does."""

    project_id: str
    key: str
    fingerprint: str
    ttl_s: float
    operation_id: str | None = None
    in_flight: bool = False

    def row(self, operation_id: str, now: datetime, answer: Answer | None) -> dict[str, Any]:
        """The key's row for `operation_id`: `done` with `answer`, or `in_flight` without."""
        self.operation_id = operation_id
        self.in_flight = answer is None
        stored = None if answer is None else (answer.status, answer.body.decode())
        return idempotency_repo.key_row(
            self.project_id,
            self.key,
            self.fingerprint,
            operation_id,
            now=now,
            ttl_s=self.ttl_s,
            answer=stored,
        )


def answer_once(
    sessions: sessionmaker[Session],
    claim: KeyClaim,
    execute: Callable[[KeyClaim], Answer],
    *,
    clock: Clock,
    abandoned_after_s: float,
) -> tuple[Answer, bool]:
    """Answer a keyed request: the stored answer, or `execute(claim)`'s; and whether
    it was replayed.

    `execute` performs the write, putting `claim.row(…)` into its operation's
    transaction. Raises `KeyReused`, `KeyInFlight`, or what `execute` raised.
    """
    lost: IntegrityError | None = None
    for _ in range(_MAX_ROUNDS):
        stored = _stored_answer(sessions, claim, now=clock(), abandoned_after_s=abandoned_after_s)
        if stored is not None:
            return stored, True
        claim.operation_id = None
        try:
            answer = execute(claim)
        except IntegrityError as exc:
            # Most likely another request committed this key first: read its row.
            lost = exc
            continue
        except BaseException:
            _release(sessions, claim)
            raise
        if answer.status >= 500:
            _release(sessions, claim)
        elif claim.in_flight:
            _finish(sessions, claim, answer)
        return answer, False
    assert lost is not None
    raise lost


def _stored_answer(
    sessions: sessionmaker[Session], claim: KeyClaim, *, now: datetime, abandoned_after_s: float
) -> Answer | None:
    """The key's stored answer, or None when the key is free (never used, or expired)."""
    with sessions() as session:
        row = idempotency_repo.get_key(session, claim.project_id, claim.key)
        if row is None:
            return None
        if as_utc(row.expires_at) <= now:
            idempotency_repo.drop_expired(session, claim.project_id, claim.key, now=now)
            session.commit()
            return None
        if row.fingerprint != claim.fingerprint:
            raise KeyReused()
        if row.state == idempotency_repo.IN_FLIGHT:
            claimed_before = now - timedelta(seconds=abandoned_after_s)
            if as_utc(row.created_at) >= claimed_before:
                raise KeyInFlight(row.operation_id)
            answer = accepted_answer(row.operation_id)
            if idempotency_repo.settle_abandoned(
                session,
                claim.project_id,
                claim.key,
                claimed_before=claimed_before,
                status=answer.status,
                body=answer.body.decode(),
            ):
                log.warning(
                    "operation %s: its keyed request died before answering; key settled",
                    row.operation_id,
                )
            session.commit()
            row = idempotency_repo.get_key(session, claim.project_id, claim.key)
            if row is None or row.state != idempotency_repo.DONE:
                return None
        assert row.response_status is not None and row.response_body is not None
        return Answer(row.response_status, row.response_body.encode())


def _finish(sessions: sessionmaker[Session], claim: KeyClaim, answer: Answer) -> None:
    assert claim.operation_id is not None
    with sessions() as session:
        stored = idempotency_repo.finish(
            session,
            claim.project_id,
            claim.key,
            claim.operation_id,
            answer.status,
            answer.body.decode(),
        )
        session.commit()
    if not stored:
        log.warning("operation %s: its idempotency key was settled elsewhere", claim.operation_id)


def _release(sessions: sessionmaker[Session], claim: KeyClaim) -> None:
    if claim.operation_id is None:
        return
    try:
        with sessions() as session:
            idempotency_repo.release(session, claim.project_id, claim.key, claim.operation_id)
            session.commit()
    except Exception:
        # The request is failing already; the key stays taken until it is settled.
        log.exception("operation %s: could not free its idempotency key", claim.operation_id)


def purge_expired(sessions: sessionmaker[Session], *, now: datetime) -> int:
    """The scheduler's sweep: delete every expired key; how many."""
    with sessions() as session:
        count = idempotency_repo.purge_expired(session, now=now)
        session.commit()
    if count:
        log.info("purged %d expired idempotency keys", count)
    return count
