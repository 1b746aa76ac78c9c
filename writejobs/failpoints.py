"""Named crash points, so fault tests can SIGKILL a real process at an exact step.

`WRITEJOBS_FAILPOINTS=flush.after_claim` makes the process kill itself with its
whole process group (SIGKILL: no cleanup, no atexit, like the OOM killer or a
power cut) the first time it reaches `failpoint("flush.after_claim")`. Each
point fires once per data directory (a marker file records it), so the
restarted process runs on. Unset, as in every real deployment, a failpoint is
a set lookup and nothing else.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


class Failpoints:
    def __init__(self, spec: str, marker_dir: Path) -> None:
        self._armed = {name.strip() for name in spec.split(",") if name.strip()}
        self._marker_dir = marker_dir

    def __call__(self, name: str) -> None:
        if name not in self._armed:
            return
        marker = self._marker_dir / f"failpoint-{name}.fired"
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os.killpg(os.getpgrp(), signal.SIGKILL)


def no_failpoint(_name: str) -> None:
    """The failpoint of code that is not under a fault test."""
