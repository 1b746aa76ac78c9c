"""The operations console over loopback HTTP, on real SQLite and PostgreSQL and real Redis:
logins, who sees what, filters, pages, an operation's page, the fleet page."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import redis

from api_shim.app import create_app
from tests.support.servers import serve_in_thread
from tests.support.system import Tenant, create_tenant
from writejobs.clock import utcnow
from writejobs.grouping.keys import Keys
from writejobs.runtime.metrics_history import record_minute
from writejobs.settings import Settings
from writejobs.store import console_queries, operations_repo
from writejobs.store.db import create_session_factory, create_store_engine
from writejobs.store.tables import ApiKey, Operation

OPERATOR = ("ops", "correct horse battery staple")
OP_LINK = re.compile(r"/console/operations/([0-9a-f-]{36})")
# A record value the write carried but the operations API never shows.
SECRET_FIELD_VALUE = "do-not-show-this-value"


@pytest.fixture(scope="module")
def console_settings(settings: Settings) -> Settings:
    run = uuid.uuid4().hex[:8]
    return settings.model_copy(
        update={
            "console_operators": f"{OPERATOR[0]}:{OPERATOR[1]}",
            "redis_namespace": f"wjconsole-{run}",
            "celery_queue": f"console-{run}",
        }
    )


@pytest.fixture(scope="module")
def console_url(console_settings: Settings) -> Iterator[str]:
    with serve_in_thread(create_app(console_settings)) as url:
        yield url


@pytest.fixture()
def own(console_settings: Settings, console_url: str) -> Tenant:
    return create_tenant(console_settings, console_url, "http://127.0.0.1:9")


def browser(console_url: str) -> httpx.Client:
    return httpx.Client(base_url=console_url, timeout=30, follow_redirects=False)


def key_login(client: httpx.Client, api_key: str) -> httpx.Response:
    return client.post("/console/login", data={"api_key": api_key, "next": "/console"})


def operator_login(client: httpx.Client) -> httpx.Response:
    user, password = OPERATOR
    return client.post("/console/login", data={"username": user, "password": password})


def add_operations(settings: Settings, tenant: Tenant, specs: list[dict[str, Any]]) -> list[str]:
    """Insert operations of the tenant's installation as the intake would have; return ids."""
    engine = create_store_engine(settings)
    ids = []
    try:
        with create_session_factory(engine)() as session:
            for given in specs:
                spec = dict(given)
                created: datetime = spec.pop("created_at", utcnow())
                op = Operation(
                    id=str(uuid.uuid4()),
                    project_id=tenant.project_id,
                    integration_id=tenant.integration_id,
                    installation_id=tenant.installation_id,
                    config_id="cfg",
                    object_name=spec.pop("object_name", "contacts"),
                    write_type="create",
                    mode="asynchronous",
                    shape=spec.pop("shape", "single"),
                    request={"record": {"email": SECRET_FIELD_VALUE}},
                    state=spec.pop("state", "succeeded"),
                    attempts=1,
                    record_count=1,
                    success_count=0,
                    failure_count=0,
                    backoff_failures=0,
                    created_at=created,
                    updated_at=created,
                    deadline_at=created + timedelta(hours=1),
                    **spec,
                )
                operations_repo.insert_operation(session, op)
                ids.append(op.id)
            session.commit()
    finally:
        engine.dispose()
    return ids


def shown(response: httpx.Response) -> list[str]:
    """Operation ids a page links to, in page order, each once."""
    return list(dict.fromkeys(OP_LINK.findall(response.text)))


def test_every_page_sends_a_visitor_without_a_session_to_the_login(console_url: str) -> None:
    with browser(console_url) as client:
        for path in (
            "/console",
            "/console/installations/x?status=failure",
            "/console/operations/x",
            "/console/fleet",
        ):
            response = client.get(path)
            assert response.status_code == 303, path
            location = response.headers["location"]
            assert location.startswith("/console/login?next="), location
        assert client.get("/console/login").status_code == 200
        # a forged cookie is no session either
        client.cookies.set("wj_console", "eyJrIjoiYSJ9.forged.sig", path="/console")
        assert client.get("/console").status_code == 303


