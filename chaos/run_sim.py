"""Run a scenario in the deterministic simulator: one seed decides the workload, the faults, everything.

Each client process is pinned to one node (process ``p`` talks to node ``p mod n``), runs one op at a
time and records it; an op without an answer after ``client_timeout_ms`` is recorded as ``info`` and its
process moves on under a new id, as Jepsen's do. After ``duration_ms`` no new ops start (or, when the
workload sets ``ops``, once that many have finished: the run must get there within ``duration_ms``), every
fault is healed, the cluster gets ``quiet_ms`` of calm, every replica's copy of every partition is read for
the convergence checker, and the workload's final ops (reads; the features workload resends its unsettled
pushes) run one by one. For the ``features`` workload the cluster gets ``quiet_ms`` again, then its checks read
every replica of every partition.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

from chaos.checkers import convergence, expected, run_checkers
from chaos.checkers.features import FeaturesFinal, replica_rows
from chaos.faults import ChaosPolicy
from chaos.final_siblings import replica_siblings
from chaos.history import Event, History
from chaos.leaders import pick_leader
from chaos.nemesis import FaultAction, Nemesis, describe_schedule, plan
from chaos.report import FaultPeriod
from chaos.scenario import Scenario
from chaos.workloads import (
    Execution,
    FeaturesWorkload,
    Outcome,
    PlannedOp,
    SiblingsWorkload,
    Workload,
    make_workload,
)
from kvstore.config import (
    DEFAULT_LEADER_REPLICAS,
    ClusterConfig,
    FsyncPolicy,
    Limits,
    StorageConfig,
    Timeouts,
    local_cluster,
)
from kvstore.messages import ClientOp, Result
from kvstore.node import Node
from kvstore.sim.cluster import SimCluster
from kvstore.sim.draws import between
from kvstore.storage.base import Record
from kvstore.storage.simulated import CrashKind
from partitioning.partition_map import LEAVING, PartitionMap

# Every replica's copy of each partition: (partition, node) -> its (key, record) pairs.
Copies = Mapping[tuple[int, str], Iterable[tuple[str, Record]]]


@dataclass
class RunResult:
    scenario: Scenario
    seed: int | None
    driver: str
    history: History
    periods: list[FaultPeriod]
    checkers: dict[str, dict[str, Any]]
    stats: dict[str, Any]
    schedule: list[dict[str, Any]] = field(default_factory=list)

    @property
    def valid(self) -> bool | str:
        """Every checker valid (one that had nothing to compare neither passes nor fails the run)."""
        return expected.judge(expected.VALID, self.checkers).met

    @property
    def outcome(self) -> expected.Outcome:
        """The run judged against what its scenario expects (``[checkers] expect``): valid, or an anomaly."""
        return expected.judge(self.scenario.checkers.expect, self.checkers)

    def to_json(self) -> dict[str, Any]:
        outcome = self.outcome
        return {
            "scenario": self.scenario.name,
            "seed": self.seed,
            "driver": self.driver,
            "valid": self.valid,
            "expect": outcome.expect,
            "as_expected": outcome.met,
            "anomalies": outcome.anomalies,
            "checkers": self.checkers,
            "stats": self.stats,
            "schedule": self.schedule,
        }


class Recorder:
    """Builds the history as ops start and finish."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def invoke(self, process: int, op: PlannedOp, time_ms: int) -> None:
        value = None if op.f == "read" else op.value
        self.events.append(Event(len(self.events), process, "invoke", op.f, op.key, value, time_ms))

    def complete(self, process: int, op: PlannedOp, outcome: Outcome, time_ms: int) -> None:
        kind, value, error = outcome
        shown = value if op.f == "read" and kind == "ok" else (None if op.f == "read" else op.value)
        self.events.append(Event(len(self.events), process, kind, op.f, op.key, shown, time_ms, error))  # type: ignore[arg-type]

    def history(self, source: str) -> History:
        return History(list(self.events), source)


