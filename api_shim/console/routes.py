"""The operations console: read-only HTML pages at `/console`, rendered on the server.

Pages: the installations a login may see; an installation's operations with
status, record counts and age, filtered by status (or finer state), object and
time, newest first; one operation with its per-record results, its batch and its
logs; the fleet (operators only) with queue depth, throughput and provider 429s
over the last hour. Jinja2 templates and one stylesheet, no JavaScript.

A project's API key sees exactly what the operations API shows that key (the
same `operation_view` and `log_view`), and nothing of other projects: a foreign
id is a 404 like an unknown one. An operator sees every project.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from api_shim.console.auth import COOKIE, COOKIE_PATH, ConsoleAuth, Viewer
from api_shim.console.charts import Chart, bar_chart
from api_shim.console.filters import (
    PUBLIC_STATUSES,
    STATES,
    WINDOWS,
    BadFilter,
    age,
    decode_cursor,
    encode_cursor,
    page_token,
    read_query,
    shown_count,
)
from api_shim.deps import DbSession, State, read_limited_body
from api_shim.views import log_view, operation_view
from writejobs.clock import iso, utcnow
from writejobs.core.operations import public_status
from writejobs.grouping.keys import Keys
from writejobs.runtime import metrics_history
from writejobs.settings import Settings
from writejobs.store import console_queries

HERE = Path(__file__).parent
PAGE_SIZE = 50
INSTALLATIONS_PAGE = 100
COUNT_CAP = 1000
FLEET_COUNT_CAP = 10000
LOG_LIMIT = 500
# Webhook deliveries shown on an operation's page (one per destination, usually).
WEBHOOK_LIMIT = 20
BATCH_LIMIT = 200
_LOGIN_BODY_LIMIT = 8192
_UNFINISHED = PUBLIC_STATUSES["in_progress"]
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

router = APIRouter(prefix="/console", include_in_schema=False)
templates = Jinja2Templates(directory=HERE / "templates")


class LoginRequired(Exception):
    """Raised by `current_viewer`: answered with a redirect to the login page."""


def install(app: FastAPI, settings: Settings) -> None:
    """Mount the console on `app`: its routes, stylesheet, and login handling."""
    app.state.console_auth = ConsoleAuth(settings)
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = RedirectResponse(f"/console/login?next={quote(wanted, safe='')}", 303)
        response.delete_cookie(COOKIE, path=COOKIE_PATH)
        return response


def _auth(request: Request) -> ConsoleAuth:
    auth: ConsoleAuth = request.app.state.console_auth
    return auth


def current_viewer(request: Request, session: DbSession) -> Viewer:
    """The logged-in viewer; LoginRequired without a valid session (or with a revoked key)."""
    claims = _auth(request).read(request.cookies.get(COOKIE))
    if claims is None:
        raise LoginRequired()
    if "o" in claims:
        return Viewer(name=str(claims["o"]))
    project = console_queries.project_of_active_key(session, str(claims["k"]))
    if project is None:
        raise LoginRequired()
    return Viewer(name=project.name, project=project)


CurrentViewer = Annotated[Viewer, Depends(current_viewer)]


def render(
    request: Request, name: str, viewer: Viewer | None, status_code: int = 200, **context: Any
) -> Response:
    response = templates.TemplateResponse(
        request, name, {"viewer": viewer, **context}, status_code=status_code, headers=HEADERS
    )
    return response


def not_found(request: Request, viewer: Viewer, what: str) -> Response:
    return render(request, "not_found.html", viewer, status_code=404, what=what)


def bad_filter(exc: BadFilter) -> Response:
    return PlainTextResponse(str(exc), status_code=400, headers=HEADERS)


@router.get("/login")
def login_page(request: Request, next: str = "") -> Response:  # noqa: A002
    return render(
        request,
        "login.html",
        None,
        next=_safe_next(next),
        operators=_auth(request).has_operators,
        error=None,
    )


@router.post("/login")
async def login(request: Request, state: State) -> Response:
    """Log in with a project API key (`api_key`) or an operator's `username`/`password`."""
    if not _same_origin(request):
        return PlainTextResponse("cross-site login refused", status_code=403, headers=HEADERS)
    body = await read_limited_body(request, _LOGIN_BODY_LIMIT)
    form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
    field = {name: (values[0].strip() if values else "") for name, values in form.items()}
    auth = _auth(request)
    token = None
    if field.get("api_key"):

        def key_id() -> str | None:
            with state.deps.sessions() as session:
                key = console_queries.key_login(session, field["api_key"])
                return None if key is None else key.id

        found = await run_in_threadpool(key_id)
        token = None if found is None else auth.key_session(found)
    elif field.get("username") and auth.operator_login(
        field["username"], form.get("password", [""])[0]
    ):
        token = auth.operator_session(field["username"])
    target = _safe_next(field.get("next", ""))
    if token is None:
        return render(
            request,
            "login.html",
            None,
            status_code=401,
            next=target,
            operators=auth.has_operators,
            error="That API key or operator login is not valid.",
        )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=auth.ttl_s,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    if not _same_origin(request):
        return PlainTextResponse("cross-site logout refused", status_code=403, headers=HEADERS)
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH)
    return response


