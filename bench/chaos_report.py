"""The chaos bench's printout: the figures next to the targets, and the detail behind them."""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos_clients import Tally, Target
from chaos_count import Outcome
from chaos_fleet import Piece


@dataclass
class Run:
    """What the run did, beyond the clients' tally: its settings, kills and timings."""

    args: argparse.Namespace
    run_id: str
    run_dir: Path
    settings: dict[str, str] = field(default_factory=dict)
    tally: Tally = field(default_factory=Tally)
    pieces: dict[str, Piece] = field(default_factory=dict)
    kill_log: list[str] = field(default_factory=list)
    redis_restarts: int = 0
    late_redis_restarts: int = 0
    send_seconds: float = 0.0
    drain_seconds: float = 0.0
    left: Counter[str] = field(default_factory=Counter)


def print_report(
    run: Run, outcome: Outcome, targets: list[Target], logs_of: Callable[[str], list[str]]
) -> None:
    tally = run.tally
    natural, plain = (outcome.per_target[t.label] for t in targets)
    five_xx = sum(tally.five_xx.values())
    own_exits = [e for p in run.pieces.values() for e in p.own_exits]
    accepted_records = tally.accepted_records
    lost = natural.lost + plain.lost

    print()
    print(f"== chaos run {run.run_id}: settings")
    for name, value in sorted(run.settings.items()):
        if "URL" not in name:
            print(f"  {name}={value}")
    print(
        f"  redis appendfsync={run.args.appendfsync}; clients={run.args.clients}; "
        f"kill every ~{run.args.kill_every:g} s, down {run.args.restart_after:g} s"
    )

    print()
    print("== load")
    rate = accepted_records / run.send_seconds if run.send_seconds else 0.0
    print(
        f"  requests {tally.requests} ({tally.sends} sends), records planned "
        f"{tally.records_planned}, accepted {accepted_records} in {run.send_seconds:.0f} s "
        f"({rate:.0f} records/s)"
    )
    print(
        f"  operations accepted {len(tally.accepted)}; answers replayed (Idempotent-Replayed) "
        f"{tally.replayed}; requests given up unanswered {len(tally.gave_up)} "
        f"({sum(len(k) for _m, k in tally.gave_up)} records)"
    )
    kills = Counter({n: p.kills for n, p in run.pieces.items() if p.kills})
    print(
        f"  kills by piece: {dict(kills)}; Redis restarts {run.redis_restarts}"
        + (f" ({run.late_redis_restarts} after the load ended)" if run.late_redis_restarts else "")
    )
    print(f"  drained in {run.drain_seconds:.0f} s; operations by state {dict(outcome.states)}")
    if outcome.unknown_ops:
        print(
            f"  operations in the store no client heard of, by state: {dict(outcome.unknown_ops)}"
        )

    print()
    print("== 5xx and unanswered sends, by API and mode")
    _by_api_mode("5xx", _sum_status(tally.five_xx))
    if tally.five_xx:
        print(f"     by status: {dict(_by_detail(tally.five_xx))}")
    _by_api_mode("no answer", _sum_status(tally.no_answer))
    if tally.no_answer:
        print(f"     by error: {dict(_by_detail(tally.no_answer))}")
    for sample in tally.five_xx_samples:
        print(f"     5xx e.g. {sample}")
    if tally.other:
        print(f"  other answers (mode, status): {dict(tally.other)}")
        for sample in tally.other_samples:
            print(f"     {sample}")

    print()
    print("== records, by installation")
    header = f"  {'':<36}{'natural key':>14}{'no natural key':>16}"
    print(header)
    for label, attr in (
        ("accepted", "records"),
        ("written (in the sandbox)", "written"),
        ("reported failed", "reported_failed"),
        ("written though reported failed", "written_but_reported_failed"),
        ("lost", "lost"),
        ("  of which in stuck operations", "lost_in_stuck"),
        ("written more than once", "duplicated_records"),
        ("  extra copies", "extra_copies"),
        ("  not reported possible duplicate", "duplicated_unreported"),
    ):
        print(f"  {label:<36}{getattr(natural, attr):>14}{getattr(plain, attr):>16}")
    print(
        f"  sandbox: stored by object {outcome.stored_by_object}; creates refused as "
        f"existing (contacts' unique email) {outcome.duplicate_creates}; records written "
        f"that no accepted request named {outcome.written_not_accepted}"
    )
    print(
        f"  repeats: operations logged 'possible duplicate' {outcome.possible_ops} "
        f"({outcome.possible_records} records), metric "
        f"writejobs_possible_duplicates_total {_figure(outcome.metric)}; operations logged "
        f"'repeat written as an upsert' {outcome.upsert_ops}"
    )

    print()
    print("== anomalies (operations concerned; the logs of the first two)")
    for kind, ops in outcome.anomalies.items():
        print(f"  {kind}: {len(ops)} operation(s)")
        for op_id, description in list(ops.items())[:2]:
            print(f"    {op_id} ({description})")
            for line in logs_of(op_id):
                print(f"      {line}")

    print()
    print("== pieces that exited on their own")
    if not own_exits:
        print("  none")
    for exit_seen in own_exits:
        print(f"  {exit_seen.piece} at {exit_seen.at_s:.1f} s, returncode {exit_seen.returncode}")
        print("    " + exit_seen.log_tail[-800:].replace("\n", "\n    "))

    print()
    print("== timeline")
    for line in run.kill_log:
        print(f"  {line}")

    natural_duplicates = natural.extra_copies + outcome.duplicate_creates
    rows: list[tuple[str, Any, str, bool | None]] = [
        (
            "records accepted (answered 200)",
            accepted_records,
            f">= {run.args.records}",
            accepted_records >= run.args.records,
        ),
        (
            "Redis restarts during the load",
            run.redis_restarts - run.late_redis_restarts,
            f">= {run.args.redis_restarts}",
            run.redis_restarts - run.late_redis_restarts >= run.args.redis_restarts,
        ),
        ("stuck operations", len(outcome.stuck), "0", not outcome.stuck),
        ("lost records", lost, "0", lost == 0),
        ("5xx answers to async writes", five_xx, "0", five_xx == 0),
        ("duplicates, no natural key (extra copies)", plain.extra_copies, "reported", None),
        (
            "  duplicated records not reported",
            plain.duplicated_unreported + natural.duplicated_unreported,
            "0",
            plain.duplicated_unreported + natural.duplicated_unreported == 0,
        ),
        ("  possible duplicates reported (records)", outcome.possible_records, "", None),
        (
            "duplicates, natural key (copies + 409s)",
            natural_duplicates,
            "0",
            natural_duplicates == 0,
        ),
        ("pieces that exited on their own", len(own_exits), "0", len(own_exits) == 0),
        ("records reported failed", natural.reported_failed + plain.reported_failed, "", None),
        ("  operations expired", outcome.states.get("expired", 0), "", None),
        (
            "  records written though reported failed",
            natural.written_but_reported_failed + plain.written_but_reported_failed,
            "",
            None,
        ),
    ]
    print()
    print("== figures and targets")
    print(f"  {'figure':<44}{'value':>10}  {'target':<10}verdict")
    for name, value, target, ok in rows:
        verdict = "" if ok is None else ("PASS" if ok else "FAIL")
        print(f"  {name:<44}{value:>10}  {target:<10}{verdict}")
    print(flush=True)


def _sum_status(counter: Counter[tuple[str, str, Any]]) -> Counter[tuple[str, str]]:
    summed: Counter[tuple[str, str]] = Counter()
    for (api, mode, _detail), n in counter.items():
        summed[(api, mode)] += n
    return summed


def _by_detail(counter: Counter[tuple[str, str, Any]]) -> Counter[Any]:
    summed: Counter[Any] = Counter()
    for (_api, _mode, detail), n in counter.items():
        summed[detail] += n
    return summed


def _by_api_mode(what: str, counts: dict[tuple[str, str], int]) -> None:
    modes = ("async", "batch", "auto")
    apis = sorted({a for a, _m in counts} | {"api-1", "api-2"})
    print(f"  {what:<12}" + "".join(f"{m:>8}" for m in modes) + f"{'total':>8}")
    for api in apis:
        row = [counts.get((api, m), 0) for m in modes]
        print(f"  {api:<12}" + "".join(f"{n:>8}" for n in row) + f"{sum(row):>8}")


def _figure(value: float | None) -> str:
    return "unavailable" if value is None else f"{value:g}"
