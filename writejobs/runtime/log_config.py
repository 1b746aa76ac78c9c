"""Logging for every writejobs process: one line per event, ids only, never payloads."""

from __future__ import annotations

import logging

from writejobs.settings import Settings


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )
    # httpx logs every request URL at INFO; URLs carry record ids only, but keep it quiet.
    logging.getLogger("httpx").setLevel(logging.WARNING)
