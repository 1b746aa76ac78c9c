"""SalesforceBulkIngest against canned Bulk API 2.0 answers, through httpx.MockTransport."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from writejobs.errors import PermanentProviderError, RetryableProviderError
from writejobs.providers.salesforce_bulk import JobStatus, SalesforceBulkIngest

NOW = datetime(2025, 3, 6, 22, 9, 0, tzinfo=UTC)
INGEST = "/services/data/v60.0/jobs/ingest"
JOB_ID = "750R0000000zlh9IAA"

Handler = Callable[[httpx.Request], httpx.Response]


class FakeBulkApi:
    """Answers each request with `handler`, keeping the requests and their bodies."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.bodies.append(request.read())
        return self.handler(request)


@pytest.fixture
def make() -> Iterator[Callable[[Handler], tuple[SalesforceBulkIngest, FakeBulkApi]]]:
    clients: list[httpx.Client] = []

    def build(handler: Handler) -> tuple[SalesforceBulkIngest, FakeBulkApi]:
        fake = FakeBulkApi(handler)
        client = httpx.Client(
            base_url="https://acme.my.salesforce.com", transport=httpx.MockTransport(fake)
        )
        clients.append(client)
        return SalesforceBulkIngest(client, clock=lambda: NOW), fake

    yield build
    for client in clients:
        client.close()


def job(state: str, **extra: Any) -> dict[str, Any]:
    return {"id": JOB_ID, "object": "Contact", "operation": "upsert", "state": state, **extra}


def test_create_upsert_job_posts_the_job_and_returns_its_id(make: Any) -> None:
    # given Salesforce opens the job
    bulk, fake = make(lambda _r: httpx.Response(200, json=job("Open")))
    # when an upsert job is created
    job_id = bulk.create_upsert_job("Contact", "External_Id__c")
    # then the body is Bulk API 2.0's and the id comes back
    assert job_id == JOB_ID
    (request,) = fake.requests
    assert (request.method, request.url.path) == ("POST", INGEST)
    assert json.loads(fake.bodies[0]) == {
        "object": "Contact",
        "operation": "upsert",
        "externalIdFieldName": "External_Id__c",
        "contentType": "CSV",
        "lineEnding": "LF",
    }


def test_a_job_not_opened_in_state_open_is_refused(make: Any) -> None:
    bulk, _ = make(lambda _r: httpx.Response(200, json=job("Failed")))
    with pytest.raises(PermanentProviderError, match="in state 'Failed', not 'Open'"):
        bulk.create_upsert_job("Contact", "External_Id__c")


def test_a_job_answer_without_an_id_is_unreadable(make: Any) -> None:
    bulk, _ = make(lambda _r: httpx.Response(200, json={"state": "Open"}))
    with pytest.raises(PermanentProviderError, match="not a job with an id"):
        bulk.create_upsert_job("Contact", "External_Id__c")


def test_upload_streams_the_chunks_as_csv(make: Any) -> None:
    # given chunks from a generator, so the body has no length up front
    bulk, fake = make(lambda _r: httpx.Response(201))

    def chunks() -> Iterator[bytes]:
        yield b"External_Id__c,LastName\n"
        yield b"a-1,Ada\n"
        yield b"a-2,Grace\n"

    # when they are uploaded
    bulk.upload(JOB_ID, chunks())
    # then they go to the job's batches as one text/csv body, chunked
    (request,) = fake.requests
    assert (request.method, request.url.path) == ("PUT", f"{INGEST}/{JOB_ID}/batches")
    assert request.headers["Content-Type"] == "text/csv"
    assert request.headers["Transfer-Encoding"] == "chunked"
    assert fake.bodies[0] == b"External_Id__c,LastName\na-1,Ada\na-2,Grace\n"


def test_close_marks_the_upload_complete(make: Any) -> None:
    bulk, fake = make(lambda _r: httpx.Response(200, json=job("UploadComplete")))
    status = bulk.close(JOB_ID)
    assert (fake.requests[0].method, fake.requests[0].url.path) == ("PATCH", f"{INGEST}/{JOB_ID}")
    assert json.loads(fake.bodies[0]) == {"state": "UploadComplete"}
    assert status == JobStatus(job_id=JOB_ID, state="UploadComplete")
    assert not status.done


