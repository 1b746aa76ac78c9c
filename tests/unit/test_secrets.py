"""CredentialCipher and the deployment's key: round trips, legacy rows, the key file."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from writejobs.errors import CredentialsUnreadable
from writejobs.settings import Settings
from writejobs.store.secrets import (
    CredentialCipher,
    cipher_for,
    key_file,
    load_or_create_key,
)

CREDENTIALS = {"type": "bearer", "access_token": "tok-123"}


def test_credentials_round_trip_and_the_stored_text_hides_them() -> None:
    cipher = CredentialCipher(Fernet.generate_key())

    stored = cipher.encrypt(CREDENTIALS)

    assert "tok-123" not in stored and not stored.startswith("{")
    assert cipher.decrypt(stored) == CREDENTIALS


def test_legacy_plain_json_and_empty_values_are_still_read() -> None:
    cipher = CredentialCipher(Fernet.generate_key())

    assert cipher.decrypt('{"access_token": "old"}') == {"access_token": "old"}
    assert cipher.decrypt("") == {}


def test_a_value_written_with_another_key_names_the_setting_to_fix() -> None:
    stored = CredentialCipher(Fernet.generate_key()).encrypt(CREDENTIALS)

    with pytest.raises(CredentialsUnreadable, match="WRITEJOBS_SECRET_KEY") as raised:
        CredentialCipher(Fernet.generate_key()).decrypt(stored)

    assert "tok-123" not in str(raised.value)


def test_a_setting_that_is_not_a_fernet_key_is_refused_by_name() -> None:
    with pytest.raises(CredentialsUnreadable, match="WRITEJOBS_SECRET_KEY"):
        cipher_for(Settings(secret_key="not-a-key", data_dir=Path("/nonexistent")))


def test_the_configured_key_is_used_and_no_key_file_is_made(tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    settings = Settings(secret_key=key, data_dir=tmp_path)

    stored = cipher_for(settings).encrypt(CREDENTIALS)

    assert CredentialCipher(key).decrypt(stored) == CREDENTIALS
    assert not key_file(settings).exists()


def test_without_a_configured_key_a_key_file_is_made_once_and_reused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", secret_key=None)

    stored = cipher_for(settings).encrypt(CREDENTIALS)
    path = key_file(settings)
    first_key = path.read_bytes()

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Settings(data_dir=tmp_path / "data", secret_key=None)
    assert cipher_for(again).decrypt(stored) == CREDENTIALS
    assert path.read_bytes() == first_key
    assert [p.name for p in path.parent.iterdir()] == ["secret.key"]


def test_processes_racing_to_make_the_key_file_all_get_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"

    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = set(pool.map(lambda _: load_or_create_key(path), range(32)))

    assert keys == {path.read_bytes().strip()}
