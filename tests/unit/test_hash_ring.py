"""The consistent-hash ring: deterministic, balanced token choice; joins and leaves move only what they must.

Bounds used below, and why they hold: the allocator gives a joining node exactly its fair share of the
ring (vnodes / total tokens, up to 2**-64 rounding) whenever the donors' arcs are longer than one
per-token share, which they are in every ring built here. So the fraction of keys (or partitions) a join
moves is the new node's share up to sampling: 20k fixed keys, or 1024 evenly spaced partition points,
stay within 0.9..1.1 x 1/(k+1) (measured 0.990..1.048 for keys, 0.984..1.035 for partitions). With 16
tokens per node on 5 nodes the largest node owns 1.026x the mean share of the ring and of the 100k keys
here: the issue asks for <= 1.25x.
"""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from partitioning.hash_partitioner import key_hash
from partitioning.hash_ring import (
    MAX_TOKENS,
    PRECOMPUTED_N,
    RING_SIZE,
    HashRing,
    assign_partitions,
    partition_position,
    vnodes_for,
)

_rng = random.Random(20240611)
KEYS = [f"user:{_rng.getrandbits(64):016x}" for _ in range(100_000)]
HASHES = [key_hash(key) for key in KEYS]
HASHES_20K = HASHES[:20_000]
# Positions the ring must answer right, edges included.
POSITIONS = [0, 1, RING_SIZE - 1, RING_SIZE // 2, *(_rng.randrange(RING_SIZE) for _ in range(60))]


def ring_of(count: int, vnodes: int = 16) -> HashRing:
    return HashRing.build((f"node-{i}", vnodes) for i in range(1, count + 1))


def owners(ring: HashRing, hashes: list[int]) -> list[str]:
    return [ring.owner_at(h) for h in hashes]


def reference_preference(ring: HashRing, position: int, n: int) -> tuple[str, ...]:
    """The definition, walked token by token."""
    tokens = ring.tokens
    start = next((i for i, (p, _) in enumerate(tokens) if p >= position), 0)
    found: list[str] = []
    for step in range(len(tokens)):
        node = tokens[(start + step) % len(tokens)][1]
        if node not in found and len(found) < n:
            found.append(node)
    return tuple(found)


def without(nodes: tuple[str, ...], node_id: str) -> tuple[str, ...]:
    return tuple(x for x in nodes if x != node_id)


# --- determinism and serialization

# Token positions place data: a change here moves keys between every node of a cluster.
PINNED = [
    [167636174189438325, "node-b"],
    [2012310581560393486, "node-c"],
    [2473479183403132277, "node-a"],
    [4779322192616826229, "node-b"],
    [7085165201830520181, "node-a"],
    [9391008211044214133, "node-b"],
    [11696851220257908085, "node-a"],
    [14002694229471602037, "node-b"],
    [16308537238685295989, "node-a"],
    [18153211646056251150, "node-c"],
]


def test_token_choice_is_pinned_and_deterministic() -> None:
    build = [("node-a", 4), ("node-b", 4), ("node-c", 2)]
    ring = HashRing.build(build)
    assert ring.to_json() == PINNED
    assert ring == HashRing.build(build) and hash(ring) == hash(HashRing.build(build))
    assert ring.ownership() == pytest.approx({"node-a": 0.4, "node-b": 0.4, "node-c": 0.2}, abs=1e-12)
    # The first node's tokens are evenly spaced.
    first = HashRing().with_node("node-a", 4).tokens_of("node-a")
    assert {(b - a) % RING_SIZE for a, b in zip(first, first[1:] + first[:1], strict=True)} == {RING_SIZE // 4}
    assert ring.nodes == ("node-a", "node-b", "node-c")
    assert ring.tokens_of("node-c") == (2012310581560393486, 18153211646056251150)
    assert ring.tokens_of("node-z") == ()
    assert "node-a" in ring and "node-z" not in ring


def test_json_round_trip() -> None:
    ring = ring_of(5)
    doc = ring.to_json()
    assert HashRing.from_json(doc) == ring
    assert HashRing.from_json(json.loads(json.dumps(doc))) == ring
    assert HashRing.from_json([]) == HashRing()
    assert HashRing.from_json([(5, "a")]) == HashRing(((5, "a"),))


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (None, "must be a list"),
        ({"0": "a"}, "must be a list"),
        ("[[1, 'a']]", "must be a list"),
        ([[1, "a"]] * (MAX_TOKENS + 1), "at most 65536 tokens"),
        ([5], "token 0 must be a"),
        ([[1, "a", 2]], "token 0 must be a"),
        ([[1]], "token 0 must be a"),
        ([["1", "a"]], "position must be an int"),
        ([[1.0, "a"]], "position must be an int"),
        ([[True, "a"]], "position must be an int"),
        ([[None, "a"]], "position must be an int"),
        ([[-1, "a"]], "outside 0 <= position < 2\\*\\*64"),
        ([[RING_SIZE, "a"]], "outside 0 <= position < 2\\*\\*64"),
        ([[1, "a"], [2**70, "b"]], "outside"),
        ([[2, "a"], [1, "b"]], "token 1: positions must be sorted and distinct"),
        ([[1, "a"], [1, "b"]], "token 1: positions must be sorted and distinct"),
        ([[1, ""]], "non-empty str"),
        ([[1, 7]], "non-empty str"),
        ([[1, ["a"]]], "non-empty str"),
        ([[1, "a"], [2, None]], "token 1: the node id must be a non-empty str"),
    ],
)
def test_hostile_json_is_refused(doc: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HashRing.from_json(doc)


def test_the_constructor_checks_too() -> None:
    with pytest.raises(ValueError, match="sorted and distinct"):
        HashRing(((9, "a"), (3, "b")))
    with pytest.raises(ValueError, match="outside"):
        HashRing(((RING_SIZE, "a"),))
    with pytest.raises(ValueError, match="must be a tuple"):
        HashRing([(1, "a")])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pair"):
        HashRing(((1, "a", "b"),))  # type: ignore[arg-type]


# --- errors


def test_errors_are_clear() -> None:
    ring = ring_of(2)
    with pytest.raises(ValueError, match="already on the ring"):
        ring.with_node("node-1", 4)
    for bad in (0, -3, True, 1.5):
        with pytest.raises(ValueError, match="vnodes must be an int of at least 1"):
            ring.with_node("node-9", bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty str"):
        ring.with_node("", 4)
    with pytest.raises(ValueError, match="at most 65536 tokens"):
        ring.with_node("node-9", MAX_TOKENS)
    with pytest.raises(ValueError, match="not on the ring"):
        ring.without_node("node-9")
    for n in (0, -1):
        with pytest.raises(ValueError, match="n must be an int of at least 1"):
            ring.preference_list_at(0, n)
    for position in (-1, RING_SIZE, "0"):
        with pytest.raises(ValueError, match="position must be an int"):
            ring.owner_at(position)  # type: ignore[arg-type]
    empty = ring.without_node("node-1").without_node("node-2")
    assert empty == HashRing() and empty.nodes == () and empty.ownership() == {}
    for lookup in (lambda: empty.owner_at(0), lambda: empty.preference_list("k", 1), lambda: empty.owner("k")):
        with pytest.raises(ValueError, match="the ring is empty"):
            lookup()


def test_vnodes_for() -> None:
    assert vnodes_for(1.0, 16) == 16
    assert vnodes_for(2, 16) == 32
    assert vnodes_for(0.5, 3) == 2  # 1.5 rounds half up
    assert vnodes_for(0.001, 16) == 1  # at least one token
    assert vnodes_for(1.25, 64) == 80
    for weight in (0, -1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="weight"):
            vnodes_for(weight, 16)  # type: ignore[arg-type]
    for per_node in (0, 1.0, False):
        with pytest.raises(ValueError, match="vnodes_per_node"):
            vnodes_for(1.0, per_node)  # type: ignore[arg-type]


# --- joins, leaves, spread


@pytest.mark.parametrize("k", range(1, 10))
def test_a_join_moves_only_its_share_and_only_to_the_new_node(k: int) -> None:
    old = ring_of(k)
    new = old.with_node("joiner", 16)
    assert new.ownership()["joiner"] == pytest.approx(1 / (k + 1), abs=1e-9)
    assert set(old.tokens) < set(new.tokens)  # no old token moved
    before, after = owners(old, HASHES_20K), owners(new, HASHES_20K)
    moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert all(b == "joiner" for _, b in moved)
    assert 0.9 / (k + 1) <= len(moved) / len(HASHES_20K) <= 1.1 / (k + 1)

    partitions_before = assign_partitions(old, 1024, min(3, k))
    partitions_after = assign_partitions(new, 1024, min(3, k))
    moved_partitions = sum(a[0] != b[0] for a, b in zip(partitions_before, partitions_after, strict=True))
    assert 0.9 / (k + 1) <= moved_partitions / 1024 <= 1.1 / (k + 1)
    for a, b in zip(partitions_before, partitions_after, strict=True):
        # The joiner slots in somewhere; the old replicas keep their order, the last one may drop off.
        assert b[0] == a[0] or b[0] == "joiner"
        assert a[: len(without(b, "joiner"))] == without(b, "joiner")


def test_five_nodes_of_16_vnodes_spread_keys_within_the_acceptance_bound() -> None:
    ring = ring_of(5)
    counts = Counter(owners(ring, HASHES))
    mean = len(HASHES) / 5
    assert set(counts) == set(ring.nodes)
    assert max(counts.values()) <= 1.25 * mean  # the acceptance criterion (measured 1.026)
    ownership = ring.ownership()
    assert max(ownership.values()) * 5 <= 1.05  # measured 1.026
    assert sum(ownership.values()) == pytest.approx(1.0, abs=1e-12)
    for node, share in ownership.items():
        assert counts[node] / len(HASHES) == pytest.approx(share, abs=0.01)


@pytest.mark.parametrize("position", [0, 2, 4])
def test_twice_the_vnodes_owns_about_twice_the_share(position: int) -> None:
    nodes = [(f"node-{i}", vnodes_for(1.0, 16)) for i in range(4)]
    nodes.insert(position, ("big", vnodes_for(2.0, 16)))
    ring = HashRing.build(nodes)
    ownership = ring.ownership()
    others = [share for node, share in ownership.items() if node != "big"]
    assert ownership["big"] / (sum(others) / len(others)) == pytest.approx(2.0, rel=0.1)
    counts = Counter(owners(ring, HASHES_20K))
    assert counts["big"] / (sum(counts[n] for n, _ in nodes if n != "big") / 4) == pytest.approx(2.0, rel=0.1)


def test_a_leave_moves_only_the_leavers_keys() -> None:
    old = ring_of(5)
    new = old.without_node("node-3")
    assert new.nodes == ("node-1", "node-2", "node-4", "node-5")
    assert set(new.tokens) == {t for t in old.tokens if t[1] != "node-3"}
    before, after = owners(old, HASHES_20K), owners(new, HASHES_20K)
    assert all(a == "node-3" for a, b in zip(before, after, strict=True) if a != b)
    assert "node-3" not in after
    for position in POSITIONS:
        assert new.preference_list_at(position, 2) == without(old.preference_list_at(position, 3), "node-3")[:2]


def test_one_vnode_per_node_still_works() -> None:
    ring = ring_of(5, vnodes=1)
    assert len(ring.tokens) == 5
    assert sum(ring.ownership().values()) == pytest.approx(1.0)
    assert max(ring.ownership().values()) * 5 == pytest.approx(1.25)  # no old token moves: the best it can do


# --- lookups


def test_preference_lists() -> None:
    ring = ring_of(7, vnodes=8)
    for position in POSITIONS + [p for p, _ in ring.tokens] + [(p + 1) % RING_SIZE for p, _ in ring.tokens]:
        for n in range(1, 10):
            got = ring.preference_list_at(position, n)
            assert got == reference_preference(ring, position, n)
            assert len(got) == min(n, 7) and len(set(got)) == len(got)
            assert got[0] == ring.owner_at(position)
    assert set(ring.preference_list_at(0, 100)) == set(ring.nodes)
    for key in KEYS[:200]:
        assert ring.preference_list(key, 3) == ring.preference_list_at(key_hash(key), 3)
        assert ring.owner(key) == ring.owner_at(key_hash(key))
    assert PRECOMPUTED_N < 7  # both the precomputed tables and the walk were checked


def test_lookups_at_the_edges_of_a_token_and_the_wrap() -> None:
    ring = HashRing(((10, "a"), (20, "b"), (30, "a"), (40, "c")))
    assert [ring.owner_at(p) for p in (0, 10, 11, 20, 21, 30, 31, 40, 41, RING_SIZE - 1)] == [
        "a", "a", "b", "b", "a", "a", "c", "c", "a", "a",
    ]  # fmt: skip
    assert ring.preference_list_at(41, 3) == ("a", "b", "c")  # wraps to the first token
    assert ring.preference_list_at(21, 2) == ("a", "c")
    assert ring.preference_list_at(31, 3) == ("c", "a", "b")
    assert ring.preference_list_at(11, 5) == ("b", "a", "c")
    assert ring.ownership() == {"a": (RING_SIZE - 20) / RING_SIZE, "b": 10 / RING_SIZE, "c": 10 / RING_SIZE}
    lone = HashRing(((7, "solo"),))
    assert lone.owner_at(RING_SIZE - 1) == "solo" and lone.preference_list_at(8, 3) == ("solo",)
    assert lone.ownership() == {"solo": 1.0}


def test_partition_helpers() -> None:
    assert partition_position(0, 1024) == 0
    assert partition_position(1, 1024) == 2**54
    assert partition_position(1023, 1024) == 1023 * 2**54
    assert partition_position(2, 3) == 2 * (RING_SIZE // 3)
    for partition, partitions in ((1024, 1024), (-1, 1024), (0, 0), (0, True)):
        with pytest.raises(ValueError, match="partition"):
            partition_position(partition, partitions)
    ring = ring_of(4)
    table = assign_partitions(ring, 64, 3)
    assert len(table) == 64
    for p, replicas in enumerate(table):
        assert replicas == ring.preference_list_at(partition_position(p, 64), 3)
        assert len(set(replicas)) == 3
    assert assign_partitions(ring, 8, 9)[0] == ring.preference_list_at(0, 4)
    counts = Counter(replicas[0] for replicas in assign_partitions(ring, 1024, 1))
    assert max(counts.values()) <= 1.1 * 256


# --- random join/leave sequences

_NAMES = [f"n{i}" for i in range(8)]
_STEPS = st.lists(st.tuples(st.booleans(), st.sampled_from(_NAMES), st.integers(1, 8)), max_size=12)
_HASH_SAMPLE = HASHES[:300]


@settings(max_examples=120, deadline=None)
@given(_STEPS)
def test_random_joins_and_leaves_keep_the_invariants(steps: list[tuple[bool, str, int]]) -> None:
    ring, counts = HashRing(), dict[str, int]()
    applied: list[tuple[bool, str, int]] = []
    for join, name, vnodes in steps:
        if join and name not in counts:
            new, counts[name] = ring.with_node(name, vnodes), vnodes
        elif not join and name in counts:
            new = ring.without_node(name)
            del counts[name]
        else:
            continue
        applied.append((join, name, vnodes))
        positions = [p for p, _ in new.tokens]
        assert positions == sorted(set(positions))
        assert new.nodes == tuple(sorted(counts))
        assert {node: len(new.tokens_of(node)) for node in new.nodes} == counts
        assert HashRing.from_json(new.to_json()) == new
        if counts:
            assert sum(new.ownership().values()) == pytest.approx(1.0)
        if ring.tokens and new.tokens:
            for h in _HASH_SAMPLE:
                was, now = ring.owner_at(h), new.owner_at(h)
                assert was == now or (now == name if join else was == name)
            for position in POSITIONS[:16]:
                for n in (1, 2, 3):
                    old_list, new_list = ring.preference_list_at(position, n), new.preference_list_at(position, n)
                    assert len(set(new_list)) == len(new_list) == min(n, len(counts))
                    if join:  # the joiner slots in; the others keep their order
                        assert old_list[: len(without(new_list, name))] == without(new_list, name)
                    else:  # the leaver drops out; the others keep their order
                        assert new_list[: len(without(old_list, name))] == without(old_list, name)
        ring = new
    # The same sequence gives the same ring.
    replay = HashRing()
    for join, name, vnodes in applied:
        replay = replay.with_node(name, vnodes) if join else replay.without_node(name)
    assert replay == ring
