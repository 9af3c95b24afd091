"""Checker throughput, each figure against a reference measured in the same run.

Register, set and counter histories of about 1k, 10k and 100k ops come from the simulator (5 nodes,
fsync=always, crashes and partitions; fixed seeds, so every run checks the same histories). Each checker's
time is set against pairing the same history (``History.ops()``), the pass every checker starts with:
``check/pairing`` is how many times the cost of just reading the history the check takes. The knossos
acceptance set (120 histories) is checked as a whole against the time to load it, and each verdict is
compared with ``expected.tsv``.

The simulator's own speed (times real time, messages/s against the codec round trip) is bench/sim_speed.py.

Times are medians of ``--runs`` runs; a call shorter than 0.1 s (0.02 s with ``--quick``) is repeated within
a run and averaged. Exits 1 if a generated history is not valid or a knossos verdict differs from the
expected one, since a checker that stops at the first failure has not measured the whole history.

    python bench/checker.py [--runs 3] [--quick] [--json] [--seed 1]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from report_format import rounded

from chaos import history as history_io
from chaos.checkers import counter, linearizable, sets
from chaos.history import History
from chaos.nemesis import NemesisConfig
from chaos.run_sim import run_in_sim
from chaos.scenario import CheckerSpec, ClusterSpec, Scenario, WorkloadSpec

KNOSSOS_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "histories" / "knossos"
CHECK_TIME_LIMIT_S = 60.0
# Ops one client process completes per virtual ms under these faults, on the low side (measured: 0.035 to
# 0.055), so that a run makes at least the target number of ops; the history is then cut to the target.
OPS_PER_PROCESS_MS = 0.03
HISTORY_FAULTS = ("crash", "partition-halves", "partition-isolate", "partition-majority-ring")


@dataclass(frozen=True)
class HistorySpec:
    """One generated history: a workload at a target size, and the checker that reads it."""

    checker: str
    workload: str
    target_ops: int
    concurrency: int
    options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Budget:
    runs: int
    min_timed_s: float  # a timed call shorter than this is repeated within one run
    specs: tuple[HistorySpec, ...]


def _register(target_ops: int, concurrency: int) -> HistorySpec:
    # About 200 ops per key, whatever the size: the per-key search stays the same size, the keys grow.
    return HistorySpec("linearizable", "register", target_ops, concurrency, (("keys", max(1, target_ops // 200)),))


# Set reads are whole-set scans, which make set histories the slowest to simulate: few of them, and no 100k.
_SET_OPTIONS = (("read_fraction", 0.02),)
FULL_SPECS = (
    _register(1_000, 5),
    _register(10_000, 10),
    _register(100_000, 20),
    HistorySpec("set", "set", 1_000, 5, _SET_OPTIONS),
    HistorySpec("set", "set", 10_000, 10, _SET_OPTIONS),
    HistorySpec("counter", "counter", 1_000, 5),
    HistorySpec("counter", "counter", 10_000, 10),
)
QUICK_SPECS = (
    _register(1_000, 5),
    _register(10_000, 10),
    HistorySpec("set", "set", 1_000, 5, _SET_OPTIONS),
    HistorySpec("counter", "counter", 1_000, 5),
)


# ---------------------------------------------------------------- timing


def _median_time_s(fn: Callable[[], object], runs: int, min_timed_s: float) -> float:
    """Median over ``runs`` of the seconds one call of ``fn`` takes (short calls repeated and averaged)."""
    samples = []
    for _ in range(runs):
        gc.collect()
        calls = 0
        started = time.perf_counter()
        elapsed = 0.0
        while calls == 0 or elapsed < min_timed_s:
            fn()
            calls += 1
            elapsed = time.perf_counter() - started
        samples.append(elapsed / calls)
    return statistics.median(samples)


def _per_s(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


# ---------------------------------------------------------------- histories


def _scenario(name: str, seed: int, duration_ms: int, workload: WorkloadSpec, faults: tuple[str, ...],
              interval_ms: int, checkers: tuple[str, ...]) -> Scenario:
    return Scenario(
        name=name,
        duration_ms=duration_ms,
        quiet_ms=500,
        seed=seed,
        cluster=ClusterSpec(nodes=5, fsync="always", partitions=16, request_timeout_ms=400),
        workload=workload,
        nemesis=NemesisConfig(faults=faults, interval_ms=interval_ms),
        checkers=CheckerSpec(names=checkers, time_limit_s=CHECK_TIME_LIMIT_S),
    )


def first_ops(history: History, count: int) -> History:
    """The history up to the invocation of its ``count+1``-th op. Ops still open there are of unknown outcome,
    which keeps a valid history valid (linearizability, like the set and counter properties, is prefix-closed)."""
    invoked = 0
    for event in history.events:
        if event.type == "invoke":
            if invoked == count:
                return History(history.events[: event.index], history.source)
            invoked += 1
    return history


def generate(spec: HistorySpec, seed: int) -> History:
    duration_ms = int(spec.target_ops / (spec.concurrency * OPS_PER_PROCESS_MS))
    workload = WorkloadSpec(kind=spec.workload, concurrency=spec.concurrency, think_ms=10, client_timeout_ms=1500,
                            options=dict(spec.options))
    # The run's own check is the cheapest the workload allows: the benchmark times the real one itself.
    own_checker = "lost-writes" if spec.workload == "register" else spec.checker
    scenario = _scenario(f"bench-{spec.workload}-{spec.target_ops}", seed, duration_ms, workload, HISTORY_FAULTS,
                         600, (own_checker,))
    return first_ops(run_in_sim(scenario).history, spec.target_ops)


def _op_count(history: History) -> int:
    return sum(1 for e in history.events if e.type == "invoke")


def _run_checker(name: str, history: History) -> bool | str:
    if name == "linearizable":
        return linearizable.check(history, CHECK_TIME_LIMIT_S).valid
    if name == "set":
        return sets.check(history).valid
    if name == "counter":
        return counter.check(history).valid
    raise ValueError(f"no benchmark for checker {name!r}")


def bench_checker(spec: HistorySpec, seed: int, budget: Budget) -> dict[str, Any]:
    generated_at = time.perf_counter()
    history = generate(spec, seed)
    generate_s = time.perf_counter() - generated_at
    ops = _op_count(history)
    valid = _run_checker(spec.checker, history)
    pairing_s = _median_time_s(history.ops, budget.runs, budget.min_timed_s)
    check_s = _median_time_s(lambda: _run_checker(spec.checker, history), budget.runs, budget.min_timed_s)
    return {
        "checker": spec.checker,
        "workload": spec.workload,
        "ops": ops,
        "events": len(history),
        "concurrency": spec.concurrency,
        "options": dict(spec.options),
        "valid": valid,
        "generate_s": round(generate_s, 3),
        "check_s": check_s,
        "check_ops_per_s": _per_s(ops, check_s),
        "pairing_s": pairing_s,
        "pairing_ops_per_s": _per_s(ops, pairing_s),
        "check_over_pairing": check_s / pairing_s,
    }


# ---------------------------------------------------------------- knossos acceptance


def _expected_verdicts(directory: Path) -> dict[str, bool]:
    verdicts = {}
    for line in (directory / "expected.tsv").read_text().splitlines()[1:]:
        if line.strip():
            name, verdict = line.split("\t")
            verdicts[name] = verdict.strip() == "true"
    return verdicts


def bench_knossos(directory: Path, budget: Budget) -> dict[str, Any]:
    if not (directory / "expected.tsv").is_file():
        return {"skipped": f"no histories at {directory}"}
    expected = _expected_verdicts(directory)
    files = sorted(expected)

    def load_all() -> list[History]:
        return [history_io.load(directory / name) for name in files]

    histories = load_all()
    verdicts = [linearizable.check(h, CHECK_TIME_LIMIT_S).valid for h in histories]
    matching = sum(1 for name, got in zip(files, verdicts, strict=True) if got is expected[name])
    load_s = _median_time_s(load_all, budget.runs, budget.min_timed_s)
    check_s = _median_time_s(lambda: [linearizable.check(h, CHECK_TIME_LIMIT_S) for h in histories],
                             budget.runs, budget.min_timed_s)
    return {
        "histories": len(files),
        "ops": sum(_op_count(h) for h in histories),
        "matching_expected": matching,
        "mismatched": [name for name, got in zip(files, verdicts, strict=True) if got is not expected[name]],
        "check_s": check_s,
        "load_s": load_s,
        "check_over_load": check_s / load_s,
    }


# ---------------------------------------------------------------- output


def _rate(per_s: float) -> str:
    return f"{per_s / 1000:,.0f}k" if per_s >= 10_000 else f"{per_s:,.0f}"


def format_table(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"bench/checker.py: median of {report['runs']} runs, {m['cpu_count']} cpus, Python {m['python']}"
        f"{' (quick)' if report['quick'] else ''}",
        "",
        "Checker throughput (reference: pairing the same history, History.ops())",
        f"{'checker':<13}{'workload':<10}{'ops':>8}{'valid':>7}{'check s':>10}{'ops/s':>9}"
        f"{'pairing s':>11}{'ops/s':>9}{'check/pairing':>15}",
    ]
    for r in report["checkers"]:
        lines.append(
            f"{r['checker']:<13}{r['workload']:<10}{r['ops']:>8}{r['valid']!s:>7}{r['check_s']:>10.4f}"
            f"{_rate(r['check_ops_per_s']):>9}{r['pairing_s']:>11.4f}{_rate(r['pairing_ops_per_s']):>9}"
            f"{r['check_over_pairing']:>14.1f}x"
        )
    k = report["knossos"]
    lines += ["", "Knossos acceptance (reference: loading the histories, chaos.history.load)"]
    if "skipped" in k:
        lines.append(f"  skipped: {k['skipped']}")
    else:
        lines.append(
            f"  {k['histories']} histories, {k['ops']} ops: check {k['check_s']:.3f} s, load {k['load_s']:.3f} s, "
            f"check/load {k['check_over_load']:.2f}x; verdicts as expected: {k['matching_expected']}/{k['histories']}"
        )
        if k["mismatched"]:
            lines.append(f"  MISMATCHED: {', '.join(k['mismatched'])}")
    if not report["ok"]:
        lines += ["", "NOT OK: a generated history was not valid, or a knossos verdict differs from expected.tsv"]
    return "\n".join(lines)


def _budget(args: argparse.Namespace) -> Budget:
    if args.quick:
        return Budget(args.runs, 0.02, QUICK_SPECS)
    return Budget(args.runs, 0.1, FULL_SPECS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per figure; the median is reported")
    parser.add_argument("--quick", action="store_true", help="smaller histories")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--seed", type=int, default=1, help="seed of every generated history")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    budget = _budget(args)
    started = time.perf_counter()
    checkers = [bench_checker(spec, args.seed, budget) for spec in budget.specs]
    knossos = bench_knossos(KNOSSOS_DIR, budget)
    ok = all(r["valid"] is True for r in checkers) and not knossos.get("mismatched")
    report = rounded({
        "bench": "checker",
        "runs": args.runs,
        "quick": args.quick,
        "seed": args.seed,
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "implementation": platform.python_implementation(), "platform": platform.platform()},
        "checkers": checkers,
        "knossos": knossos,
        "ok": ok,
        "total_s": time.perf_counter() - started,
    })
    if not args.json:
        print(format_table(report))
        print()
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
