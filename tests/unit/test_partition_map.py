"""PartitionMap: per-partition epochs, the roster (membership), merging without a coordinator, and its wire form."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from partitioning.partition_map import (
    ACTIVE,
    LEAVING,
    MAX_PARTITIONS,
    REMOVED,
    Member,
    PartitionMap,
)

NODES = ("n1", "n2", "n3")


def test_round_robin_places_partition_p_on_the_pth_node_and_starts_every_epoch_at_one() -> None:
    m = PartitionMap.round_robin(NODES, 5, replication_factor=2)
    assert m.replicas == (("n1", "n2"), ("n2", "n3"), ("n3", "n1"), ("n1", "n2"), ("n2", "n3"))
    assert (m.epochs, m.epoch, m.members, m.active, m.membership_epoch) == ((1,) * 5, 1, NODES, NODES, 1)
    assert (m.owned_by("n1"), m.partitions_of("n1")) == ((0, 3), (0, 2, 3))


def test_a_founding_roster_is_at_membership_epoch_one_with_its_addresses() -> None:
    addresses = ("h1:1", "h2:2", "h3:3")
    m = PartitionMap.round_robin(("n3", "n1", "n2"), 6, addresses=addresses)
    assert m.roster == (
        Member("n1", "h2:2", ACTIVE, 1),
        Member("n2", "h3:3", ACTIVE, 1),
        Member("n3", "h1:1", ACTIVE, 1),
    ), "sorted by id, each with its own address, all at version 1"
    assert (m.membership_epoch, m.epoch, m.address_of("n3"), m.address_of("n9")) == (1, 1, "h1:1", "")
    assert m.replicas[0] == ("n3",), "placement follows the order given, not the roster's"
    # A map built from replicas alone has every holder as a founding member with no address.
    bare = PartitionMap((("n2",), ("n1",)))
    assert bare.roster == (Member("n1", "", ACTIVE, 1), Member("n2", "", ACTIVE, 1))
    assert bare.membership_epoch == 1
    with pytest.raises(ValueError, match="2 addresses for 3 nodes"):
        PartitionMap.round_robin(NODES, 3, addresses=("a:1", "b:2"))


def test_a_change_of_replicas_bumps_that_partition_and_the_map_epoch() -> None:
    m = PartitionMap.round_robin(NODES, 4)
    moved = m.with_replicas(2, ("n1",))
    assert (moved.replicas[2], moved.epochs, moved.epoch) == (("n1",), (1, 1, 2, 1), 2)
    assert m.replicas[2] == ("n3",), "maps are values"
    assert moved.roster == m.roster and moved.membership_epoch == 1


def test_a_new_member_starts_at_version_two_and_bumps_the_membership_epoch_and_the_map_epoch_by_one() -> None:
    m = PartitionMap.round_robin(NODES, 4).with_replicas(2, ("n1",))
    joined = m.with_member("n4", ACTIVE, "h4:4")
    assert joined.member("n4") == Member("n4", "h4:4", ACTIVE, 2)
    assert (joined.membership_epoch, joined.epoch) == (m.membership_epoch + 1, m.epoch + 1) == (2, 3)
    assert (joined.members, joined.active) == (("n1", "n2", "n3", "n4"), ("n1", "n2", "n3", "n4"))
    assert joined.replicas == m.replicas and joined.epochs == m.epochs, "a join moves nothing by itself"
    assert m.member("n4") is None and not m.knows("n4"), "maps are values"
    # Every later change of an entry is one version more, and one membership epoch more; the address stays.
    leaving = joined.with_member("n4", LEAVING)
    assert leaving.member("n4") == Member("n4", "h4:4", LEAVING, 3)
    assert (leaving.membership_epoch, leaving.epoch) == (3, 4)
    assert (leaving.members, leaving.active) == (("n1", "n2", "n3", "n4"), NODES)
    removed = leaving.with_member("n4", REMOVED)
    assert removed.member("n4") == Member("n4", "h4:4", REMOVED, 4)
    assert (removed.members, removed.active, removed.knows("n4"), removed.epoch) == (NODES, NODES, True, 5)
    # A founding member's change starts from version 1; a new address replaces the old one.
    moved_host = m.with_member("n2", ACTIVE, "elsewhere:9")
    assert moved_host.member("n2") == Member("n2", "elsewhere:9", ACTIVE, 2)
    assert (moved_host.membership_epoch, moved_host.address_of("n2")) == (2, "elsewhere:9")


def test_replicas_must_be_on_roster_nodes_and_distinct() -> None:
    with pytest.raises(ValueError, match=r"replicas on nodes that are not members: \['n9'\]"):
        PartitionMap((("n1",), ("n9",)), roster=(Member("n1", "", ACTIVE, 1),))
    with pytest.raises(ValueError, match="lists a node twice"):
        PartitionMap((("n1", "n1"),))
    with pytest.raises(ValueError, match="at least 1"):
        PartitionMap((("n1",),), epochs=(0,))
    with pytest.raises(ValueError, match="no replicas"):
        PartitionMap(((),))
    with pytest.raises(ValueError, match="the roster lists a node twice"):
        PartitionMap((("n1",),), roster=(Member("n1", "", ACTIVE, 1), Member("n1", "", LEAVING, 2)))
    # A removed node may still hold a replica (a move to it was under way): it is known, and it drains.
    PartitionMap((("n1",),), roster=(Member("n1", "", REMOVED, 3), Member("n2", "", ACTIVE, 1)))


def test_merge_keeps_the_newer_entry_of_each_partition_and_the_newer_roster_entries() -> None:
    base = PartitionMap.round_robin(NODES, 4)
    a = base.with_replicas(0, ("n2",))  # partition 0 moved on one side
    b = base.with_replicas(1, ("n3",)).with_replicas(1, ("n1",)).with_member("n4", ACTIVE, "h4:4")
    merged = a.merge(b)
    assert merged.replicas == (("n2",), ("n1",), ("n3",), ("n1",))
    assert merged.epochs == (2, 3, 1, 1)
    assert (merged.members, merged.membership_epoch) == (("n1", "n2", "n3", "n4"), 2)
    assert merged.member("n4") == Member("n4", "h4:4", ACTIVE, 2)
    assert merged == b.merge(a)
    assert merged.epoch == 5 > max(a.epoch, b.epoch)


def test_a_concurrent_join_at_one_copy_and_leave_at_another_both_survive_a_merge() -> None:
    base = PartitionMap.round_robin(NODES, 6)
    joined = base.with_member("n4", ACTIVE, "h4:4")
    left = base.with_member("n2", LEAVING)
    for merged in (joined.merge(left), left.merge(joined)):
        assert merged.member("n4") == Member("n4", "h4:4", ACTIVE, 2)
        assert merged.member("n2") == Member("n2", "", LEAVING, 2)
        assert (merged.active, merged.members) == (("n1", "n3", "n4"), ("n1", "n2", "n3", "n4"))
        assert (merged.membership_epoch, merged.epoch) == (3, 3)
        assert merged.draining() == ("n2",)


def test_a_removal_is_never_undone_by_merging_an_older_map() -> None:
    base = PartitionMap.round_robin(NODES, 3).with_member("n4", ACTIVE, "h4:4")
    leaving = base.with_member("n4", LEAVING)
    removed = leaving.with_member("n4", REMOVED)
    for older in (base, leaving, PartitionMap.round_robin(NODES, 3)):
        for merged in (removed.merge(older), older.merge(removed)):
            assert merged.member("n4") == Member("n4", "h4:4", REMOVED, 4)
            assert "n4" not in merged.members and merged.knows("n4")
    # A concurrent change of the same version (a re-join at a copy that saw only the leave) loses to the removal.
    rejoined = leaving.with_member("n4", ACTIVE)
    assert rejoined.member("n4") == Member("n4", "h4:4", ACTIVE, 4)
    assert removed.merge(rejoined) == rejoined.merge(removed) == removed
    # A re-join ordered after the removal is newer, and wins.
    back = removed.with_member("n4", ACTIVE, "h4:5")
    assert back.merge(removed) == removed.merge(back) == back
    assert back.member("n4") == Member("n4", "h4:5", ACTIVE, 5)


def test_member_entries_of_one_version_are_ordered_by_state_then_address() -> None:
    a = Member("n1", "a:1", ACTIVE, 3)
    b = Member("n1", "b:1", ACTIVE, 3)
    c = Member("n1", "a:1", LEAVING, 3)
    d = Member("n1", "z:1", ACTIVE, 4)
    assert a.newer(b) == b.newer(a) == b
    assert b.newer(c) == c.newer(b) == c
    assert c.newer(d) == d.newer(c) == d
    assert a.newer(a) == a


def test_draining_lists_nodes_that_hold_replicas_but_take_no_partitions() -> None:
    m = PartitionMap.round_robin(("n1", "n2", "n3", "n4"), 4)
    assert m.draining() == ()
    leaving = m.with_member("n2", LEAVING).with_member("n3", LEAVING)
    assert leaving.draining() == ("n2", "n3")
    # n2 handed its only partition over: leaving still, but with nothing to give away.
    emptied = leaving.with_replicas(1, ("n1",))
    assert (emptied.draining(), emptied.members) == (("n3",), ("n1", "n2", "n3", "n4"))
    # Removed while a move to it was under way: it still holds a replica, so it drains.
    removed_holder = emptied.with_member("n4", REMOVED)
    assert removed_holder.draining() == ("n3", "n4")
    assert removed_holder.members == ("n1", "n2", "n3") and removed_holder.partitions_of("n4") == (3,)
    removed_empty = emptied.with_member("n2", REMOVED)
    assert removed_empty.draining() == ("n3",)


def test_maps_of_different_sizes_do_not_merge() -> None:
    with pytest.raises(ValueError, match="cannot merge"):
        PartitionMap.round_robin(NODES, 3).merge(PartitionMap.round_robin(NODES, 4))


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
    with pytest.raises(ValueError, match="partition must be"):
        m.with_replicas(True, ("n1",))


# ---------------------------------------------------------------- the wire form


def _doc() -> dict[str, Any]:
    """A valid version-2 wire form: n1 active at h1:1, n2 leaving; two partitions."""
    return {
        "version": 2,
        "epoch": 3,
        "membership_epoch": 2,
        "members": ["n1", "n2"],
        "roster": [
            {"node": "n1", "address": "h1:1", "state": "active", "version": 1},
            {"node": "n2", "address": "", "state": "leaving", "version": 2},
        ],
        "replicas": [["n1"], ["n2"]],
        "epochs": [1, 2],
    }


def test_the_wire_form_round_trips_through_json() -> None:
    m = (
        PartitionMap.round_robin(NODES, 6, 2, addresses=("h1:1", "h2:2", "h3:3"))
        .with_replicas(3, ("n3", "n2"))
        .with_member("n4", ACTIVE, "h4:4")
        .with_member("n2", LEAVING)
    )
    doc = json.loads(json.dumps(m.to_json()))
    assert PartitionMap.from_json(doc) == m
    assert (doc["version"], doc["epoch"], doc["membership_epoch"], doc["members"]) == (
        2,
        m.epoch,
        3,
        ["n1", "n2", "n3", "n4"],
    )
    assert m.epoch == 4
    assert doc["roster"] == [
        {"node": "n1", "address": "h1:1", "state": "active", "version": 1},
        {"node": "n2", "address": "h2:2", "state": "leaving", "version": 2},
        {"node": "n3", "address": "h3:3", "state": "active", "version": 1},
        {"node": "n4", "address": "h4:4", "state": "active", "version": 2},
    ]
    assert PartitionMap.from_json(_doc()).to_json() == _doc()
    # The derived fields are checked when present, but may be left out.
    bare = _doc()
    del bare["members"], bare["membership_epoch"]
    assert PartitionMap.from_json(bare) == PartitionMap.from_json(_doc())


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """``_doc()`` with the field at ``path`` set to ``value`` (deleted when ``value`` is ``_DELETE``)."""
    doc = copy.deepcopy(_doc())
    target: Any = doc
    for step in path[:-1]:
        target = target[step]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


_DELETE = object()
_V1 = {"version": 1, "replicas": [["n1"]], "epochs": [1], "members": ["n1"], "membership_epoch": 1, "epoch": 1}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "must be an object, not list"),
        (_V1, "unknown partition map version 1"),
        ({"version": 3}, "unknown partition map version 3"),
        (_with(("surprise",), 1), "unknown partition map field.*surprise"),
        (_with(("replicas",), "n1"), "replicas must be a list"),
        (_with(("replicas",), [["n1"]] * (MAX_PARTITIONS + 1)), "at most 65536 partitions"),
        (_with(("replicas", 0), []), "partition 0 replicas must be a list of 1 to 16"),
        (_with(("replicas", 0), [7]), "partition 0 replicas: a node id must be a str"),
        (_with(("epochs",), "1"), "epochs must be a list"),
        (_with(("epochs",), ["1", 2]), "every partition epoch must be an int"),
        (_with(("epochs",), [True, 2]), "every partition epoch must be an int"),
        (_with(("epochs",), [1, 2, 1]), "3 epochs for 2 partitions"),
        (_with(("epoch",), 9), "the map's epoch 9 does not match"),
        (_with(("members",), ["n1"]), "members does not match the roster"),
        (_with(("roster",), []), "roster must be a list of 1 to 1024"),
        (_with(("roster",), "n1"), "roster must be a list"),
        (_with(("roster", 1), ["n2", "", "leaving", 2]), "a roster entry is an object of node, address, state"),
        (_with(("roster", 1, "state"), "gone"), r"n2: state must be one of .*not 'gone'"),
        (_with(("roster", 1, "state"), ["active"]), "n2: state must be one of"),
        (_with(("roster", 1, "version"), 0), "n2: a member's version must be a positive int, not 0"),
        (_with(("roster", 1, "version"), True), "n2: a member's version must be a positive int, not True"),
        (_with(("roster", 1, "version"), "2"), "n2: a member's version must be a positive int"),
        (_with(("roster", 1, "version"), 2.0), "n2: a member's version must be a positive int"),
        (_with(("roster", 1, "version"), 1 << 62), "n2: a member's version must be a positive int"),
        (_with(("roster", 1, "version"), _DELETE), "a roster entry is an object of node, address, state and version"),
        (_with(("roster", 1, "node"), _DELETE), "a roster entry is an object of node, address, state and version"),
        (_with(("roster", 1, "address"), _DELETE), "a roster entry is an object of node, address, state and version"),
        (_with(("roster", 1, "extra"), 1), "a roster entry is an object of node, address, state and version"),
        (_with(("roster", 1, "node"), 7), "a node id must be a str"),
        (_with(("roster", 1, "node"), ""), "a node id must be a str of 1 to 256"),
        (_with(("roster", 1, "node"), ["n2"]), "a node id must be a str"),
        (_with(("roster", 1, "address"), None), "n2: an address must be a str"),
        (_with(("roster", 1, "address"), "h" * 301), "n2: an address must be a str of at most 300"),
        (_with(("roster", 1, "node"), "n9"), r"replicas on nodes that are not members: \['n2'\]"),
        (_with(("roster", 1, "node"), "n1"), "the roster lists a node twice"),
    ],
)
def test_a_malformed_wire_form_is_refused_with_what_is_wrong(doc: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PartitionMap.from_json(doc)


def test_a_duplicate_roster_entry_is_refused_even_when_identical() -> None:
    doc = _doc()
    doc["roster"].append(dict(doc["roster"][0]))
    with pytest.raises(ValueError, match="the roster lists a node twice"):
        PartitionMap.from_json(doc)


# ---------------------------------------------------------------- merging is a join (a lattice)


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
def test_maps_of_one_history_merge_into_the_newest(maps: list[PartitionMap], data: st.DataObject) -> None:
    picks = data.draw(st.lists(st.sampled_from(maps), min_size=1, max_size=5))
    merged = picks[0]
    for m in picks[1:]:
        merged = merged.merge(m)
    newest = max(picks, key=lambda m: m.epoch)
    assert merged == newest, "maps from one history merge into the newest of them"


ALL_NODES = ("n1", "n2", "n3", "n4", "n5")
_CHANGES = st.one_of(
    st.tuples(
        st.just("member"),
        st.sampled_from(ALL_NODES),
        st.sampled_from((ACTIVE, LEAVING, REMOVED)),
        st.sampled_from((None, "", "h:1", "h:2")),
    ),
    st.tuples(st.just("replicas"), st.integers(0, 3), st.sampled_from(ALL_NODES), st.sampled_from(ALL_NODES)),
    st.tuples(st.just("merge"), st.integers(0, 3)),
)


def _apply(copies: list[PartitionMap], at: int, change: tuple[Any, ...]) -> None:
    """One change at copy ``at``: a roster entry, a partition's replicas (on roster nodes), or learning another
    copy's map."""
    m = copies[at]
    if change[0] == "member":
        _, node, state, address = change
        copies[at] = m.with_member(node, state, address)
    elif change[0] == "replicas":
        _, p, a, b = change
        known = [n for n in (a, b) if m.knows(n)]
        if known:
            copies[at] = m.with_replicas(p, tuple(dict.fromkeys(known)))
    else:
        copies[at] = m.merge(copies[change[1]])


