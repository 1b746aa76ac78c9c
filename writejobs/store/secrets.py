"""Credentials encrypted at rest: the cipher of `installations.credentials`.

An installation's credentials (a bearer token, or an OAuth2 client and its
tokens) are stored as one Fernet token (AES-128-CBC with HMAC-SHA256, from
`cryptography`), so a copy of the database alone gives none of them away.

The key is `WRITEJOBS_SECRET_KEY` or, when that is unset, `<data_dir>/secret.key`,
made on first use: the embedded defaults then need no configuration, and every
process of one `writejobs up` (they share the data dir) reads the same key. A
fleet on several hosts sets `WRITEJOBS_SECRET_KEY`, the same everywhere.

Rows written before encryption hold plain JSON; they are still read, and are
encrypted the next time their credentials are written.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from writejobs.errors import CredentialsUnreadable
from writejobs.private_files import FILE_MODE, narrow, private_dir
from writejobs.settings import Settings

KEY_FILE_NAME = "secret.key"
SECRET_KEY_VARIABLE = "WRITEJOBS_SECRET_KEY"


class CredentialCipher:
    """Encrypts a credentials dict to text for the database, and reads it back.

    Raises `CredentialsUnreadable` when `key` is not a Fernet key (32 url-safe
    base64-encoded bytes); `source` names where the key came from in that message.
    """

    def __init__(self, key: bytes | str, *, source: str = SECRET_KEY_VARIABLE) -> None:
        try:
            self._fernet = Fernet(key)
        except ValueError:
            raise CredentialsUnreadable(
                f"{source} is not a Fernet key (32 url-safe base64-encoded bytes); make one with "
                '`python -c "from cryptography.fernet import Fernet; '
                'print(Fernet.generate_key().decode())"`'
            ) from None

    def encrypt(self, credentials: dict[str, Any]) -> str:
        """The credentials as an ASCII Fernet token (a new random IV each time)."""
        plain = json.dumps(credentials, separators=(",", ":")).encode()
        return self._fernet.encrypt(plain).decode("ascii")

    def decrypt(self, stored: str) -> dict[str, Any]:
        """The credentials a stored value holds: a Fernet token, or legacy plain JSON.

        Raises `CredentialsUnreadable`, naming `WRITEJOBS_SECRET_KEY`, for a token
        another key made, and for a value that is not a JSON object.
        """
        text = stored.strip()
        if not text:
            return {}
        if text.startswith("{"):
            plain = text.encode()
        else:
            try:
                plain = self._fernet.decrypt(text.encode())
            except InvalidToken:
                raise CredentialsUnreadable(
                    "stored credentials were encrypted with another key: set "
                    f"{SECRET_KEY_VARIABLE} to the key that wrote them (or, with it unset, "
                    f"restore the data dir's {KEY_FILE_NAME})"
                ) from None
        try:
            value = json.loads(plain)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            # `from None` above and no value here: the text may be a secret.
            raise CredentialsUnreadable("stored credentials are not a JSON object")
        return value


def cipher_for(settings: Settings) -> CredentialCipher:
    """The cipher of this deployment: `settings.secret_key`, or the data dir's key file."""
    if settings.secret_key:
        return CredentialCipher(settings.secret_key)
    path = key_file(settings)
    return CredentialCipher(load_or_create_key(path), source=str(path))


def key_file(settings: Settings) -> Path:
    return (settings.data_dir / KEY_FILE_NAME).resolve()


def load_or_create_key(path: Path) -> bytes:
    """The key in `path`, made first (mode 0600) if there is none.

    Processes that start together may all find no file: each writes a complete
    key to a temporary file and links it into place, which refuses to replace an
    existing file, so the first link wins and everyone reads that key.
    """
    try:
        key = _read_key(path)
    except FileNotFoundError:
        pass
    else:
        narrow(path, FILE_MODE)  # a key file copied in, or made by an older version
        return key
    private_dir(path.parent)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{KEY_FILE_NAME}.")
    try:
        with os.fdopen(descriptor, "wb") as out:  # mkstemp made it 0600
            out.write(Fernet.generate_key() + b"\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(temporary)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    key = path.read_bytes().strip()
    if not key:
        raise CredentialsUnreadable(f"{path} is empty; delete it to make a new key")
    return key