def test_a_wrong_key_is_refused_and_a_good_one_gets_a_strict_http_only_cookie(
    console_url: str, own: Tenant
) -> None:
    with browser(console_url) as client:
        refused = key_login(client, "wj_not-a-key")
        assert refused.status_code == 401
        assert "not valid" in refused.text
        assert "wj_not-a-key" not in refused.text

        answer = key_login(client, own.api_key)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/console"
        cookie = answer.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
        # the cookie names the key's id, never the key
        assert own.api_key.lower() not in cookie
        page = client.get("/console")
        assert page.status_code == 200
        assert own.group_ref in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]

        # logging out ends it
        assert client.post("/console/logout").status_code == 303
        assert client.get("/console").status_code == 303


def test_a_key_sees_only_its_own_project_and_an_operator_sees_every_one(
    console_settings: Settings, console_url: str, own: Tenant
) -> None:
    other = create_tenant(console_settings, console_url, "http://127.0.0.1:9")
    (mine,) = add_operations(console_settings, own, [{}])
    (theirs,) = add_operations(console_settings, other, [{}])
    with browser(console_url) as client:
        key_login(client, own.api_key)
        home = client.get("/console")
        assert own.group_ref in home.text and other.group_ref not in home.text
        assert client.get(f"/console/operations/{mine}").status_code == 200
        # another project's operation and installation look exactly like unknown ones
        assert client.get(f"/console/operations/{theirs}").status_code == 404
        assert client.get(f"/console/installations/{other.installation_id}").status_code == 404
        assert client.get(f"/console/installations/{own.installation_id}").status_code == 200
        # and the fleet, every project's figures, is for operators
        assert client.get("/console/fleet").status_code == 403

    with browser(console_url) as client:
        assert operator_login(client).status_code == 303
        home = client.get(f"/console?project={other.project_id}")
        assert other.group_ref in home.text and own.group_ref not in home.text
        assert client.get(f"/console/operations/{theirs}").status_code == 200
        assert client.get(f"/console/operations/{mine}").status_code == 200


def test_a_revoked_key_ends_its_sessions(
    console_settings: Settings, console_url: str, own: Tenant
) -> None:
    with browser(console_url) as client:
        key_login(client, own.api_key)
        assert client.get("/console").status_code == 200
        engine = create_store_engine(console_settings)
        with create_session_factory(engine)() as session:
            key = console_queries.key_login(session, own.api_key)
            assert key is not None
            session.get_one(ApiKey, key.id).active = False
            session.commit()
        engine.dispose()
        assert client.get("/console").status_code == 303


def test_a_wrong_operator_password_is_refused(console_url: str) -> None:
    with browser(console_url) as client:
        answer = client.post("/console/login", data={"username": "ops", "password": "nope"})
        assert answer.status_code == 401
        assert client.get("/console").status_code == 303


def test_login_refuses_another_sites_origin_and_never_redirects_off_the_console(
    console_url: str, own: Tenant
) -> None:
    with browser(console_url) as client:
        foreign = client.post(
            "/console/login",
            data={"api_key": own.api_key},
            headers={"Origin": "https://evil.example"},
        )
        assert foreign.status_code == 403
        for target in ("https://evil.example/", "//evil.example/console", "/elsewhere"):
            answer = client.post("/console/login", data={"api_key": own.api_key, "next": target})
            assert answer.headers["location"] == "/console", target