@router.get("")
def installations(
    request: Request,
    viewer: CurrentViewer,
    session: DbSession,
    project: str = "",
    after: str = "",
) -> Response:
    """The installations the viewer may see, each linking to its operations."""
    scope = viewer.project_id
    if viewer.is_operator and project:
        scope = project
    try:
        position = decode_cursor(after, 3) if after else None
    except BadFilter as exc:
        return bad_filter(exc)
    rows, following = console_queries.list_installations(
        session,
        scope,
        limit=INSTALLATIONS_PAGE,
        after=(position[0], position[1], position[2]) if position else None,
    )
    projects = console_queries.list_projects(session, limit=200) if viewer.is_operator else []
    next_link = None
    if following is not None:
        next_link = "/console?" + urlencode(
            {k: v for k, v in {"project": project, "after": encode_cursor(following)}.items() if v}
        )
    return render(
        request,
        "installations.html",
        viewer,
        rows=rows,
        projects=projects,
        project=project,
        next_link=next_link,
    )


@router.get("/find")
def find(viewer: CurrentViewer, operation: str = "") -> Response:
    """Jump to an operation by id (the header's search box)."""
    target = operation.strip()
    if not target:
        return RedirectResponse("/console", status_code=303)
    return RedirectResponse(f"/console/operations/{quote(target, safe='')}", status_code=303)


@router.get("/installations/{installation_id}")
def operations(
    request: Request,
    viewer: CurrentViewer,
    session: DbSession,
    installation_id: str,
    status: str = "",
    object: str = "",  # noqa: A002
    since: str = "",
    until: str = "",
    window: str = "",
    before: str = "",
) -> Response:
    """An installation's operations, newest first, `PAGE_SIZE` at a time, with bounded
    per-state counts for the same object and time filters."""
    row = console_queries.get_installation(session, viewer.project_id, installation_id)
    if row is None:
        return not_found(request, viewer, "installation")
    now = utcnow()
    try:
        query = read_query(status, object, since, until, window, before)
        flt = query.store_filter(now)
    except BadFilter as exc:
        return bad_filter(exc)
    page = console_queries.list_operations(
        session, installation_id, flt, page_size=PAGE_SIZE, before=query.before
    )
    counts = console_queries.count_by_state(
        session,
        installation_id,
        console_queries.OperationFilter(None, flt.object_name, flt.since, flt.until),
        cap=COUNT_CAP,
    )
    base = f"/console/installations/{quote(installation_id, safe='')}"
    older = None
    if page.next_before is not None:
        older = base + "?" + urlencode({**query.params(), "before": page_token(page.next_before)})
    chips = [
        {
            "state": state,
            "count": shown_count(counts[state], COUNT_CAP),
            "link": base + "?" + urlencode(query.params(status=state)),
            "active": query.status == state,
        }
        for state in STATES
    ]
    rows = [
        {
            "id": op.id,
            "status": public_status(op.state),
            "state": op.state,
            "object": op.object_name,
            "type": op.write_type,
            "mode": op.mode,
            "shape": op.shape,
            "records": op.record_count,
            "succeeded": op.success_count,
            "failed": op.failure_count,
            "attempts": op.attempts,
            "created": iso(op.created_at),
            "age": age(op.created_at, now),
            "updated_age": age(op.updated_at, now),
        }
        for op in page.operations
    ]
    return render(
        request,
        "operations.html",
        viewer,
        installation=row,
        rows=rows,
        chips=chips,
        query=query,
        statuses=list(PUBLIC_STATUSES),
        states=STATES,
        windows=list(WINDOWS),
        older=older,
        newest=base + "?" + urlencode(query.params()) if query.before else None,
        clear=base,
        cap=COUNT_CAP,
    )


