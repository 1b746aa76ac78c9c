"""Flower's basic-auth credentials: the setting, or a pair made once in the data dir.

Flower's pages show every worker, task and traceback, and the broker's URL, to
whoever reaches its port; with basic auth they need a user and password (its
`/healthcheck` stays open, so `writejobs up` can still tell it is ready).
`WRITEJOBS_FLOWER_BASIC_AUTH` (`user:password`, comma-separated for several)
names them; unset, `<data_dir>/flower.auth` is made on first use (0600) and
kept, so the password survives restarts and every Flower of one data dir
agrees. `writejobs up` copies it into `demo.json`.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

from writejobs.private_files import FILE_MODE, private_dir
from writejobs.settings import Settings

AUTH_FILE_NAME = "flower.auth"
DEFAULT_USER = "writejobs"


def auth_file(settings: Settings) -> Path:
    return (settings.data_dir / AUTH_FILE_NAME).resolve()


def flower_basic_auth(settings: Settings) -> str:
    """`user:password[,user:password…]` for Flower: the setting, or the data dir's pair."""
    if settings.flower_basic_auth and settings.flower_basic_auth.strip():
        return _checked(settings.flower_basic_auth, "WRITEJOBS_FLOWER_BASIC_AUTH")
    path = auth_file(settings)
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    private_dir(path.parent)
    # As for secret.key: write a whole file aside, link it into place; the first link wins.
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{AUTH_FILE_NAME}.")
    try:
        os.fchmod(descriptor, FILE_MODE)
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(f"{DEFAULT_USER}:{secrets.token_urlsafe(18)}\n")
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(temporary)
    return _read(path)


def first_user(basic_auth: str) -> tuple[str, str]:
    """The first (user, password) pair of a basic-auth setting."""
    user, _, password = basic_auth.split(",", 1)[0].partition(":")
    return user, password


class BadFlowerAuth(ValueError):
    """A basic-auth value not shaped `user:password[,…]`; the message never holds it."""


def _checked(value: str, source: str) -> str:
    pairs = [pair.strip() for pair in value.split(",")]
    if not all(user and password for user, _, password in (p.partition(":") for p in pairs)):
        raise BadFlowerAuth(f"{source} is not user:password[,user:password…]")
    return ",".join(pairs)


def _read(path: Path) -> str:
    return _checked(
        path.read_text(encoding="utf-8").strip(), f"{path} (delete it to make a new one)"
    )
