"""The simulator's side of the durability contract and of the flush schedule it shares with the server,
with a stub node whose steps write to storage and return durable and unmarked effects."""

from __future__ import annotations

from typing import cast

import pytest
from sim_stub import PARTITION, StubNode, stub_config

from kvstore.config import FsyncPolicy
from kvstore.flush_policy import DISK_WRITEBACK_INTERVAL_MS, EARLY_FLUSH_EVENTS, NEVER_FLUSH_INTERVAL_MS
from kvstore.messages import GetOp, Message, PutOp, SendFailed, Synced, Written
from kvstore.sim.cluster import SimCluster
from kvstore.sim.network import FixedLatency

SEED = 3
FSYNC_MS = 5
# Longer than any test runs before its check: a release that comes earlier was not the batch tick's.
LONG_BATCH_MS = 100_000
POLICIES: tuple[FsyncPolicy, ...] = ("always", "batch", "never")

Nodes = dict[str, StubNode]


def make(fsync: FsyncPolicy) -> SimCluster:
    return SimCluster(
        SEED,
        stub_config(fsync, batch_interval_ms=LONG_BATCH_MS),
        latency=FixedLatency(2),
        fsync_latency_ms=FSYNC_MS,
        trace_keep_last=100_000,
    )


def release_log(cluster: SimCluster) -> list[tuple[str, int, str, int]]:
    """(what, time, node, the node's synced LSN then) for every reply and send, in the order they left."""
    synced: dict[str, int] = {}
    out = []
    for event in cluster.trace.last():
        kind, at_ms, node = event[0], cast(int, event[1]), cast(str, event[2])
        if kind == "synced":
            synced[node] = max(synced.get(node, 0), cast(int, event[3]))
        elif kind in ("reply", "send"):
            out.append((kind, at_ms, node, synced.get(node, 0)))
    return out


@pytest.mark.parametrize("fsync", POLICIES)
def test_a_durable_reply_waits_for_the_sync_of_its_step_and_the_sync_starts_at_once(
    stub_nodes: Nodes, fsync: FsyncPolicy
) -> None:
    cluster = make(fsync)
    first = cluster.submit("n1", PutOp("dur/a", b""))
    # Not the next tick's sync: one starts at once (a write-out under "never" takes no device time).
    done_ms = 0 if fsync == "never" else FSYNC_MS
    if done_ms > 0:
        cluster.run_until(done_ms - 1)
        assert cluster.result(first) is None  # written, not yet synced
    cluster.run_until(done_ms)
    assert cluster.result(first) == Written("dur/a", 1)
    [(_, at_ms, node, synced_lsn)] = release_log(cluster)
    assert (at_ms, node, synced_lsn) == (done_ms, "n1", 1)


@pytest.mark.parametrize("fsync", POLICIES)
def test_unmarked_effects_leave_at_once_with_writes_pending(stub_nodes: Nodes, fsync: FsyncPolicy) -> None:
    cluster = make(fsync)
    request = cluster.submit("n1", PutOp("free/a", b""))
    cluster.run_until(0)
    assert cluster.result(request) == Written("free/a", 1)
    assert cluster.storage("n1").synced_lsn == 0


@pytest.mark.parametrize("fsync", POLICIES)
def test_a_durable_send_leaves_only_after_its_sync(stub_nodes: Nodes, fsync: FsyncPolicy) -> None:
    cluster = make(fsync)
    cluster.submit("n1", PutOp("send/n2/a", b""))
    cluster.run_until(100)
    sends = [entry for entry in release_log(cluster) if entry[0] == "send"]
    assert [(node, synced_lsn) for _, _, node, synced_lsn in sends] == [("n1", 1)]
    [(arrived_ms, msg, _)] = stub_nodes["n2"].received(Message)
    assert isinstance(msg, Message) and msg.body == GetOp("a")
    assert arrived_ms == sends[0][1] + 2


