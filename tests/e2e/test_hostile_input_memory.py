"""Hostile input against the API as a process of its own, and the memory it costs.

A body far over the limit must be refused while it streams (or at once, by its
Content-Length), and an oversized field must be refused before it can reach
the tenant cache: each test reads the API process's resident memory
(`VmRSS` in /proc) before and after, and checks that the API still answers.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.system import Tenant, create_tenant, running_api_process
from writejobs.settings import Settings

MIB = 1024 * 1024
# The API's own buffers may grow by a body limit or two (10 MiB, 20 MiB for bulk).
MAX_RSS_GROWTH_MIB = 50
# A refusal quotes at most a short prefix of what it refuses.
MAX_ANSWER_BYTES = 4096


@dataclass
class Api:
    tenant: Tenant
    pid: int

    def rss_mib(self, field: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"no {field} for process {self.pid}")

    def start_measuring(self) -> float:
        """Reset the process's peak RSS (Linux `clear_refs` 5); its RSS now, in MiB."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        return self.rss_mib()

    def assert_growth_below(self, limit_mib: float, before_mib: float) -> None:
        """Neither the peak since `start_measuring` nor the RSS now is `limit_mib` above it."""
        peak_mib = self.rss_mib("VmHWM") - before_mib
        held_mib = self.rss_mib() - before_mib
        assert peak_mib < limit_mib, f"peak RSS grew {peak_mib:.0f} MiB"
        assert held_mib < limit_mib, f"RSS grew {held_mib:.0f} MiB"

    def assert_answers(self) -> None:
        assert httpx.get(f"{self.tenant.api_url}/healthz", timeout=10).status_code == 200


@pytest.fixture(scope="module")
def api(settings: Settings, sandbox_url: str) -> Iterator[Api]:
    with running_api_process(settings) as (url, child):
        tenant = create_tenant(settings, url, sandbox_url)
        api = Api(tenant, child.process.pid)
        # Warm up: the first write of each kind imports and allocates what it needs.
        with tenant.client() as client:
            for _ in range(3):
                client.post(tenant.write_path(), json={"groupRef": "warm-up", "type": "create"})
                client.put(tenant.write_path() + ":async", json={"groupRef": "warm-up"})
        yield api


def _chunks(total_bytes: int) -> Iterator[bytes]:
    """`total_bytes` of one endless JSON string, 1 MiB at a time."""
    chunk = b"x" * MIB
    yield b'{"groupRef": "'
    for _ in range(total_bytes // MIB):
        yield chunk


@pytest.mark.parametrize("endpoint", ["write", "bulk"])
def test_a_500_mib_chunked_body_is_refused_while_it_streams(api: Api, endpoint: str) -> None:
    # Given the API at rest
    before_mib = api.start_measuring()
    path = api.tenant.write_path() + (":async" if endpoint == "bulk" else "")
    method = "PUT" if endpoint == "bulk" else "POST"
    # When a 500 MiB body without a Content-Length arrives in chunks
    with api.tenant.client() as client:
        response = client.request(
            method,
            path,
            content=_chunks(500 * MIB),
            headers={"Content-Type": "application/json"},
        )
    # Then it is refused with a short 413, without the API holding the body
    assert response.status_code == 413, response.text
    assert len(response.content) < MAX_ANSWER_BYTES
    assert "larger than" in response.json()["detail"]
    api.assert_growth_below(MAX_RSS_GROWTH_MIB, before_mib)
    api.assert_answers()


def test_a_declared_content_length_over_the_limit_is_refused_before_the_body(api: Api) -> None:
    # When a write declares 500 MiB up front and sends none of it yet
    url = httpx.URL(api.tenant.api_url)
    head = (
        f"POST {api.tenant.write_path()} HTTP/1.1\r\n"
        f"Host: {url.host}:{url.port}\r\n"
        f"X-Api-Key: {api.tenant.api_key}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {500 * MIB}\r\n\r\n"
    )
    with socket.create_connection((url.host, url.port), timeout=10) as sock:
        sock.sendall(head.encode())
        # Then the refusal comes at once: the API does not wait for a body it would refuse
        answer = _read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"larger than" in answer
    api.assert_answers()


def _read_answer(sock: socket.socket) -> bytes:
    """One HTTP/1.1 response with a Content-Length, read within the socket's timeout."""
    answer = b""
    while len(answer) < MAX_ANSWER_BYTES:
        chunk = sock.recv(MAX_ANSWER_BYTES)
        if not chunk:
            break
        answer += chunk
        head, found, body = answer.partition(b"\r\n\r\n")
        lengths = [
            line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")
        ]
        if found and lengths and len(body) >= int(lengths[0].split(b":")[1]):
            break
    return answer


def test_writes_with_a_9_mib_group_ref_are_refused_briefly_and_leave_nothing_cached(
    api: Api,
) -> None:
    before_mib = api.start_measuring()
    # When 30 writes each name a different 9 MiB groupRef
    with api.tenant.client() as client:
        for n in range(30):
            group_ref = f"{n:02d}" + "g" * (9 * MIB)
            body = {"groupRef": group_ref, "type": "create", "record": {"email": "a@b.example"}}
            response = client.post(
                api.tenant.write_path(),
                content=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            # Then each is a 400 naming the limit, quoting none of the 9 MiB
            assert response.status_code == 400, response.text[:200]
            assert len(response.content) < MAX_ANSWER_BYTES
            assert "groupRef" in response.text and "at most 200" in response.text
    # And once the tenant cache's entries have lapsed, the memory is not held
    time.sleep(5.5)
    api.assert_growth_below(MAX_RSS_GROWTH_MIB, before_mib)
    api.assert_answers()