@router.get("/operations/{operation_id}")
def operation(
    request: Request, viewer: CurrentViewer, session: DbSession, operation_id: str
) -> Response:
    """One operation: what the operations API shows, its batch, its logs and its
    webhook deliveries."""
    op = console_queries.get_operation(session, viewer.project_id, operation_id)
    if op is None:
        return not_found(request, viewer, "operation")
    now = utcnow()
    view = operation_view(op)
    installation = console_queries.get_installation(session, viewer.project_id, op.installation_id)
    lines = console_queries.operation_logs(session, op.id, limit=LOG_LIMIT)
    logs = [log_view(entry) for entry in lines]
    members = []
    if op.batch_id is not None:
        members = [
            {"id": m.id, "state": m.state, "status": public_status(m.state), "this": m.id == op.id}
            for m in console_queries.batch_members(
                session, viewer.project_id, op.batch_id, limit=BATCH_LIMIT
            )
        ]
    return render(
        request,
        "operation.html",
        viewer,
        op=view,
        installation=installation,
        age=age(op.created_at, now),
        logs=logs,
        log_limit=LOG_LIMIT,
        members=members,
        records=_records(view["records"]),
        deliveries=console_queries.webhook_deliveries(session, op.id, limit=WEBHOOK_LIMIT),
    )


def _records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "index": i,
            "success": bool(r.get("success")),
            "record_id": r.get("recordId", ""),
            "error": r.get("error", ""),
            "data": json.dumps(r["data"], sort_keys=True) if r.get("data") is not None else "",
        }
        for i, r in enumerate(records)
    ]


@router.get("/fleet")
def fleet(request: Request, viewer: CurrentViewer, state: State, session: DbSession) -> Response:
    """The whole fleet (operators only): now, and the last hour a minute at a time."""
    if not viewer.is_operator:
        return render(request, "operators_only.html", viewer, status_code=403)
    now = utcnow()
    keys = Keys(state.deps.settings.redis_namespace)
    queue = state.deps.settings.celery_queue
    current = metrics_history.take_snapshot(state.redis, keys, queue, now)
    history = metrics_history.read_history(state.redis, keys)

    def chart(title: str, unit: str, name: str) -> Chart:
        values = metrics_history.series(history, name, now=now, live=current)
        return bar_chart(title, unit, values, counter=name in metrics_history.COUNTERS)

    charts = [
        chart("Queue depth", "tasks", "queue_depth"),
        chart("Writes accepted", "writes", "writes_accepted"),
        chart("Provider calls ok", "calls", "provider_calls_ok"),
        chart("Provider calls failed", "calls", "provider_calls_failed"),
        chart("Provider 429s", "429s", "provider_429s"),
        chart("Retry waits", "waits", "retry_waits"),
    ]
    counts = console_queries.count_fleet_states(session, _UNFINISHED, cap=FLEET_COUNT_CAP)
    return render(
        request,
        "fleet.html",
        viewer,
        current=current,
        queue=queue,
        charts=charts,
        counts=[(s, shown_count(n, FLEET_COUNT_CAP)) for s, n in counts.items()],
        minutes=len(history),
    )


def _safe_next(target: str) -> str:
    """Only a console path: never an absolute URL or `//host` (no open redirect)."""
    if target.startswith("/console") and not target.startswith("//") and "\\" not in target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return "/console"


def _same_origin(request: Request) -> bool:
    """A form post carries its page's Origin: it must be this host (none: not a browser)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")
