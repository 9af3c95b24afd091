"""PartitionMap: per-partition epochs, membership, merging without a coordinator, and its wire form."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from partitioning.partition_map import MAX_PARTITIONS, PartitionMap

NODES = ("n1", "n2", "n3")


def test_round_robin_places_partition_p_on_the_pth_node_and_starts_every_epoch_at_one() -> None:
    m = PartitionMap.round_robin(NODES, 5, replication_factor=2)
    assert m.replicas == (("n1", "n2"), ("n2", "n3"), ("n3", "n1"), ("n1", "n2"), ("n2", "n3"))
    assert (m.epochs, m.epoch, m.members, m.membership_epoch) == ((1,) * 5, 1, NODES, 1)
    assert (m.owned_by("n1"), m.partitions_of("n1")) == ((0, 3), (0, 2, 3))


def test_a_change_of_replicas_bumps_that_partition_and_the_map_epoch() -> None:
    m = PartitionMap.round_robin(NODES, 4)
    moved = m.with_replicas(2, ("n1",))
    assert (moved.replicas[2], moved.epochs, moved.epoch) == (("n1",), (1, 1, 2, 1), 2)
    assert m.replicas[2] == ("n3",), "maps are values"
    joined = moved.with_members((*NODES, "n4"))
    assert (joined.membership_epoch, joined.epoch, joined.members) == (2, 3, ("n1", "n2", "n3", "n4"))


def test_replicas_must_be_on_members_and_distinct() -> None:
    with pytest.raises(ValueError, match="not members"):
        PartitionMap((("n1",), ("n9",)), members=("n1",))
    with pytest.raises(ValueError, match="lists a node twice"):
        PartitionMap((("n1", "n1"),))
    with pytest.raises(ValueError, match="at least 1"):
        PartitionMap((("n1",),), epochs=(0,))
    with pytest.raises(ValueError, match="no replicas"):
        PartitionMap(((),))


def test_merge_keeps_the_newer_entry_of_each_partition_and_the_newer_membership() -> None:
    base = PartitionMap.round_robin(NODES, 4)
    a = base.with_replicas(0, ("n2",))  # partition 0 moved on one side
    b = base.with_replicas(1, ("n3",)).with_replicas(1, ("n1",)).with_members((*NODES, "n4"))
    merged = a.merge(b)
    assert merged.replicas == (("n2",), ("n1",), ("n3",), ("n1",))
    assert merged.epochs == (2, 3, 1, 1)
    assert (merged.members, merged.membership_epoch) == (("n1", "n2", "n3", "n4"), 2)
    assert merged == b.merge(a)
    assert merged.epoch > max(a.epoch, b.epoch)


def test_a_merged_membership_keeps_every_node_that_still_holds_a_replica() -> None:
    base = PartitionMap.round_robin(NODES, 3)
    # One side saw n3 hand partition 2 over and leave; the other knows a later entry with n3 holding it.
    left = base.with_replicas(2, ("n1",)).with_members(("n1", "n2"))
    later = base.with_replicas(2, ("n3",)).with_replicas(2, ("n3",))
    merged = left.merge(later)
    assert (merged.replicas[2], merged.members, merged.membership_epoch) == (("n3",), ("n1", "n2", "n3"), 2)


def test_maps_of_different_sizes_do_not_merge() -> None:
    with pytest.raises(ValueError, match="cannot merge"):
        PartitionMap.round_robin(NODES, 3).merge(PartitionMap.round_robin(NODES, 4))


def test_the_wire_form_round_trips_through_json() -> None:
    m = PartitionMap.round_robin(NODES, 6, 2).with_replicas(3, ("n3", "n2")).with_members((*NODES, "n4"))
    doc = json.loads(json.dumps(m.to_json()))
    assert PartitionMap.from_json(doc) == m
    assert doc["epoch"] == m.epoch == 3


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "must be an object"),
        ({"version": 2}, "unknown partition map version"),
        ({"version": 1, "surprise": 1}, "unknown partition map field"),
        ({"version": 1, "replicas": "n1", "epochs": [], "members": ["n1"], "membership_epoch": 1}, "replicas must"),
        ({"version": 1, "replicas": [[]], "epochs": [1], "members": ["n1"], "membership_epoch": 1}, "1 to 16"),
        ({"version": 1, "replicas": [[7]], "epochs": [1], "members": ["n1"], "membership_epoch": 1}, "a node id"),
        ({"version": 1, "replicas": [["n1"]], "epochs": [1], "members": [], "membership_epoch": 1}, "members"),
        ({"version": 1, "replicas": [["n1"]], "epochs": ["1"], "members": ["n1"], "membership_epoch": 1}, "epoch"),
        ({"version": 1, "replicas": [["n1"]], "epochs": [1], "members": ["n1"], "membership_epoch": True}, "epoch"),
        ({"version": 1, "replicas": [["n1"]], "epochs": [1, 1], "members": ["n1"], "membership_epoch": 1}, "2 epochs"),
        (
            {"version": 1, "replicas": [["n1"]], "epochs": [1], "members": ["n1"], "membership_epoch": 1, "epoch": 9},
            "does not match",
        ),
        ({"version": 1, "replicas": [["n1"]] * (MAX_PARTITIONS + 1)}, "at most"),
    ],
)
def test_a_malformed_wire_form_is_refused_with_what_is_wrong(doc: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PartitionMap.from_json(doc)


@st.composite
def histories(draw: st.DrawFn) -> list[PartitionMap]:
    """Maps that descend from one map through moves of partitions, each partition moved by one owner at a time
    (so two maps never hold one partition at one epoch with different replicas)."""
    base = PartitionMap.round_robin(NODES, 4)
    maps = [base]
    current = base
    for _ in range(draw(st.integers(0, 8))):
        p = draw(st.integers(0, 3))
        current = current.with_replicas(p, (draw(st.sampled_from(NODES)),))
        maps.append(current)
    return maps


@settings(max_examples=200, deadline=None)
@given(histories(), st.data())
def test_merging_is_order_free_and_learns_the_newest(maps: list[PartitionMap], data: st.DataObject) -> None:
    picks = data.draw(st.lists(st.sampled_from(maps), min_size=1, max_size=5))
    merged = picks[0]
    for m in picks[1:]:
        merged = merged.merge(m)
    reverse = picks[-1]
    for m in reversed(picks[:-1]):
        reverse = reverse.merge(m)
    assert merged == reverse, "commutative and associative"
    assert merged.merge(merged) == merged, "idempotent"
    newest = max(picks, key=lambda m: m.epoch)
    assert merged == newest, "maps from one history merge into the newest of them"


def test_with_entry_sets_a_partition_at_an_exact_epoch() -> None:
    m = PartitionMap.round_robin(NODES, 4)
    moved = m.with_entry(1, ("n3",), 7)
    assert (moved.replicas[1], moved.epochs, moved.epoch) == (("n3",), (1, 7, 1, 1), 7)
    assert m.merge(moved) == moved == moved.merge(m)
    with pytest.raises(ValueError, match="partition must be"):
        m.with_entry(4, ("n1",), 2)
    with pytest.raises(ValueError, match="at least 1"):
        m.with_entry(0, ("n1",), 0)
    with pytest.raises(ValueError, match="not members"):
        m.with_entry(0, ("n9",), 2)
