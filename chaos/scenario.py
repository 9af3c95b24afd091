"""Scenario files: a cluster, a workload, a nemesis schedule, a duration and the checkers, in TOML.

```toml
name = "register-crash"
description = "single-copy register under crashes, fsync=always"
duration_ms = 10000         # how long the workload runs
quiet_ms = 1000             # after healing every fault, before the final reads

[cluster]
nodes = 3
founders = 3                # the first k nodes hold the first layout (default: every node); the others
                            # boot as spares, which the nemesis "join" fault admits at run time
mode = "single"            # or "leader": each partition a Raft group of `replicas` nodes; or "leaderless":
                            # Dynamo-style quorums over each partition's `replicas` nodes ([leaderless] below)
replicas = 3                # leader and leaderless mode only (default 3)
fsync = "always"
partitions = 16
request_timeout_ms = 1000
partitioner = "hash"        # or "range": ranges split and merge at the [ranges] bounds given here
ranges = { split_keys = 4, split_bytes = 65536, merge_keys = 2, merge_bytes = 32768, check_interval_ms = 200 }

[workload]
kind = "register"           # register | append | set | counter | features | siblings (leaderless: chaos.workloads)
concurrency = 5             # client processes
think_ms = 20               # a process waits 0..think_ms between ops
client_timeout_ms = 3000    # an op without an answer by then is recorded as info
options = { keys = 5 }      # passed to the workload
ops = 0                     # stop after this many ops (they must finish within duration_ms); 0: no limit

[nemesis]
faults = ["crash"]          # see chaos.nemesis.FAULT_KINDS
interval_ms = 1000
crash_kind = "process"      # "process" (kill -9; the default), "power" (unsynced writes lost; simulator only), or
                            # "mixed" (each crash drawn as one of the two; simulator only)

[replication]                # leader mode: the cluster's [replication] table (kvstore.config.ReplicationConfig)
writes = "sync"              # "sync" | "semi-sync" | "async"
reads = "read-index"         # "read-index" | "lease" | "unsafe" | "stale"
lease_drift_ms = 100

[leaderless]                 # leaderless mode: the cluster's [leaderless] table (kvstore.config.LeaderlessConfig)
r = "quorum"                 # replies a read waits for: a number, "one", "quorum" or "all"
w = "quorum"
sloppy = true                # false: strict quorums (no fallbacks, no hints)
max_siblings = 100
anti_entropy = true          # false (or hinted_handoff = false) shows what the mechanism is needed for
anti_entropy_interval_ms = 10000
hinted_handoff = true
handoff_interval_ms = 1000
policies = { "register/" = "lww" }   # key prefix -> "siblings" | "lww" | "counter" | "set" | "map"

[checkers]
names = ["linearizable", "lost-writes"]   # default: the workload's own
time_limit_s = 30
expect = "valid"            # or an anomaly the run must show: "lost-writes", "stale-reads", "diverged"
                            # (chaos.checkers.expected)
```

The ``[replication]`` table (leader mode) and the ``[leaderless]`` table (leaderless mode) go to the cluster
config of both the simulated and the real run, so one scenario swept over its settings compares them under the
same faults. Leaderless mode refuses CAS, moves and membership changes, so a leaderless scenario may not use the
workloads built on CAS (append, counter), a register workload with cas ops, or the move/join/leave faults; the
register workload's quorum options (``r``, ``w``, ``consistency``) and the siblings workload need it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from chaos.checkers import CHECKER_NAMES
from chaos.checkers.expected import EXPECTATIONS, VALID
from chaos.faults import Delay
from chaos.nemesis import NemesisConfig
from chaos.workloads import ALL_WORKLOAD_KINDS, LEADERLESS_WORKLOAD_KINDS, RegisterWorkload
from kvstore.config import (
    DEFAULT_LEADER_REPLICAS,
    FSYNC_POLICIES,
    MODES,
    PARTITIONERS,
    ConfigError,
    LeaderlessConfig,
    Limits,
    RangesConfig,
    ReplicationConfig,
    Timeouts,
    check_leaderless,
    check_replication,
)
from kvstore.toml_file import read_toml


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message names the file and the field."""


