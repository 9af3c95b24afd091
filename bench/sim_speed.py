"""Simulator speed: the 5-node nemesis run against real time and against the codec round trip it makes.

The run: 5 nodes, ``fsync=always``, crashes, partitions (halves, isolate), duplicated and delayed messages,
register workload (10 processes, 20 keys), 10 s of workload then the client timeout, heal, 500 ms of quiet
and the final reads: about 12.1 s of virtual time. With seed 1 the nemesis never draws a crash in those
10 s (its schedule is delays, partitions and duplicates); the report counts crashes. Every peer message the
simulator carries is encoded, decoded and compared with the original (kvstore/sim/network.py), as it
always was.

Figures, each the median of ``--runs`` runs of the scenario. What is timed as the simulator is the
simulation: cluster start to the recorded history (``chaos.run_sim.simulate``: workload, nemesis, heal, quiet,
convergence read, final reads). Judging the history (``chaos.run_sim.judge``: here the lost-write checker) is
timed separately and reported beside it, with the total: the checkers are not the simulator, their cost
grows with the history in their own way (bench/checker.py measures them), and a scenario may ask for
several or none. Until issue 12 the figure included the checker (about 10% of a run).

- times real time: virtual seconds of simulation per wall second (issue 12's target: at least 100x);
- simulated messages per wall second, and the codec reference measured in the same process: round trips
  (encode, decode, compare) of a typical peer message (a forwarded PUT) per second. ``sim/codec`` is the
  share of the codec's own speed the simulator keeps while doing everything else around each message;
- absolute: wall and CPU seconds per run, virtual ms, messages delivered, heap events, events per second;
- checking: wall and CPU seconds of the checkers per run, and the whole run (simulation + checking) in
  times real time.

The machine may be shared: CPU seconds (``time.process_time``) are reported beside wall seconds, with the
ratios they give, and the spread of the runs is shown. Simulator runs and codec timings alternate, so
that a burst of load weighs on both alike. Every run must give the same trace hash (determinism) and a valid history.
Exits 1 if not.

    python bench/sim_speed.py [--runs 5] [--duration-ms 10000] [--codec-messages 20000] [--seed 1] [--json]
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
from collections.abc import Sequence
from typing import Any

from chaos.nemesis import NemesisConfig
from chaos.run_sim import judge, sim_cluster_config, simulate
from chaos.scenario import CheckerSpec, ClusterSpec, Scenario, WorkloadSpec
from kvstore.codec import decode, encode
from kvstore.messages import Forward, Message, PutOp

FAULTS = ("crash", "partition-halves", "partition-isolate", "duplicate", "delay")
TARGET_TIMES_REAL_TIME = 100.0
# A codec timing shorter than this is repeated within its run and averaged: timer resolution and noise.
MIN_CODEC_TIMED_S = 0.1


def scenario(seed: int, duration_ms: int) -> Scenario:
    """The nemesis run of bench/checker.py before issue 12, unchanged, so figures compare across issues."""
    return Scenario(
        name="bench-sim",
        duration_ms=duration_ms,
        quiet_ms=500,
        seed=seed,
        cluster=ClusterSpec(nodes=5, fsync="always", partitions=16, request_timeout_ms=400),
        workload=WorkloadSpec(kind="register", concurrency=10, think_ms=10, client_timeout_ms=1500,
                              options={"keys": 20}),
        nemesis=NemesisConfig(faults=FAULTS, interval_ms=500),
        checkers=CheckerSpec(names=("lost-writes",), time_limit_s=60.0),
    )


def typical_message(run: Scenario) -> Message:
    """A forwarded write between two nodes, as most peer traffic in single-copy mode is."""
    nodes = sim_cluster_config(run).node_ids
    forward = Forward((1 << 62) + 12345, 4242, (1 << 62) + 67890, PutOp("register/r17", b"123456"))
    return Message(nodes[0], nodes[1], 7, forward)


def codec_round_trips(msg: Message, count: int) -> None:
    for _ in range(count):
        if decode(encode(msg)) != msg:
            raise AssertionError(f"{msg!r} changed crossing the codec")


def _codec_seconds_per_batch(msg: Message, count: int) -> tuple[float, float]:
    """Wall and CPU seconds of ``count`` round trips."""
    calls = 0
    wall_started, cpu_started = time.perf_counter(), time.process_time()
    elapsed_s = 0.0
    while calls == 0 or elapsed_s < MIN_CODEC_TIMED_S:
        codec_round_trips(msg, count)
        calls += 1
        elapsed_s = time.perf_counter() - wall_started
    return elapsed_s / calls, (time.process_time() - cpu_started) / calls


def measure(seed: int, runs: int, duration_ms: int, codec_messages: int) -> dict[str, Any]:
    run = scenario(seed, duration_ms)
    msg = typical_message(run)
    walls_s: list[float] = []
    cpus_s: list[float] = []
    check_walls_s: list[float] = []
    check_cpus_s: list[float] = []
    codec_walls_s: list[float] = []
    codec_cpus_s: list[float] = []
    hashes: set[str] = set()
    valid: list[bool | str] = []
    stats: dict[str, Any] = {}
    for _ in range(runs):
        gc.collect()
        wall_started, cpu_started = time.perf_counter(), time.process_time()
        simulated = simulate(run)
        wall_ended, cpu_ended = time.perf_counter(), time.process_time()
        result = judge(simulated)
        walls_s.append(wall_ended - wall_started)
        cpus_s.append(cpu_ended - cpu_started)
        check_walls_s.append(time.perf_counter() - wall_ended)
        check_cpus_s.append(time.process_time() - cpu_ended)
        hashes.add(result.stats["trace_hash"])
        valid.append(result.valid)
        stats = result.stats
        gc.collect()
        codec_wall_s, codec_cpu_s = _codec_seconds_per_batch(msg, codec_messages)
        codec_walls_s.append(codec_wall_s)
        codec_cpus_s.append(codec_cpu_s)
    wall_s, cpu_s = statistics.median(walls_s), statistics.median(cpus_s)
    check_wall_s, check_cpu_s = statistics.median(check_walls_s), statistics.median(check_cpus_s)
    total_wall_s = statistics.median(w + c for w, c in zip(walls_s, check_walls_s, strict=True))
    messages, virtual_ms, events = stats["messages_delivered"], stats["virtual_ms"], stats["events"]
    sim_msgs_per_s = messages / wall_s
    codec_per_s = codec_messages / statistics.median(codec_walls_s)
    codec_per_cpu_s = codec_messages / statistics.median(codec_cpus_s)
    return {
        "nodes": run.cluster.nodes,
        "faults": list(FAULTS),
        "runs": runs,
        "virtual_ms": virtual_ms,
        "ops": stats["ops"],
        "messages_delivered": messages,
        "events": events,
        "crashes": stats["crashes"],
        "wall_s": wall_s,
        "wall_s_min": min(walls_s),
        "wall_s_max": max(walls_s),
        "cpu_s": cpu_s,
        "times_real_time": virtual_ms / 1000 / wall_s,
        "times_real_time_cpu": virtual_ms / 1000 / cpu_s,
        "target_times_real_time": TARGET_TIMES_REAL_TIME,
        "check_wall_s": check_wall_s,
        "check_cpu_s": check_cpu_s,
        "checkers": sorted(result.checkers),
        "total_wall_s": total_wall_s,
        "times_real_time_with_checking": virtual_ms / 1000 / total_wall_s,
        "sim_msgs_per_s": sim_msgs_per_s,
        "events_per_s": events / wall_s,
        "codec_round_trips_per_s": codec_per_s,
        "sim_over_codec": sim_msgs_per_s / codec_per_s,
        "sim_over_codec_cpu": messages / cpu_s / codec_per_cpu_s,
        "trace_hash": sorted(hashes)[0],
        "deterministic": len(hashes) == 1,
        "valid": all(v is True for v in valid),
    }


def _rate(per_s: float) -> str:
    return f"{per_s / 1000:,.1f}k" if per_s >= 10_000 else f"{per_s:,.0f}"


def format_table(report: dict[str, Any]) -> str:
    s = report["simulator"]
    m = report["machine"]
    met = "met" if s["times_real_time"] >= s["target_times_real_time"] else "NOT met"
    return "\n".join([
        f"bench/sim_speed.py: median of {s['runs']} runs, {m['cpu_count']} cpus, Python {m['python']}",
        f"Simulator: {s['nodes']} nodes, {'+'.join(s['faults'])}, register workload, {s['virtual_ms']} virtual ms, "
        f"{s['ops']} ops, {s['messages_delivered']} messages, {s['events']} heap events, {s['crashes']} crashes",
        f"  wall {s['wall_s']:.3f} s (runs {s['wall_s_min']:.3f}..{s['wall_s_max']:.3f}), cpu {s['cpu_s']:.3f} s",
        f"  {s['times_real_time']:.1f}x real time ({s['times_real_time_cpu']:.1f}x by cpu time); "
        f"target {s['target_times_real_time']:.0f}x: {met}",
        f"  checking ({', '.join(s['checkers'])}), not in the figures above: wall {s['check_wall_s']:.3f} s, "
        f"cpu {s['check_cpu_s']:.3f} s; simulation + checking {s['times_real_time_with_checking']:.1f}x real time",
        f"  {_rate(s['sim_msgs_per_s'])} simulated messages/s vs codec {_rate(s['codec_round_trips_per_s'])} "
        f"round trips/s = {s['sim_over_codec']:.3f}x the codec ceiling ({s['sim_over_codec_cpu']:.3f}x by cpu time); "
        f"{_rate(s['events_per_s'])} events/s",
        f"  same trace every run: {s['deterministic']} ({s['trace_hash'][:16]}), valid: {s['valid']}",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs of the scenario; medians are reported")
    parser.add_argument("--duration-ms", type=int, default=10_000, help="virtual ms of workload (before the quiet)")
    parser.add_argument("--codec-messages", type=int, default=20_000, help="round trips per codec timing")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.duration_ms < 1 or args.codec_messages < 1:
        parser.error("--runs, --duration-ms and --codec-messages must be at least 1")
    started = time.perf_counter()
    simulator = measure(args.seed, args.runs, args.duration_ms, args.codec_messages)
    report = {
        "bench": "sim_speed",
        "seed": args.seed,
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "implementation": platform.python_implementation(), "platform": platform.platform()},
        "simulator": {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in simulator.items()},
        "total_s": round(time.perf_counter() - started, 2),
    }
    if not args.json:
        print(format_table(report))
        print()
    print(json.dumps(report))
    return 0 if simulator["deterministic"] and simulator["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