def test_filters_by_status_state_object_and_time(
    console_settings: Settings, console_url: str, own: Tenant
) -> None:
    now = utcnow()
    ids = add_operations(
        console_settings,
        own,
        [
            {"state": "succeeded", "created_at": now - timedelta(minutes=1)},
            {"state": "failed", "created_at": now - timedelta(minutes=2)},
            {"state": "expired", "created_at": now - timedelta(minutes=3)},
            {
                "state": "queued",
                "object_name": "companies",
                "created_at": now - timedelta(minutes=4),
            },
            {"state": "failed", "object_name": "companies", "created_at": now - timedelta(hours=3)},
        ],
    )
    ok, failed, expired, queued_company, old_failed_company = ids
    page = f"/console/installations/{own.installation_id}"
    with browser(console_url) as client:
        key_login(client, own.api_key)
        assert shown(client.get(page)) == ids
        assert shown(client.get(page, params={"status": "failure"})) == [
            failed,
            expired,
            old_failed_company,
        ]
        assert shown(client.get(page, params={"status": "failed"})) == [failed, old_failed_company]
        assert shown(client.get(page, params={"status": "in_progress"})) == [queued_company]
        assert shown(client.get(page, params={"object": "companies"})) == [
            queued_company,
            old_failed_company,
        ]
        assert shown(client.get(page, params={"object": "companies", "status": "failure"})) == [
            old_failed_company
        ]
        assert shown(client.get(page, params={"window": "1h"})) == [
            ok,
            failed,
            expired,
            queued_company,
        ]
        until = (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
        assert shown(client.get(page, params={"until": until})) == [old_failed_company]
        since = (now - timedelta(minutes=2, seconds=30)).strftime("%Y-%m-%dT%H:%M:%S")
        assert shown(client.get(page, params={"since": since, "status": "failure"})) == [failed]

        # the state counts follow the object and time filters, not the state filter
        counted = client.get(page, params={"object": "companies", "status": "failed"}).text
        assert re.search(r"failed <b>1</b>", counted) and re.search(r"queued <b>1</b>", counted)
        assert re.search(r"succeeded <b>0</b>", counted)


def test_a_bad_filter_is_a_400_naming_it(console_url: str, own: Tenant) -> None:
    page = f"/console/installations/{own.installation_id}"
    with browser(console_url) as client:
        key_login(client, own.api_key)
        for params, named in (
            ({"status": "done"}, "status"),
            ({"since": "yesterday"}, "since"),
            ({"window": "2y"}, "window"),
            ({"before": "!!"}, "before"),
            ({"since": "2026-01-02T00:00", "until": "2026-01-01T00:00"}, "since"),
        ):
            answer = client.get(page, params=params)
            assert answer.status_code == 400, params
            assert answer.headers["content-type"].startswith("text/plain")
            assert answer.text.startswith(named), answer.text


def test_pages_go_back_in_time_without_skipping_or_repeating(
    console_settings: Settings, console_url: str, own: Tenant
) -> None:
    # given 130 operations, some sharing a created_at, in three states (the status
    # filter merges one index range per state)
    now = utcnow()
    specs = [
        {
            "state": ("failed", "expired", "succeeded")[i % 3],
            "created_at": now - timedelta(seconds=i // 2),
        }
        for i in range(130)
    ]
    ids = add_operations(console_settings, own, specs)
    with engine_session(console_settings) as session:
        newest_first = [
            op.id
            for op in sorted(
                (session.get_one(Operation, i) for i in ids),
                key=lambda o: (o.created_at, o.id),
                reverse=True,
            )
        ]
    page = f"/console/installations/{own.installation_id}"
    with browser(console_url) as client:
        key_login(client, own.api_key)
        for params, expected in (
            ({}, newest_first),
            (
                {"status": "failure"},
                [i for i in newest_first if specs[ids.index(i)]["state"] != "succeeded"],
            ),
        ):
            seen: list[str] = []
            response = client.get(page, params=params)
            while True:
                seen.extend(shown(response))
                older = re.search(r'href="([^"]+)">Older', response.text)
                if older is None:
                    break
                response = client.get(older.group(1).replace("&amp;", "&"))
                assert response.status_code == 200
            assert seen == expected


def engine_session(settings: Settings) -> Any:
    engine = create_store_engine(settings)

    class _Scope:
        def __enter__(self) -> Any:
            self.session = create_session_factory(engine)()
            return self.session

        def __exit__(self, *exc: object) -> None:
            self.session.close()
            engine.dispose()

    return _Scope()


def test_counts_stop_at_their_cap(console_settings: Settings, own: Tenant) -> None:
    add_operations(console_settings, own, [{"state": "failed"} for _ in range(5)])
    with engine_session(console_settings) as session:
        counts = console_queries.count_by_state(
            session, own.installation_id, console_queries.OperationFilter(), cap=3
        )
    assert counts["failed"] == 4  # "more than 3"
    assert counts["succeeded"] == 0


def test_an_operations_page_shows_its_records_batch_and_logs_and_no_request_payload(
    console_settings: Settings, console_url: str, own: Tenant
) -> None:
    batch = str(uuid.uuid4())
    results = [
        {"success": True, "recordId": "501", "data": {"hs_object_id": "501"}},
        {"success": False, "error": "Email address not-an-email is invalid"},
    ]
    first, second = add_operations(
        console_settings,
        own,
        [
            {
                "state": "partially_succeeded",
                "shape": "auto_batch",
                "batch_id": batch,
                "flush_reason": "size",
                "results": results,
                "result_summary": "[contacts] Batch write partially succeeded",
            },
            {
                "state": "succeeded",
                "shape": "auto_batch",
                "batch_id": batch,
                "flush_reason": "size",
            },
        ],
    )
    with engine_session(console_settings) as session:
        operations_repo.add_log(
            session, first, "attempt finished", now=utcnow(), details={"status": "207"}
        )
        session.commit()
    with browser(console_url) as client:
        key_login(client, own.api_key)
        page = client.get(f"/console/operations/{first}")
    assert page.status_code == 200
    text = page.text
    assert "partially_succeeded" in text and "Batch write partially succeeded" in text
    assert "501" in text and "Email address not-an-email is invalid" in text
    assert batch in text and "size" in text and second in text
    assert "attempt finished" in text and "status=207" in text
    # the request as accepted is not something the operations API shows
    assert SECRET_FIELD_VALUE not in text


def test_the_fleet_page_draws_the_last_hour_for_an_operator(
    console_settings: Settings, console_url: str
) -> None:
    client_redis = redis.Redis.from_url(console_settings.effective_redis_url)
    keys = Keys(console_settings.redis_namespace)
    now = utcnow()
    client_redis.hset(keys.metrics, "writes_accepted{shape=single}", 10)
    record_minute(client_redis, keys, console_settings.celery_queue, now - timedelta(minutes=1))
    client_redis.hset(keys.metrics, "writes_accepted{shape=single}", 25)
    client_redis.hset(keys.metrics, "provider_429s{policy=rolling,provider=hubspot}", 3)
    client_redis.rpush(console_settings.celery_queue, "task-1", "task-2")
    record_minute(client_redis, keys, console_settings.celery_queue, now)
    try:
        with browser(console_url) as client:
            operator_login(client)
            page = client.get("/console/fleet")
        assert page.status_code == 200
        text = page.text
        assert "Queue depth" in text and "Provider 429s" in text
        # 25 - 10 writes in the minute before this one, none since; 2 tasks queued now
        assert "1 min ago: 15 writes" in text
        assert "this minute: 0 writes" in text
        assert "this minute: 2 tasks" in text
        assert "<svg" in text and "<rect" in text
    finally:
        client_redis.delete(console_settings.celery_queue, keys.metrics, keys.metrics_history)


def test_an_operations_page_lists_its_webhook_deliveries_and_their_attempts(
    console_settings: Settings, console_url: str, own: Tenant
) -> None:
    from writejobs.store.webhook_tables import WebhookAttempt, WebhookDelivery, WebhookDestination

    [op_id] = add_operations(console_settings, own, [{"state": "succeeded", "shape": "single"}])
    now = utcnow()
    url = f"https://hooks-{uuid.uuid4().hex[:6]}.example.com/in"
    with engine_session(console_settings) as session:
        destination = WebhookDestination(
            id=str(uuid.uuid4()), project_id=own.project_id, url=url, secret="x", created_at=now
        )
        session.add(destination)
        session.flush()
        delivery = WebhookDelivery(
            destination_id=destination.id,
            operation_id=op_id,
            event_id=f"msg_{op_id}",
            state="delivered",
            attempts=2,
            next_attempt_at=now,
            created_at=now,
            delivered_at=now,
            last_status=204,
        )
        session.add(delivery)
        session.flush()
        session.add_all(
            [
                WebhookAttempt(delivery_id=delivery.id, at=now, status_code=None, latency_ms=5000),
                WebhookAttempt(delivery_id=delivery.id, at=now, status_code=204, latency_ms=12),
            ]
        )
        session.commit()
    with browser(console_url) as client:
        key_login(client, own.api_key)
        page = client.get(f"/console/operations/{op_id}")
    assert page.status_code == 200
    assert url in page.text and f"msg_{op_id}" in page.text and "delivered" in page.text
    assert "204 in 12 ms" in page.text and "no answer in 5000 ms" in page.text
