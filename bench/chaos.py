"""Chaos: a fleet writing ≥ 20,000 records while its pieces are SIGKILLed and Redis restarts.

Starts its own Redis (`/usr/bin/redis-server` on a spare loopback port, AOF on;
never the machine's shared one), a throwaway PostgreSQL schema migrated with
`writejobs migrate`, the sandbox as the provider, and a fleet of real processes:
2 × `writejobs api`, 2 × `writejobs scheduler`, 2 × `writejobs worker`. Client
threads send asynchronous writes (single records, batches of 10, auto-batched
records) round-robin to both APIs, each with an `Idempotency-Key`, sent again
with the same key after no answer or a 5xx. Half the records go to a HubSpot
installation whose `contacts` have a natural key (`email`: creates are
upserts), half to one whose `companies` have none.

Meanwhile, every few seconds one random piece of the fleet is SIGKILLed (a
worker with its whole process group) and started again, and Redis is restarted
(SIGKILL, then SIGTERM, alternately) as a third and two thirds of the records
have been accepted. Then the kills stop, everything drains (bounded), and the
bench prints what happened to every record: accepted, stuck, lost, duplicates
and how many were reported, 5xx by API and mode, pieces that exited on their
own, next to the targets with PASS/FAIL.

Run: `.venv/bin/python bench/chaos.py [--records 20000] [--seconds 600] …`
(`--help` for the rest). It stops by itself; Ctrl-C stops it early. Every
process it started and its schema go with it; the pieces' logs stay in the
run's directory, printed at the end.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chaos_clients import Load, Tally, Target, run_clients  # noqa: E402
from chaos_count import (  # noqa: E402
    count,
    drain,
    fetch_views,
    metric_possible_duplicates,
    operation_logs,
    repeat_logs,
    sandbox_keys,
)
from chaos_fleet import (  # noqa: E402
    REPO_ROOT,
    Piece,
    free_port,
    http_ok,
    log_says,
    redis_answers,
    redis_piece,
    wait_until,
    writejobs_piece,
)
from chaos_report import Run, print_report  # noqa: E402

DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/test"
KILLABLE = ("api-1", "api-2", "scheduler-1", "scheduler-2", "worker-1", "worker-2")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000, help="records to send")
    parser.add_argument("--seconds", type=float, default=600.0, help="cap on the sending phase")
    parser.add_argument("--drain-seconds", type=float, default=300.0, help="cap on the drain")
    parser.add_argument("--clients", type=int, default=8, help="client threads")
    parser.add_argument("--kill-every", type=float, default=4.0, help="mean s between kills")
    parser.add_argument("--restart-after", type=float, default=1.0, help="s a killed piece is down")
    parser.add_argument("--redis-restarts", type=int, default=2)
    parser.add_argument("--redis-down", type=float, default=2.0, help="s Redis stays down")
    parser.add_argument(
        "--appendfsync",
        choices=("always", "everysec"),
        default="always",
        help="Redis AOF fsync: an accepted auto-batched record waits in Redis (default always)",
    )
    parser.add_argument("--time-scale", type=float, default=0.05, help="policy time scale")
    parser.add_argument("--lease", type=float, default=5.0, help="WRITEJOBS_RUNNING_LEASE_S")
    parser.add_argument("--stalled", type=float, default=30.0, help="WRITEJOBS_STALLED_AFTER_S")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("WRITEJOBS_DATABASE_URL", DEFAULT_DATABASE),
        help="PostgreSQL to make a throwaway schema in",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    run_id = uuid.uuid4().hex[:8]
    run_dir = Path(tempfile.mkdtemp(prefix=f"wj-chaos-{run_id}-"))
    logs = run_dir / "logs"
    logs.mkdir()
    schema = f"wjchaos_{run_id}"
    base_url = args.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    pieces: dict[str, Piece] = {}
    interrupted = False

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # Ctrl-C even when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with psycopg.connect(base_url, autocommit=True) as connection:
            connection.execute(f'CREATE SCHEMA "{schema}"')
        separator = "&" if "?" in base_url else "?"
        database_url = f"{base_url}{separator}options=-csearch_path%3D{schema}"
        run = Run(args=args, run_id=run_id, run_dir=run_dir)
        chaos(args, run, run_dir, logs, database_url, pieces)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process", flush=True)
        interrupted = True
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for piece in reversed(list(pieces.values())):
            piece.kill(signal.SIGTERM, timeout_s=10)
        with psycopg.connect(base_url, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        shutil.rmtree(run_dir / "redis", ignore_errors=True)
        print(f"schema {schema} dropped; logs in {logs}", flush=True)
    if interrupted:
        sys.exit(130)


def chaos(
    args: argparse.Namespace,
    run: Run,
    run_dir: Path,
    logs: Path,
    database_url: str,
    pieces: dict[str, Piece],
) -> None:
    redis_port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    pieces["redis"] = redis_piece(redis_port, run_dir / "redis", args.appendfsync, logs)
    pieces["redis"].start()
    wait_until("PING", lambda: redis_answers(redis_url), pieces["redis"], 30)

    sandbox_port = free_port()
    env = fleet_env(args, run_dir, redis_url, database_url, run.run_id, sandbox_port)
    run.settings = {k: v for k, v in env.items() if k.startswith("WRITEJOBS_")}
    subprocess.run(
        [sys.executable, "-m", "writejobs", "migrate"], env=env, cwd=REPO_ROOT, check=True
    )
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    pieces["sandbox"] = writejobs_piece("sandbox", ["sandbox"], env, logs)
    pieces["sandbox"].start()
    wait_until("an answer", lambda: http_ok(f"{sandbox_url}/_sandbox/stats"), pieces["sandbox"], 60)

    tenant = make_tenant(env, run.run_id, sandbox_url)
    api_urls = []
    for n in (1, 2):
        port = free_port()
        api_env = env | {"WRITEJOBS_API_PORT": str(port)}
        pieces[f"api-{n}"] = writejobs_piece(f"api-{n}", ["api"], api_env, logs)
        api_urls.append(f"http://127.0.0.1:{port}")
    for n in (1, 2):
        pieces[f"scheduler-{n}"] = writejobs_piece(f"scheduler-{n}", ["scheduler"], env, logs)
        pieces[f"worker-{n}"] = writejobs_piece(f"worker-{n}", ["worker"], env, logs)
    for name in KILLABLE:
        pieces[name].start()
    for n, url in enumerate(api_urls, start=1):
        wait_until("/healthz", functools.partial(http_ok, f"{url}/healthz"), pieces[f"api-{n}"], 90)
    for n in (1, 2):
        piece = pieces[f"scheduler-{n}"]
        wait_until("a start", log_says(piece, "scheduler started"), piece, 90)
        piece = pieces[f"worker-{n}"]
        wait_until("ready", log_says(piece, "ready."), piece, 120)

    targets = [
        Target("natural key", tenant["nk_group"], "contacts", "email"),
        Target("no natural key", tenant["plain_group"], "companies", "name"),
    ]
    prefix = f"/v1/projects/{tenant['project']}/integrations/{tenant['integration']}/objects"
    started = time.monotonic()
    load = Load(
        api_urls=api_urls,
        write_paths={
            "natural key": f"{prefix}/contacts",
            "no natural key": f"{prefix}/companies",
        },
        targets=targets,
        api_key=tenant["key"],
        run_id=run.run_id,
        records=args.records,
        mix={"async": 0.4, "batch": 0.2, "auto": 0.4},
        max_delay_minutes=1,
        deadline_hours=1.0,
        retry_for_s=120.0,
        stop_at=started + args.seconds,
    )
    tally = Tally()
    run.tally = tally
    print(
        f"run {run.run_id}: fleet up (redis :{redis_port}, sandbox :{sandbox_port}, "
        f"apis {', '.join(api_urls)}); sending {args.records} records",
        flush=True,
    )
    clients = run_clients(load, tally, args.clients, args.seed)
    supervisor = Supervisor(pieces, args, started, run, redis_url)
    last_print = started
    while any(t.is_alive() for t in clients):
        supervisor.tick(tally.records_accepted() / max(1, args.records))
        if time.monotonic() - last_print >= 10:
            last_print = time.monotonic()
            print(
                f"  {last_print - started:5.0f} s: {tally.records_accepted()} records accepted, "
                f"{sum(p.kills for p in pieces.values())} kills, "
                f"{run.redis_restarts} Redis restarts",
                flush=True,
            )
        time.sleep(0.2)
    run.send_seconds = time.monotonic() - started
    supervisor.finish()
    print(
        f"sent in {run.send_seconds:.0f} s; draining (at most {args.drain_seconds:g} s)", flush=True
    )

    accepted = set(tally.accepted)
    run.drain_seconds, run.left = drain(
        database_url, accepted, args.drain_seconds, supervisor.watch
    )
    views: dict[str, dict[str, Any]] = {}
    for group in ("nk_installation", "plain_installation"):
        views |= fetch_views(
            api_urls[0], tenant["key"], tenant["project"], tenant["integration"], tenant[group]
        )
    possible, upserted = repeat_logs(database_url)
    stored = {t.object_name: sandbox_keys(sandbox_url, t.object_name, t.key_field) for t in targets}
    sandbox_stats = httpx.get(f"{sandbox_url}/_sandbox/stats", timeout=60).json()
    outcome = count(
        tally,
        targets,
        views,
        possible,
        upserted,
        stored,
        sandbox_stats,
        metric_possible_duplicates(api_urls[0]),
    )
    run.pieces = pieces
    print_report(
        run,
        outcome,
        targets,
        functools.partial(operation_logs, api_urls[0], tenant["key"], tenant["project"]),
    )


class Supervisor:
    """The kills, the Redis restarts, and the restarts of pieces that died on their own."""

    def __init__(
        self,
        pieces: dict[str, Piece],
        args: argparse.Namespace,
        started: float,
        run: Run,
        redis_url: str,
    ) -> None:
        self.pieces = pieces
        self.args = args
        self.started = started
        self.run = run
        self.redis_url = redis_url
        self.rng = random.Random(args.seed)
        self.next_kill = started + self._gap()
        self.down: dict[str, float] = {}  # piece -> when to start it again

    def _gap(self) -> float:
        return float(self.rng.uniform(0.5, 1.5) * self.args.kill_every)

    def tick(self, progress: float) -> None:
        now = time.monotonic()
        self.watch()
        if now >= self.next_kill:
            self.next_kill = now + self._gap()
            name = self.rng.choice([n for n in KILLABLE if n not in self.down])
            self.pieces[name].kill()
            self.run.kill_log.append(f"{now - self.started:6.1f} s  SIGKILL {name}")
            self.down[name] = now + self.args.restart_after
        elapsed = (now - self.started) / self.args.seconds
        due = self.run.redis_restarts + 1
        if (
            due <= self.args.redis_restarts
            and "redis" not in self.down
            and max(progress, elapsed) >= due / (self.args.redis_restarts + 1)
        ):
            self.restart_redis(now)

    def restart_redis(self, now: float) -> None:
        sig = signal.SIGKILL if self.run.redis_restarts % 2 == 0 else signal.SIGTERM
        self.pieces["redis"].kill(sig)
        self.run.redis_restarts += 1
        self.run.kill_log.append(f"{now - self.started:6.1f} s  {sig.name} redis")
        self.down["redis"] = now + self.args.redis_down

    def watch(self) -> None:
        """Start again what is due, and note (then restart) what died on its own."""
        now = time.monotonic()
        for name, piece in self.pieces.items():
            if name in self.down:
                if now >= self.down[name]:
                    del self.down[name]
                    piece.start()
            elif piece.exited_on_its_own(self.started):
                self.run.kill_log.append(f"{now - self.started:6.1f} s  {name} EXITED on its own")
                self.down[name] = now + self.args.restart_after

    def finish(self) -> None:
        """No more kills: make up missed Redis restarts, then have every piece up."""
        while self.run.redis_restarts < self.args.redis_restarts:
            self.run.late_redis_restarts += 1
            self.restart_redis(time.monotonic())
            self._until_all_up()
        self._until_all_up()

    def _until_all_up(self) -> None:
        while self.down:
            self.watch()
            time.sleep(0.1)
        deadline = time.monotonic() + 30
        while not redis_answers(self.redis_url) and time.monotonic() < deadline:
            time.sleep(0.1)


def fleet_env(
    args: argparse.Namespace,
    run_dir: Path,
    redis_url: str,
    database_url: str,
    run_id: str,
    sandbox_port: int,
) -> dict[str, str]:
    """Every piece's environment: this run's services and the short recovery timings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRITEJOBS_")}
    env |= {
        "PYTHONPATH": str(REPO_ROOT),
        "COLUMNS": "200",
        "WRITEJOBS_DATA_DIR": str(run_dir / "data"),
        "WRITEJOBS_REDIS_URL": redis_url,
        "WRITEJOBS_DATABASE_URL": database_url,
        "WRITEJOBS_REDIS_NAMESPACE": f"wjchaos-{run_id}",
        "WRITEJOBS_CELERY_QUEUE": f"chaos-{run_id}",
        "WRITEJOBS_SANDBOX_PORT": str(sandbox_port),
        "WRITEJOBS_WORKER_CONCURRENCY": "2",
        "WRITEJOBS_POLICY_TIME_SCALE": str(args.time_scale),
        "WRITEJOBS_RUNNING_LEASE_S": str(args.lease),
        "WRITEJOBS_STALLED_AFTER_S": str(args.stalled),
        "WRITEJOBS_UNSENT_GRACE_S": "2",
        "WRITEJOBS_ORPHAN_GRACE_S": "5",
        "WRITEJOBS_WATCHDOG_GRACE_S": "30",
        "WRITEJOBS_PROVIDER_TIMEOUT_S": "10",
        "WRITEJOBS_LOG_LEVEL": "INFO",
    }
    return env


