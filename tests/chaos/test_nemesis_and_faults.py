"""Fault policy, partition shapes and nemesis schedules."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from chaos.faults import PARTITION_KINDS, ChaosPolicy, Delay, partition_grudge
from chaos.nemesis import FAULT_KINDS, FaultAction, Nemesis, NemesisConfig, plan
from kvstore.messages import GetOp, Message
from kvstore.storage.simulated import CrashKind

NODES = ("n1", "n2", "n3", "n4", "n5")


def msg(src: str = "n1", dst: str = "n2") -> Message:
    return Message(src, dst, 0, GetOp("k"))


def test_cut_links_drop_and_the_rest_pass() -> None:
    policy = ChaosPolicy(random.Random(1))
    policy.cut({"n2": {"n1"}})
    assert policy.on_send(0, msg("n1", "n2")) == ()
    assert policy.on_send(0, msg("n2", "n1")) == (0,)
    policy.heal()
    assert policy.on_send(0, msg("n1", "n2")) == (0,)


def test_drop_and_duplicate_probabilities_are_extremes_at_0_and_1() -> None:
    policy = ChaosPolicy(random.Random(1), drop_probability=1.0)
    assert all(policy.on_send(0, msg()) == () for _ in range(50))
    policy = ChaosPolicy(random.Random(1), duplicate_probability=1.0)
    assert all(len(policy.on_send(0, msg())) == 2 for _ in range(50))


def test_delays_stay_within_their_bounds() -> None:
    rng = random.Random(3)
    assert {Delay("fixed", 7).sample(rng) for _ in range(10)} == {7}
    assert all(5 <= Delay("uniform", 9, 5).sample(rng) <= 9 for _ in range(200))
    assert all(0 <= Delay("exponential", 20).sample(rng) <= 60_000 for _ in range(200))
    assert Delay().sample(rng) == 0


def test_clock_skew_and_drift() -> None:
    policy = ChaosPolicy(random.Random(1))
    policy.set_clock("n1", 1000, offset_ms=500)
    policy.set_clock("n2", 1000, drift_ppm=100_000)  # gains 100 ms per second
    assert policy.clock_offset_ms("n1", 5000) == 500
    assert policy.clock_offset_ms("n2", 3000) == 200
    assert policy.clock_offset_ms("n3", 3000) == 0
    policy.reset_clocks()
    assert policy.clock_offset_ms("n1", 5000) == 0


def test_policy_json_round_trips() -> None:
    policy = ChaosPolicy(random.Random(1), delay=Delay("uniform", 50, 5), drop_probability=0.25)
    policy.cut({"n1": {"n2", "n3"}})
    policy.set_clock("n3", 10, offset_ms=-40, drift_ppm=7)
    again = ChaosPolicy.from_json(policy.to_json(), random.Random(2))
    assert again.to_json() == policy.to_json()


def reachable(grudge: dict[str, set[str]], a: str, b: str) -> bool:
    return a not in grudge[b] and b not in grudge[a]


@pytest.mark.parametrize("seed", range(5))
def test_partition_shapes(seed: int) -> None:
    rng = random.Random(seed)
    halves = partition_grudge("halves", NODES, rng)
    sides = {frozenset(n for n in NODES if reachable(halves, x, n)) for x in NODES}
    assert sorted(len(s) for s in sides) == [2, 3]
    isolate = partition_grudge("isolate", NODES, rng)
    alone = [n for n in NODES if isolate[n] == set(NODES) - {n}]
    assert len(alone) == 1
    leader = partition_grudge("isolate-leader", NODES, rng, leader="n4")
    assert leader["n4"] == {"n1", "n2", "n3", "n5"}
    bridge = partition_grudge("bridge", NODES, rng)
    middle = [n for n in NODES if not bridge[n]]
    assert len(middle) == 1
    ring = partition_grudge("majority-ring", NODES, rng)
    for node in NODES:
        sees = [n for n in NODES if reachable(ring, node, n)]
        assert len(sees) == 3  # a majority of 5, counting itself
    assert len({frozenset(n for n in NODES if reachable(ring, x, n)) for x in NODES}) == 5


def test_unknown_partition_kind() -> None:
    with pytest.raises(ValueError, match="unknown partition kind"):
        partition_grudge("sideways", NODES, random.Random(1))
    assert set(PARTITION_KINDS) <= {k.removeprefix("partition-") for k in FAULT_KINDS}


def test_plan_is_seeded_and_alternates_start_and_end() -> None:
    config = NemesisConfig(faults=FAULT_KINDS, interval_ms=500, start_after_ms=100)
    first = plan(config, NODES, 10_000, random.Random(9))
    assert first == plan(config, NODES, 10_000, random.Random(9))
    assert first != plan(config, NODES, 10_000, random.Random(10))
    assert [a.start for a in first] == [True, False] * (len(first) // 2)
    assert all(a.at_ms + 500 <= 10_000 for a in first if a.start)
    assert all(a.at_ms <= 10_000 for a in first)
    for begin, end in zip(first[::2], first[1::2], strict=True):
        assert end.at_ms - begin.at_ms == 500 and begin.fault == end.fault and begin.node == end.node
    assert plan(NemesisConfig(), NODES, 10_000, random.Random(1)) == []


class RecordingTarget:
    """A cluster that only records what the nemesis does to it."""

    def __init__(self) -> None:
        self.policy = ChaosPolicy(random.Random(0))
        self.down: set[str] = set()
        self.calls: list[tuple[str, str, str | None]] = []

    def node_ids(self) -> Sequence[str]:
        return NODES

    def now_ms(self) -> int:
        return 0

    def crash(self, node_id: str, kind: CrashKind) -> None:
        self.down.add(node_id)
        self.calls.append(("crash", node_id, kind))

    def restart(self, node_id: str) -> None:
        self.down.discard(node_id)
        self.calls.append(("restart", node_id, None))

    def is_up(self, node_id: str) -> bool:
        return node_id not in self.down

    def leader(self) -> str | None:
        return None

    def policy_changed(self) -> None:
        pass

    def move(self, partition: int, target: str) -> str:
        self.calls.append(("move", target, str(partition)))
        return f"moved {partition} to {target}"


@pytest.mark.parametrize("kind", ["process", "power"])
def test_crashes_are_of_the_configured_kind(kind: CrashKind) -> None:
    target = RecordingTarget()
    nemesis = Nemesis(NemesisConfig(faults=("crash",), crash_kind=kind), target, random.Random(1))
    nemesis.apply(FaultAction(0, True, "crash", "n2"))
    nemesis.apply(FaultAction(10, False, "crash", "n2"))
    assert target.calls == [("crash", "n2", kind), ("restart", "n2", None)]


def test_a_move_draws_a_partition_and_a_target_and_acts_at_its_start_only() -> None:
    config = NemesisConfig(faults=("move",), interval_ms=500, start_after_ms=100)
    actions = plan(config, NODES, 10_000, random.Random(3), partitions=8)
    starts = [a for a in actions if a.start]
    assert starts and all(a.partition is not None and 0 <= a.partition < 8 and a.node in NODES for a in starts)
    assert len({a.partition for a in starts}) > 1, "partitions are drawn, not fixed"
    target = RecordingTarget()
    nemesis = Nemesis(config, target, random.Random(1))
    nemesis.apply(FaultAction(0, True, "move", "n3", partition=5))
    nemesis.apply(FaultAction(500, False, "move", "n3", partition=5))
    assert target.calls == [("move", "n3", "5")]
    assert [(p.kind, p.detail) for p in nemesis.periods] == [("move", "moved 5 to n3")]
