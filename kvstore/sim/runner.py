"""``kvstore sim``: one seeded simulation run, from the seed to a summary ending in the trace hash.

The run builds a local cluster config, starts a random client workload (and, with ``crashes``, a
nemesis that crashes and restarts one node at a time), waits for every operation to finish, restarts
any node still down, reads every key back and checks that no acknowledged write was lost. The same
arguments always give the same summary, trace hash included; a failure names the seed and the command
that replays it.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvstore.config import FSYNC_POLICIES, ClusterConfig, FsyncPolicy, StorageConfig, local_cluster
from kvstore.effects import FaultPolicy
from kvstore.messages import Failure, Found, GetOp
from kvstore.sim.cluster import SimCluster, SimStats
from kvstore.sim.durability_check import lost_writes, write_attempts
from kvstore.sim.events import SimulationError
from kvstore.sim.nemesis import CrashNemesis
from kvstore.sim.workload import OP_WEIGHTS, OpRecord, RandomWorkload, op_kind
from partitioning.partition_map import PartitionMap

# Virtual time a run may take before it counts as stuck (a bug, not a slow machine: time is virtual).
RUN_LIMIT_MS = 3_600_000


@dataclass(frozen=True)
class SimSummary:
    seed: int
    nodes: int
    ops: int
    fsync: str
    crashes: bool
    # Operation kind -> outcome ("ok" or a failure code) -> count.
    outcomes: dict[str, dict[str, int]]
    stats: SimStats
    virtual_ms: int
    acknowledged_writes: int
    lost_writes: tuple[str, ...]
    trace_hash: str


@dataclass
class SimRun:
    """A finished run with everything a test may want to look at."""

    summary: SimSummary
    cluster: SimCluster
    history: list[OpRecord] = field(default_factory=list)
    final: dict[str, Found | None] = field(default_factory=dict)


def replay_command(seed: int, nodes: int, ops: int, crashes: bool = False, fsync: str = "always") -> str:
    command = f"kvstore sim --seed {seed} --nodes {nodes} --ops {ops}"
    if crashes:
        command += " --crashes"
    if fsync != "always":
        command += f" --fsync {fsync}"
    return command


def simulate(
    seed: int,
    nodes: int,
    ops: int,
    *,
    crashes: bool = False,
    fsync: FsyncPolicy = "always",
    clients: int = 5,
    keys: int = 16,
    fault_policy: FaultPolicy | None = None,
) -> SimRun:
    replay = replay_command(seed, nodes, ops, crashes, fsync)
    try:
        return _simulate(seed, nodes, ops, crashes, fsync, clients, keys, fault_policy)
    except SimulationError as exc:
        raise SimulationError(f"{exc}\nseed={seed}; replay with: {replay}") from exc


def run_sim(seed: int, nodes: int, ops: int, *, crashes: bool = False, fsync: FsyncPolicy = "always") -> SimSummary:
    return simulate(seed, nodes, ops, crashes=crashes, fsync=fsync).summary


def sim_config(nodes: int, fsync: FsyncPolicy) -> ClusterConfig:
    return local_cluster(nodes, storage=StorageConfig(engine="memory", fsync=fsync))


def _simulate(
    seed: int,
    nodes: int,
    ops: int,
    crashes: bool,
    fsync: FsyncPolicy,
    clients: int,
    keys: int,
    fault_policy: FaultPolicy | None,
) -> SimRun:
    cluster = SimCluster(seed, sim_config(nodes, fsync), fault_policy)
    workload = RandomWorkload(cluster, cluster.child_rng(), ops, clients=clients, keys=keys)
    workload.start()
    if crashes:
        CrashNemesis(cluster, cluster.child_rng(), stop=lambda: workload.done).start()
    cluster.run_until_true(lambda: workload.done, RUN_LIMIT_MS, what="done with the workload")
    for node_id in cluster.node_ids():
        if not cluster.is_up(node_id):
            cluster.restart(node_id)
    cluster.run_until_idle(RUN_LIMIT_MS)
    final = _read_back(cluster, workload.keys)
    attempts = write_attempts(workload.history)
    acknowledged = sum(1 for writes in attempts.values() for w in writes if w.acknowledged)
    summary = SimSummary(
        seed=seed,
        nodes=nodes,
        ops=ops,
        fsync=fsync,
        crashes=crashes,
        outcomes=_outcomes(workload.history),
        stats=dataclasses.replace(cluster.stats),
        virtual_ms=cluster.now_ms,
        acknowledged_writes=acknowledged,
        lost_writes=tuple(lost_writes(workload.history, final)),
        trace_hash=cluster.trace_hash(),
    )
    return SimRun(summary, cluster, workload.history, final)


def _read_back(cluster: SimCluster, keys: Sequence[str]) -> dict[str, Found | None]:
    """Every key's final state, each read from its owner (no fault can stand between them now)."""
    final: dict[str, Found | None] = {}
    partition_map = PartitionMap.round_robin(cluster.config.node_ids, cluster.config.partitions)
    for key in keys:
        node_id = partition_map.owner(partition_map.partition_for_key(key))
        result = cluster.request(node_id, GetOp(key))
        if isinstance(result, Found):
            final[key] = result
        elif isinstance(result, Failure) and result.code == "not_found":
            final[key] = None
        else:
            raise SimulationError(f"seed={cluster.seed}: the final read of {key!r} on {node_id} failed: {result!r}")
    return final


