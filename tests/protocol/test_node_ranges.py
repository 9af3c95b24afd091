"""Range mode driven by hand: ranges split as keys arrive, spread over the nodes, merge as keys go, and every
key keeps its value and version through it all, crashes included."""

from __future__ import annotations

from kvstore.config import ClusterConfig, RangesConfig, StorageConfig, local_cluster
from kvstore.messages import (
    Deleted,
    DeleteOp,
    Failure,
    Found,
    GetOp,
    PutOp,
    ScanOp,
    ScanPage,
    ScanPartitionsOp,
    TimerFired,
    Written,
)
from kvstore.ranges import RANGES_TIMER
from tests.protocol.test_node_moves import Net

SLOTS = 12
KEYS = [f"k{i:03}" for i in range(60)]


def range_config(nodes: int = 3) -> ClusterConfig:
    ranges = RangesConfig(split_keys=8, split_bytes=1 << 20, merge_keys=4, merge_bytes=1 << 19, check_interval_ms=50)
    return local_cluster(
        nodes, partitions=SLOTS, partitioner="range", ranges=ranges, storage=StorageConfig(fsync="batch")
    )


def advance(net: Net, ms: int) -> None:
    """Deliver every message and fire every timer due in the next ``ms`` of node time."""
    until = net.now + ms
    for _ in range(200_000):
        if net.deliver_one():
            net.now += 1
            continue
        due = [(at, n, k) for n, timers in net.timers.items() for k, at in timers.items() if at <= until]
        if not due:
            net.now = until
            return
        at, node_id, key = min(due)
        del net.timers[node_id][key]
        net.now = max(net.now, at)
        net.step(node_id, TimerFired(key))
    raise AssertionError("too many events")


def written(net: Net, via: str = "n2") -> dict[str, bytes]:
    values = {}
    for i, key in enumerate(KEYS):
        value = b"v%d" % i
        assert isinstance(net.request(via, PutOp(key, value)), Written)
        values[key] = value
    return values


def maps_agree(net: Net) -> None:
    maps = [node.partition_map for node in net.nodes.values()]
    assert all(m == maps[0] for m in maps), "the nodes' maps differ"


def test_a_cluster_starts_with_one_range_holding_every_key_on_the_first_founder() -> None:
    net = Net(cfg=range_config())
    m = net.nodes["n1"].partition_map
    assert m.partitioner == "range"
    assert m.live_partitions() == (0,)
    assert {m.partition_for_key(k) for k in ("", "a", "zzz", "\U0010ffff")} == {0}
    assert m.owner(0) == "n1"


def test_ranges_split_as_keys_arrive_spread_over_the_nodes_and_keep_every_key() -> None:
    net = Net(cfg=range_config())
    values = written(net)
    advance(net, 5000)
    maps_agree(net)
    m = net.nodes["n1"].partition_map
    ranges = m.ranges
    assert ranges is not None and ranges.range_count >= len(KEYS) // 8
    # No range holds more than the split bound, and the ranges are spread over all three nodes.
    for p in m.live_partitions():
        assert len(net.records(m.owner(p), p)) <= 8
    assert {m.owner(p) for p in m.live_partitions()} == {"n1", "n2", "n3"}
    for node_id in net.nodes:
        for key, value in values.items():
            found = net.request(node_id, GetOp(key))
            assert isinstance(found, Found) and found.value == value, (node_id, key)
    page = net.request("n3", ScanOp("", None, 1000))
    assert isinstance(page, ScanPage) and [item.key for item in page.items] == sorted(KEYS)
    page = net.request("n2", ScanOp("k010", "k020", 5))
    assert isinstance(page, ScanPage) and [item.key for item in page.items] == KEYS[10:15] and page.truncated


def test_versions_go_on_growing_in_a_split_off_range() -> None:
    net = Net(cfg=range_config())
    written(net)
    before = net.request("n1", GetOp(KEYS[-1]))
    advance(net, 5000)
    assert isinstance(before, Found)
    after = net.request("n1", PutOp(KEYS[-1], b"new"))
    assert isinstance(after, Written) and after.version > before.version


def test_ranges_merge_as_keys_are_deleted() -> None:
    net = Net(cfg=range_config())
    written(net)
    advance(net, 5000)
    ranges = net.nodes["n1"].partition_map.ranges
    assert ranges is not None
    split = ranges.range_count
    for key in KEYS[:-3]:
        assert isinstance(net.request("n1", DeleteOp(key)), Deleted)
    # Tombstones count until the sweep purges them; let the TTL sweep and the merges run.
    advance(net, 20_000)
    maps_agree(net)
    ranges = net.nodes["n1"].partition_map.ranges
    assert ranges is not None and ranges.range_count < split
    for key in KEYS[-3:]:
        assert isinstance(net.request("n3", GetOp(key)), Found)
    page = net.request("n2", ScanOp("", None, 100))
    assert isinstance(page, ScanPage) and [item.key for item in page.items] == KEYS[-3:]


def test_a_power_loss_after_splits_loses_nothing_that_was_synced() -> None:
    net = Net(cfg=range_config())
    values = written(net)
    net.sync_all()
    advance(net, 300)
    net.sync_all()
    for node_id in ("n1", "n2", "n3"):
        net.crash(node_id)
    advance(net, 5000)
    maps_agree(net)
    for key, value in values.items():
        found = net.request("n2", GetOp(key))
        assert isinstance(found, Found) and found.value == value, key


def test_a_scan_part_planned_before_a_split_is_refused_definitely() -> None:
    net = Net(cfg=range_config())
    written(net)
    old_epoch = net.nodes["n1"].partition_map.epoch_of(0)
    advance(net, 5000)
    m = net.nodes["n1"].partition_map
    owner = m.owner(0)
    part = ScanPartitionsOp((0,), "", None, 100, (old_epoch,))
    result = net.request(owner, part)  # type: ignore[arg-type]
    assert isinstance(result, Failure) and result.code == "wrong_epoch"


def test_the_ranges_timer_runs_only_in_range_mode() -> None:
    hashed = Net(cfg=local_cluster(2, partitions=4, storage=StorageConfig(fsync="batch")))
    assert all(RANGES_TIMER not in timers for timers in hashed.timers.values())
    ranged = Net(cfg=range_config())
    assert all(RANGES_TIMER in timers for timers in ranged.timers.values())
