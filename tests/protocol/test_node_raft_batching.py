"""Node.step in leader mode with many Raft groups: the multi-Raft transport of kvstore/raft_batching.py.

Six partitions on three nodes, every node a replica of each; each node's preferred partitions (n1: 0 and 3,
n2: 1 and 4, n3: 2 and 5) are led by it. Driven by hand through test_node_leader.py's ``Net``.
"""

from __future__ import annotations

from kvstore.config import StorageConfig, local_cluster
from kvstore.effects import Effect, Send, SetTimer
from kvstore.messages import (
    NODE_PARTITION,
    BatchPutOp,
    BatchResults,
    GetOp,
    Message,
    PutOp,
    RaftBatch,
    SendFailed,
    TimerFired,
    Written,
)
from kvstore.raft_batching import MAX_BATCH_ITEMS, RAFT_TICK_TIMER
from replication.raft import LEADER, PROBE, REPLICATE, RaftReplica
from replication.raft_messages import AppendEntries, AppendReply, Heartbeat, HeartbeatReply
from tests.protocol.test_node_leader import Net

LED_BY_N1 = (0, 3)


def six_groups() -> Net:
    cfg = local_cluster(3, partitions=6, mode="leader", replicas=3, storage=StorageConfig(fsync="batch"))
    net = Net(cfg=cfg)
    net.run_for(500)
    return net


def raft(net: Net, node_id: str, partition: int) -> RaftReplica:
    replica = net.nodes[node_id].replicas[partition]
    assert isinstance(replica, RaftReplica)
    return replica


def envelopes(effects: list[Effect]) -> dict[str, list[tuple[int, type]]]:
    """Each RaftBatch sent, by destination: its items as (partition, message type)."""
    out: dict[str, list[tuple[int, type]]] = {}
    for effect in effects:
        if isinstance(effect, Send):
            assert isinstance(effect.msg.body, RaftBatch) and effect.msg.partition == NODE_PARTITION, effect
            assert effect.msg.dst not in out, f"two envelopes to {effect.msg.dst} in one step"
            out[effect.msg.dst] = [(p, type(body)) for p, body in effect.msg.body.items]
    return out


def fire_tick(net: Net, node_id: str) -> list[Effect]:
    net.now = net.timers[node_id].pop(RAFT_TICK_TIMER)
    return net.step(node_id, TimerFired(RAFT_TICK_TIMER))


def keys_of(net: Net, partitions: tuple[int, ...]) -> list[str]:
    """One key in each of ``partitions``."""
    partition_map = net.nodes["n1"].partition_map
    found: dict[int, str] = {}
    i = 0
    while len(found) < len(partitions):
        partition = partition_map.partition_for_key(f"k{i}")
        if partition in partitions:
            found.setdefault(partition, f"k{i}")
        i += 1
    return [found[p] for p in partitions]


def heartbeat_from_n1(net: Net, partition: int) -> Heartbeat:
    return Heartbeat(raft(net, "n1", partition).term, 0, 0)


def test_one_node_timer_heartbeats_every_group_it_leads_in_one_envelope_per_peer() -> None:
    net = six_groups()
    assert [p for p, r in net.nodes["n1"].replicas.items() if isinstance(r, RaftReplica) and r.role == LEADER] == [
        0,
        3,
    ]
    # No timer of its own per leader: one node tick.
    assert RAFT_TICK_TIMER in net.timers["n1"]
    assert not [key for key in net.timers["n1"] if key.endswith("/heartbeat")]
    at_ms = net.timers["n1"][RAFT_TICK_TIMER]
    effects = fire_tick(net, "n1")
    heartbeats = [(0, Heartbeat), (3, Heartbeat)]
    assert envelopes(effects) == {"n2": heartbeats, "n3": heartbeats}
    assert [e for e in effects if isinstance(e, SetTimer)] == [
        SetTimer(RAFT_TICK_TIMER, at_ms + net.cfg.timeouts.heartbeat_interval_ms)
    ]
    # The follower answers the whole envelope in one step: its replies coalesce too.
    [to_n2] = [m for m in net.queue if m.dst == "n2"]
    net.queue.remove(to_n2)
    replies = net.step("n2", to_n2)
    assert envelopes(replies) == {"n1": [(0, HeartbeatReply), (3, HeartbeatReply)]}


def test_a_step_that_writes_to_several_groups_sends_their_appends_in_one_envelope_per_peer() -> None:
    net = six_groups()
    keys = keys_of(net, LED_BY_N1)
    rid = net.submit("n1", BatchPutOp(tuple(PutOp(key, b"v") for key in keys)))
    appends = [(0, AppendEntries), (3, AppendEntries)]
    sent = {m.dst: [(p, type(body)) for p, body in m.body.items] for m in net.queue if isinstance(m.body, RaftBatch)}
    assert sent == {"n2": appends, "n3": appends}
    # The follower acknowledges both appends in one envelope, once they are durable.
    [to_n2] = [m for m in net.queue if m.dst == "n2"]
    net.queue.remove(to_n2)
    assert envelopes(net.step("n2", to_n2)) == {"n1": [(0, AppendReply), (3, AppendReply)]}
    net.run_for(100)
    result = net.replies[rid]
    assert isinstance(result, BatchResults) and all(isinstance(r, Written) for r in result.results), result


