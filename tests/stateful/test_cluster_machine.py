"""A Hypothesis state machine drives a simulated 3-node single-copy cluster (fsync=always) and a model.

The model keeps, per key, the state last known for certain (the last acknowledged write or delete, or
the last value a read observed) and the writes whose outcome is uncertain (a timeout: they may land at
any time, or never). Every observation must be the known state or one of the uncertain writes: never an
older acknowledged value, never a value nobody wrote. An uncertain write may land even while a later
op runs, after that op took effect and before its answer, so an answer alone never clears them. Once the
cluster is idle (nothing in flight, nothing waiting for a sync) none can land any more: the owner's
storage, checked against the model, then becomes the known state.

Definite failures (unavailable, overloaded, precondition_failed) leave the model untouched, so a later
read catches one that changed state anyway. After a crash and restart the node's storage (rebuilt from
its disk alone) must still hold a state the model allows for each key it owns: fsync=always loses
nothing acknowledged.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, note, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from chaos.faults import PARTITION_KINDS, ChaosPolicy, partition_grudge
from kvstore.config import StorageConfig, local_cluster
from kvstore.errors import ErrorCode
from kvstore.messages import CasOp, ClientOp, Deleted, DeleteOp, Failure, Found, GetOp, PutOp, Result, Written
from kvstore.sim.cluster import SimCluster
from partitioning.partition_map import PartitionMap

PARTITIONS = 16
FSYNC_LATENCY_MS = 2
# Ops that fail definitely: nothing happened.
DEFINITE_NO_CHANGE = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.OVERLOADED})
# What a request may end with when the outcome is unknown.
UNCERTAIN = frozenset({ErrorCode.TIMEOUT})
# Long enough for a forward to time out (request_timeout_ms) and its answer to come back.
REQUEST_LIMIT_MS = 10_000

CONFIG = local_cluster(3, partitions=PARTITIONS, storage=StorageConfig(engine="memory", fsync="always"))
NODES = CONFIG.node_ids
PMAP = PartitionMap.round_robin(NODES, PARTITIONS)


def _first_keys_owned(owner: str, count: int) -> list[str]:
    candidates = (f"k{i}" for i in range(10_000))
    return [k for k in candidates if PMAP.owner(PMAP.partition_for_key(k)) == owner][:count]


# One key per node, so every node is both an owner and a forwarder, and reads often find writes.
KEYS = tuple(k for node in NODES for k in _first_keys_owned(node, 1))
# Crashes stop here, so most ops still reach a live owner (an all-down cluster only says "unavailable").
MAX_NODES_DOWN = 1

Value = bytes | None  # None: the key is absent


class _Down:
    """The key's owner is down: its state is on a disk the test cannot read until a restart."""


DOWN = _Down()


@dataclass
class KeyModel:
    known: Value = None
    uncertain: set[Value] = field(default_factory=set)

    def allowed(self) -> set[Value]:
        return {self.known, *self.uncertain}


class ClusterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.seed = 0
        self.policy = ChaosPolicy(random.Random(0))
        self.cluster = SimCluster(0, CONFIG)
        self.model = {k: KeyModel() for k in KEYS}
        self.next_value = 1

    @initialize(seed=st.integers(min_value=0, max_value=2**32 - 1))
    def boot(self, seed: int) -> None:
        self.seed = seed
        self.policy = ChaosPolicy(random.Random(seed))
        self.cluster = SimCluster(seed, CONFIG, self.policy, fsync_latency_ms=FSYNC_LATENCY_MS)
        note(f"sim seed={seed}")

    # ------------------------------------------------------------ helpers

    def where(self) -> str:
        return f"sim seed={self.seed} at {self.cluster.now_ms} ms"

    def nodes_down(self) -> int:
        return sum(1 for node in NODES if not self.cluster.is_up(node))

    def fresh_value(self) -> bytes:
        value = f"v{self.next_value}".encode()
        self.next_value += 1
        return value

    def run(self, via: str, op: ClientOp) -> Result:
        result = self.cluster.request(via, op, limit_ms=REQUEST_LIMIT_MS)
        note(f"{self.cluster.now_ms} ms: {op!r} via {via} -> {result!r}")
        event(f"{type(op).__name__} -> {result.code if isinstance(result, Failure) else type(result).__name__}")
        return result

    def settle(self, key: str, value: Value) -> None:
        """The key certainly held ``value`` at some point during the op just finished.

        Uncertain writes stay possible: one may have landed after that point, even before the answer.
        """
        model = self.model[key]
        model.known = value
        if value is not None:
            model.uncertain.discard(value)  # values are unique: that write cannot land twice

    def stored_value(self, key: str) -> Value | _Down:
        partition = PMAP.partition_for_key(key)
        owner = PMAP.owner(partition)
        if not self.cluster.is_up(owner):
            return DOWN
        record = self.cluster.storage(owner).get(partition, key, self.cluster.node_clock_ms(owner))
        return None if record is None else record.value

    def observe(self, key: str, value: Value, how: str) -> None:
        allowed = self.model[key].allowed()
        assert value in allowed, f"{self.where()}: {how} saw {key}={value!r}; the model allows {sorted_values(allowed)}"
        if value != self.model[key].known:
            event("read a write of uncertain outcome")
        self.settle(key, value)

    def check_failure(self, result: Failure, op: ClientOp) -> bool:
        """True if the op may have happened; fails on codes the op should never get."""
        code = result.error_code
        assert code in DEFINITE_NO_CHANGE | UNCERTAIN, f"{self.where()}: {op!r} failed: {result!r}"
        return code in UNCERTAIN

    def finish_write(self, key: str, op: ClientOp, result: Result, written: Value) -> None:
        """Account for a put / delete / cas that sets ``key`` to ``written`` if it happens."""
        if isinstance(result, (Written, Deleted)):
            self.settle(key, written)
        elif isinstance(result, Failure):
            if self.check_failure(result, op):
                self.model[key].uncertain.add(written)
        else:
            raise AssertionError(f"{self.where()}: unexpected reply {result!r} to {op!r}")

    # ------------------------------------------------------------ client rules

    @rule(key=st.sampled_from(KEYS), via=st.sampled_from(NODES))
    def put(self, key: str, via: str) -> None:
        op = PutOp(key, self.fresh_value())
        self.finish_write(key, op, self.run(via, op), op.value)

    @rule(key=st.sampled_from(KEYS), via=st.sampled_from(NODES))
    def get(self, key: str, via: str) -> None:
        op = GetOp(key)
        result = self.run(via, op)
        if isinstance(result, Found):
            self.observe(key, result.value, f"get via {via}")
        elif isinstance(result, Failure) and result.error_code == ErrorCode.NOT_FOUND:
            self.observe(key, None, f"get via {via}")
        elif isinstance(result, Failure):
            self.check_failure(result, op)
        else:
            raise AssertionError(f"{self.where()}: unexpected reply {result!r} to {op!r}")

    @rule(key=st.sampled_from(KEYS), via=st.sampled_from(NODES))
    def delete(self, key: str, via: str) -> None:
        op = DeleteOp(key)
        result = self.run(via, op)
        if isinstance(result, Deleted):
            # ``existed`` reports the state the delete found.
            allowed = self.model[key].allowed()
            assert (any(v is not None for v in allowed) if result.existed else None in allowed), (
                f"{self.where()}: delete of {key} says existed={result.existed}; model allows {sorted_values(allowed)}"
            )
        self.finish_write(key, op, result, None)

    @rule(key=st.sampled_from(KEYS), via=st.sampled_from(NODES), expect=st.sampled_from(("known", "absent", "other")))
    def cas(self, key: str, via: str, expect: str) -> None:
        expected: Value = {"known": self.model[key].known, "absent": None, "other": b"never-written"}[expect]
        op = CasOp(key, expected, self.fresh_value())
        result = self.run(via, op)
        allowed = self.model[key].allowed()
        if isinstance(result, Written):
            assert expected in allowed, f"{self.where()}: {op!r} landed but the model allows {sorted_values(allowed)}"
            self.settle(key, op.new)
        elif isinstance(result, Failure) and result.error_code == ErrorCode.PRECONDITION_FAILED:
            assert allowed - {expected}, f"{self.where()}: {op!r} refused but {key} can only be {expected!r}"
        else:
            self.finish_write(key, op, result, op.new)

    @rule(key=st.sampled_from(KEYS), via=st.sampled_from(NODES), victim_is_owner=st.booleans(),
          delay_ms=st.integers(min_value=0, max_value=12))
    def put_then_crash(self, key: str, via: str, victim_is_owner: bool, delay_ms: int) -> None:
        """A put in progress when its owner crashes (maybe between applying it and syncing) or the node
        it was sent to does (maybe after forwarding it: the put lands but its answer is lost)."""
        victim = PMAP.owner(PMAP.partition_for_key(key)) if victim_is_owner else via
        op = PutOp(key, self.fresh_value())
        results: list[Result] = []
        self.cluster.submit(via, op, lambda _rid, result: results.append(result))
        self.cluster.run_for(delay_ms)
        crashed = self.cluster.is_up(victim) and self.nodes_down() < MAX_NODES_DOWN
        if crashed:
            self.cluster.crash(victim)
        self.cluster.run_until_true(lambda: bool(results), REQUEST_LIMIT_MS, "put answered")
        what = f"{victim} crashed after {delay_ms} ms" if crashed else f"no crash, {delay_ms} ms later"
        note(f"{self.cluster.now_ms} ms: {op!r} via {via}, {what} -> {results[0]!r}")
        self.finish_write(key, op, results[0], op.value)

    # ------------------------------------------------------------ fault rules

    @rule(node=st.sampled_from(NODES))
    def crash(self, node: str) -> None:
        if self.cluster.is_up(node) and self.nodes_down() < MAX_NODES_DOWN:
            self.cluster.crash(node)
            note(f"{self.cluster.now_ms} ms: crash {node}")

    @rule(node=st.sampled_from(NODES))
    def restart(self, node: str) -> None:
        if self.cluster.is_up(node):
            return
        self.cluster.restart(node)
        note(f"{self.cluster.now_ms} ms: restart {node}")
        # The restarted node starts from its disk alone: every key it owns must still hold an allowed state.
        for key in KEYS:
            if PMAP.owner(PMAP.partition_for_key(key)) != node:
                continue
            stored = self.stored_value(key)
            allowed = self.model[key].allowed()
            assert stored in allowed, (
                f"{self.where()}: restarted {node} has {key}={stored!r} on disk; model allows {sorted_values(allowed)}"
            )

    @rule(kind=st.sampled_from(PARTITION_KINDS), shuffle_seed=st.integers(min_value=0, max_value=1000))
    def partition(self, kind: str, shuffle_seed: int) -> None:
        grudge = partition_grudge(kind, NODES, random.Random(shuffle_seed))
        self.policy.cut(grudge)
        note(f"{self.cluster.now_ms} ms: partition {kind}: {sorted(self.policy.cut_links)}")

    @rule()
    def heal(self) -> None:
        self.policy.heal()

    @rule(on=st.booleans())
    def duplicate_messages(self, on: bool) -> None:
        self.policy.duplicate_probability = 0.5 if on else 0.0

    @rule(duration_ms=st.integers(min_value=1, max_value=3000))
    def advance_time(self, duration_ms: int) -> None:
        self.cluster.run_for(duration_ms)

    @rule()
    def run_until_idle(self) -> None:
        self.cluster.run_until_idle(limit_ms=REQUEST_LIMIT_MS)

    # ------------------------------------------------------------ invariants

    @invariant()
    def owners_hold_allowed_states(self) -> None:
        """Each live owner's storage (synced or not) holds a state the model allows, for every key."""
        for key in KEYS:
            stored = self.stored_value(key)
            allowed = self.model[key].allowed()
            assert isinstance(stored, _Down) or stored in allowed, (
                f"{self.where()}: the owner stores {key}={stored!r}; model allows {sorted_values(allowed)}"
            )

    @invariant()
    def idle_cluster_resolves_uncertainty(self) -> None:
        """Once the cluster is idle, every uncertain write has landed or never will: the owner's storage,
        checked against the model first, is then the key's one state. (An invariant because it must
        run after every step, once the step's outcome is in the model.)"""
        if not self.cluster.idle():
            return
        self.owners_hold_allowed_states()
        for key, model in self.model.items():
            stored = self.stored_value(key)
            if not isinstance(stored, _Down):
                model.known, model.uncertain = stored, set()

    @invariant()
    def nothing_unexpected_in_storage(self) -> None:
        """Single copy: a node stores only keys it owns."""
        for node in NODES:
            if not self.cluster.is_up(node):
                continue
            storage = self.cluster.storage(node)
            for key in KEYS:
                partition = PMAP.partition_for_key(key)
                if PMAP.owner(partition) != node:
                    assert storage.get(partition, key, self.cluster.node_clock_ms(node)) is None, (
                        f"{self.where()}: {node} stores {key}, which {PMAP.owner(partition)} owns"
                    )


def sorted_values(values: set[Value]) -> list[Value]:
    return sorted(values, key=lambda v: (v is not None, v or b""))


# Derandomized and database-less: CI runs the same examples every time, and a failure reproduces
# from the printed steps (the first one names the sim seed).
ClusterMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
TestClusterMachine = ClusterMachine.TestCase
