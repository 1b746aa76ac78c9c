"""The data directory is this user's alone: the directory 0700, every file in it 0600.

It holds the SQLite store, `secret.key` (which decrypts every installation's
credentials), `demo.json` (a plain API key), the embedded Redis's AOF (accepted
records) and the pieces' logs. Each writer creates its file through here (or,
for files another program creates, under `PRIVATE_UMASK`), and an existing
directory or file is narrowed to these modes on the next start.
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
# Group and others get nothing: for files made by programs we start (Redis, SQLite's -wal).
PRIVATE_UMASK = 0o077


def private_dir(path: Path) -> Path:
    """Make `path` (and any missing parents) and narrow it to 0700; returns it."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    narrow(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty if missing, 0600 either way (its directory made private too)."""
    private_dir(path.parent)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, FILE_MODE))
    narrow(path, FILE_MODE)
    return path


def write_private_text(path: Path, text: str) -> None:
    """Replace `path`'s contents with `text`; the file is 0600 before any byte is written."""
    private_file(path)
    with open(path, "w", encoding="utf-8") as out:
        out.write(text)


def narrow_files(directory: Path) -> None:
    """Narrow every regular file directly in `directory` to 0600 (files of older versions)."""
    for entry in directory.iterdir():
        if entry.is_file() and not entry.is_symlink():
            narrow(entry, FILE_MODE)


def narrow(path: Path, mode: int) -> None:
    """chmod `path` to `mode` if it is not already; someone else's file is left alone."""
    # Someone else's directory (a data dir under /var, made by root) is left as it is.
    try:
        if path.stat().st_mode & 0o777 != mode:
            os.chmod(path, mode)
    except PermissionError:
        pass