def make_tenant(env: dict[str, str], run_id: str, sandbox_url: str) -> dict[str, str]:
    """A project, its key, one HubSpot integration and two installations, through
    `writejobs admin`: contacts with the natural key email, companies with none."""

    def admin(*argv: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "writejobs", "admin", *argv],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"writejobs admin {argv[0]}: {done.stdout}{done.stderr}")
        return done.stdout.strip().splitlines()[-1].strip()

    project = f"chaos-{run_id}"
    tenant = {
        "project": admin("create-project", project),
        "key": admin("create-api-key", project, "--label", "chaos"),
        "integration": admin("create-integration", project, "crm", "--provider", "hubspot"),
        "nk_group": f"nk-{run_id}",
        "plain_group": f"plain-{run_id}",
    }
    for group in ("nk", "plain"):
        tenant[f"{group}_installation"] = admin(
            "create-installation",
            project,
            "crm",
            tenant[f"{group}_group"],
            "--base-url",
            sandbox_url,
            "--token",
            "chaos-token",
        )
        # Far above what the run sends: the bench measures recovery, not pacing.
        admin(
            "set-rate-limit",
            project,
            "crm",
            tenant[f"{group}_group"],
            "--max",
            "100000",
            "--interval-ms",
            "1000",
        )
    admin("set-natural-key", project, "crm", tenant["nk_group"], "contacts", "email")
    return tenant


if __name__ == "__main__":
    main()