def test_poll_reads_the_state_and_counters(make: Any) -> None:
    answer = job("JobComplete", numberRecordsProcessed=10_000, numberRecordsFailed=3)
    bulk, fake = make(lambda _r: httpx.Response(200, json=answer))
    status = bulk.poll(JOB_ID)
    assert fake.requests[0].method == "GET"
    assert status == JobStatus(
        job_id=JOB_ID, state="JobComplete", records_processed=10_000, records_failed=3
    )
    assert status.done


def test_poll_keeps_the_error_message_of_a_failed_job(make: Any) -> None:
    answer = job("Failed", errorMessage="InvalidBatch : Field name not found : Emial")
    bulk, _ = make(lambda _r: httpx.Response(200, json=answer))
    status = bulk.poll(JOB_ID)
    assert status.done
    assert status.error_message == "InvalidBatch : Field name not found : Emial"


def test_failed_results_parses_salesforce_csv(make: Any) -> None:
    # given a failedResults CSV with a quoted comma and an empty sf__Id
    body = (
        '"sf__Id","sf__Error","External_Id__c","Email"\n'
        '"","INVALID_EMAIL_ADDRESS:Email: invalid email address: a,b:--","a-7","a,b"\n'
    )
    bulk, fake = make(lambda _r: httpx.Response(200, text=body))
    # when it is read
    rows = bulk.failed_results(JOB_ID)
    # then each row is a dict of its columns
    assert fake.requests[0].url.path == f"{INGEST}/{JOB_ID}/failedResults/"
    assert rows == [
        {
            "sf__Id": "",
            "sf__Error": "INVALID_EMAIL_ADDRESS:Email: invalid email address: a,b:--",
            "External_Id__c": "a-7",
            "Email": "a,b",
        }
    ]


def test_successful_results_stream_with_a_quoted_multi_line_value(make: Any) -> None:
    # given a successfulResults CSV whose second row has a newline inside quotes
    body = (
        '"sf__Id","sf__Created","External_Id__c","Description"\n'
        '"003A","true","a-1","plain"\n'
        '"003B","false","a-2","two\nlines"\n'
    )
    bulk, fake = make(lambda _r: httpx.Response(200, text=body))
    # when it is read row by row
    rows = list(bulk.iter_successful_results(JOB_ID))
    # then the quoted newline stays inside its value
    assert fake.requests[0].url.path == f"{INGEST}/{JOB_ID}/successfulResults/"
    assert [(r["sf__Id"], r["sf__Created"], r["Description"]) for r in rows] == [
        ("003A", "true", "plain"),
        ("003B", "false", "two\nlines"),
    ]


@pytest.mark.parametrize(
    ("status", "errors", "expected"),
    [
        (503, [{"errorCode": "SERVER_UNAVAILABLE", "message": "down"}], RetryableProviderError),
        (
            403,
            [{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "TotalRequests Limit exceeded."}],
            RetryableProviderError,
        ),
        (401, [{"errorCode": "INVALID_SESSION_ID", "message": "expired"}], PermanentProviderError),
        (400, [{"errorCode": "INVALIDJOB", "message": "bad object"}], PermanentProviderError),
    ],
)
def test_a_failed_call_is_classified_like_any_salesforce_call(
    make: Any, status: int, errors: list[dict[str, str]], expected: type[Exception]
) -> None:
    headers = {"Retry-After": "7"}
    bulk, _ = make(lambda _r: httpx.Response(status, json=errors, headers=headers))
    with pytest.raises(expected) as raised:
        bulk.poll(JOB_ID)
    assert str(raised.value) == f"{errors[0]['errorCode']}: {errors[0]['message']}"


def test_a_retryable_failure_carries_retry_after(make: Any) -> None:
    bulk, _ = make(lambda _r: httpx.Response(429, headers={"Retry-After": "7"}))
    with pytest.raises(RetryableProviderError) as raised:
        bulk.create_upsert_job("Contact", "External_Id__c")
    assert raised.value.retry_after_s == 7.0
    assert raised.value.status_code == 429


def test_a_connection_error_is_retryable(make: Any) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    bulk, _ = make(refuse)
    with pytest.raises(RetryableProviderError, match="Salesforce unreachable"):
        bulk.close(JOB_ID)


def test_the_job_id_is_quoted_into_the_path(make: Any) -> None:
    bulk, fake = make(lambda _r: httpx.Response(200, json=job("Open")))
    bulk.poll("../../sobjects/Contact")
    assert fake.requests[0].url.raw_path.decode() == f"{INGEST}/..%2F..%2Fsobjects%2FContact"
