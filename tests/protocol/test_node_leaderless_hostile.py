"""Hostile peer input at a leaderless node: leaderless and anti-entropy messages with junk in every field (what
the codec lets through, and wrong types given to ``Node.step`` directly), for partitions the node holds, does
not hold or that do not exist, and hinted writes naming this node, no node, a node outside the cluster or one
that holds no replica of the partition. Nothing raises, nothing is stored that does not decode, and every hint
kept is for a replica of its partition."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore import codec
from kvstore.codec import CodecError
from kvstore.effects import Send
from kvstore.hint_store import MetaHintStore
from kvstore.messages import DeleteOp, FoundSiblings, GetOp, Message, PutOp, Stored
from kvstore.version_store import KvVersionStore
from replication import dvv
from replication.anti_entropy import ANTI_ENTROPY_MESSAGES
from replication.dvv import Sibling, Versions
from replication.leaderless_messages import (
    LEADERLESS_MESSAGES,
    HandoffRequest,
    KeyWriteAck,
    KeyWriteRequest,
    PurgeKey,
)
from replication.vclock import VectorClock
from tests.protocol.leaderless_node_net import LeaderlessNet, keys_with, leaderless_config

junk = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**64), max_value=2**64), st.text(max_size=6),
    st.binary(max_size=40), st.lists(st.integers(), max_size=3), st.lists(st.text(max_size=3), max_size=3),
    st.sampled_from([b"", b"\xc1", b"\x92\x90", b"\x92\x91\x93\xa2n1\x01\x00\x90"]),
)
MESSAGE_TYPES = (*LEADERLESS_MESSAGES, *ANTI_ENTROPY_MESSAGES)


def a_state(value: bytes, node: str = "n1", counter: int = 1) -> bytes:
    context = VectorClock.of({node: counter})
    return dvv.encode(Versions((Sibling((node, counter), value, 5),), context))


def node_sound(net: LeaderlessNet, node_id: str) -> None:
    """Every record of ``node_id`` decodes, and every hint it keeps is for a replica of an existing partition
    that this node holds no replica of."""
    node = net.nodes[node_id]
    partition_map = node.partition_map
    for partition in range(partition_map.partition_count):
        store = KvVersionStore(node.storage, partition)
        for key, _ in node.storage.copy_of(partition):
            store.get(key)  # raises if it does not decode
    for hint in MetaHintStore(node.storage).load():
        assert 0 <= hint.partition < partition_map.partition_count, hint
        replicas = partition_map.replicas[hint.partition]
        assert hint.target in replicas and node_id not in replicas, hint
        dvv.decode(hint.state)


def junk_message(data: st.DataObject, typed: bool) -> tuple[object, int, str]:
    cls = data.draw(st.sampled_from(MESSAGE_TYPES))
    values = {f.name: data.draw(junk) for f in dataclasses.fields(cls)}
    body = cls(**values)
    if typed:
        try:
            body = codec.decode(codec.encode(body))
        except (CodecError, ValueError, TypeError, OverflowError):
            body = None
    partition = data.draw(st.sampled_from([0, 1, 2, 3, -1, 4, 2**40]))
    src = data.draw(st.sampled_from(["n2", "n3", "n4", "nobody"]))
    return body, partition, src


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_junk_peer_messages_never_crash_a_node_or_store_anything_wrong(data: st.DataObject) -> None:
    net = LeaderlessNet(cfg=leaderless_config())
    key = keys_with(net, lambda _p, pref: "n1" in pref)[0]
    assert isinstance(net.request("n1", PutOp(key, b"v")), Stored)
    for _ in range(data.draw(st.integers(1, 6))):
        body, partition, src = junk_message(data, typed=data.draw(st.booleans()))
        if body is None:
            continue
        net.step("n1", Message(src, "n1", partition, body))
    net.run_for(1000)
    node_sound(net, "n1")
    got = net.request("n2", GetOp(key, r="all"))
    assert getattr(got, "values", None) == (b"v",), got


def hinted(net: LeaderlessNet, dst: str, partition: int, hint_for: str, key: str = "k") -> list[Send]:
    effects = net.step(dst, Message("n2", dst, partition, KeyWriteRequest(7, key, a_state(b"h"), hint_for)))
    return [e for e in effects if isinstance(e, Send)]


def a_partition_without(net: LeaderlessNet, node_id: str) -> tuple[int, tuple[str, ...]]:
    m = net.nodes[node_id].partition_map
    partition = next(p for p in range(m.partition_count) if node_id not in m.replicas[p])
    return partition, m.replicas[partition]


def test_a_hinted_write_for_a_replica_of_the_partition_is_kept_and_acknowledged() -> None:
    net = LeaderlessNet(cfg=leaderless_config())
    partition, replicas = a_partition_without(net, "n1")
    (send,) = hinted(net, "n1", partition, replicas[0])
    assert send.msg.body == KeyWriteAck(7, "k") and send.durable
    assert len(net.hints("n1")) == 1
    node_sound(net, "n1")


def test_hinted_writes_naming_nobody_a_stranger_or_a_non_replica_are_refused_and_nothing_is_kept() -> None:
    net = LeaderlessNet(cfg=leaderless_config())
    partition, replicas = a_partition_without(net, "n1")
    held = next(p for p in range(4) if p != partition and "n1" in net.nodes["n1"].partition_map.replicas[p])
    for target_partition, hint_for in [
        (partition, "nobody"),  # not a node of the cluster
        (partition, "n1"),  # this node, which holds no replica of the partition
        (partition, ""),  # no one: a plain write to a node that holds no replica
        (4, replicas[0]),  # a partition that does not exist
        (-1, replicas[0]),
        (held, "n2" if "n2" in net.nodes["n1"].partition_map.replicas[held] else replicas[0]),
    ]:
        for send in hinted(net, "n1", target_partition, hint_for):
            assert isinstance(send.msg.body, KeyWriteAck) and not send.msg.body.ok, (target_partition, hint_for)
    assert net.hints("n1") == []
    assert all(net.records("n1", p) == {} for p in range(4))
    node_sound(net, "n1")


def test_a_handoff_for_a_partition_the_node_does_not_hold_stores_nothing() -> None:
    net = LeaderlessNet(cfg=leaderless_config())
    partition, _ = a_partition_without(net, "n1")
    assert net.step("n1", Message("n2", "n1", partition, HandoffRequest(3, "k", a_state(b"x")))) == []
    assert net.records("n1", partition) == {}


def test_anti_entropy_messages_for_a_partition_not_held_or_from_a_non_replica_are_ignored() -> None:
    net = LeaderlessNet(cfg=leaderless_config(anti_entropy_interval_ms=500))
    partition, replicas = a_partition_without(net, "n1")
    # A round n1 would run with a replica of a partition it holds, replayed at the wrong partition or peer.
    held = next(p for p in range(4) if "n1" in net.nodes["n1"].partition_map.replicas[p])
    (outsider,) = set(net.cfg.node_ids) - set(net.nodes["n1"].partition_map.replicas[held])
    key = keys_with(net, lambda p, _pref: p == held)[0]
    assert isinstance(net.request("n1", PutOp(key, b"v")), Stored)
    captured: list[Message] = []
    for _ in range(2000):
        if any(type(m.body) in ANTI_ENTROPY_MESSAGES and m.partition == held for m in net.queue):
            captured = [m for m in net.queue if type(m.body) in ANTI_ENTROPY_MESSAGES]
            break
        net.now += 1
        if not net.deliver_one():
            net.fire_next_timer()
    assert captured
    for msg in captured:
        body: Any = msg.body
        if msg.dst == "n1":
            assert net.step("n1", Message(msg.src, "n1", partition, body)) == []
            assert net.step("n1", Message(outsider, "n1", held, body)) == []
        else:
            assert net.step(msg.dst, Message("n1", msg.dst, partition, body)) == [] or msg.dst in replicas
    node_sound(net, "n1")


def test_a_purge_from_a_node_that_is_no_replica_of_the_key_drops_nothing() -> None:
    net = LeaderlessNet(cfg=leaderless_config())
    key = keys_with(net, lambda _p, pref: "n1" in pref and "n4" not in pref)[0]
    partition, pref = net.placement(key)
    assert isinstance(net.request("n1", PutOp(key, b"v")), Stored)
    got = net.request("n1", GetOp(key))
    assert isinstance(got, FoundSiblings)
    assert isinstance(net.request("n1", DeleteOp(key, context=got.context, w="all")), Stored)
    tombstone = net.state("n1", key)
    assert tombstone is not None and tombstone.deleted
    purge = PurgeKey(key, dvv.encode_context(tombstone.context))
    net.step("n1", Message("n4", "n1", partition, purge))
    assert net.state("n1", key) == tombstone
    other = next(n for n in pref if n != "n1")
    net.step("n1", Message(other, "n1", partition, purge))  # from a replica (the purge's coordinator): dropped
    assert net.state("n1", key) is None
