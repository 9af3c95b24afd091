"""The rebalance planner: minimal plans, balanced targets that move little, and bounded copy waves."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from partitioning.partition_map import PartitionMap
from partitioning.rebalance import Copy, Drop, Layout, Plan, balance, plan, schedule


def round_robin(nodes: int, partitions: int, replicas: int) -> dict[int, tuple[str, ...]]:
    ids = tuple(f"n{i}" for i in range(nodes))
    return dict(enumerate(PartitionMap.round_robin(ids, partitions, replicas).replicas))


def apply_plan(current: Layout, p: Plan) -> dict[int, frozenset[str]]:
    """Execute the plan on replica sets: every copy adds its target, every drop removes its node."""
    held = {q: set(nodes) for q, nodes in current.items()}
    for copy in p.copies:
        assert copy.source in held[copy.partition], copy
        assert copy.target not in held[copy.partition], copy
        held[copy.partition].add(copy.target)
    for drop in p.drops:
        held[drop.partition].remove(drop.node)
    return {q: frozenset(nodes) for q, nodes in held.items()}


def as_sets(layout: Layout) -> dict[int, frozenset[str]]:
    return {q: frozenset(nodes) for q, nodes in layout.items()}


def loads(layout: Layout, sizes: Mapping[int, int] | None = None) -> Counter[str]:
    out = Counter[str]()
    for q, nodes in layout.items():
        for n in nodes:
            out[n] += 1 if sizes is None else sizes[q]
    return out


def changed_replicas(before: Layout, after: Layout) -> int:
    return sum(len(set(after[q]) - set(before[q])) for q in before)


# --- plan -------------------------------------------------------------------------------------------------


def test_plan_actions_exact() -> None:
    current = {0: ("a", "b", "c"), 1: ("a", "b"), 2: ("c",), 3: ("a", "b"), 4: ("a", "b")}
    target = {0: ("a", "b", "d"), 1: ("c", "a"), 2: ("d", "e"), 3: ("a", "c"), 4: ("a", "b", "c")}
    result = plan(current, target)
    assert result.actions == (
        Copy(0, "c", "d"),  # c leaves partition 0: it is the source
        Copy(1, "b", "c"),
        Copy(2, "c", "d"),  # the leaving replica sources the first copy...
        Copy(2, "c", "e"),  # ...and the preferred owner (here the same node) the rest
        Copy(3, "b", "c"),  # the leaving follower, not the preferred owner a
        Copy(4, "a", "c"),  # nobody leaves: the preferred owner
        Drop(0, "c"),
        Drop(1, "b"),
        Drop(2, "c"),
        Drop(3, "b"),
    )
    assert dict(result.before) == current
    assert dict(result.after) == target
    assert apply_plan(current, result) == as_sets(target)


def test_plan_copies_are_minimal_and_sourced_from_current_replicas() -> None:
    current = round_robin(5, 64, 3)
    target = round_robin(6, 64, 3)
    result = plan(current, target)
    assert len(result.copies) == sum(len(set(target[q]) - set(current[q])) for q in current)
    assert len(result.drops) == sum(len(set(current[q]) - set(target[q])) for q in current)
    for c in result.copies:
        assert c.source in current[c.partition]
        leaving = set(current[c.partition]) - set(target[c.partition])
        if leaving:
            assert c.source in leaving
    assert apply_plan(current, result) == as_sets(target)


def test_plan_of_a_reorder_moves_no_data() -> None:
    result = plan({0: ("a", "b")}, {0: ("b", "a")})
    assert result.actions == ()
    assert result.after[0] == ("b", "a")


def test_plan_skips_unavailable_sources() -> None:
    current = {0: ("a", "b", "x"), 1: ("x", "a")}
    target = {0: ("a", "b", "c"), 1: ("a", "c")}
    assert plan(current, target).copies == (Copy(0, "x", "c"), Copy(1, "x", "c"))
    assert plan(current, target, unavailable={"x"}).copies == (Copy(0, "a", "c"), Copy(1, "a", "c"))
    with pytest.raises(ValueError, match="no available replica"):
        plan({0: ("x",)}, {0: ("a",)}, unavailable={"x"})


def test_plan_refuses_partitions_in_one_layout_only_and_bad_layouts() -> None:
    with pytest.raises(ValueError, match=r"partitions \[1\] are in the target"):
        plan({0: ("a",)}, {0: ("a",), 1: ("b",)})
    with pytest.raises(ValueError, match=r"partitions \[1\] are in the current"):
        plan({0: ("a",), 1: ("b",)}, {0: ("a",)})
    with pytest.raises(ValueError, match="lists a node twice"):
        plan({0: ("a", "a")}, {0: ("a",)})
    with pytest.raises(ValueError, match="lists a node twice"):
        plan({0: ("a",)}, {0: ("b", "b")})
    with pytest.raises(ValueError, match="no replicas"):
        plan({0: ()}, {0: ("a",)})


# --- balance ----------------------------------------------------------------------------------------------


def test_join_moves_a_sixth_of_the_replicas_all_to_the_new_node() -> None:
    current = round_robin(5, 64, 3)
    assert sorted(loads(current).values()) == [38, 38, 38, 39, 39]
    nodes = {f"n{i}": 1.0 for i in range(6)}

    target = balance(current, nodes, 3)
    result = plan(current, target)
    # 192 replicas, share 32 each: the new node is within 10% once it has 29 (>= 28.8); then every old node
    # holds at most ceil(163 / 5) = 33 <= 35.2. Fewest moves: 29 of 192 = 0.151 (1/6 = 0.167).
    assert len(result.copies) == 29
    assert {c.target for c in result.copies} == {"n5"}
    assert {d.node for d in result.drops} <= {f"n{i}" for i in range(5)}
    assert changed_replicas(current, target) == 29
    for q in current:  # at most one replica of a partition changed, and only for n5
        assert len(set(current[q]) - set(target[q])) == len(set(target[q]) - set(current[q])) <= 1
    assert loads(target) == Counter(n0=32, n1=32, n2=33, n3=33, n4=33, n5=29)
    # Leadership follows (no data moves): 64 / 6 = 10.7 each, 9.6..11.7 allowed.
    assert sorted(Counter(r[0] for r in target.values()).values()) == [10, 10, 11, 11, 11, 11]

    exact = balance(current, nodes, 3, tolerance=0.0)
    assert changed_replicas(current, exact) == 32  # exactly 1/6
    assert set(loads(exact).values()) == {32}
    assert {c.target for c in plan(current, exact).copies} == {"n5"}


def test_leave_moves_only_the_departed_nodes_replicas() -> None:
    current = round_robin(6, 64, 3)
    nodes = {f"n{i}": 1.0 for i in range(5)}
    target = balance(current, nodes, 3)
    gone = [q for q in current if "n5" in current[q]]
    assert len(gone) == 31
    for q in current:
        if q in gone:
            assert len(target[q]) == 3
            assert set(current[q]) - {"n5"} < set(target[q])
        else:
            assert set(target[q]) == set(current[q])
            assert target[q][0] == current[q][0]  # leaders kept where they survive
    assert changed_replicas(current, target) == 31
    assert loads(target) == Counter(n0=39, n1=39, n2=38, n3=38, n4=38)
    result = plan(current, target, unavailable={"n5"})
    assert len(result.copies) == 31
    assert {d.node for d in result.drops} == {"n5"}
    assert "n5" not in {c.source for c in result.copies}


def test_weights_are_honoured() -> None:
    target = balance({q: () for q in range(40)}, {"a": 1, "b": 1, "c": 2}, 1, tolerance=0.0)
    assert loads(target) == Counter(a=10, b=10, c=20)
    assert Counter(r[0] for r in target.values()) == Counter(a=10, b=10, c=20)
    # c's weighted share (2/3 of 2 x 30) exceeds one replica of every partition: it holds all 30, a and b
    # split the rest.
    capped = balance(round_robin(3, 30, 2), {"n0": 1, "n1": 1, "n2": 4}, 2, tolerance=0.0)
    assert loads(capped) == Counter(n0=15, n1=15, n2=30)


def test_sizes_are_honoured() -> None:
    sizes = {0: 90} | dict.fromkeys(range(1, 31), 10)  # 390 in all, a fair share of 97.5 on 4 nodes
    current = {q: (f"n{q % 4}",) for q in range(31)}  # n0 holds the huge one and 7 small ones
    assert loads(current, sizes)["n0"] == 160
    target = balance(current, dict.fromkeys(["n0", "n1", "n2", "n3"], 1.0), 1, sizes)
    per_node = loads(target, sizes)
    assert target[0] == ("n0",)  # the big partition stays put; small ones leave n0
    assert len([q for q in target if target[q] == ("n0",)]) == 2
    assert per_node == Counter(n0=100, n1=100, n2=100, n3=90)
    # n0 must shed 6 small partitions to get under 1.1 x 97.5 = 107.25, and nothing else moves.
    assert changed_replicas(current, target) == 6
    for load in per_node.values():
        assert abs(load - 97.5) <= 0.1 * 97.5
    # Counting replicas instead would leave n0 with its 8 partitions (31 / 4 = 7.75).
    assert balance(current, dict.fromkeys(["n0", "n1", "n2", "n3"], 1.0), 1) == current


def test_departed_replicas_go_to_the_least_loaded_nodes_in_their_place() -> None:
    current = {0: ("a", "x", "b"), 1: ("x", "c", "d"), 2: ("c", "d", "a"), 3: ("b", "a", "c")}
    target = balance(current, dict.fromkeys("abcd", 1.0), 3)
    # Live loads a3 b2 c3 d2. Partition 0 can take c or d: d, the less loaded, in x's place (d is now 3).
    # Partition 1 can take a or b: b. It lost its leader x; d leads nothing yet, so d leads it.
    assert target == {0: ("a", "d", "b"), 1: ("d", "b", "c"), 2: ("c", "d", "a"), 3: ("b", "a", "c")}
    assert plan(current, target, unavailable={"x"}).copies == (Copy(0, "a", "d"), Copy(1, "c", "b"))


def test_replica_count_follows_the_request_and_the_node_count() -> None:
    three = round_robin(4, 8, 3)
    two = balance(three, {f"n{i}": 1 for i in range(4)}, 2)
    assert all(len(r) == 2 and r[0] == three[q][0] for q, r in two.items())
    assert all(set(r) < set(three[q]) for q, r in two.items())
    assert sorted(loads(two).values()) == [4, 4, 4, 4]
    tiny = balance(three, {"n0": 1, "n1": 1}, 3)
    assert all(set(r) == {"n0", "n1"} for r in tiny.values())


def test_balance_validates_its_input() -> None:
    layout = {0: ("a",)}
    with pytest.raises(ValueError, match="no nodes"):
        balance(layout, {}, 1)
    with pytest.raises(ValueError, match="replicas must be >= 1"):
        balance(layout, {"a": 1}, 0)
    with pytest.raises(ValueError, match="lists a node twice"):
        balance({0: ("a", "a")}, {"a": 1}, 1)
    with pytest.raises(ValueError, match="negative size"):
        balance(layout, {"a": 1}, 1, sizes={0: -1})
    with pytest.raises(ValueError, match="no entry for partitions"):
        balance({0: ("a",), 1: ("a",)}, {"a": 1}, 1, sizes={0: 1})
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="weight"):
            balance(layout, {"a": bad}, 1)
    with pytest.raises(ValueError, match="tolerance"):
        balance(layout, {"a": 1}, 1, tolerance=-0.1)


# --- schedule ---------------------------------------------------------------------------------------------


def check_waves(p: Plan, waves: tuple[tuple[Copy, ...], ...], max_per_node: int) -> None:
    assert Counter(c for wave in waves for c in wave) == Counter(p.copies)
    for wave in waves:
        assert wave
        per_node = Counter(n for c in wave for n in (c.source, c.target))
        assert max(per_node.values()) <= max_per_node


def test_schedule_bounds_every_wave_and_covers_every_copy() -> None:
    current = round_robin(5, 64, 3)
    join = plan(current, balance(current, {f"n{i}": 1 for i in range(6)}, 3))
    for limit in (1, 2, 5, 100):
        waves = schedule(join, limit)
        check_waves(join, waves, limit)
        assert len(waves) == math.ceil(29 / limit)  # the new node receives every copy: the lower bound
    assert schedule(join, 3) == schedule(join, 3)
    reshuffle = plan(round_robin(6, 64, 3), {q: r[::-1] for q, r in round_robin(6, 64, 3).items()})
    assert schedule(reshuffle, 1) == ()
    shift = plan(
        round_robin(6, 64, 3),
        {q: tuple(f"n{(int(n[1]) + 1) % 7}" for n in r) for q, r in round_robin(6, 64, 3).items()},
    )
    # Every node moves up one: n0 only sends and n6 only receives, 31 copies each, the others 21 or 22.
    assert max(Counter(n for c in shift.copies for n in (c.source, c.target)).values()) == 31
    for limit, lower_bound in ((1, 31), (2, 16), (3, 11), (4, 8), (7, 5)):
        waves = schedule(shift, limit)
        check_waves(shift, waves, limit)
        assert len(waves) == lower_bound
    with pytest.raises(ValueError, match="max_per_node"):
        schedule(join, 0)


# --- properties -------------------------------------------------------------------------------------------

POOL = [f"n{i}" for i in range(8)]
GONE = ["x0", "x1"]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[int, tuple[str, ...]], dict[str, float], int, dict[int, int] | None]:
    live = draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=len(POOL), unique=True))
    nodes = {n: float(draw(st.integers(1, 3))) for n in live}
    partitions = draw(st.integers(1, 24))
    layout = {
        q: tuple(draw(st.lists(st.sampled_from(POOL + GONE), min_size=1, max_size=4, unique=True)))
        for q in range(partitions)
    }
    replicas = draw(st.integers(1, 4))
    sizes = draw(st.none() | st.fixed_dictionaries({q: st.integers(0, 100) for q in range(partitions)}))
    return layout, nodes, replicas, sizes


@settings(max_examples=150, deadline=None)
@given(scenarios(), st.sampled_from([0.0, 0.1, 0.3]))
def test_balance_output_is_valid_plannable_and_idempotent(
    scenario: tuple[dict[int, tuple[str, ...]], dict[str, float], int, dict[int, int] | None], tolerance: float
) -> None:
    layout, nodes, replicas, sizes = scenario
    target = balance(layout, nodes, replicas, sizes, tolerance)
    want = min(replicas, len(nodes))
    assert target.keys() == layout.keys()
    for r in target.values():
        assert len(r) == want
        assert len(set(r)) == want
        assert set(r) <= nodes.keys()
    assert balance(target, nodes, replicas, sizes, tolerance) == target

    result = plan(layout, target)
    assert apply_plan(layout, result) == as_sets(target)
    assert len(result.copies) == changed_replicas(layout, target)
    for limit in (1, 3):
        check_waves(result, schedule(result, limit), limit)
    down = set(GONE) | (set(POOL) - nodes.keys())
    if all(set(r) - down for r in layout.values()):  # every partition still has a live copy
        assert not {c.source for c in plan(layout, target, unavailable=down).copies} & down


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_balance_never_replaces_a_live_replica_it_does_not_have_to(
    scenario: tuple[dict[int, tuple[str, ...]], dict[str, float], int, dict[int, int] | None],
) -> None:
    # With an unbounded tolerance only departed and surplus replicas change: the fewest possible changes.
    layout, nodes, replicas, sizes = scenario
    target = balance(layout, nodes, replicas, sizes, tolerance=1e9)
    want = min(replicas, len(nodes))
    for q, r in target.items():
        live = [n for n in layout[q] if n in nodes]
        assert len(set(r) - set(live)) == max(0, want - len(live))
        if layout[q][0] in r:  # and the leader kept where it survives
            assert r[0] == layout[q][0]
