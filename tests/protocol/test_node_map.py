"""Node.step and the partition map: installing a newer map, epochs on forwards, map updates between nodes,
and the map kept across a restart. Driven by hand: each input fed explicitly, each effect asserted."""

from __future__ import annotations

import random

from kvstore import codec
from kvstore.config import ClusterConfig, StorageConfig, local_cluster
from kvstore.effects import CancelTimer, Reply, Send, SetTimer
from kvstore.errors import ErrorCode
from kvstore.messages import (
    NODE_PARTITION,
    ClientRequest,
    Failure,
    Forward,
    ForwardReply,
    Found,
    GetOp,
    MapUpdate,
    Message,
    PutOp,
    Started,
    Written,
)
from kvstore.node import MAP_META, Node, _ToClient
from kvstore.storage.memory import MemoryStorage
from partitioning.partition_map import PartitionMap

TIMEOUT_MS = 2000
SWEEP_MS = 1000


def config() -> ClusterConfig:
    # n1 owns partitions 0 and 2, n2 owns 1 and 3.
    return local_cluster(2, partitions=4, storage=StorageConfig(fsync="batch"))


def started(node_id: str, storage: MemoryStorage | None = None, seed: int = 1) -> Node:
    node = Node(node_id, config(), storage if storage is not None else MemoryStorage(), random.Random(seed))
    node.step(0, Started())
    return node


def key_in(node: Node, partition: int) -> str:
    return next(k for k in (f"k{i}" for i in range(1000)) if node.partition_map.partition_for_key(k) == partition)


def moved(node: Node, partition: int, to: str) -> PartitionMap:
    return node.partition_map.with_replicas(partition, (to,))


def test_a_node_that_loses_a_partition_forwards_its_ops_to_the_new_owner_with_its_map_epoch() -> None:
    n1 = started("n1")
    key = key_in(n1, 2)
    n1.install_map(moved(n1, 2, "n2"))
    assert (sorted(n1.replicas), n1.partition_map.epoch) == ([0], 2)
    effects = n1.step(5, ClientRequest(1, GetOp(key)))
    assert effects == [
        Send(Message("n1", "n2", 2, Forward(n1.incarnation, 1, 0, GetOp(key), map_epoch=2))),
        SetTimer("fwd/1", 5 + TIMEOUT_MS),
    ]


def test_a_node_that_gains_a_partition_serves_it_from_its_storage() -> None:
    storage = MemoryStorage()
    n2 = started("n2", storage)
    key = key_in(n2, 2)
    # What a move would have streamed in before the map flips.
    n2.install_map(moved(n2, 2, "n2"))
    assert sorted(n2.replicas) == [1, 2, 3]
    assert n2.step(5, ClientRequest(1, PutOp(key, b"v"))) == [Reply(1, Written(key, 1))]
    assert n2.step(6, ClientRequest(2, GetOp(key))) == [Reply(2, Found(key, b"v", 1))]


def test_a_stale_forward_is_refused_and_its_sender_is_sent_the_newer_map() -> None:
    n1, n2 = started("n1"), started("n2", seed=2)
    key = key_in(n1, 2)
    newer = moved(n1, 2, "n2")
    n1.install_map(newer)
    # n2 still has the first map, so it forwards the key's op to n1 (first contact: refused for n1's
    # incarnation, which comes back with the refusal, and the forward goes again).
    (forward,) = [e.msg for e in n2.step(5, ClientRequest(1, GetOp(key))) if isinstance(e, Send)]
    assert isinstance(forward.body, Forward) and forward.body.map_epoch == 1
    refusal, update = n1.step(6, forward)
    assert update == Send(Message("n1", "n2", NODE_PARTITION, MapUpdate.of(newer)), durable=True)
    (again,) = [e.msg for e in n2.step(7, refusal.msg) if isinstance(e, Send)]  # type: ignore[union-attr]
    answer = n1.step(8, again)
    refused = Failure.of(
        ErrorCode.WRONG_EPOCH, "n1 does not hold partition 2 (epoch 2 puts it on n2); the op did not happen"
    )
    assert answer == [
        Send(Message("n1", "n2", 2, ForwardReply(forward.body.incarnation, 1, n1.incarnation, refused, map_epoch=2)))
    ], "one update per peer and epoch, however many stale messages come"
    # n2 learns the map from the update and fails its client definitely, for a retry by the new map.
    # It serves partition 2 now: its replica starts (the TTL sweep timer).
    assert n2.step(9, update.msg) == [SetTimer("p/2/ttl-sweep", 9 + SWEEP_MS)]
    assert (n2.partition_map, sorted(n2.replicas)) == (newer, [1, 2, 3])
    assert n2.step(10, answer[0].msg) == [CancelTimer("fwd/1"), Reply(1, refused)]  # type: ignore[union-attr]


