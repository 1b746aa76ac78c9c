"""SalesforceBulkIngest over real HTTP against the sandbox's Bulk API 2.0, on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from tests.support.servers import serve_in_thread
from writejobs.errors import PermanentProviderError
from writejobs.execution.fetch_guard import open_csv_url
from writejobs.providers.salesforce_bulk import JobStatus, SalesforceBulkIngest

KEY = "External_Id__c"
BAD_EMAILS = {17: "not-an-email", 5_000: "ada@", 9_998: "two@@example.com"}
ROWS = 10_000


@pytest.fixture
def bulk(sandbox: httpx.Client) -> SalesforceBulkIngest:
    return SalesforceBulkIngest(sandbox)


def contacts_csv(rows: int, *, last_name: str = "User") -> Iterator[bytes]:
    """A contacts CSV in chunks of 500 rows, some with an invalid email."""
    yield f"{KEY},LastName,Email\n".encode()
    lines: list[str] = []
    for i in range(rows):
        email = BAD_EMAILS.get(i, f"user{i}@example.com")
        lines.append(f"ext-{i},{last_name} {i},{email}\n")
        if len(lines) == 500:
            yield "".join(lines).encode()
            lines = []
    yield "".join(lines).encode()


def run_job(bulk: SalesforceBulkIngest, chunks: Iterator[bytes]) -> JobStatus:
    job_id = bulk.create_upsert_job("Contact", KEY)
    bulk.upload(job_id, chunks)
    return wait_done(bulk, bulk.close(job_id))


def wait_done(bulk: SalesforceBulkIngest, status: JobStatus, timeout_s: float = 30.0) -> JobStatus:
    """Poll as a client must: the rows are worked through after the close."""
    deadline = time.monotonic() + timeout_s
    while not status.done and time.monotonic() < deadline:
        time.sleep(0.05)
        status = bulk.poll(status.job_id)
    return status


def stats(sandbox: httpx.Client) -> dict[str, Any]:
    body: dict[str, Any] = sandbox.get("/_sandbox/stats").json()
    return body


def test_ten_thousand_rows_with_three_bad_emails_write_9997_and_fail_3(
    bulk: SalesforceBulkIngest, sandbox: httpx.Client
) -> None:
    # given a 10,000-row contacts CSV with three invalid emails
    # when it is upserted through one bulk job
    status = run_job(bulk, contacts_csv(ROWS))

    # then the job completes with 9,997 rows written and 3 failed
    assert status.state == "JobComplete"
    assert (status.records_processed, status.records_failed) == (ROWS, 3)
    assert stats(sandbox)["records_by_object"] == {"Contact": ROWS - 3}
    # and the failed results name each row and its error
    failed = bulk.failed_results(status.job_id)
    assert [(row[KEY], row["sf__Id"], row["sf__Error"]) for row in failed] == [
        (f"ext-{i}", "", f"INVALID_EMAIL_ADDRESS:Email: invalid email address: {email}:--")
        for i, email in BAD_EMAILS.items()
    ]


def test_a_second_job_updates_the_records_its_external_ids_match(
    bulk: SalesforceBulkIngest, sandbox: httpx.Client
) -> None:
    # given 100 contacts upserted once
    first = run_job(bulk, contacts_csv(100))
    assert (first.records_processed, first.records_failed) == (100, 1)

    # when the same external ids are upserted again with other last names
    second = run_job(bulk, contacts_csv(100, last_name="Renamed"))

    # then they are updated in place, not created again
    assert (second.records_processed, second.records_failed) == (100, 1)
    assert stats(sandbox)["records_by_object"] == {"Contact": 99}
    failed = bulk.failed_results(second.job_id)
    assert [row[KEY] for row in failed] == ["ext-17"]
    # and the written rows say so: created the first time, updated the second
    for status, created in ((first, "true"), (second, "false")):
        written = list(bulk.iter_successful_results(status.job_id))
        assert len(written) == 99
        assert {row["sf__Created"] for row in written} == {created}


def test_a_csv_without_the_external_id_column_fails_the_job(
    bulk: SalesforceBulkIngest, sandbox: httpx.Client
) -> None:
    status = run_job(bulk, iter([b"LastName,Email\nAda,ada@example.com\n"]))
    assert status.state == "Failed"
    assert status.error_message is not None and KEY in status.error_message
    assert stats(sandbox)["records_by_object"] == {}


def test_a_job_takes_one_upload_only(bulk: SalesforceBulkIngest) -> None:
    job_id = bulk.create_upsert_job("Contact", KEY)
    bulk.upload(job_id, iter([b"External_Id__c,LastName\nx-1,Ada\n"]))
    with pytest.raises(PermanentProviderError, match="Found multiple contents"):
        bulk.upload(job_id, iter([b"External_Id__c,LastName\nx-2,Grace\n"]))
    assert bulk.abort(job_id).state == "Aborted"


def test_a_csv_from_an_allowed_url_streams_into_a_bulk_job(
    bulk: SalesforceBulkIngest, sandbox: httpx.Client
) -> None:
    # given a file server with the CSV, allowed for plain http
    async def records(_request: Request) -> StreamingResponse:
        async def body() -> Any:
            for chunk in contacts_csv(2_000):
                yield chunk

        return StreamingResponse(body(), media_type="text/csv")

    files = Starlette(routes=[Route("/records.csv", records)])
    with serve_in_thread(files) as files_url:
        # when it is fetched and uploaded chunk by chunk
        job_id = bulk.create_upsert_job("Contact", KEY)
        with open_csv_url(
            f"{files_url}/records.csv",
            allowed_http_hosts=frozenset({"127.0.0.1"}),
            max_bytes=10 * 1024 * 1024,
        ) as chunks:
            bulk.upload(job_id, chunks)
    status = wait_done(bulk, bulk.close(job_id))

    # then every row reached the sandbox
    assert (status.state, status.records_processed, status.records_failed) == (
        "JobComplete",
        2_000,
        1,
    )
    assert stats(sandbox)["records_by_object"] == {"Contact": 1_999}


def test_an_upload_aborted_before_its_close_writes_nothing(
    bulk: SalesforceBulkIngest, sandbox: httpx.Client
) -> None:
    # given a job whose whole CSV was uploaded
    job_id = bulk.create_upsert_job("Contact", KEY)
    bulk.upload(job_id, contacts_csv(100))

    # when it is aborted instead of closed
    status = bulk.abort(job_id)

    # then Salesforce never works through it
    assert status.state == "Aborted"
    assert bulk.poll(job_id).records_processed == 0
    assert stats(sandbox)["records_by_object"] == {}
