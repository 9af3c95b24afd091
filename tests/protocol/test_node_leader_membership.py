"""Node.step in leader mode: membership orders change the partitions' Raft groups, one step at a time.

A join makes the leaders of the partitions the balanced layout gives the new node add it as a learner, promote
it once caught up and remove the node it replaces; a leave drains the node the same way (a leader that leaves
hands its leadership over first) and marks it removed once it holds nothing. Driven by test_node_leader.py's
network, with timers fired in time order.
"""

from __future__ import annotations

from collections import Counter

from kvstore.config import ClusterConfig, StorageConfig, local_cluster
from kvstore.messages import Found, GetOp, PutOp, SetMember, Written
from partitioning.partition_map import ACTIVE, LEAVING, REMOVED
from replication.raft import LEADER, RaftReplica
from tests.protocol.test_node_leader import Net

PARTITIONS = 8


def config(founders: tuple[str, ...]) -> ClusterConfig:
    return local_cluster(
        4,
        partitions=PARTITIONS,
        mode="leader",
        replicas=3,
        initial_nodes=founders,
        storage=StorageConfig(fsync="always"),
    )


def write(net: Net, count: int) -> dict[str, bytes]:
    written: dict[str, bytes] = {}
    for i in range(count):
        key, value = f"key{i:02}", f"value-{i}".encode()
        assert isinstance(net.call("n1", PutOp(key, value)), Written)
        written[key] = value
    return written


def assert_groups_match_the_map(net: Net, members: tuple[str, ...]) -> None:
    """One map on every member; each partition's replicas are its group's voters, each holds a replica, one
    leads it, and nobody else holds one."""
    the_map = net.nodes[members[0]].partition_map
    assert all(net.nodes[n].partition_map == the_map for n in members)
    for p in range(PARTITIONS):
        replicas = the_map.replicas[p]
        assert len(replicas) == 3
        holders = {n for n, node in net.nodes.items() if p in node.replicas}
        assert holders == set(replicas), (p, holders, replicas)
        groups = [net.nodes[n].replicas[p] for n in replicas]
        assert all(isinstance(g, RaftReplica) and set(g.voters) == set(replicas) and not g.learners for g in groups)
        assert sum(1 for g in groups if isinstance(g, RaftReplica) and g.role == LEADER) == 1


def assert_copies_equal(net: Net, replicas_of: dict[int, tuple[str, ...]]) -> None:
    for p, replicas in replicas_of.items():
        copies = {n: net.nodes[n].storage.copy_of(p) for n in replicas}
        first = copies[replicas[0]]
        assert all(copy == first for copy in copies.values()), p


def test_a_joining_node_becomes_a_voter_of_its_share_of_partitions_and_the_data_reads_back_through_it() -> None:
    net = Net(cfg=config(("n1", "n2", "n3")))
    net.run_for(1000)
    assert all(p not in net.nodes["n4"].replicas for p in range(PARTITIONS))
    written = write(net, 24)
    net.step("n1", SetMember("n4", ACTIVE, net.cfg.address_text("n4")))
    assert net.nodes["n1"].order_refusal is None
    net.run_for(20_000)
    assert_groups_match_the_map(net, ("n1", "n2", "n3", "n4"))
    the_map = net.nodes["n1"].partition_map
    # The balanced layout: 24 replicas on 4 nodes, 6 each within the rebalancer's slack of 1.5.
    load = Counter(n for replicas in the_map.replicas for n in replicas)
    assert sum(load.values()) == 24 and all(5 <= load[n] <= 7 for n in ("n1", "n2", "n3", "n4")), load
    assert_copies_equal(net, dict(enumerate(the_map.replicas)))
    for key, value in written.items():
        answer = net.call("n4", GetOp(key))
        assert isinstance(answer, Found) and answer.value == value, key
    # And it takes writes as a voter of its groups.
    assert isinstance(net.call("n4", PutOp("after", b"join")), Written)
    assert isinstance(net.call("n2", GetOp("after")), Found)


def test_a_leaving_node_hands_its_leadership_over_its_partitions_re_replicate_and_it_is_marked_removed() -> None:
    net = Net(cfg=config(("n1", "n2", "n3", "n4")))
    net.run_for(1000)
    # n4 is the preferred owner of one partition: it leads it.
    assert any(isinstance(r, RaftReplica) and r.role == LEADER for r in net.nodes["n4"].replicas.values())
    written = write(net, 24)
    net.step("n2", SetMember("n4", LEAVING))
    assert net.nodes["n2"].order_refusal is None
    net.run_for(20_000)
    assert not net.nodes["n4"].replicas
    assert_groups_match_the_map(net, ("n1", "n2", "n3"))
    the_map = net.nodes["n1"].partition_map
    assert all(the_map.replicas[p] and "n4" not in the_map.replicas[p] for p in range(PARTITIONS))
    member = the_map.member("n4")
    assert member is not None and member.state == REMOVED
    assert_copies_equal(net, dict(enumerate(the_map.replicas)))
    for key, value in written.items():
        answer = net.call("n3", GetOp(key))
        assert isinstance(answer, Found) and answer.value == value, key


def test_a_learner_that_restarts_before_it_caught_up_resumes_as_a_learner_and_is_promoted() -> None:
    net = Net(cfg=config(("n1", "n2", "n3")))
    net.run_for(1000)
    write(net, 8)
    net.step("n1", SetMember("n4", ACTIVE, net.cfg.address_text("n4")))
    # Until n4 holds a replica of some partition, then crash it at once (as a learner, or before it got anything).
    for _ in range(2000):
        net.run_for(5)
        if net.nodes["n4"].replicas:
            break
    held = next(iter(net.nodes["n4"].replicas.values()))
    assert isinstance(held, RaftReplica) and "n4" in held.learners
    net.crash("n4")
    net.run_for(500)
    net.boot("n4")
    net.run_for(20_000)
    assert_groups_match_the_map(net, ("n1", "n2", "n3", "n4"))
