"""The data dir's modes: the directory 0700 and every file 0600, whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from writejobs.private_files import narrow_files, private_dir, private_file, write_private_text


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def open_umask() -> Iterator[None]:
    """A umask that would leave new files readable by everyone (the common 022)."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("open_umask")
def test_a_new_data_dir_and_its_files_are_the_users_alone(tmp_path: Path) -> None:
    data_dir = private_dir(tmp_path / "a" / ".writejobs")
    assert mode(data_dir) == 0o700

    write_private_text(data_dir / "demo.json", "{}\n")
    private_file(data_dir / "api.log")

    assert mode(data_dir / "demo.json") == 0o600
    assert (data_dir / "demo.json").read_text() == "{}\n"
    assert mode(data_dir / "api.log") == 0o600


@pytest.mark.usefixtures("open_umask")
def test_an_existing_open_data_dir_and_its_files_are_narrowed(tmp_path: Path) -> None:
    # given a data dir an older version left world-readable
    data_dir = tmp_path / ".writejobs"
    data_dir.mkdir(mode=0o755)
    (data_dir / "writejobs.db").write_text("")
    (data_dir / "demo.json").write_text('{"api_key": "k"}')
    os.chmod(data_dir / "demo.json", 0o644)

    # when it is made private again
    narrow_files(private_dir(data_dir))

    # then the directory and every file in it are
    assert mode(data_dir) == 0o700
    assert mode(data_dir / "writejobs.db") == 0o600
    assert mode(data_dir / "demo.json") == 0o600
    # and a rewrite keeps the mode and replaces the contents
    write_private_text(data_dir / "demo.json", "{}")
    assert mode(data_dir / "demo.json") == 0o600
    assert (data_dir / "demo.json").read_text() == "{}"
