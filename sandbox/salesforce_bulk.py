"""A local Salesforce Bulk API 2.0 ingest: CSV upsert jobs over the sandbox's sObjects.

`POST …/jobs/ingest` opens a job (`Open`), `PUT …/jobs/ingest/{jobId}/batches`
takes its one CSV, `PATCH …/jobs/ingest/{jobId}` with `UploadComplete` closes it,
and, as in Salesforce, only then are the rows worked through, in the background
(`InProgress`), ending `JobComplete` (or `Failed`, when the CSV's header was
unusable). `Aborted` ends a job early: an upload that was never completed writes
nothing. `GET …/failedResults/` is the refused rows, `GET …/successfulResults/`
the written ones.

The upload is spooled to a temporary file as it arrives (memory holds at most
`SPOOL_IN_MEMORY_BYTES` of it) and read back line by line; each row is upserted,
by the job's external id field, into the same records the REST routes keep
(`sandbox.salesforce`), with their checks: a bad `Email` fails its row with
`INVALID_EMAIL_ADDRESS`, a new record without `LastName` with
`REQUIRED_FIELD_MISSING`, and the fault rules' rejections apply. Only counters
and the failed rows are kept (`sf__Error` and the external id value), so a large
upload costs the records it writes, not the file: failed results hold
`sf__Id`, `sf__Error` and the external id column, not every original column.
Blank cells leave a field as it was, as in Salesforce.
"""

from __future__ import annotations

import csv
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from sandbox.salesforce import (
    _FIELD_NAME,
    DATA_PREFIX,
    PROVIDER,
    SalesforceError,
    _create,
    _create_problems,
    _existing,
    _fault_problems,
    _field_problems,
    _update,
    require_session,
)
from sandbox.state import SandboxState, iso_now

INGEST_PREFIX = f"{DATA_PREFIX}/jobs/ingest"
SPOOL_IN_MEMORY_BYTES = 4 * 1024 * 1024
_READ_BYTES = 1024 * 1024
JobId = Annotated[str, Path(alias="jobId")]


class IngestJobRequest(BaseModel):
    """Body of `POST …/jobs/ingest`, under Salesforce's field names."""

    model_config = ConfigDict(populate_by_name=True)

    object_name: str = Field(alias="object")
    operation: str
    external_id_field: str | None = Field(default=None, alias="externalIdFieldName")
    content_type: str = Field(default="CSV", alias="contentType")
    line_ending: str = Field(default="LF", alias="lineEnding")


class JobStateChange(BaseModel):
    """Body of `PATCH …/jobs/ingest/{jobId}`."""

    state: str


@dataclass(slots=True)
class IngestJob:
    """One ingest job: its settings, where it stands, and what it refused."""

    id: str
    object_name: str
    external_id_field: str
    line_ending: str
    created_at: str
    state: str = "Open"
    # The uploaded CSV, until the job has read it.
    upload: IO[bytes] | None = None
    uploaded: bool = False
    processed: int = 0
    error_message: str | None = None
    # (sf__Id, sf__Error, external id value) of each refused row, in upload order.
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    # (sf__Id, sf__Created, external id value) of each written row, in upload order.
    succeeded: list[tuple[str, str, str]] = field(default_factory=list)

    def as_info(self) -> dict[str, Any]:
        """The job's JobInfo body, as `GET …/jobs/ingest/{jobId}` answers it."""
        info: dict[str, Any] = {
            "id": self.id,
            "operation": "upsert",
            "object": self.object_name,
            "createdById": "005000000000001AAA",
            "createdDate": _salesforce_time(self.created_at),
            "systemModstamp": _salesforce_time(iso_now()),
            "state": self.state,
            "externalIdFieldName": self.external_id_field,
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": 60.0,
            "jobType": "V2Ingest",
            "lineEnding": self.line_ending,
            "columnDelimiter": "COMMA",
            "numberRecordsProcessed": self.processed,
            "numberRecordsFailed": len(self.failed),
            "retries": 0,
        }
        if self.error_message is not None:
            info["errorMessage"] = self.error_message
        return info