def test_a_map_learnt_is_kept_across_a_restart() -> None:
    storage = MemoryStorage()
    n1 = started("n1", storage)
    newer = moved(n1, 0, "n2")
    n1.install_map(newer)
    stored = storage.get_meta(MAP_META)
    assert stored is not None and codec.decode(stored) == MapUpdate.of(newer)
    again = started("n1", storage, seed=9)
    assert (again.partition_map, sorted(again.replicas)) == (newer, [2])


ROSTER = (("n1", "", "active", 1), ("n2", "", "active", 1))


def test_an_older_or_malformed_map_changes_nothing() -> None:
    n1 = started("n1")
    newer = moved(n1, 2, "n2")
    n1.install_map(newer)
    n1.install_map(PartitionMap.round_robin(("n1", "n2"), 4))  # older: every partition at epoch 1
    n1.install_map(PartitionMap.round_robin(("n1", "n2"), 8))  # another partition count
    bad = [
        MapUpdate((("n1", "", "active", 1),), (("n2",),) * 4, (1,) * 4),  # replicas on a node that is no member
        MapUpdate(ROSTER, (("n1",),) * 4, (1, 1)),  # epochs for two partitions of four
        MapUpdate((("n1", "", "active", 0), ("n2", "", "active", 1)), (("n1",),) * 4, (1,) * 4),  # version 0
        MapUpdate((("n1", "", "gone", 3), ("n2", "", "active", 1)), (("n1",),) * 4, (1,) * 4),  # no such state
    ]
    for update in bad:
        assert n1.step(9, Message("n2", "n1", NODE_PARTITION, update)) == []
    assert (n1.partition_map, sorted(n1.replicas)) == (newer, [0])


def test_ops_waiting_on_a_dropped_partition_fail_definitely() -> None:
    n1 = started("n1")
    key = key_in(n1, 2)
    # A call its replica has not answered yet (SingleCopy answers at once, so one is held by hand, as a
    # replica that waits for a quorum would hold it).
    token = n1._next_token
    n1._next_token += 1
    n1._waiting[token] = _ToClient(7)
    n1._calls[token] = (2, GetOp(key))
    effects = n1.step(5, Message("n2", "n1", NODE_PARTITION, MapUpdate.of(moved(n1, 2, "n2"))))
    refused = Failure.of(
        ErrorCode.WRONG_EPOCH, "n1 does not hold partition 2 (epoch 2 puts it on n2); the op did not happen"
    )
    assert effects == [Reply(7, refused)]
    assert n1.inflight == 0


def test_a_node_that_starts_at_another_address_than_its_roster_entry_announces_the_new_one() -> None:
    storage = MemoryStorage()
    n1 = started("n1", storage)
    n1.install_map(n1.partition_map.with_member("n1", "active", "127.0.0.1:9999"))
    assert n1.address_of("n1") == "127.0.0.1:7001", "the config's address comes first"
    restarted = Node("n1", config(), storage, random.Random(2))
    effects = restarted.step(5, Started())
    entry = restarted.partition_map.member("n1")
    assert entry is not None and (entry.address, entry.state, entry.version) == ("127.0.0.1:7001", "active", 3)
    updates = [e for e in effects if isinstance(e, Send) and isinstance(e.msg.body, MapUpdate)]
    assert [(u.msg.dst, u.durable, u.msg.body.to_map()) for u in updates] == [("n2", True, restarted.partition_map)]
