"""Salesforce Bulk API 2.0 ingest: one CSV upsert job, from open to its failed rows.

Wire format (contract section 6.1): `POST …/jobs/ingest` opens a job
`{object, operation: "upsert", externalIdFieldName, contentType: "CSV",
lineEnding: "LF"}` and must answer `state: "Open"`; `PUT …/jobs/ingest/{id}/batches`
uploads the CSV (`Content-Type: text/csv`, once per job); `PATCH …/jobs/ingest/{id}`
`{"state": "UploadComplete"}` hands it to Salesforce, which works through it on its
own; `GET …/jobs/ingest/{id}` reports the state (`Open`, `UploadComplete`,
`InProgress`, then `JobComplete`, `Failed` or `Aborted`) and the counters; and
`GET …/jobs/ingest/{id}/failedResults/` is a CSV of the rows Salesforce refused,
`sf__Id` and `sf__Error` before the row's own columns.

`numberRecordsProcessed` counts failed rows too, so the rows written are
`records_processed - records_failed`. A refused row is data in the failed
results, never an exception; a failed call is classified like every other
Salesforce call (`salesforce.classify_failure`).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from writejobs.clock import Clock, utcnow
from writejobs.errors import PermanentProviderError
from writejobs.providers.http_common import (
    RAW_RESPONSE_CHARS,
    read_json,
    transport_failure,
    unreadable_response,
)
from writejobs.providers.salesforce import API_VERSION, DISPLAY_NAME, PROVIDER, classify_failure

INGEST_PATH = f"/services/data/{API_VERSION}/jobs/ingest"
FINAL_STATES = frozenset({"JobComplete", "Failed", "Aborted"})


@dataclass(frozen=True, slots=True)
class JobStatus:
    """Where an ingest job stands. `records_processed` includes `records_failed`."""

    job_id: str
    state: str
    records_processed: int = 0
    records_failed: int = 0
    error_message: str | None = None

    @property
    def done(self) -> bool:
        """Whether Salesforce has finished with the job (`JobComplete`, `Failed`, `Aborted`)."""
        return self.state in FINAL_STATES


class SalesforceBulkIngest:
    """Runs Bulk API 2.0 upsert jobs through an `httpx.Client` whose `base_url` (the
    org's My Domain URL) and bearer token are set.

    Every method raises `RetryableProviderError` (connection errors, timeouts, 408,
    429, 5xx, `REQUEST_LIMIT_EXCEEDED`, …) or `PermanentProviderError` (any other
    4xx, or a 2xx we cannot read) when its call fails.
    """

    provider: str = PROVIDER

    def __init__(self, client: httpx.Client, *, clock: Clock = utcnow) -> None:
        self._client = client
        # Turns a Retry-After HTTP-date into seconds; injected so tests fix "now".
        self._clock = clock

    def create_upsert_job(self, object_name: str, external_id_field: str) -> str:
        """Open an upsert job on `object_name` matching rows by `external_id_field`; its id.

        Raises `PermanentProviderError` when Salesforce opens it in a state other than `Open`.
        """
        body = {
            "object": object_name,
            "operation": "upsert",
            "externalIdFieldName": external_id_field,
            "contentType": "CSV",
            "lineEnding": "LF",
        }
        response = self._send("POST", INGEST_PATH, json=body)
        info = self._job_info(response)
        job_id = info.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise unreadable_response(
                response, provider=PROVIDER, display_name=DISPLAY_NAME, expected="a job with an id"
            )
        if info.get("state") != "Open":
            raise PermanentProviderError(
                f"Salesforce opened bulk job {job_id} in state {info.get('state')!r}, not 'Open'",
                provider=PROVIDER,
                status_code=response.status_code,
                raw_response=response.text[:RAW_RESPONSE_CHARS],
            )
        return job_id

    def upload(self, job_id: str, chunks: Iterable[bytes]) -> None:
        """Upload the job's CSV (LF line endings, a header row first), streamed from `chunks`.

        Salesforce takes one upload per job. The body is sent as it is read, so
        a failed upload cannot be retried from the same iterator: abort the job
        and start another.
        """
        headers = {"Content-Type": "text/csv"}
        self._send("PUT", f"{_job_path(job_id)}/batches", content=iter(chunks), headers=headers)

    def close(self, job_id: str) -> JobStatus:
        """Mark the upload complete, so Salesforce starts on the rows."""
        response = self._send("PATCH", _job_path(job_id), json={"state": "UploadComplete"})
        return _status(job_id, self._job_info(response))

    def abort(self, job_id: str) -> JobStatus:
        """Abort a job that is not finished (a failed upload, a cancelled operation)."""
        response = self._send("PATCH", _job_path(job_id), json={"state": "Aborted"})
        return _status(job_id, self._job_info(response))

    def poll(self, job_id: str) -> JobStatus:
        """The job's state and counters now."""
        return _status(job_id, self._job_info(self._send("GET", _job_path(job_id))))

    def failed_results(self, job_id: str) -> list[dict[str, str]]:
        """The rows Salesforce refused, as `{sf__Id, sf__Error, <the row's columns>}`.

        `sf__Id` is empty for a row that would have been created.
        """
        return list(self.iter_failed_results(job_id))

    def iter_failed_results(self, job_id: str) -> Iterator[dict[str, str]]:
        """`failed_results`, streamed: a job that refused a million rows is read row by row."""
        return self._iter_results(f"{_job_path(job_id)}/failedResults/")

    def iter_successful_results(self, job_id: str) -> Iterator[dict[str, str]]:
        """The rows Salesforce wrote, as `{sf__Id, sf__Created, <the row's columns>}`,
        streamed; `sf__Created` is "true" for a created record, "false" for an updated one."""
        return self._iter_results(f"{_job_path(job_id)}/successfulResults/")

    def _iter_results(self, path: str) -> Iterator[dict[str, str]]:
        try:
            with self._client.stream("GET", path) as response:
                if not response.is_success:
                    response.read()
                    raise classify_failure(response, now=self._clock())
                for row in csv.DictReader(_text_lines(response.iter_text())):
                    yield dict(row)
        except httpx.TransportError as exc:
            raise transport_failure(exc, provider=PROVIDER, display_name=DISPLAY_NAME) from exc

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call; a failed one raises the `ProviderError` it stands for."""
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise transport_failure(exc, provider=PROVIDER, display_name=DISPLAY_NAME) from exc
        if not response.is_success:
            raise classify_failure(response, now=self._clock())
        return response

    @staticmethod
    def _job_info(response: httpx.Response) -> dict[str, Any]:
        body = read_json(response)
        if not isinstance(body, dict):
            raise unreadable_response(
                response, provider=PROVIDER, display_name=DISPLAY_NAME, expected="a job object"
            )
        return body


def _status(job_id: str, info: dict[str, Any]) -> JobStatus:
    message = info.get("errorMessage")
    return JobStatus(
        job_id=str(info.get("id") or job_id),
        state=str(info.get("state") or ""),
        records_processed=_count(info.get("numberRecordsProcessed")),
        records_failed=_count(info.get("numberRecordsFailed")),
        error_message=message if isinstance(message, str) and message else None,
    )


def _count(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def _job_path(job_id: str) -> str:
    # Quoted so a job id can never reach another path on Salesforce.
    return f"{INGEST_PATH}/{quote(job_id, safe='')}"


def _text_lines(pieces: Iterable[str]) -> Iterator[str]:
    """Lines with their endings kept, so the csv module can rejoin a quoted multi-line value."""
    pending = ""
    for piece in pieces:
        pending += piece
        lines = pending.splitlines(keepends=True)
        # The last line may continue in the next piece, unless it ended.
        pending = lines.pop() if lines and not lines[-1].endswith(("\n", "\r")) else ""
        yield from lines
    if pending:
        yield pending
