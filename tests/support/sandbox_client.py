"""Reading the sandbox provider's counters from tests."""

from __future__ import annotations

from typing import Any

import httpx


def stats(sandbox: httpx.Client) -> dict[str, Any]:
    """The body of `GET /_sandbox/stats` (calls, records stored, batch sizes, …)."""
    response = sandbox.get("/_sandbox/stats")
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body
