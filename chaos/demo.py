"""The chaos half of `kvstore demo`: one scenario, judged by the checkers, three ways.

1. In the simulator with ``fsync = "always"``: crashes, partitions and duplicated messages, and the
   history must be linearizable with no acknowledged write lost.
2. The same run with ``fsync = "never"``: crashes now throw away acknowledged writes, and the checkers
   must say so (this is what shows the checkers catch real faults, not only pass).
3. The ``always`` scenario against a real 3-node cluster on 127.0.0.1 (SIGKILLs, real sockets).

The scenario is embedded, so the demo needs no files; each run writes a report folder.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from chaos.report import write_report
from chaos.run_real import run_on_real_cluster
from chaos.run_sim import RunResult, run_in_sim
from chaos.scenario import Scenario, from_dict

DEMO_SCENARIO = {
    "name": "demo-register",
    "description": "register workload on a single-copy 3-node cluster under crashes, partitions, duplicates",
    "duration_ms": 5000,
    "quiet_ms": 500,
    "cluster": {"nodes": 3, "fsync": "always", "partitions": 16, "request_timeout_ms": 500},
    "workload": {"kind": "register", "concurrency": 6, "think_ms": 10, "client_timeout_ms": 2000,
                 "options": {"keys": 4}},
    "nemesis": {"faults": ["crash", "partition-halves", "duplicate"], "interval_ms": 600},
    "checkers": {"names": ["linearizable", "lost-writes"]},
}
DEMO_SEED = 2


def demo_scenario(fsync: str) -> Scenario:
    scenario = from_dict(DEMO_SCENARIO, "demo")
    return replace(scenario, name=f"demo-register-{fsync}", cluster=replace(scenario.cluster, fsync=fsync))


def _summary(result: RunResult) -> str:
    lost = result.checkers.get("lost-writes", {})
    parts = [f"{name}={'valid' if r.get('valid') is True else r.get('valid')}" for name, r in result.checkers.items()]
    if lost.get("lost_count"):
        parts.append(f"{lost['lost_count']} of {lost['acknowledged_writes']} acknowledged writes lost")
    return f"{result.stats['ops']} ops, {len(result.periods)} faults; " + ", ".join(parts)


def run_chaos_demo(out: TextIO = sys.stdout, reports: Path = Path("reports") / "demo") -> bool:
    def say(line: str) -> None:
        print(line, file=out, flush=True)

    say("chaos: one register scenario (crashes, partitions, duplicated messages), judged by the checkers")
    runs: list[tuple[str, RunResult, bool]] = []
    started = time.monotonic()
    always = run_in_sim(demo_scenario("always"), DEMO_SEED)
    runs.append(("simulator, fsync=always: expect VALID", always, always.valid is True))
    never = run_in_sim(demo_scenario("never"), DEMO_SEED)
    runs.append(("simulator, fsync=never:  expect INVALID", never, never.valid is False))
    say(f"  simulated both in {time.monotonic() - started:.1f} s (seed {DEMO_SEED}); now a real 3-node cluster")
    real = run_on_real_cluster(demo_scenario("always"), DEMO_SEED)
    runs.append(("real cluster, fsync=always: expect VALID", real, real.valid is True))
    passed = True
    for label, result, as_expected in runs:
        folder = reports / f"{result.scenario.name}-{result.driver}"
        html = write_report(folder, result.history, result.periods, result.to_json())
        say(f"{'PASS' if as_expected else 'FAIL'}  {label}: {_summary(result)}")
        say(f"      report: {html}")
        passed = passed and as_expected
    return passed
