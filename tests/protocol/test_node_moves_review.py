"""Review of partition moves (kvstore/handoff.py): crash points and late messages the first tests leave out.

Uses the hand-cranked network of tests/protocol/test_node_moves.py (fsync = "batch", power-loss crashes).
"""

from __future__ import annotations

from kvstore.config import StorageConfig, local_cluster
from kvstore.errors import ErrorCode
from kvstore.handoff import FENCE_META_PREFIX
from kvstore.messages import Failure, Found, GetOp, MapUpdate, Message, MovePartition
from kvstore.node import Node
from partitioning.stream import StreamChunk
from tests.protocol.test_node_moves import Net, P, assert_moved, filled, keys_in


def _until_last_chunk_is_next(net: Net) -> Message:
    """Run the move until the last chunk for n2 is at the head of the queue; pop it, drop the rest."""
    while True:
        head = net.queue[0] if net.queue else None
        if head is not None and isinstance(head.body, StreamChunk) and head.body.last and head.dst == "n2":
            break
        assert net.deliver_one() or net.fire_next_timer()
    last = net.queue.pop(0)
    net.queue.clear()
    return last


def _assert_serves(net: Net, node_id: str, before: dict[str, object], keys: list[str]) -> None:
    for key in keys:
        record = before[key]
        assert net.request(node_id, GetOp(key)) == Found(key, record.value, record.version)  # type: ignore[attr-defined]


def test_a_target_losing_power_between_its_install_and_its_sync_leaves_the_source_fenced_and_the_move_completes() -> (
    None
):
    net, keys = filled(12)
    before = net.records("n1")
    net.step("n1", MovePartition(P, "n2"))
    last = _until_last_chunk_is_next(net)
    # n2 installs; the driver holds its durable StreamDone until a sync that never comes.
    assert net.nodes["n2"].step(net.now, last)
    assert P in net.nodes["n2"].replicas
    net.crash("n2")
    assert P not in net.nodes["n2"].replicas and net.records("n2") == {}
    n1 = net.nodes["n1"]
    assert n1._mover.fenced(P) and n1.partition_map.owner(P) == "n1"
    answer = net.request("n1", GetOp(keys[0]))
    assert isinstance(answer, Failure) and answer.code == ErrorCode.UNAVAILABLE.value
    net.run()  # the fenced source retries in a new session, the target installs again
    assert_moved(net, before)
    _assert_serves(net, "n2", before, keys)


def test_a_source_losing_power_after_its_hand_over_but_before_its_sync_finishes_the_move_again() -> None:
    net, keys = filled(12)
    before = net.records("n1")
    net.step("n1", MovePartition(P, "n2"))
    net.run_until(lambda: not net.nodes["n1"]._mover.moving)  # Complete: handed over in memory
    assert net.disks["n1"].durable_image.get_meta(FENCE_META_PREFIX + str(P))  # the cleanup is not synced
    net.queue.clear()
    net.crash("n1")
    n1 = net.nodes["n1"]
    assert n1._mover.fenced(P) and net.records("n1") == before
    answer = net.request("n1", GetOp(keys[0]))
    assert isinstance(answer, Failure)
    net.run()
    assert_moved(net, before)
    _assert_serves(net, "n1", before, keys[:3])


def test_a_late_map_update_from_before_the_move_changes_nothing_on_either_end() -> None:
    net, keys = filled(8)
    before = net.records("n1")
    old = MapUpdate.of(net.nodes["n1"].partition_map)
    net.step("n1", MovePartition(P, "n2"))
    net.run()
    assert_moved(net, before)
    for src, dst in (("n2", "n1"), ("n1", "n2")):
        net.step(dst, Message(src, dst, 0, old))
    net.run()
    assert_moved(net, before)
    _assert_serves(net, "n2", before, keys[:3])


def test_a_late_last_chunk_of_the_installed_attempt_after_the_target_restarts_is_not_applied_again() -> None:
    net, keys = filled(8)
    before = net.records("n1")
    net.step("n1", MovePartition(P, "n2"))
    last = _until_last_chunk_is_next(net)
    net.step("n2", last)  # installed and synced (its StreamDone is durable), the StreamDone goes out
    net.run()
    assert_moved(net, before)
    net.crash("n2")
    n2: Node = net.nodes["n2"]
    assert P in n2.replicas
    net.step("n2", last)  # a duplicate of the last chunk, very late
    net.run()
    assert_moved(net, before)
    _assert_serves(net, "n2", before, keys[:3])


def test_a_target_tells_its_map_only_once_its_install_is_synced() -> None:
    # A map update left a node at once under "batch": the target's unsynced install reached the source through
    # a forward's answer, the source dropped its copy, and a power loss at the target then lost the partition
    # on both. Map updates are durable now: the install is synced before any node can act on it.
    net, keys = filled(10)
    before = dict(net.records("n1"))
    other = keys_in(net, 1, 1)[0]  # partition 1 is n2's: n1 forwards it, naming its older map epoch
    net.step("n1", MovePartition(P, "n2"))
    last = _until_last_chunk_is_next(net)
    net.nodes["n2"].step(net.now, last)  # installed; its durable StreamDone dropped with the step's effects
    assert not net.disks["n2"].durable_image.get_meta("partition_map")
    net.request("n1", GetOp(other))
    assert net.disks["n2"].durable_image.get_meta("partition_map"), "synced before the map update left"
    net.crash("n2")
    net.run()
    assert_moved(net, before)
    _assert_serves(net, "n2", before, keys)


def test_no_move_starts_under_fsync_never() -> None:
    # Under "never" nothing is fsynced: a power loss could forget a fence after the target installed, and two
    # nodes would serve the partition.
    never = local_cluster(2, partitions=4, storage=StorageConfig(fsync="never"))
    net = Net(cfg=never)
    net.step("n1", MovePartition(P, "n2"))
    assert net.nodes["n1"].order_refusal == 'moves need fsync "always" or "batch"'
    assert net.queue == [] and P in net.nodes["n1"].replicas