@dataclass(frozen=True)
class ClusterSpec:
    nodes: int = 3
    # The first ``founders`` nodes are the cluster's ``initial_nodes``; None: every node founds it.
    founders: int | None = None
    mode: str = "single"
    # Copies per partition (leader mode; None: the mode's default, 3 in leader mode, 1 in single).
    replicas: int | None = None
    fsync: str = "always"
    partitions: int = 16
    request_timeout_ms: int = 1000
    batch_interval_ms: int = 10
    partitioner: str = "hash"
    # Range mode's thresholds (kvstore.config.RangesConfig fields); the config's defaults where not given.
    ranges: dict[str, int] = field(default_factory=dict)
    # Leader mode: applied entries a Raft log keeps before it compacts (``limits.raft_compact_entries``); a low
    # value makes followers that were down or cut off catch up by snapshot.
    raft_compact_entries: int = Limits().raft_compact_entries

    def ranges_config(self) -> RangesConfig:
        known = {f.name for f in fields(RangesConfig)}
        unknown = sorted(set(self.ranges) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return RangesConfig(**self.ranges)

    def initial_nodes(self, node_ids: tuple[str, ...]) -> tuple[str, ...]:
        """``cluster.initial_nodes`` for a cluster of ``node_ids``: the first ``founders`` of them, or () (every
        node founds the cluster)."""
        return () if self.founders is None else node_ids[: self.founders]


@dataclass(frozen=True)
class WorkloadSpec:
    kind: str = "register"
    concurrency: int = 5
    think_ms: int = 20
    client_timeout_ms: int = 3000
    options: dict[str, Any] = field(default_factory=dict)
    ops: int = 0


@dataclass(frozen=True)
class CheckerSpec:
    names: tuple[str, ...] = ()
    time_limit_s: float = 30.0
    expect: str = VALID

    def __post_init__(self) -> None:
        if self.expect not in EXPECTATIONS:
            raise ValueError(f"expect must be one of {', '.join(EXPECTATIONS)}, not {self.expect!r:.40}")


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str = ""
    duration_ms: int = 10_000
    quiet_ms: int = 1000
    seed: int = 1
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    nemesis: NemesisConfig = field(default_factory=NemesisConfig)
    checkers: CheckerSpec = field(default_factory=CheckerSpec)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    leaderless: LeaderlessConfig = field(default_factory=LeaderlessConfig)


def _leaderless(table: Any, where: str) -> LeaderlessConfig:
    if not isinstance(table, dict):
        raise ScenarioError(f"{where} must be a table")
    policies = table.get("policies")
    if isinstance(policies, list | tuple) and all(isinstance(p, list | tuple) and len(p) == 2 for p in policies):
        # A scenario printed from its dataclass (``dataclasses.asdict``) lists the policies as [prefix, policy] pairs.
        table = {**table, "policies": dict(policies)}
    try:
        return LeaderlessConfig.from_table(table)
    except (ConfigError, TypeError, ValueError) as exc:
        raise ScenarioError(f"{where}: {exc}") from exc


def _build(cls: type, table: Any, where: str, convert: dict[str, Any] | None = None) -> Any:
    if not isinstance(table, dict):
        raise ScenarioError(f"{where} must be a table")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ScenarioError(f"{where}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    values = dict(table)
    try:
        for name, fn in (convert or {}).items():
            if name in values:
                values[name] = fn(values[name])
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"{where}: {exc}") from exc


def from_dict(data: dict[str, Any], source: str = "<scenario>") -> Scenario:
    tables = {"cluster", "workload", "nemesis", "checkers", "replication", "leaderless"}
    top = {k: v for k, v in data.items() if k not in tables}
    if "name" not in top:
        top["name"] = Path(source).stem
    try:
        cluster = _build(ClusterSpec, data.get("cluster", {}), f"{source} [cluster]")
        workload = _build(WorkloadSpec, data.get("workload", {}), f"{source} [workload]")
        nemesis = _build(NemesisConfig, data.get("nemesis", {}), f"{source} [nemesis]",
                         {"faults": tuple, "delay": Delay.from_json})
        checkers = _build(CheckerSpec, data.get("checkers", {}), f"{source} [checkers]", {"names": tuple})
        replication = _build(ReplicationConfig, data.get("replication", {}), f"{source} [replication]")
        leaderless = _leaderless(data.get("leaderless", {}), f"{source} [leaderless]")
        parts = {"cluster": cluster, "workload": workload, "nemesis": nemesis, "checkers": checkers}
        scenario: Scenario = _build(Scenario, {**top, **parts, "replication": replication, "leaderless": leaderless},
                                    source)
    except ScenarioError:
        raise
    _validate(scenario, source)
    return scenario


def _validate(s: Scenario, source: str) -> None:
    problems = []
    if s.cluster.nodes < 1:
        problems.append("[cluster] nodes must be at least 1")
    founders = s.cluster.founders
    if founders is not None and (isinstance(founders, bool) or not isinstance(founders, int)
                                 or not 1 <= founders <= max(s.cluster.nodes, 1)):
        problems.append(f"[cluster] founders must be an int in 1..nodes ({s.cluster.nodes}), not {founders!r:.40}")
    if s.cluster.partitioner not in PARTITIONERS:
        problems.append(f"[cluster] partitioner must be one of {', '.join(PARTITIONERS)}")
    try:
        s.cluster.ranges_config().policy()
    except (TypeError, ValueError) as exc:
        problems.append(f"[cluster] ranges: {exc}")
    if s.cluster.mode not in MODES:
        problems.append(f"[cluster] mode must be one of {', '.join(MODES)}")
    replicas = s.cluster.replicas
    if replicas is not None and (type(replicas) is not int or not 1 <= replicas <= (founders or s.cluster.nodes)):
        problems.append(f"[cluster] replicas must be an int in 1..founders, not {replicas!r:.40}")
    elif s.cluster.mode == "single" and replicas not in (None, 1):
        problems.append('[cluster] replicas must be 1 or absent in single mode (mode = "leader" replicates)')
    if s.cluster.mode == "leader":
        if "move" in s.nemesis.faults:
            problems.append("[nemesis] move needs single mode (in leader mode replicas change by join and leave)")
        if s.cluster.partitioner != "hash":
            problems.append('[cluster] leader mode needs partitioner = "hash"')
    try:
        # Both runs build their cluster with the default election timeout.
        check_replication(s.replication, s.cluster.mode, Timeouts().election_timeout_ms)
    except ConfigError as exc:
        problems.append(str(exc))
    problems.extend(_leaderless_problems(s))
    if s.cluster.fsync not in FSYNC_POLICIES:
        problems.append(f"[cluster] fsync must be one of {', '.join(FSYNC_POLICIES)}")
    if s.workload.kind not in ALL_WORKLOAD_KINDS:
        problems.append(f"[workload] kind must be one of {', '.join(ALL_WORKLOAD_KINDS)}")
    if s.workload.concurrency < 1 or s.workload.think_ms < 0 or s.workload.client_timeout_ms < 1:
        problems.append("[workload] concurrency and client_timeout_ms must be positive, think_ms not negative")
    if s.workload.ops < 0:
        problems.append("[workload] ops must not be negative")
    if s.duration_ms < 1 or s.quiet_ms < 0:
        problems.append("duration_ms must be positive and quiet_ms not negative")
    bad = [n for n in s.checkers.names if n not in CHECKER_NAMES]
    if bad:
        problems.append(f"[checkers] unknown checker(s) {', '.join(bad)} (known: {', '.join(CHECKER_NAMES)})")
    if problems:
        raise ScenarioError(f"{source}: " + "; ".join(problems))


# Workload options that only leaderless mode serves (the register workload's quorums and ABD).
LEADERLESS_OPTIONS = ("r", "w", "consistency")


def _leaderless_problems(s: Scenario) -> list[str]:
    """What a scenario asks of leaderless mode that it does not serve, or leaderless settings outside it."""
    mode = s.cluster.mode
    replicas = s.cluster.replicas
    try:
        check_leaderless(s.leaderless, mode, DEFAULT_LEADER_REPLICAS if replicas is None else replicas)
    except ConfigError as exc:
        return [str(exc)]
    options = s.workload.options
    if mode != "leaderless":
        problems = [f'[workload] option {name} needs mode = "leaderless"' for name in LEADERLESS_OPTIONS
                    if name in options]
        if s.workload.kind in LEADERLESS_WORKLOAD_KINDS:
            problems.append(f'[workload] kind {s.workload.kind} needs mode = "leaderless"')
        return problems
    problems = []
    if s.workload.kind in ("append", "counter"):
        problems.append(f"[workload] kind {s.workload.kind} is built on CAS, which leaderless mode refuses "
                        "(use a counter policy under [leaderless.policies] instead)")
    if s.workload.kind == "register" and options.get("cas_fraction", RegisterWorkload.CAS_FRACTION) != 0:
        problems.append("[workload] the register workload needs options.cas_fraction = 0 in leaderless mode "
                        "(leaderless mode refuses CAS)")
    refused = [f for f in s.nemesis.faults if f in ("move", "join", "leave", "kill-leader")]
    if refused:
        problems.append(f"[nemesis] {', '.join(refused)}: leaderless mode has no leaders and fixed replicas")
    return problems


def check_real_cluster(scenario: Scenario, source: str = "<scenario>") -> None:
    """Refuse, before anything starts, a scenario that only the simulator can run: a real cluster's crash is
    kill -9, a process crash, so a power loss cannot be played there."""
    if scenario.nemesis.crash_kind != "process":
        raise ScenarioError(
            f"{source}: [nemesis] crash_kind = {scenario.nemesis.crash_kind!r} needs the simulator; a real "
            'cluster can only crash a process (kill -9): use crash_kind = "process" or run it without --real'
        )


def load(path: str | Path) -> Scenario:
    return from_dict(read_toml(path, "scenario", ScenarioError), str(path))
