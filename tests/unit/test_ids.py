"""Ids from the bulk-read random pool: valid version 4 UUIDs, never repeated, not even
by a forked child that inherited the parent's unread bytes."""

from __future__ import annotations

import os
import uuid

from writejobs.core.ids import new_id, uuid4_text


def test_ids_are_distinct_version_4_uuids() -> None:
    ids = [new_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    parsed = [uuid.UUID(i) for i in ids]
    assert {u.version for u in parsed} == {4}
    assert all(str(u) == i for u, i in zip(parsed, ids, strict=True))


def test_a_forked_child_does_not_hand_out_the_parents_next_ids() -> None:
    new_id()  # the pool now holds unread bytes the child would inherit
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read_end)
        os.write(write_end, ",".join(new_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child_ids = set(pipe.read().split(","))
    os.waitpid(pid, 0)
    parent_ids = {new_id() for _ in range(10)}
    assert len(child_ids) == 10
    assert not child_ids & parent_ids


def test_the_text_is_what_uuid_makes_of_the_same_bytes() -> None:
    samples = [os.urandom(16) for _ in range(2000)]
    samples += [bytes([b]) * 16 for b in (0x00, 0xFF, 0x3F, 0x40, 0x80, 0xBF, 0xC0)]
    for raw in samples:
        assert uuid4_text(raw) == str(uuid.UUID(bytes=raw, version=4))
