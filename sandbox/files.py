"""A file host for bulk writes' `recordsURL`: stored files, generated CSVs, redirects.

`PUT /_sandbox/files/{name}` keeps a file and `GET` serves it back;
`GET /_sandbox/generated/contacts.csv?rows=N&invalid=3,17&pad=200` streams a
contacts CSV made on the fly, `pad` characters of `Description` per row, so a
benchmark can fetch 100 MiB that never sits in memory; `GET
/_sandbox/redirect?to=URL` answers 302 to `URL`. Every GET is counted by name
in `/_sandbox/stats` (`file_fetches`), which is how a test shows that a refused
URL was never fetched.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from sandbox.state import SandboxState

GENERATED_KEY = "External_Id__c"
# Rows per chunk of a generated CSV: big enough to be cheap, small enough to stream.
_ROWS_PER_CHUNK = 1000


def create_router(state: SandboxState) -> APIRouter:
    router = APIRouter(prefix="/_sandbox")

    @router.put("/files/{name}", status_code=204)
    async def put_file(name: str, request: Request) -> Response:
        content = await request.body()
        with state.lock:
            state.files[name] = content
        return Response(status_code=204)

    @router.get("/files/{name}")
    def get_file(name: str) -> Response:
        with state.lock:
            state.file_fetches[name] += 1
            content = state.files.get(name)
        if content is None:
            raise HTTPException(404, f"no file {name}")
        return Response(content, media_type="text/csv")

    @router.get("/generated/contacts.csv")
    def generated(
        rows: int = Query(ge=0, le=10_000_000),
        invalid: str = "",
        pad: int = Query(default=0, ge=0, le=10_000),
    ) -> StreamingResponse:
        with state.lock:
            state.file_fetches["generated/contacts.csv"] += 1
        bad = {int(i) for i in invalid.split(",") if i.strip()}
        return StreamingResponse(contacts_csv(rows, bad, pad), media_type="text/csv")

    @router.get("/redirect")
    def redirect(to: str) -> RedirectResponse:
        with state.lock:
            state.file_fetches["redirect"] += 1
        return RedirectResponse(to, status_code=302)

    return router


def contacts_csv(rows: int, invalid: set[int], pad: int) -> Iterator[bytes]:
    """`External_Id__c,LastName,Email,Description` rows; those in `invalid` get a bad email."""
    yield f"{GENERATED_KEY},LastName,Email,Description\n".encode()
    description = "x" * pad
    lines: list[str] = []
    for i in range(rows):
        email = f"bad-email-{i}" if i in invalid else f"bulk{i}@example.com"
        lines.append(f"bulk-{i},Bulk {i},{email},{description}\n")
        if len(lines) == _ROWS_PER_CHUNK:
            yield "".join(lines).encode()
            lines = []
    if lines:
        yield "".join(lines).encode()