def all_checkers(
    names: Sequence[str],
    history: History,
    time_limit_s: float,
    converged: dict[str, Any],
    final: FinalState | None = None,
    features: FeaturesFinal | None = None,
) -> dict[str, dict[str, Any]]:
    """The named checkers' verdicts on ``history``, and ``converged`` (``convergence.check_copies``'s verdict
    on the replicas' copies): always when it compared copies, and when ``names`` asks for it even if it
    had none to compare (it then says it was skipped). ``final``: the siblings checker's final state and bound;
    ``features``: the feature store checks' view and replicas' rows."""
    results = run_checkers(
        [name for name in names if name != "convergence"], history, time_limit_s=time_limit_s,
        final_siblings=None if final is None else final.siblings, max_siblings=None if final is None else final.bound,
        features_final=features,
    )
    if "convergence" in names or converged["valid"] != convergence.SKIPPED:
        results["convergence"] = converged
    return results


@dataclass(frozen=True)
class FinalState:
    """The siblings checker's inputs: each replica's siblings per key, and the bound they must stay within."""

    siblings: dict[Any, dict[str, list[Any]]]
    bound: int


def sibling_bound(scenario: Scenario) -> int:
    """The most siblings a key may show: ``max_siblings`` per coordinator, and a merge joins at most one
    coordinator's worth from each of the ``replicas`` (``replication.dvv``: a coordinator refuses a blind write
    past ``max_siblings``, but replicas that took writes while cut off from each other merge them all)."""
    replicas = scenario.cluster.replicas or DEFAULT_LEADER_REPLICAS
    return scenario.leaderless.max_siblings * replicas


def final_state(workload: Workload, scenario: Scenario, copies: Copies, replicas: Sequence[Sequence[str]]) -> (
    FinalState | None
):
    """The siblings workload's final state from the replicas' copies (None for the other workloads)."""
    if not isinstance(workload, SiblingsWorkload):
        return None
    stored = replica_siblings(copies, replicas)
    return FinalState(cast(dict[Any, dict[str, list[Any]]], workload.final_siblings(stored)), sibling_bound(scenario))


def features_final(workload: Workload, copies: Copies, replicas: Sequence[Sequence[str]]) -> FeaturesFinal | None:
    """The features workload's final state from every replica's copy of every partition (None for the others)."""
    if not isinstance(workload, FeaturesWorkload):
        return None
    return FeaturesFinal(workload.view, replica_rows(copies, replicas))


def sim_all_copies(cluster: SimCluster, replicas: Sequence[Sequence[str]]) -> Copies:
    """Every replica's copy of every partition, those of one replica too (single mode has no other)."""
    return {(p, node): cluster.storage(node).copy_of(p) for p, nodes in enumerate(replicas) for node in nodes}


def sim_copies(cluster: SimCluster) -> tuple[Copies, tuple[tuple[str, ...], ...], int]:
    """Every replica's copy of each partition with more than one, read straight from its node's storage, the
    partitions' replicas, and the latest node clock (the copies are judged at it)."""
    nodes = cluster.node_ids()
    # What every node knows together (the first node may have left the cluster and kept an old map).
    view = cluster.view()
    assert view is not None, "every node is up after the heal"
    replicas = tuple(tuple(r) for r in view.replicas)
    copies = {
        (partition, node): cluster.storage(node).copy_of(partition)
        for partition in convergence.multi_copy_partitions(replicas)
        for node in replicas[partition]
    }
    return copies, replicas, max(cluster.node_clock_ms(node) for node in nodes)


def sim_convergence(cluster: SimCluster) -> dict[str, Any]:
    """The convergence verdict (``convergence.check_copies``) of a simulated cluster (``sim_copies``)."""
    return convergence.check_copies(*sim_copies(cluster))


def sim_cluster_config(scenario: Scenario) -> ClusterConfig:
    spec = scenario.cluster
    config = local_cluster(
        spec.nodes,
        mode=spec.mode,
        replicas=spec.replicas,
        partitions=spec.partitions,
        partitioner=spec.partitioner,
        ranges=spec.ranges_config(),
        storage=StorageConfig(engine="memory", fsync=cast(FsyncPolicy, spec.fsync),
                              batch_interval_ms=spec.batch_interval_ms),
        timeouts=Timeouts(request_timeout_ms=spec.request_timeout_ms),
        replication=scenario.replication,
        leaderless=scenario.leaderless,
        limits=Limits(raft_compact_entries=spec.raft_compact_entries),
    )
    return config.replace(initial_nodes=spec.initial_nodes(config.node_ids))


