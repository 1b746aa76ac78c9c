"""The `writejobs` command: start the whole system, or any one piece, and administer it."""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from writejobs.cli import operator_admin, pieces, tenant_admin, webhook_admin
from writejobs.settings import Settings, load_settings

if TYPE_CHECKING:
    pass

console = Console()
app = typer.Typer(
    help="writejobs: asynchronous write jobs to your customers' SaaS apps.",
    no_args_is_help=True,
    add_completion=False,
)
admin = tenant_admin.admin
app.add_typer(admin, name="admin")


def main() -> None:
    app()


@app.command()
def up(
    demo: Annotated[
        bool, typer.Option(help="Send a sample workload and show its outcome.")
    ] = False,
) -> None:
    """Start everything on this machine: Redis (embedded if unset), API, worker, scheduler,
    Flower and the sandbox provider. A piece that exits is started again (with backoff);
    Ctrl-C stops them all."""
    from writejobs.cli.bootstrap import ensure_demo
    from writejobs.cli.embedded_redis import EmbeddedRedis
    from writejobs.cli.flower_auth import first_user, flower_basic_auth
    from writejobs.cli.supervisor import Supervisor, python_module
    from writejobs.private_files import PRIVATE_UMASK, narrow_files, private_dir
    from writejobs.store.migrate import migrate

    settings = load_settings()
    # Everything `up` and its pieces write under the data dir is this user's alone.
    os.umask(PRIVATE_UMASK)
    narrow_files(private_dir(settings.data_dir))
    stop = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)

    env = dict(os.environ)
    embedded = None
    if settings.redis_url is None:
        embedded = EmbeddedRedis(settings.data_dir, settings.embedded_redis_socket)
        embedded.start()
        env["WRITEJOBS_REDIS_URL"] = embedded.url
        console.print(f"[green]embedded Redis[/] on {embedded.url} (AOF in {settings.data_dir})")
    env["WRITEJOBS_DATA_DIR"] = str(settings.data_dir.resolve())
    if demo and not settings.fetch_allowed_http_hosts:
        # The demo's bulk upsert fetches its CSV from the sandbox, over plain http.
        env["WRITEJOBS_FETCH_ALLOWED_HTTP_HOSTS"] = "localhost"
        console.print("demo: recordsURL may name http://localhost (the sandbox's files)")
    child_settings = Settings(
        redis_url=env["WRITEJOBS_REDIS_URL"],
        data_dir=settings.data_dir,
        database_url=settings.database_url,
    )
    supervisor = Supervisor(
        env=env,
        log_dir=str(settings.data_dir),
        report=lambda line: console.print(line, style="yellow", markup=False),
    )
    redis_restarts = 0
    try:
        migrate(child_settings)
        api_url = f"http://{settings.api_host}:{settings.api_port}"
        sandbox_url = f"http://127.0.0.1:{settings.sandbox_port}"
        flower_url = f"http://127.0.0.1:{settings.flower_port}"
        details = ensure_demo(
            child_settings,
            api_url=api_url,
            sandbox_url=sandbox_url,
            flower_url=flower_url,
            flower_login=first_user(flower_basic_auth(settings)),
        )
        supervisor.start("sandbox", python_module("writejobs", "sandbox"))
        supervisor.start("api", python_module("writejobs", "api"))
        supervisor.start("worker", python_module("writejobs", "worker"))
        supervisor.start("scheduler", python_module("writejobs", "scheduler"))
        supervisor.start("webhooks", python_module("writejobs", "webhooks"))
        supervisor.start("flower", python_module("writejobs", "flower"))
        ready = _wait_ready(
            {
                "api": f"{api_url}/readyz",
                "sandbox": f"{sandbox_url}/_sandbox/stats",
                "flower": f"{flower_url}/healthcheck",
            },
            supervisor,
            stop,
        )
        if ready:
            _print_urls(details, settings)
            if demo:
                from writejobs.cli.demo import run_demo

                run_demo(details, console, stop)
            if not stop.is_set():
                console.print("[bold]writejobs is running.[/] Press Ctrl-C to stop.")
            while not stop.is_set():
                supervisor.supervise()
                if embedded is not None and embedded.exited() and not stop.is_set():
                    redis_restarts += 1
                    console.print(
                        f"[yellow]embedded Redis exited; starting it again "
                        f"(restart {redis_restarts}; its AOF keeps what it accepted)[/]"
                    )
                    embedded.start()
                stop.wait(0.5)
    finally:
        console.print("stopping…")
        supervisor.stop_all()
        if embedded is not None:
            embedded.stop()
        restarts = {"redis": redis_restarts, **supervisor.restart_counts}
        if any(restarts.values()):
            counts = ", ".join(f"{name} {count}" for name, count in restarts.items() if count)
            console.print(f"restarts this run: {counts}")
        console.print("stopped.")


def _wait_ready(
    urls: dict[str, str], supervisor: object, stop: threading.Event, timeout_s: float = 90.0
) -> bool:
    from writejobs.cli.supervisor import Supervisor

    assert isinstance(supervisor, Supervisor)
    pending = dict(urls)
    deadline = time.monotonic() + timeout_s
    with console.status("starting…"):
        while pending and not stop.is_set() and time.monotonic() < deadline:
            if supervisor.exited():
                names = ", ".join(c.name for c in supervisor.exited())
                console.print(f"[red]{names} exited during start[/]; see the logs in the data dir")
                return False
            for name, url in list(pending.items()):
                try:
                    if httpx.get(url, timeout=1.0).status_code == 200:
                        del pending[name]
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
    if pending:
        console.print(f"[red]not ready in time: {', '.join(pending)}[/]")
    return not pending and not stop.is_set()


