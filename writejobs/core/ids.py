"""Random (version 4) UUIDs for the hot paths, from the OS's CSPRNG read in bulk.

`uuid.uuid4()` reads 16 bytes with one `getrandom` call, and CPython releases the
GIL around it: on the API's event loop thread that hands the GIL to the group
commit or hand-off thread, and the loop waits for it back (up to the switch
interval) once per id. Reading 4 KiB at a time keeps the same randomness (the same
`os.urandom`) with one call per 256 ids. A forked child drops its parent's unread
bytes, so two processes never hand out the same id.
"""

from __future__ import annotations

import os
import threading

_CHUNK_BYTES = 4096
_lock = threading.Lock()
_pool = b""
_offset = 0


def new_id() -> str:
    """A new random UUID, as text (`str(uuid.uuid4())`'s form)."""
    global _pool, _offset
    with _lock:
        if _offset + 16 > len(_pool):
            _pool, _offset = os.urandom(_CHUNK_BYTES), 0
        raw = _pool[_offset : _offset + 16]
        _offset += 16
    return uuid4_text(raw)


# The variant's bits (10xx) over the high nibble of byte 8, by that nibble's hex digit.
_VARIANT_DIGIT = {f"{n:x}": f"{n & 0x3 | 0x8:x}" for n in range(16)}


def uuid4_text(raw: bytes) -> str:
    """`str(uuid.UUID(bytes=raw, version=4))` from 16 bytes, by string slicing: building
    the `UUID` object (an int, its version and variant bits) cost as much as the rest of
    accepting a write's row."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT_DIGIT[h[16]]}{h[17:20]}-{h[20:32]}"


def _forget_parent() -> None:
    global _pool, _offset, _lock
    _lock = threading.Lock()
    _pool, _offset = b"", 0


os.register_at_fork(after_in_child=_forget_parent)
