"""Installation credentials read from a JSON file or standard input, not the command line.

An option's value sits in `ps` for anyone on the host and in the shell's
history; `writejobs admin create-installation --credentials-file PATH` (or `-`
for standard input) reads the same fields from a JSON object instead:

    {"token": "..."}                                             a bearer token
    {"token_url": "...", "client_id": "...", "client_secret": "...",
     "refresh_token": "..."}                                     OAuth2 (refresh_token optional)

Error messages name fields and the file, never a value.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FIELDS = ("token", "client_id", "client_secret", "token_url", "refresh_token")


class CredentialsFileError(ValueError):
    """The credentials file is missing, not JSON, or not an object of known string fields."""


def read_credentials_file(source: str) -> dict[str, str]:
    """The credential fields in `source` (a path, or `-` for standard input), by field name."""
    where = "standard input" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise CredentialsFileError(f"cannot read {where}: {exc.strerror}") from None
    try:
        value = json.loads(text)
    except ValueError:
        # `from None`: the decoder's message quotes the text, which may be a secret.
        raise CredentialsFileError(f"{where} is not JSON") from None
    if not isinstance(value, dict):
        raise CredentialsFileError(f"{where} is not a JSON object (see --help for its fields)")
    unknown = sorted(str(key) for key in value if key not in FIELDS)
    if unknown:
        raise CredentialsFileError(
            f"{where} has unknown fields {', '.join(unknown)}; known: {', '.join(FIELDS)}"
        )
    not_text = sorted(key for key, field in value.items() if not isinstance(field, str))
    if not_text:
        raise CredentialsFileError(f"{where}: {', '.join(not_text)} must be strings")
    return {key: value.get(key, "") for key in FIELDS}