def test_durable_replies_leave_apart_from_the_others_which_do_not_wait_for_the_sync() -> None:
    net = six_groups()
    net.submit("n1", PutOp(keys_of(net, (3,))[0], b"v"))
    [to_n2] = [m for m in net.queue if m.dst == "n2"]
    net.queue.remove(to_n2)
    [append] = to_n2.body.items
    assert append[0] == 3 and isinstance(append[1], AppendEntries)
    mixed = RaftBatch(((0, heartbeat_from_n1(net, 0)), append))
    effects = net.step("n2", Message("n1", "n2", NODE_PARTITION, mixed))
    sends = [(e.durable, [(p, type(body)) for p, body in e.msg.body.items]) for e in effects if isinstance(e, Send)]
    # The acknowledgement of the append waits for the sync (fsync "batch"); the heartbeat's reply does not.
    assert sorted(sends) == [(False, [(0, HeartbeatReply)]), (True, [(3, AppendReply)])]


def test_an_envelope_that_could_not_be_sent_is_each_item_replicas_unreachable_peer() -> None:
    net = six_groups()
    assert all(raft(net, "n1", p).progress["n2"].state == REPLICATE for p in LED_BY_N1)
    net.submit("n1", BatchPutOp(tuple(PutOp(key, b"v") for key in keys_of(net, LED_BY_N1))))
    [to_n2] = [m for m in net.queue if m.dst == "n2"]
    net.queue.remove(to_n2)
    net.step("n1", SendFailed(to_n2))
    # Each group's leader learnt that its append never arrived: it probes n2 again, and n3 is untouched.
    assert [raft(net, "n1", p).progress["n2"].state for p in LED_BY_N1] == [PROBE, PROBE]
    assert [raft(net, "n1", p).progress["n3"].state for p in LED_BY_N1] == [REPLICATE, REPLICATE]


def test_a_hostile_envelope_is_checked_item_by_item_and_never_raises() -> None:
    net = six_groups()
    valid = (0, heartbeat_from_n1(net, 0))
    malformed: tuple[object, ...] = (
        (99, heartbeat_from_n1(net, 0)),  # a partition the cluster does not have
        (-1, heartbeat_from_n1(net, 0)),
        (3,),  # not a (partition, body) pair
        (3, heartbeat_from_n1(net, 3), 1),
        ("3", heartbeat_from_n1(net, 3)),
        (True, heartbeat_from_n1(net, 3)),
        7,
        (3, GetOp("k")),  # not a Raft message: its replica ignores it
        (3, RaftBatch(((3, heartbeat_from_n1(net, 3)),))),  # envelopes do not nest
        (3, AppendEntries(-1, 0, 0, (), 0)),  # a Raft message its replica finds malformed
    )
    effects = net.step("n2", Message("n1", "n2", NODE_PARTITION, RaftBatch((*malformed, valid))))  # type: ignore[arg-type]
    # Only the valid item was acted on: one reply, for partition 0.
    assert envelopes(effects) == {"n1": [(0, HeartbeatReply)]}


def test_an_envelope_over_the_bound_or_not_sent_as_node_traffic_is_dropped_whole() -> None:
    net = six_groups()
    item = (0, heartbeat_from_n1(net, 0))
    too_many = RaftBatch((item,) * (MAX_BATCH_ITEMS + 1))
    assert envelopes(net.step("n2", Message("n1", "n2", NODE_PARTITION, too_many))) == {}
    assert envelopes(net.step("n2", Message("n1", "n2", 0, RaftBatch((item,))))) == {}
    # From a node outside the cluster, or addressed to another node: ignored as any peer message.
    assert envelopes(net.step("n2", Message("n9", "n2", NODE_PARTITION, RaftBatch((item,))))) == {}
    assert envelopes(net.step("n2", Message("n1", "n3", NODE_PARTITION, RaftBatch((item,))))) == {}
    # Just at the bound it is taken: every item is answered, in one envelope.
    at_bound = RaftBatch((item,) * MAX_BATCH_ITEMS)
    replies = envelopes(net.step("n2", Message("n1", "n2", NODE_PARTITION, at_bound)))
    assert replies == {"n1": [(0, HeartbeatReply)] * MAX_BATCH_ITEMS}
    # A send failure of a hostile envelope is harmless too.
    net.step("n1", SendFailed(Message("n1", "n2", NODE_PARTITION, RaftBatch(((3,), (99, item[1]))))))  # type: ignore[arg-type]


def test_a_leader_that_steps_down_leaves_the_node_tick() -> None:
    net = six_groups()
    net.partition("n1")
    # Check-quorum: n1's leaders hear from no follower and step down within an election timeout or two.
    net.run_for(3 * net.cfg.timeouts.election_timeout_ms)
    assert net.nodes["n1"].leads() == 0
    # They stepped down on a tick (no quorum heard): the tick was not set again, as nothing is left to heartbeat.
    assert RAFT_TICK_TIMER not in net.timers["n1"]
    net.heal()
    net.run_for(2000)
    assert isinstance(net.call("n1", PutOp("k", b"v")), Written)