def _outcomes(history: Sequence[OpRecord]) -> dict[str, dict[str, int]]:
    outcomes: dict[str, dict[str, int]] = {kind: {} for kind, _ in OP_WEIGHTS}
    for record in history:
        outcome = record.result.code if isinstance(record.result, Failure) else "ok"
        counts = outcomes[op_kind(record.op)]
        counts[outcome] = counts.get(outcome, 0) + 1
    return outcomes


def format_summary(summary: SimSummary) -> str:
    stats = summary.stats
    lines = [
        f"kvstore sim: seed={summary.seed} nodes={summary.nodes} ops={summary.ops} "
        f"fsync={summary.fsync} crashes={'yes' if summary.crashes else 'no'}",
        f"virtual time: {summary.virtual_ms} ms; events: {stats.events}",
        f"messages delivered: {stats.delivered}; lost to crashes: {stats.lost_to_crash}; "
        f"syncs: {stats.syncs}; node crashes: {stats.crashes}",
        f"{'op':<10} {'ok':>6} {'failed':>6}  failures",
    ]
    for kind, counts in summary.outcomes.items():
        failures = {code: n for code, n in sorted(counts.items()) if code != "ok"}
        detail = " ".join(f"{code}={n}" for code, n in failures.items())
        lines.append(f"{kind:<10} {counts.get('ok', 0):>6} {sum(failures.values()):>6}  {detail}".rstrip())
    lines.append(f"acknowledged writes lost: {len(summary.lost_writes)} of {summary.acknowledged_writes}")
    lines.extend(f"  {line}" for line in summary.lost_writes[:10])
    lines.append(f"trace-hash: {summary.trace_hash}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, required=True, help="the seed that decides the whole run")
    parser.add_argument("--nodes", type=int, default=3, help="cluster size (default 3)")
    parser.add_argument("--ops", type=int, default=1000, help="client operations to run (default 1000)")
    parser.add_argument("--crashes", action="store_true", help="crash and restart random nodes during the run")
    parser.add_argument("--fsync", choices=FSYNC_POLICIES, default="always", help="storage fsync policy")


def main_args(argv: Sequence[str]) -> int:
    """``kvstore sim`` given its own arguments: prints the summary; exit status 1 if a write was lost."""
    parser = argparse.ArgumentParser(prog="kvstore sim", description="run one deterministic simulation")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.ops < 0:
        parser.error("--nodes must be at least 1 and --ops must not be negative")
    summary = run_sim(args.seed, args.nodes, args.ops, crashes=args.crashes, fsync=args.fsync)
    print(format_summary(summary))
    return 1 if summary.lost_writes and summary.fsync == "always" else 0
