"""`kvstore check` and `kvstore chaos run`: the chaos layer's command-line entry points.

Exit codes, for both: 0 all valid; 1 any invalid; 2 bad input, or (with nothing invalid) any unknown.
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
from chaos.checkers import counter, linearizable, lost_writes, sets
from chaos.history import HistoryError, load
from chaos.report import write_report

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
                        help="sweeps: write a report only for seeds that are not valid")


def _report_dir(out: str, name: str, driver: str, seed: int | None) -> Path:
    return Path(out) / name / (f"{driver}-seed-{seed}" if seed is not None else driver)


def run_chaos(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        scenario = scenario_file.load(args.scenario)
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
    started = time.monotonic()
    for seed in seeds:
        t0 = time.monotonic()
        result = run(seed)
        verdict = result.valid
        verdicts.append(verdict)
        label = verdict_label(verdict).lower() if verdict is True else verdict_label(verdict)
        report = ""
        if not args.no_report or verdict is not True:
            html = write_report(_report_dir(args.out, scenario.name, result.driver, seed), result.history,
                                result.periods, result.to_json())
            report = f"  report: {html}"
        print(f"seed {seed}: {label}  {result.stats['ops']} ops, {time.monotonic() - t0:.2f} s{report}", file=out,
              flush=True)
        if verdict is not True:
            bad = ", ".join(f"{name}={r.get('valid')}" for name, r in result.checkers.items())
            replay = replay_command(args.scenario, seed) + (" --real" if args.real else "")
            print(f"  seed={seed} {bad}; replay: {replay}", file=out, flush=True)
    valid = sum(1 for v in verdicts if v is True)
    invalid = sum(1 for v in verdicts if v is False)
    print(f"{scenario.name}: {len(seeds)} seed(s) in {time.monotonic() - started:.1f} s: {valid} valid, "
          f"{invalid} invalid, {len(seeds) - valid - invalid} unknown", file=out)
    return exit_code(verdicts)