def create_router(state: SandboxState) -> APIRouter:
    """The Bulk API 2.0 ingest routes; jobs live as long as the router, records in `state`."""
    router = APIRouter(prefix=INGEST_PREFIX, dependencies=[Depends(require_session)])
    jobs: dict[str, IngestJob] = {}

    def find(job_id: str) -> IngestJob:
        job = jobs.get(job_id)
        if job is None:
            raise SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")
        return job

    @router.post("")
    def create_job(body: IngestJobRequest, request: Request) -> Any:
        request.state.inputs = 1
        if body.operation != "upsert":
            message = f"InvalidJob : the sandbox runs upsert jobs only, not {body.operation}"
            raise SalesforceError(400, "INVALIDJOB", message)
        if not body.external_id_field:
            raise SalesforceError(400, "INVALIDJOB", "External ID was blank for upsert")
        if body.content_type != "CSV" or body.line_ending not in ("LF", "CRLF"):
            raise SalesforceError(400, "INVALIDJOB", "InvalidJob : contentType must be CSV")
        if not _FIELD_NAME.match(body.object_name):
            raise SalesforceError(400, "INVALIDJOB", f"Invalid object: {body.object_name}")
        with state.lock:
            job = IngestJob(
                id=f"750{int(state.next_id()):012d}AAA",
                object_name=body.object_name,
                external_id_field=body.external_id_field,
                line_ending=body.line_ending,
                created_at=iso_now(),
            )
            jobs[job.id] = job
            return job.as_info()

    @router.put("/{jobId}/batches", status_code=201)
    async def upload(job_id: JobId, request: Request) -> Response:
        with state.lock:
            job = find(job_id)
            if job.state != "Open":
                raise SalesforceError(409, "INVALIDJOBSTATE", f"Job {job_id} is not Open")
            if job.uploaded:
                message = (
                    f"Found multiple contents for job: <{job_id}>, please 'Close' / 'Abort' / "
                    "'Delete' the current Job then create a new Job and make sure you only do "
                    "'PUT' once on a given Job."
                )
                raise SalesforceError(400, "BULK_API_ERROR", message)
            job.uploaded = True
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES)
        try:
            async for chunk in request.stream():
                spool.write(chunk)
        except BaseException:
            spool.close()
            raise
        with state.lock:
            job.upload = spool
        return Response(status_code=201)

    @router.patch("/{jobId}")
    def change_state(job_id: JobId, body: JobStateChange) -> Any:
        with state.lock:
            job = find(job_id)
            if body.state == "UploadComplete" and job.state == "Open":
                job.state = "UploadComplete"
                # Salesforce works through the rows on its own time, after the close.
                threading.Thread(
                    target=_process, args=(state, job), name=f"ingest-{job.id}", daemon=True
                ).start()
            elif body.state == "Aborted" and job.state in ("Open", "UploadComplete", "InProgress"):
                job.state = "Aborted"
            else:
                message = f"Job {job_id} cannot move from {job.state} to {body.state}"
                raise SalesforceError(400, "INVALIDJOBSTATE", message)
            return job.as_info()

    @router.get("/{jobId}")
    def get_job(job_id: JobId) -> Any:
        with state.lock:
            return find(job_id).as_info()

    def results(job_id: str, outcome_column: str, failed: bool) -> Response:
        with state.lock:
            job = find(job_id)
            rows = list(job.failed if failed else job.succeeded)
        header = ["sf__Id", outcome_column, job.external_id_field]
        return Response(_results_csv(header, rows), media_type="text/csv")

    @router.get("/{jobId}/failedResults/")
    def failed_results(job_id: JobId) -> Response:
        return results(job_id, "sf__Error", failed=True)

    @router.get("/{jobId}/successfulResults/")
    def successful_results(job_id: JobId) -> Response:
        return results(job_id, "sf__Created", failed=False)

    return router


def _process(state: SandboxState, job: IngestJob) -> None:
    """Read a closed job's CSV and upsert its rows; the job ends `JobComplete` or `Failed`."""
    with state.lock:
        if job.state != "UploadComplete":
            return
        job.state = "InProgress"
        spool, job.upload = job.upload, None
    try:
        if spool is not None:
            spool.seek(0)
            _ingest(state, job, iter(lambda: spool.read(_READ_BYTES), b""))
    finally:
        if spool is not None:
            spool.close()
        with state.lock:
            if job.state == "InProgress":
                job.state = "Failed" if job.error_message else "JobComplete"


def _ingest(state: SandboxState, job: IngestJob, chunks: Iterator[bytes]) -> int:
    """Upsert every row of the CSV in `chunks` into `state`; the number of rows read.

    Stops at the next row once the job is aborted.
    """
    reader = csv.reader(_lines(chunks))
    header = [name.strip() for name in next(reader, [])]
    if header:
        header[0] = header[0].removeprefix("\ufeff")
    problem = _header_problem(header, job.external_id_field)
    if problem is not None:
        with state.lock:
            job.error_message = problem
        return 0
    holders = _ExternalIds(state, job.object_name, job.external_id_field)
    rows = 0
    for values in reader:
        if not values:
            continue
        rows += 1
        with state.lock:
            if job.state == "Aborted":
                break
            _upsert_row(state, job, holders, header, values)
    return rows


