"""Fault policy, partition shapes and nemesis schedules."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from chaos.faults import PARTITION_KINDS, ChaosPolicy, Delay, partition_grudge
from chaos.leaders import current_leaders, pick_leader
from chaos.nemesis import FAULT_KINDS, PICK_RANGE, FaultAction, Nemesis, NemesisConfig, plan
from chaos.scenario import ScenarioError, from_dict
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
        # The roster the live nodes report: every node active unless a test says otherwise.
        self.members: dict[str, str] = dict.fromkeys(NODES, "active")
        # Who leads, per partition asked about (None: the node leading the most); nobody unless a test says.
        self.leaders: dict[int | None, str] = {}

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

    def leader(self, partition: int | None) -> str | None:
        self.calls.append(("leader", str(partition), None))
        return self.leaders.get(partition)

    def policy_changed(self) -> None:
        pass

    def move(self, partition: int, target: str) -> str:
        self.calls.append(("move", target, str(partition)))
        return f"moved {partition} to {target}"

    def roster(self) -> dict[str, str]:
        return dict(self.members)

    def join(self, node_id: str) -> str:
        self.calls.append(("join", node_id, None))
        self.members[node_id] = "active"
        return f"joined {node_id}"

    def leave(self, node_id: str) -> str:
        self.calls.append(("leave", node_id, None))
        self.members[node_id] = "leaving"
        return f"draining {node_id}"


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


def test_joins_and_leaves_draw_a_pick_when_planned_and_act_at_their_start_only() -> None:
    config = NemesisConfig(faults=("join", "leave"), interval_ms=500, start_after_ms=100)
    actions = plan(config, NODES, 10_000, random.Random(3))
    starts = [a for a in actions if a.start]
    assert {a.fault for a in starts} == {"join", "leave"}
    assert all(a.node is None and a.pick is not None and 0 <= a.pick < PICK_RANGE for a in starts)
    assert len({a.pick for a in starts}) == len(starts), "picks are drawn, not fixed"
    assert [a.pick for a in actions[::2]] == [a.pick for a in actions[1::2]]
    target = RecordingTarget()
    target.members = {"n1": "active", "n2": "active", "n3": "active"}  # n4 and n5 are spares
    nemesis = Nemesis(config, target, random.Random(1))
    nemesis.apply(FaultAction(0, True, "join", pick=7))  # candidates n4, n5: 7 % 2 picks n5
    nemesis.apply(FaultAction(500, False, "join", pick=7))
    assert target.calls == [("join", "n5", None)]
    assert [(p.kind, p.detail) for p in nemesis.periods] == [("join", "joined n5")]


def test_a_join_picks_a_node_that_is_not_active_leaving_and_removed_ones_included() -> None:
    target = RecordingTarget()
    target.members = {"n1": "active", "n2": "leaving", "n3": "active", "n4": "removed"}
    nemesis = Nemesis(NemesisConfig(faults=("join",)), target, random.Random(1))
    for pick in range(3):  # candidates in config order: n2, n4, n5
        nemesis.apply(FaultAction(pick, True, "join", pick=pick))
        nemesis.apply(FaultAction(pick, False, "join", pick=pick))
        target.members = {"n1": "active", "n2": "leaving", "n3": "active", "n4": "removed"}
    assert [c[1] for c in target.calls] == ["n2", "n4", "n5"]
    target.members = dict.fromkeys(NODES, "active")
    nemesis.apply(FaultAction(10, True, "join", pick=0))
    assert nemesis.periods[-1].detail == "join: every configured node is an active member"
    assert len(target.calls) == 3


def test_a_leave_keeps_min_active_members() -> None:
    target = RecordingTarget()
    nemesis = Nemesis(NemesisConfig(faults=("leave",)), target, random.Random(1))
    for at in range(5):
        nemesis.apply(FaultAction(at, True, "leave", pick=0))  # always the lowest active member
        nemesis.apply(FaultAction(at, False, "leave", pick=0))
    # 5 active: three leave (n1, n2, n3), then two are left and no more is drained.
    assert target.calls == [("leave", "n1", None), ("leave", "n2", None), ("leave", "n3", None)]
    assert [m for m, state in target.members.items() if state == "active"] == ["n4", "n5"]
    assert nemesis.periods[-1].detail == "leave: 2 active member(s), and at least 2 stay"
    strict = Nemesis(NemesisConfig(faults=("leave",), min_active=4), RecordingTarget(), random.Random(1))
    for at in range(2):
        strict.apply(FaultAction(at, True, "leave", pick=3))
        strict.apply(FaultAction(at, False, "leave", pick=3))
    assert [p.detail for p in strict.periods] == ["draining n4", "leave: 4 active member(s), and at least 4 stay"]
    with pytest.raises(ValueError, match="min_active must be an int of at least 1"):
        NemesisConfig(min_active=0)


def test_membership_faults_with_no_live_node_to_ask_do_nothing() -> None:
    target = RecordingTarget()
    target.members = {}
    nemesis = Nemesis(NemesisConfig(faults=("join", "leave")), target, random.Random(1))
    nemesis.apply(FaultAction(0, True, "join", pick=1))
    nemesis.apply(FaultAction(1, True, "leave", pick=1))
    nemesis.apply(FaultAction(1, False, "leave", pick=1))
    assert target.calls == []
    assert [p.detail for p in nemesis.periods] == ["join: no live node to ask who is a member",
                                                   "leave: no live node to ask who is a member"]


def test_a_move_to_a_node_that_is_not_active_goes_to_an_active_one() -> None:
    target = RecordingTarget()
    target.members = {"n1": "active", "n2": "leaving", "n3": "active"}
    nemesis = Nemesis(NemesisConfig(faults=("move",)), target, random.Random(1))
    nemesis.apply(FaultAction(0, True, "move", "n3", partition=1))  # active: as drawn
    nemesis.apply(FaultAction(1, True, "move", "n2", partition=1))  # index 1 of 2 active -> n3
    nemesis.apply(FaultAction(2, True, "move", "n5", partition=2))  # a spare, index 4 -> n1
    assert target.calls == [("move", "n3", "1"), ("move", "n3", "1"), ("move", "n1", "2")]


@pytest.mark.parametrize("founders", [0, 6, -1, True, "3"])
def test_founders_is_checked_against_the_node_count(founders: object) -> None:
    with pytest.raises(ScenarioError, match=r"bad\.toml: \[cluster\] founders must be an int in 1\.\.nodes \(5\)"):
        from_dict({"cluster": {"nodes": 5, "founders": founders}}, "bad.toml")


def test_founders_name_the_first_nodes() -> None:
    spec = from_dict({"cluster": {"nodes": 5, "founders": 3}}, "ok.toml").cluster
    assert spec.initial_nodes(("n1", "n2", "n3", "n4", "n5")) == ("n1", "n2", "n3")
    assert from_dict({"cluster": {"nodes": 5}}, "ok.toml").cluster.initial_nodes(("n1", "n2")) == ()


def test_kill_leader_crashes_the_busiest_leader_and_restarts_it_at_the_end() -> None:
    target = RecordingTarget()
    target.leaders = {None: "n3"}
    nemesis = Nemesis(NemesisConfig(faults=("kill-leader",), crash_kind="power"), target, random.Random(1))
    nemesis.apply(FaultAction(0, True, "kill-leader"))
    target.leaders = {None: "n1"}  # a new leader by the end: the killed one is restarted, not the new one
    nemesis.apply(FaultAction(500, False, "kill-leader"))
    assert target.calls == [("leader", "None", None), ("crash", "n3", "power"), ("restart", "n3", None)]
    assert [p.detail for p in nemesis.periods] == ["kill-leader n3 (leads the most partitions; power crash)"]


def test_leader_faults_aim_at_the_leader_of_a_chosen_partition() -> None:
    target = RecordingTarget()
    target.leaders = {None: "n1", 5: "n2"}
    nemesis = Nemesis(NemesisConfig(faults=("kill-leader", "partition-isolate-leader"), leader_partition=5), target,
                      random.Random(1))
    nemesis.apply(FaultAction(0, True, "kill-leader"))
    nemesis.apply(FaultAction(1, False, "kill-leader"))
    assert target.calls == [("leader", "5", None), ("crash", "n2", "process"), ("restart", "n2", None)]
    nemesis.apply(FaultAction(2, True, "partition-isolate-leader"))
    assert target.policy.on_send(0, msg("n2", "n4")) == () and target.policy.on_send(0, msg("n5", "n2")) == ()
    assert target.policy.on_send(0, msg("n1", "n4")) == (0,)
    nemesis.apply(FaultAction(3, False, "partition-isolate-leader"))
    assert target.policy.on_send(0, msg("n2", "n4")) == (0,)
    with pytest.raises(ValueError, match="leader_partition must be a partition number"):
        NemesisConfig(leader_partition=-1)


def test_kill_leader_with_no_leader_does_nothing_and_says_so() -> None:
    target = RecordingTarget()
    nemesis = Nemesis(NemesisConfig(faults=("kill-leader",), leader_partition=2), target, random.Random(1))
    nemesis.apply(FaultAction(0, True, "kill-leader"))
    nemesis.apply(FaultAction(500, False, "kill-leader"))
    assert target.calls == [("leader", "2", None)]
    assert [p.detail for p in nemesis.periods] == ["kill-leader: no live node leads partition 2"]


def test_mixed_crashes_draw_each_crash_kind_when_planned() -> None:
    config = NemesisConfig(faults=("crash", "kill-leader"), crash_kind="mixed", interval_ms=100, start_after_ms=0)
    actions = plan(config, NODES, 10_000, random.Random(4))
    assert {a.crash_kind for a in actions} == {"process", "power"}
    assert [a.crash_kind for a in actions[::2]] == [a.crash_kind for a in actions[1::2]]
    assert all(a.crash_kind is None for a in plan(NemesisConfig(faults=("crash",)), NODES, 10_000, random.Random(4)))
    target = RecordingTarget()
    nemesis = Nemesis(config, target, random.Random(1))
    nemesis.apply(FaultAction(0, True, "crash", "n4", crash_kind="power"))
    assert target.calls == [("crash", "n4", "power")]
    assert nemesis.periods[0].detail == "crash n4 (power)"


def test_the_leader_is_the_highest_term_claim_per_partition() -> None:
    said = {
        # n1 was cut off and still claims partitions 0 and 1 in term 2; n2 leads 0 in term 3.
        "n1": [{"partition": 0, "role": "leader", "term": 2}, {"partition": 1, "role": "leader", "term": 2}],
        "n2": [{"partition": 0, "role": "leader", "term": 3}, {"partition": 2, "role": "leader", "term": 1},
               {"partition": 1, "role": "follower", "term": 2}],
        "n3": [{"partition": 2, "role": "follower", "term": 1}, {"partition": 3, "leader": "n2"}],
    }
    assert current_leaders(said) == {0: "n2", 1: "n1", 2: "n2"}
    assert pick_leader(said, None) == "n2"
    assert pick_leader(said, 1) == "n1" and pick_leader(said, 3) is None
    assert pick_leader({"n1": [], "n2": []}, None) is None