@st.composite
def concurrent_copies(draw: st.DrawFn) -> list[PartitionMap]:
    """Four copies of one map, each changed on its own (conflicting changes included: two copies may set one
    partition at one epoch, or one member at one version, differently) and now and then learning another's."""
    copies = [PartitionMap.round_robin(NODES, 4, addresses=("h:1", "h:1", "h:1"))] * 4
    for _ in range(draw(st.integers(0, 14))):
        _apply(copies, draw(st.integers(0, 3)), draw(_CHANGES))
    return copies


@settings(max_examples=300, deadline=None)
@given(concurrent_copies())
def test_merge_is_commutative_associative_and_idempotent(copies: list[PartitionMap]) -> None:
    a, b, c, _ = copies
    assert a.merge(b) == b.merge(a), "commutative"
    assert a.merge(b).merge(c) == a.merge(b.merge(c)), "associative"
    assert a.merge(a) == a, "idempotent"
    ab = a.merge(b)
    assert ab.merge(a) == ab == ab.merge(b), "a merge knows all of both sides"
    assert ab.epoch >= max(a.epoch, b.epoch), "the epoch never goes back"
    assert ab.membership_epoch >= max(a.membership_epoch, b.membership_epoch)
    for node in ALL_NODES:
        versions = [m.member(node).version for m in (a, b) if m.member(node) is not None]  # type: ignore[union-attr]
        merged = ab.member(node)
        assert (merged.version if merged else None) == (max(versions) if versions else None)
        # Removed is sticky: once a copy has a node removed, no merge with an older entry brings it back.
        for m in (a, b):
            own = m.member(node)
            if own is not None and own.state == REMOVED and own.version == max(versions):
                assert merged is not None and merged.state == REMOVED
    # Every order of merging all four copies gives one map.
    forward = copies[0].merge(copies[1]).merge(copies[2]).merge(copies[3])
    backward = copies[3].merge(copies[2]).merge(copies[1]).merge(copies[0])
    pairs = copies[0].merge(copies[2]).merge(copies[1].merge(copies[3]))
    assert forward == backward == pairs
    # And the merged map survives the wire.
    assert PartitionMap.from_json(json.loads(json.dumps(forward.to_json()))) == forward
