"""`kvstore check`, `kvstore chaos run` and `kvstore sim`: the chaos layer's command-line entry points.

Exit codes, for the first two: 0 all valid; 1 any invalid; 2 bad input, or (with nothing invalid) any
unknown. For `kvstore chaos run` "valid" means as its scenario expects (``[checkers] expect``): a scenario
that shows an anomaly passes a seed when the checkers find that anomaly. `kvstore sim` exits 1 only for a
history found invalid under ``fsync = "always"``, or a broken run.

`kvstore chaos run SCENARIO --seeds A..B --no-report` is the sweep: one line per seed, then the counts
(valid, invalid, unknown; for an expected anomaly how many seeds showed it and the anomalies found in all),
then the replay command of every seed that did not go as expected.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from chaos import scenario as scenario_file
from chaos.checkers import counter, expected, linearizable, lost_writes, sets
from chaos.checkers.expected import Outcome
from chaos.history import HistoryError, load
from chaos.nemesis import NemesisConfig
from chaos.report import write_report
from chaos.scenario import ClusterSpec, Scenario, WorkloadSpec
from kvstore.config import FSYNC_POLICIES
from kvstore.sim.cluster import CRASH_KINDS
from kvstore.sim.events import SimulationError
from kvstore.storage.simulated import CrashKind

if TYPE_CHECKING:
    from chaos.run_sim import RunResult

CHECK_CHECKERS: tuple[str, ...] = ("linearizable", "lost-writes", "set", "counter")
EXIT_VALID, EXIT_INVALID, EXIT_UNKNOWN = 0, 1, 2


def exit_code(verdicts: list[Any], bad_input: bool = False) -> int:
    if bad_input:
        return EXIT_UNKNOWN
    if any(v is False for v in verdicts):
        return EXIT_INVALID
    if all(v is True for v in verdicts):
        return EXIT_VALID
    return EXIT_UNKNOWN


def verdict_label(verdict: object) -> str:
    if verdict == "skipped":
        return "SKIPPED"
    return "VALID" if verdict is True else "INVALID" if verdict is False else "UNKNOWN"


# ---------------------------------------------------------------- kvstore check


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("histories", nargs="+", metavar="HISTORY.jsonl", help="history files (JSON lines)")
    parser.add_argument("--checker", choices=CHECK_CHECKERS, default="linearizable",
                        help="what to check (default: linearizable)")
    parser.add_argument("--time-limit", type=float, default=60.0, metavar="SECONDS",
                        help="per file; past it the verdict is 'unknown' (default: 60)")


def check_file(path: str, checker: str, time_limit_s: float) -> dict[str, Any]:
    started = time.monotonic()
    history = load(path)
    if checker == "linearizable":
        out = linearizable.check(history, time_limit_s).to_json()
    elif checker == "lost-writes":
        out = lost_writes.check(history).to_json()
    elif checker == "set":
        out = sets.check(history).to_json()
    else:
        out = counter.check(history).to_json()
    out["time_s"] = round(time.monotonic() - started, 4)
    return {"file": path, **out}


def run_check(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    verdicts: list[Any] = []
    bad_input = False
    for path in args.histories:
        try:
            result = check_file(path, args.checker, args.time_limit)
        except (HistoryError, ValueError) as exc:
            bad_input = True
            print(json.dumps({"file": path, "valid": "unknown", "error": str(exc)}), file=out)
            print(f"kvstore check: {exc}", file=err)
            continue
        verdicts.append(result["valid"])
        print(json.dumps(result), file=out)
    return exit_code(verdicts, bad_input)


# ---------------------------------------------------------------- kvstore chaos run


def parse_seeds(text: str) -> list[int]:
    """``7`` or ``1..500`` (inclusive)."""
    start, sep, end = text.partition("..")
    try:
        first = int(start)
        last = int(end) if sep else first
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must look like 7 or 1..500, got {text!r}") from None
    if last < first:
        raise argparse.ArgumentTypeError(f"empty seed range {text!r}")
    if last - first >= 100_000:
        raise argparse.ArgumentTypeError("at most 100000 seeds in one sweep")
    return list(range(first, last + 1))


def add_chaos_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", metavar="SCENARIO.toml", help="scenario file (see scenarios/)")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, help="one seed (default: the scenario's)")
    seeds.add_argument("--seeds", type=parse_seeds, metavar="A..B", help="a sweep of seeds, inclusive")
    parser.add_argument("--real", action="store_true", help="run against a real local cluster, not the simulator")
    parser.add_argument("--out", default="reports", metavar="DIR", help="where reports go (default: reports/)")
    parser.add_argument("--no-report", action="store_true",
                        help="sweeps: write a report only for seeds that do not go as the scenario expects")


def _report_dir(out: str, name: str, driver: str, seed: int | None) -> Path:
    return Path(out) / name / (f"{driver}-seed-{seed}" if seed is not None else driver)


def run_chaos(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        scenario = scenario_file.load(args.scenario)
        if args.real:
            scenario_file.check_real_cluster(scenario, args.scenario)
    except scenario_file.ScenarioError as exc:
        print(f"kvstore chaos run: {exc}", file=err)
        return EXIT_UNKNOWN
    from chaos.run_sim import replay_command, run_in_sim

    seeds = args.seeds or [args.seed if args.seed is not None else scenario.seed]
    run: Callable[[int], RunResult]
    if args.real:
        from chaos.run_real import run_on_real_cluster

        print(f"{scenario.name}: a real {scenario.cluster.nodes}-node cluster on 127.0.0.1 per seed; the seed fixes "
              "the fault schedule and the workload, not the timing", file=out)

        def run(seed: int) -> RunResult:
            return run_on_real_cluster(scenario, seed, progress=lambda line: print(f"  {line}", file=out, flush=True))
    else:
        def run(seed: int) -> RunResult:
            return run_in_sim(scenario, seed)
    verdicts: list[Any] = []
    outcomes: list[Outcome] = []
    unexpected: list[str] = []
    started = time.monotonic()
    for seed in seeds:
        t0 = time.monotonic()
        result = run(seed)
        verdict, outcome = result.valid, result.outcome
        verdicts.append(verdict)
        outcomes.append(outcome)
        label = verdict_label(verdict).lower() if verdict is True else verdict_label(verdict)
        if outcome.expect != expected.VALID:
            label += f", {_as_expected(outcome.met)} ({outcome.expect}): {outcome.describe()}"
        report = ""
        if not args.no_report or outcome.met is not True:
            html = write_report(_report_dir(args.out, scenario.name, result.driver, seed), result.history,
                                result.periods, result.to_json())
            report = f"  report: {html}"
        print(f"seed {seed}: {label}  {result.stats['ops']} ops, {time.monotonic() - t0:.2f} s{report}", file=out,
              flush=True)
        if outcome.met is not True:
            bad = ", ".join(f"{name}={r.get('valid')}" for name, r in result.checkers.items())
            replay = replay_command(args.scenario, seed) + (" --real" if args.real else "")
            unexpected.append(f"seed={seed} {bad}; replay: {replay}")
            print(f"  {unexpected[-1]}", file=out, flush=True)
    print(sweep_summary(scenario.name, verdicts, outcomes, time.monotonic() - started), file=out)
    for line in unexpected:
        print(f"  {line}", file=out)
    return exit_code([o.met for o in outcomes])


def _as_expected(met: bool | str) -> str:
    return "as expected" if met is True else "NOT as expected" if met is False else "unknown"


def sweep_summary(name: str, verdicts: list[Any], outcomes: list[Outcome], elapsed_s: float) -> str:
    """The counts of a sweep: valid/invalid/unknown seeds and, for an expected anomaly, the seeds that showed
    it and the anomalies found in all of them; then how many seeds went otherwise than expected."""
    valid = sum(1 for v in verdicts if v is True)
    invalid = sum(1 for v in verdicts if v is False)
    line = (f"{name}: {len(verdicts)} seed(s) in {elapsed_s:.1f} s: {valid} valid, {invalid} invalid, "
            f"{len(verdicts) - valid - invalid} unknown")
    expect = outcomes[0].expect if outcomes else expected.VALID
    if expect != expected.VALID:
        shown = sum(1 for o in outcomes if o.met is True)
        totals = {kind: sum(o.anomalies[kind] for o in outcomes) for kind in outcomes[0].anomalies}
        found = ", ".join(f"{n} {kind}" for kind, n in totals.items())
        line += f"; expected {expect}: shown by {shown} of {len(outcomes)} seed(s) ({found} in all)"
    missed = sum(1 for o in outcomes if o.met is not True)
    return line + (f"; {missed} seed(s) not as expected:" if missed else "; every seed as expected")


# ---------------------------------------------------------------- kvstore sim

# Virtual time the workload's ops must finish in: time is virtual, so getting stuck is a bug, not a slow machine.
SIM_RUN_LIMIT_MS = 3_600_000
SIM_KEYS = 16


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, required=True, help="the seed that decides the whole run")
    parser.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    parser.add_argument("--ops", type=int, default=1000, help="client operations to run (default 1000)")
    parser.add_argument("--crashes", action="store_true", help="crash and restart random nodes during the run")
    parser.add_argument("--fsync", choices=FSYNC_POLICIES, default="always", help="storage fsync policy")
    parser.add_argument("--crash-kind", choices=CRASH_KINDS, default="process",
                        help="with --crashes: a process crash (the OS keeps what was written out) or a power loss "
                             "(only what was fsynced survives); default process")


def sim_scenario(
    nodes: int, ops: int, crashes: bool = False, fsync: str = "always", crash_kind: CrashKind = "process"
) -> Scenario:
    """What `kvstore sim` runs: a register workload of ``ops`` ops, with a crash every 600 ms if ``crashes``."""
    return Scenario(
        name="kvstore-sim",
        duration_ms=SIM_RUN_LIMIT_MS,
        quiet_ms=500,
        cluster=ClusterSpec(nodes=nodes, fsync=fsync),
        workload=WorkloadSpec(concurrency=5, think_ms=10, options={"keys": SIM_KEYS}, ops=ops),
        nemesis=NemesisConfig(
            faults=("crash",) if crashes else (), interval_ms=300, start_after_ms=100, crash_kind=crash_kind
        ),
    )


def sim_replay_command(
    seed: int, nodes: int, ops: int, crashes: bool = False, fsync: str = "always", crash_kind: str = "process"
) -> str:
    command = f"kvstore sim --seed {seed} --nodes {nodes} --ops {ops}"
    if crashes:
        command += " --crashes"
        if crash_kind != "process":
            command += f" --crash-kind {crash_kind}"
    if fsync != "always":
        command += f" --fsync {fsync}"
    return command


def format_sim_summary(result: RunResult) -> str:
    """The run in a few lines, the same for the same seed and options, ending with ``trace-hash: <hex>``."""
    s, stats = result.scenario, result.stats
    counts: dict[str, dict[str, int]] = {}
    for key, n in stats["outcomes"].items():
        f, kind = key.split(":")
        counts.setdefault(f, {})[kind] = n
    lines = [
        f"kvstore sim: seed={result.seed} nodes={s.cluster.nodes} ops={s.workload.ops} fsync={s.cluster.fsync} "
        f"crashes={s.nemesis.crash_kind if s.nemesis.faults else 'no'}",
        f"virtual time: {stats['virtual_ms']} ms; events: {stats['events']}",
        f"messages delivered: {stats['messages_delivered']}; syncs: {stats['syncs']}; "
        f"node crashes: {stats['crashes']}",
        f"ops: {stats['ops']}, the last {stats['ops'] - s.workload.ops} of them the final reads of every key",
        f"{'op':<6} {'ok':>6} {'fail':>6} {'info':>6}",
    ]
    lines.extend(f"{f:<6} {c.get('ok', 0):>6} {c.get('fail', 0):>6} {c.get('info', 0):>6}"
                 for f, c in sorted(counts.items()))
    for name, verdict in result.checkers.items():
        line = f"{name}: {verdict_label(verdict.get('valid')).lower()}"
        if name == "lost-writes":
            line += f", {verdict['lost_count']} of {verdict['acknowledged_writes']} acknowledged writes lost"
        lines.append(line)
        lines.extend(f"  {lost['key']}: acknowledged {lost['write']['f']} {lost['write']['value']} lost; "
                     f"{_seen_by(lost['by'])} saw {lost['seen_instead']}" for lost in verdict.get("lost", [])[:10])
    lines.append(f"trace-hash: {stats['trace_hash']}")
    return "\n".join(lines)


def _seen_by(by: str | dict[str, Any]) -> str:
    return f"the {by}" if isinstance(by, str) else f"a read at {by['time']} ms"


def run_sim_command(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`kvstore sim`: one seeded run through the chaos simulator runner, judged by the register checkers.

    ``out`` and ``err`` default to the streams of the moment (a test may have swapped them).
    """
    from chaos.run_sim import run_in_sim

    out, err = out or sys.stdout, err or sys.stderr
    replay = sim_replay_command(args.seed, args.nodes, args.ops, args.crashes, args.fsync, args.crash_kind)
    try:
        scenario = sim_scenario(args.nodes, args.ops, args.crashes, args.fsync, args.crash_kind)
        result = run_in_sim(scenario, args.seed)
    except SimulationError as exc:
        print(f"kvstore sim: {exc}\nseed={args.seed}; replay with: {replay}", file=err)
        return EXIT_INVALID
    print(format_sim_summary(result), file=out)
    if result.valid is False and args.fsync == "always":
        print(f"seed={args.seed}: the history is not valid under fsync=always; replay with: {replay}", file=err)
        return EXIT_INVALID
    return EXIT_VALID