@pytest.mark.parametrize("fsync", POLICIES)
def test_a_read_of_unsynced_writes_waits_but_one_after_the_sync_does_not(stub_nodes: Nodes, fsync: FsyncPolicy) -> None:
    cluster = make(fsync)
    cluster.submit("n1", PutOp("free/a", b""))
    cluster.submit("n1", GetOp("a"))
    cluster.run_until(FSYNC_MS)
    cluster.submit("n1", GetOp("a"))
    cluster.run_until(FSYNC_MS)
    synced_ms = 0 if fsync == "never" else FSYNC_MS
    # The unmarked write's answer, the first read's (after the sync), the second read's (at once).
    assert [(at_ms, synced_lsn) for _, at_ms, _, synced_lsn in release_log(cluster)] == [
        (0, 0), (synced_ms, 1), (FSYNC_MS, 1)
    ]


@pytest.mark.parametrize("fsync", ["always", "batch"])
def test_one_sync_covers_every_step_before_it(stub_nodes: Nodes, fsync: FsyncPolicy) -> None:
    cluster = make(fsync)
    first = cluster.submit("n1", PutOp("dur/k0", b""))
    cluster.run_until(1)  # the first sync is running
    rest = [cluster.submit("n1", PutOp(f"dur/k{i}", b"")) for i in range(1, 10)]
    cluster.run_until(1)
    assert cluster.result(first) is None and all(cluster.result(r) is None for r in rest)
    cluster.run_until(FSYNC_MS)
    assert cluster.result(first) == Written("dur/k0", 1)
    assert [r for r in rest if r in cluster._results] == []
    # The nine that wrote while the first sync ran share the next one, which starts as it ends.
    cluster.run_until(2 * FSYNC_MS)
    assert [cluster.result(r) for r in rest] == [Written(f"dur/k{i}", i + 1) for i in range(1, 10)]
    assert cluster.stats.syncs == 2
    assert [synced_lsn for _, _, _, synced_lsn in release_log(cluster)] == [1] + [10] * 9


@pytest.mark.parametrize("fsync", POLICIES)
def test_the_node_is_stepped_synced_after_every_sync(stub_nodes: Nodes, fsync: FsyncPolicy) -> None:
    cluster = make(fsync)
    cluster.request("n1", PutOp("dur/a", b""))
    cluster.request("n1", PutOp("dur/b", b""))
    synced = [inp for _, inp, _ in stub_nodes["n1"].received(Synced)]
    assert synced == [Synced(1), Synced(2)]
    assert cluster.stats.syncs == 2


# ---------------------------------------------------------------- the flush schedule


def test_batch_syncs_every_interval_without_anything_waiting(stub_nodes: Nodes) -> None:
    cluster = SimCluster(SEED, stub_config("batch", batch_interval_ms=10), fsync_latency_ms=1)
    cluster.request("n1", PutOp("free/a", b""))
    cluster.run_until(10)
    assert cluster.storage("n1").synced_lsn == 0
    cluster.run_until(11)
    assert cluster.storage("n1").synced_lsn == 1


def test_never_writes_out_every_interval_which_survives_a_process_crash_only(stub_nodes: Nodes) -> None:
    cluster = make("never")
    cluster.request("n1", PutOp("free/a", b""))
    cluster.run_until(NEVER_FLUSH_INTERVAL_MS - 1)
    assert cluster.storage("n1").synced_lsn == 0
    cluster.run_until(NEVER_FLUSH_INTERVAL_MS)
    assert cluster.storage("n1").synced_lsn == 1
    cluster.request("n1", PutOp("free/b", b""))  # never written out
    cluster.crash("n1", "process")
    cluster.restart("n1")
    survived = cluster.storage("n1")
    assert survived.get_stored(PARTITION, "a") is not None and survived.get_stored(PARTITION, "b") is None
    cluster.crash("n1", "power")  # "a" was written out, never made durable
    cluster.restart("n1")
    assert cluster.storage("n1").get_stored(PARTITION, "a") is None


def test_the_disk_writeback_makes_written_out_data_survive_a_power_loss(stub_nodes: Nodes) -> None:
    cluster = make("never")
    cluster.request("n1", PutOp("free/a", b""))
    cluster.run_until(DISK_WRITEBACK_INTERVAL_MS)
    assert cluster.stats.writebacks == 1
    cluster.crash("n1", "power")
    cluster.restart("n1")
    assert cluster.storage("n1").get_stored(PARTITION, "a") is not None