class _SimTarget:
    """The simulator as the nemesis sees it."""

    def __init__(self, cluster: SimCluster, policy: ChaosPolicy) -> None:
        self.cluster = cluster
        self.policy = policy

    def node_ids(self) -> tuple[str, ...]:
        return self.cluster.node_ids()

    def now_ms(self) -> int:
        return self.cluster.now_ms

    def crash(self, node_id: str, kind: CrashKind) -> None:
        self.cluster.crash(node_id, kind)

    def restart(self, node_id: str) -> None:
        self.cluster.restart(node_id)

    def is_up(self, node_id: str) -> bool:
        return self.cluster.is_up(node_id)

    def leader(self, partition: int | None) -> str | None:
        live = [node_id for node_id in self.cluster.node_ids() if self.cluster.is_up(node_id)]
        return pick_leader({node_id: self.cluster.node(node_id).leadership() for node_id in live}, partition)

    def policy_changed(self) -> None:
        pass  # the simulator consults the same policy object for every message

    def move(self, partition: int, target: str) -> str:
        return self.cluster.move(partition, target)

    def roster(self) -> dict[str, str]:
        view = self.cluster.view()
        return {} if view is None else {m.node_id: m.state for m in view.roster}

    def join(self, node_id: str) -> str:
        return self.cluster.join(node_id)

    def leave(self, node_id: str) -> str:
        return self.cluster.leave(node_id)


class _Client:
    """A client process pinned to one node, running one op at a time."""

    __slots__ = ("check_at_ms", "deadline_ms", "gen", "index", "node", "on_result", "op", "process", "request_id")

    def __init__(self, index: int, process: int, node: str) -> None:
        self.index = index
        self.process = process
        self.node = node
        # The op in progress (None between ops) and the generator that executes it.
        self.op: PlannedOp | None = None
        self.gen: Execution | None = None
        # The request the op waits on; a late result for one it no longer waits on (it timed out) is ignored.
        self.request_id = 0
        # When the op in progress times out, and when the client's timeout check next runs (None: not
        # scheduled). One check per client is on the heap at a time, not one per op: nearly every op
        # finishes long before its deadline, and the check moves on to the deadline of the op then running.
        self.deadline_ms = 0
        self.check_at_ms: int | None = None
        self.on_result: Callable[[int, Result], None] | None = None


@dataclass
class Simulation:
    """A scenario run in the simulator, up to its recorded history: everything the checkers judge."""

    scenario: Scenario
    seed: int
    history: History
    converged: dict[str, Any]
    final: FinalState | None
    periods: list[FaultPeriod]
    schedule: list[dict[str, Any]]
    stats: dict[str, Any]
    checker_names: Sequence[str]
    features: FeaturesFinal | None = None