def _lines(chunks: Iterator[bytes]) -> Iterator[str]:
    """The text lines of a byte stream, each ending in "\\n" (the csv module joins quoted
    multi-line values itself). A UTF-8 character never contains a newline byte, so
    splitting the bytes at newlines never splits a character."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.decode("utf-8", errors="replace") + "\n"
    if pending:
        yield pending.decode("utf-8", errors="replace")


def _header_problem(header: list[str], external_id_field: str) -> str | None:
    if not header or header == [""]:
        return "InvalidBatch : The CSV has no header row"
    for name in header:
        if not _FIELD_NAME.match(name):
            return f"InvalidBatch : Field name not found : {name}"
    if external_id_field.lower() not in {name.lower() for name in header}:
        return f"InvalidBatch : The External ID field {external_id_field} is not in the header"
    return None


def _upsert_row(
    state: SandboxState,
    job: IngestJob,
    holders: _ExternalIds,
    header: list[str],
    values: list[str],
) -> None:
    """Upsert one row, or record why it failed. Called with `state.lock` held."""
    job.processed += 1
    key_column = next(n for n in header if n.lower() == job.external_id_field.lower())
    key = values[header.index(key_column)] if len(values) == len(header) else ""
    if len(values) != len(header):
        problem = SalesforceError(
            400, "INVALID_FIELD", f"The row has {len(values)} values for {len(header)} columns"
        )
        job.failed.append(("", _row_error(problem), key))
        return
    # A blank cell leaves the field as it is.
    fields = {name: value for name, value in zip(header, values, strict=True) if value != ""}
    record_id: str | None = None
    try:
        if key_column.lower() == "id":
            fields.pop(key_column, None)
            if key:
                record_id = _existing(state, job.object_name, key).id
        elif not key:
            message = f"{job.external_id_field} not specified"
            raise SalesforceError(400, "MISSING_ARGUMENT", message)
        else:
            record_id = holders.holder(key)
        problems = _field_problems(job.object_name, fields) + _fault_problems(state, fields)
        if record_id is None:
            problems = problems or _create_problems(job.object_name, fields)
        if problems:
            raise problems[0]
    except SalesforceError as error:
        job.failed.append((record_id or "", _row_error(error), key))
        return
    if record_id is not None:
        _update(state, job.object_name, record_id, fields)
        job.succeeded.append((record_id, "false", key))
    else:
        created = _create(state, job.object_name, fields)
        if key_column.lower() != "id":
            holders.remember(key, created.id)
        job.succeeded.append((created.id, "true", key))


class _ExternalIds:
    """External id value -> the id of the record holding it, for one upload.

    Built with one scan when the upload starts, kept up to date by the rows it
    creates, and checked on every use, since the REST routes may change a record
    mid-upload. Use with `state.lock` held.
    """

    def __init__(self, state: SandboxState, object_name: str, field_name: str) -> None:
        self._state = state
        self._object_name = object_name
        self._field = field_name.lower()
        self._ids: dict[str, str | None] = {}
        with state.lock:
            self._scan()

    def holder(self, value: str) -> str | None:
        """The id of the record whose field is `value`, or None; raises
        `DUPLICATE_EXTERNAL_ID` when several hold it."""
        if value in self._ids and not self._still_holds(value):
            self._scan()
        if value not in self._ids:
            return None
        record_id = self._ids[value]
        if record_id is None:
            message = f"{self._field} = {value}: more than one record has this external id"
            raise SalesforceError(400, "DUPLICATE_EXTERNAL_ID", message)
        return record_id

    def remember(self, value: str, record_id: str) -> None:
        self._ids[value] = record_id

    def _still_holds(self, value: str) -> bool:
        record_id = self._ids[value]
        if record_id is None:
            return True
        record = self._state.objects(PROVIDER, self._object_name).get(record_id)
        return record is not None and self._value(record.properties) == value

    def _scan(self) -> None:
        self._ids.clear()
        for record in self._state.objects(PROVIDER, self._object_name).values():
            value = self._value(record.properties)
            if value is not None:
                self._ids[value] = None if value in self._ids else record.id

    def _value(self, properties: dict[str, Any]) -> str | None:
        value = next((v for k, v in properties.items() if k.lower() == self._field), None)
        return None if value in (None, "") else str(value)


def _row_error(error: SalesforceError) -> str:
    """A failed row's `sf__Error`: `CODE:message:--`."""
    return f"{error.error_code}:{error.message}:--"


def _results_csv(header: list[str], rows: list[tuple[str, str, str]]) -> str:
    lines = [_csv_line(header)]
    lines.extend(_csv_line(list(row)) for row in rows)
    return "".join(lines)


def _csv_line(values: list[str]) -> str:
    # Salesforce quotes every value of a results CSV.
    return ",".join('"' + value.replace('"', '""') + '"' for value in values) + "\n"


def _salesforce_time(iso: str) -> str:
    """Salesforce writes times as `2024-05-01T12:00:00.000+0000`."""
    return iso.removesuffix("Z") + "+0000"