def test_a_durable_effect_under_never_survives_a_process_crash_not_a_power_loss(stub_nodes: Nodes) -> None:
    cluster = make("never")
    assert cluster.request("n1", PutOp("dur/a", b"")) == Written("dur/a", 1)
    cluster.crash("n1", "process")
    cluster.restart("n1")
    assert cluster.storage("n1").get_stored(PARTITION, "a") is not None
    cluster.crash("n1", "power")
    cluster.restart("n1")
    assert cluster.storage("n1").get_stored(PARTITION, "a") is None


@pytest.mark.parametrize("fsync", ["batch", "never"])
def test_early_flush_bounds_what_is_held_unsynced(stub_nodes: Nodes, fsync: FsyncPolicy) -> None:
    cluster = make(fsync)
    cluster.request("n1", PutOp(f"bulk/{EARLY_FLUSH_EVENTS - 1}", b""))
    cluster.run_until(50)
    assert cluster.storage("n1").synced_lsn == 0  # under the bound: waits for the interval
    cluster.request("n1", PutOp("bulk/1", b""))
    cluster.run_until(50 + FSYNC_MS)
    assert cluster.storage("n1").synced_lsn == EARLY_FLUSH_EVENTS


def test_always_syncs_a_write_that_nothing_waits_for(stub_nodes: Nodes) -> None:
    cluster = make("always")
    cluster.request("n1", PutOp("free/a", b""))
    cluster.run_until(FSYNC_MS)
    assert cluster.storage("n1").synced_lsn == 1


def test_crash_kinds_are_checked(stub_nodes: Nodes) -> None:
    cluster = make("always")
    with pytest.raises(ValueError, match="crash kind must be one of process, power"):
        cluster.crash("n1", "meteor")  # type: ignore[arg-type]
    assert cluster.is_up("n1")


# ---------------------------------------------------------------- failed sends and sends to oneself


def test_a_message_to_a_down_node_comes_back_as_send_failed_after_a_link_latency(stub_nodes: Nodes) -> None:
    cluster = make("always")
    cluster.crash("n2")
    cluster.request("n1", PutOp("sendfree/n2/a", b""))
    sent_ms = cluster.now_ms
    cluster.run_until_idle()
    [(at_ms, failed, _)] = stub_nodes["n1"].received(SendFailed)
    assert isinstance(failed, SendFailed) and failed.msg == Message("n1", "n2", PARTITION, GetOp("a"))
    assert at_ms == sent_ms + 2
    assert cluster.stats.send_failed == 1 and cluster.stats.lost_to_crash == 0


def test_a_refusal_for_a_sender_that_crashed_since_is_dropped(stub_nodes: Nodes) -> None:
    cluster = make("always")
    cluster.crash("n2")
    cluster.request("n1", PutOp("sendfree/n2/a", b""))
    cluster.crash("n1")
    cluster.restart("n1")
    cluster.run_until_idle()
    assert stub_nodes["n1"].received(SendFailed) == []


def test_copies_in_flight_when_the_destination_crashes_are_lost_silently(stub_nodes: Nodes) -> None:
    cluster = make("always")
    cluster.request("n1", PutOp("sendfree/n2/a", b""))
    cluster.crash("n2")
    cluster.run_until_idle()
    assert cluster.stats.lost_to_crash == 1 and cluster.stats.send_failed == 0
    assert stub_nodes["n1"].received(SendFailed) == []


def test_a_message_to_oneself_is_delivered_through_the_network(stub_nodes: Nodes) -> None:
    cluster = make("always")
    cluster.request("n1", PutOp("sendfree/n1/a", b""))
    cluster.run_until_idle()
    [(_, msg, _)] = stub_nodes["n1"].received(Message)
    assert msg == Message("n1", "n1", PARTITION, GetOp("a"))
    assert cluster.network.sent == 1