class _SimRunner:
    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.scenario = scenario
        self.seed = seed
        self.policy = ChaosPolicy(random.Random(0))
        self.cluster = SimCluster(seed, sim_cluster_config(scenario), self.policy)
        self.policy.rng = self.cluster.child_rng()
        self.workload: Workload = make_workload(scenario.workload.kind, dict(scenario.workload.options))
        self.workload_rng = self.cluster.child_rng()
        self.client_rng = self.cluster.child_rng()
        nemesis_rng = self.cluster.child_rng()
        self.schedule: list[FaultAction] = plan(scenario.nemesis, self.cluster.node_ids(), scenario.duration_ms,
                                                nemesis_rng, scenario.cluster.partitions)
        self.nemesis = Nemesis(scenario.nemesis, _SimTarget(self.cluster, self.policy), nemesis_rng)
        self.recorder = Recorder()
        self.accepting = True
        self.ops_limit = scenario.workload.ops
        self.client_timeout_ms = scenario.workload.client_timeout_ms
        self.think_ms = scenario.workload.think_ms
        nodes = self.cluster.node_ids()
        concurrency = scenario.workload.concurrency
        self.clients = [self._client(i, i, nodes[i % len(nodes)]) for i in range(concurrency)]
        self.next_process = concurrency
        self.final_pending = 0
        # Workload ops started and finished (final reads not included).
        self.started = 0
        self.finished = 0

    def simulate(self) -> Simulation:
        """Cluster start to the recorded history: the workload under the nemesis, heal, quiet, final reads."""
        s = self.scenario
        for action in self.schedule:
            self.cluster.schedule(action.at_ms, lambda a=action: self._apply(a))  # type: ignore[misc]
        for client in self.clients:
            self.cluster.call_at(self.client_rng.randint(0, max(s.workload.think_ms, 1)), self._start, client, None)
        if s.workload.ops:
            self.cluster.run_until_true(lambda: self.finished == s.workload.ops, s.duration_ms,
                                        f"done with the workload's {s.workload.ops} ops")
            ended_ms = self.cluster.now_ms
        else:
            self.cluster.run_until(s.duration_ms)
            ended_ms = s.duration_ms
        self.accepting = False
        # Let ops in progress finish or time out, then heal everything and let the cluster settle.
        self.cluster.run_until(ended_ms + s.workload.client_timeout_ms)
        self.nemesis.heal_all()
        self.cluster.run_for(s.quiet_ms)
        # Before the final reads: a protocol that repairs replicas on reads must not hide a divergence.
        copies, replicas, at_ms = sim_copies(self.cluster)
        converged = convergence.check_copies(copies, replicas, at_ms)
        final = final_state(self.workload, s, copies, replicas)
        self._final_reads()
        features = None
        if isinstance(self.workload, FeaturesWorkload):
            # Its final ops resend the pushes that were cut short: quiet time again, for every replica to apply
            # them (a write is acknowledged once a quorum holds it), then every copy of every partition.
            self.cluster.run_for(s.quiet_ms)
            features = features_final(self.workload, sim_all_copies(self.cluster, replicas), replicas)
        history = self.recorder.history(f"{s.name} seed={self.seed}")
        return Simulation(s, self.seed, history, converged, final, self.nemesis.periods,
                          describe_schedule(self.schedule),
                          self._stats(history), s.checkers.names or self.workload.default_checkers, features)

    def _apply(self, action: FaultAction) -> None:
        # A workload that ran its ops before the schedule ended leaves the rest of the schedule undone.
        if self.accepting:
            self.nemesis.apply(action)

    # ------------------------------------------------------------ client processes

    def _client(self, index: int, process: int, node: str) -> _Client:
        client = _Client(index, process, node)
        client.on_result = partial(self._on_result, client)
        return client

    def _start(self, client: _Client, _unused: None) -> None:
        if not self.accepting or (self.ops_limit and self.started == self.ops_limit):
            return
        self.started += 1
        op = self.workload.next_op(self.workload_rng)
        self._run_op(client, op)

    def _run_op(self, client: _Client, op: PlannedOp) -> None:
        now_ms = self.cluster.now_ms
        client.op = op
        client.gen = self.workload.execute(op)
        client.deadline_ms = deadline_ms = now_ms + self.client_timeout_ms
        self.recorder.invoke(client.process, op, now_ms)
        if client.check_at_ms is None:
            client.check_at_ms = deadline_ms
            self.cluster.call_at(deadline_ms, self._check_timeout, client, None)
        self._advance(client, None)

    def _advance(self, client: _Client, result: Result | None) -> None:
        gen = client.gen
        assert gen is not None and client.on_result is not None
        try:
            request: ClientOp = gen.send(result)  # type: ignore[arg-type]
        except StopIteration as stop:
            self._finish(client, stop.value)
            return
        client.request_id = self.cluster.submit(client.node, request, client.on_result)

    def _on_result(self, client: _Client, request_id: int, reply: Result) -> None:
        if client.request_id == request_id:
            self._advance(client, reply)

    def _check_timeout(self, client: _Client, _unused: None) -> None:
        client.check_at_ms = None
        if client.op is None:
            return  # between ops: the next op schedules a check
        if client.deadline_ms <= self.cluster.now_ms:
            self._finish(client, ("info", None, "client_timeout"))
            return
        client.check_at_ms = client.deadline_ms
        self.cluster.call_at(client.deadline_ms, self._check_timeout, client, None)

    def _finish(self, client: _Client, outcome: Outcome) -> None:
        op = client.op
        assert op is not None
        client.op = client.gen = None
        client.request_id = 0
        now_ms = self.cluster.now_ms
        self.recorder.complete(client.process, op, outcome, now_ms)
        if outcome[0] == "info":
            client.process = self.next_process
            self.next_process += 1
        if client.index < 0:
            self.final_pending -= 1
            return
        self.finished += 1
        # At least 1 ms: an op that fails at once (its node is down) must not spin at one instant.
        think = max(1, between(self.client_rng, 0, self.think_ms))
        self.cluster.call_at(now_ms + think, self._start, client, None)

    def _final_reads(self) -> None:
        nodes = self.cluster.node_ids()
        for i, op in enumerate(self.workload.final_ops()):
            client = self._client(-1, self.next_process, nodes[i % len(nodes)])
            self.next_process += 1
            self.final_pending = 1
            self.cluster.schedule(self.cluster.now_ms, lambda c=client, o=op: self._run_op(c, o))  # type: ignore[misc]
            self.cluster.run_until_true(lambda: self.final_pending == 0,
                                        self.scenario.workload.client_timeout_ms + 1000, "final read")

    # ------------------------------------------------------------ results

    def _stats(self, history: History) -> dict[str, Any]:
        kinds = Counter((e.f, e.type) for e in history.events)
        st = self.cluster.stats
        view = self.cluster.view()
        assert view is not None, "every node is up after the heal"
        nodes = [self.cluster.node(node_id) for node_id in self.cluster.node_ids()]
        return {
            "ops": sum(n for (_, kind), n in kinds.items() if kind == "invoke"),
            "outcomes": dict(sorted((f"{f}:{kind}", n) for (f, kind), n in kinds.items() if kind != "invoke")),
            "virtual_ms": self.cluster.now_ms,
            "messages_delivered": st.delivered,
            "crashes": st.crashes,
            "syncs": st.syncs,
            "events": st.events,
            # Hand-overs of a partition that completed (every one bumps the partition's epoch once), and the
            # roster at the end, both as the nodes know them together.
            "partition_changes": sum(view.epochs) - view.partition_count,
            "roster": {m.node_id: m.state for m in view.roster},
            # After the quiet time and the final reads: no node is still leaving, and every member holds that one
            # map with nothing left to move (liveness of the membership changes; no checker judges it). Spares and
            # removed nodes are not announced maps: they learn one on their next forward, so they may lag.
            "settled": not any(m.state == LEAVING for m in view.roster)
            and all(node.partition_map == view and node.balanced for node in nodes if node.node_id in view.members),
            **self._range_stats(view, nodes),
            # Leader mode: snapshot transfers to followers behind compaction that completed (since each sender
            # last started, so at least this many).
            "raft_snapshots": sum(node.snapshots.completed for node in nodes),
            "trace_hash": self.cluster.trace_hash(),
        }

    @staticmethod
    def _range_stats(view: PartitionMap, nodes: list[Node]) -> dict[str, int]:
        """Range mode: the ranges at the end, and the splits and merges the nodes made (since each last
        started: a crash forgets a node's count, so these are at least what happened)."""
        if view.ranges is None:
            return {}
        return {
            "ranges": view.ranges.range_count,
            "range_splits": sum(node.range_changes[0] for node in nodes),
            "range_merges": sum(node.range_changes[1] for node in nodes),
        }


def simulate(scenario: Scenario, seed: int | None = None) -> Simulation:
    """Run ``scenario`` in the simulator up to its recorded history (the scenario's seed unless ``seed``)."""
    return _SimRunner(scenario, scenario.seed if seed is None else seed).simulate()


def judge(run: Simulation) -> RunResult:
    """The checkers' verdicts on a simulated run."""
    checkers = all_checkers(run.checker_names, run.history, run.scenario.checkers.time_limit_s, run.converged,
                            run.final, run.features)
    return RunResult(run.scenario, run.seed, "sim", run.history, run.periods, checkers, run.stats, run.schedule)


def run_in_sim(scenario: Scenario, seed: int | None = None) -> RunResult:
    return judge(simulate(scenario, seed))


def replay_command(scenario_path: str, seed: int) -> str:
    return f"kvstore chaos run {scenario_path} --seed {seed}"

