"""Helpers for child processes: none may outlive the process that started it."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Run in a child before exec: ask Linux to SIGTERM it if its parent dies.

    Ctrl-C and SIGTERM are handled by `writejobs up` itself; this covers the
    parent being killed outright (SIGKILL), so no child is ever orphaned.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