def _print_urls(details: dict[str, str], settings: Settings) -> None:
    table = Table(title="writejobs is up", show_header=True)
    table.add_column("what")
    table.add_column("where")
    table.add_row("API", details["api_url"])
    table.add_row("API docs", details["api_url"] + "/docs")
    table.add_row(
        "Flower", f"{details['flower_url']} (user {details['flower_user']}, password in demo.json)"
    )
    table.add_row("Sandbox provider", details["sandbox_url"])
    table.add_row("Demo details", str(settings.data_dir / "demo.json"))
    table.add_row("Logs", str(settings.data_dir / "*.log"))
    console.print(table)


@app.command()
def api(
    workers: Annotated[
        int, typer.Option(min=1, help="API processes on the one port (for hosts with more cores).")
    ] = 1,
) -> None:
    """Run the HTTP API (uvicorn) on WRITEJOBS_API_HOST:WRITEJOBS_API_PORT."""
    pieces.serve_api(load_settings(), workers=workers)


@app.command()
def worker() -> None:
    """Run a Celery worker (prefork, late acks, prefetch 1)."""
    settings = load_settings()
    pieces.exec_celery(
        "worker",
        "--loglevel",
        settings.log_level,
        "--concurrency",
        str(settings.worker_concurrency),
        "--queues",
        settings.celery_queue,
        "--hostname",
        f"writejobs-{os.getpid()}@%h",
        "--pool",
        "prefork",
        # Gossip and mingle talk to other workers, which writejobs never needs; on a
        # broker restart, closing gossip's channel on an already closed connection
        # crashed the worker for good (kombu#582: `'NoneType' object has no attribute
        # 'hostname'`), and mingle's broadcast can hang a reconnect (celery#8030).
        "--without-gossip",
        "--without-mingle",
    )


@app.command()
def webhooks() -> None:
    """Run a Celery worker for the webhook deliveries' queue only (WRITEJOBS_WEBHOOK_QUEUE)."""
    settings = load_settings()
    pieces.exec_celery(
        "worker",
        "--loglevel",
        settings.log_level,
        "--concurrency",
        str(settings.webhook_concurrency),
        "--queues",
        settings.effective_webhook_queue,
        "--hostname",
        f"writejobs-webhooks-{os.getpid()}@%h",
        "--pool",
        "prefork",
        # As `writejobs worker`: no gossip or mingle, so it outlives a broker restart.
        "--without-gossip",
        "--without-mingle",
    )


@app.command()
def flower() -> None:
    """Run Flower, the Celery monitor, on WRITEJOBS_FLOWER_HOST:WRITEJOBS_FLOWER_PORT, behind
    basic auth (WRITEJOBS_FLOWER_BASIC_AUTH, or a user and password made once in the data
    dir)."""
    from writejobs.cli.flower_auth import BadFlowerAuth, flower_basic_auth

    settings = load_settings()
    try:
        basic_auth = flower_basic_auth(settings)
    except BadFlowerAuth as exc:
        raise typer.BadParameter(str(exc)) from None
    # Through Flower's environment, not its command line, where `ps` would show it.
    os.environ["FLOWER_BASIC_AUTH"] = basic_auth
    pieces.exec_celery(
        "flower", f"--port={settings.flower_port}", f"--address={settings.flower_host}"
    )


@app.command()
def scheduler() -> None:
    """Run the auto-batch grouper and recovery sweeps (any number may run side by side)."""
    pieces.run_scheduler(load_settings())


@app.command()
def sandbox() -> None:
    """Run the sandbox provider (HubSpot, Salesforce, Opus) on
    WRITEJOBS_SANDBOX_HOST:WRITEJOBS_SANDBOX_PORT."""
    pieces.serve_sandbox(load_settings())


@app.command()
def migrate(
    check: Annotated[
        bool,
        typer.Option(
            help="Change nothing: exit 0 if the schema is at this release's head (or newer), "
            "else 1. A piece's init container waits this way for the release's migration."
        ),
    ] = False,
    wait_s: Annotated[
        float, typer.Option(min=0, help="With --check: keep checking this long before exit 1.")
    ] = 0.0,
) -> None:
    """Apply the store's migrations (idempotent), or with --check tell whether they are."""
    from writejobs.store.migrate import migrate as run_migrations
    from writejobs.store.migrate import schema_state

    settings = load_settings()
    if not check:
        run_migrations(settings)
        console.print("migrated.")
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            state = schema_state(settings)
            if state.ready:
                console.print(
                    "schema ready" + (" (newer than this release)" if state.newer else "")
                )
                return
            found = ", ".join(sorted(state.current)) or "none"
            why = f"schema at {found}, this release needs {', '.join(sorted(state.head))}"
        except Exception as exc:  # the database not answering yet is one more reason to wait
            why = f"database not reachable: {type(exc).__name__}"
        if time.monotonic() >= deadline:
            console.print(f"not ready: {why}")
            raise typer.Exit(1)
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


webhook_admin.register(admin, tenant_admin.sessions, tenant_admin.project_of, console)
operator_admin.register(admin, tenant_admin.sessions, tenant_admin.project_of)


if __name__ == "__main__":
    main()
