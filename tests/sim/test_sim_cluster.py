"""SimCluster: forwarding, crashes, the fsync policies, clock skew and message faults, in virtual time."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

import pytest

from kvstore.config import ClusterConfig, FsyncPolicy, StorageConfig, local_cluster
from kvstore.errors import ErrorCode
from kvstore.messages import Failure, Forward, Found, GetOp, Message, PutOp, Result, Written
from kvstore.sim.cluster import SimCluster
from kvstore.sim.events import SimulationError
from kvstore.sim.network import FixedLatency
from partitioning.partition_map import PartitionMap

SEED = 11
TIMEOUT_MS = 2000


def config(nodes: int = 3, fsync: FsyncPolicy = "always", batch_interval_ms: int = 10) -> ClusterConfig:
    storage = StorageConfig(engine="memory", fsync=fsync, batch_interval_ms=batch_interval_ms)
    return local_cluster(nodes, partitions=16, storage=storage)


def owned_keys(cfg: ClusterConfig, owner: str, count: int) -> list[str]:
    pmap = PartitionMap.round_robin(cfg.node_ids, cfg.partitions)
    keys = (f"key{i}" for i in range(10_000))
    return [k for k in keys if pmap.owner(pmap.partition_for_key(k)) == owner][:count]


def failure_code(result: Result | None) -> str | None:
    return result.code if isinstance(result, Failure) else None


class SkewPolicy:
    """No message faults; each node's clock offset is a function of true time."""

    def __init__(self, offsets: dict[str, list[tuple[int, int]]]) -> None:
        # node -> [(from true ms, offset ms)], ascending
        self.offsets = offsets

    def on_send(self, now_ms: int, msg: Message) -> Sequence[int]:
        return (0,)

    def clock_offset_ms(self, node_id: str, now_ms: int) -> int:
        offset = 0
        for since_ms, value in self.offsets.get(node_id, []):
            if now_ms >= since_ms:
                offset = value
        return offset


class DelayPolicy:
    """Every message gets the same list of extra delays: () drops all, (0, d) duplicates all."""

    def __init__(self, delays: Sequence[int]) -> None:
        self.delays = tuple(delays)

    def on_send(self, now_ms: int, msg: Message) -> Sequence[int]:
        return self.delays

    def clock_offset_ms(self, node_id: str, now_ms: int) -> int:
        return 0


# ---------------------------------------------------------------- routing and failures


def test_forwarding_works_across_nodes() -> None:
    cluster = SimCluster(SEED, config())
    key = owned_keys(cluster.config, "n2", 1)[0]
    written = cluster.request("n1", PutOp(key, b"hello"))
    assert written == Written(key, 1)
    assert cluster.request("n3", GetOp(key)) == Found(key, b"hello", 1)
    assert cluster.storage("n2").get(PartitionMap.round_robin(cluster.node_ids(), 16).partition_for_key(key), key, 0)
    assert cluster.storage("n1").key_count() == cluster.storage("n3").key_count() == 0
    # Two forwards and two replies; each pair of nodes first meets with a refusal and a resend.
    assert cluster.stats.delivered == 8
    cluster.run_until_idle()


def test_a_request_to_a_down_node_fails_at_once() -> None:
    cluster = SimCluster(SEED, config())
    cluster.crash("n2")
    request_id = cluster.submit("n2", GetOp("k"))
    result = cluster.result(request_id)
    assert failure_code(result) == "unavailable" and ErrorCode.UNAVAILABLE.definite
    assert cluster.result(request_id) is None  # claimed once


def test_forward_to_a_down_owner_is_refused_definitely() -> None:
    # As on a real cluster: nothing listens at the owner's address, so the connection is refused.
    cluster = SimCluster(SEED, config(), latency=FixedLatency(3))
    key = owned_keys(cluster.config, "n2", 1)[0]
    cluster.crash("n2")
    request_id = cluster.submit("n1", PutOp(key, b"v"))
    cluster.run_until(2)
    assert cluster.result(request_id) is None
    cluster.run_until(3)
    result = cluster.result(request_id)
    assert failure_code(result) == "unavailable" and ErrorCode.UNAVAILABLE.definite
    assert cluster.stats.send_failed == 1 and cluster.stats.lost_to_crash == 0


def test_forward_to_an_owner_that_crashes_with_it_on_the_wire_times_out_indefinitely() -> None:
    cluster = SimCluster(SEED, config(), latency=FixedLatency(10))
    key = owned_keys(cluster.config, "n2", 1)[0]
    request_id = cluster.submit("n1", PutOp(key, b"v"))
    cluster.run_for(5)
    cluster.crash("n2")  # the forward is on its way: whether it ran is unknown, and nothing says so
    cluster.run_until(TIMEOUT_MS - 1)
    assert cluster.result(request_id) is None
    cluster.run_until(TIMEOUT_MS)
    result = cluster.result(request_id)
    assert failure_code(result) == "timeout" and not ErrorCode.TIMEOUT.definite
    # Lost with the crash and not reported (a SendFailed would have failed it unavailable, definitely); the
    # nodes' map gossip to the crashed n2 is what fails to send.
    assert cluster.stats.lost_to_crash == 1


def test_requests_open_on_a_crashing_node_fail_indefinitely() -> None:
    cluster = SimCluster(SEED, config(), fsync_latency_ms=10)
    key = owned_keys(cluster.config, "n1", 1)[0]
    request_id = cluster.submit("n1", PutOp(key, b"v"))
    cluster.run_for(5)  # written, but the reply waits for the sync
    assert cluster.result(request_id) is None
    cluster.crash("n1")
    assert failure_code(cluster.result(request_id)) == "timeout"
    cluster.restart("n1")
    assert failure_code(cluster.request("n1", GetOp(key))) == "not_found"  # it was never synced


def test_crash_and_restart_are_checked() -> None:
    cluster = SimCluster(SEED, config())
    with pytest.raises(ValueError, match="already up"):
        cluster.restart("n1")
    cluster.crash("n1")
    with pytest.raises(ValueError, match="already down"):
        cluster.crash("n1")
    with pytest.raises(ValueError, match="no node 'n9'"):
        cluster.submit("n9", GetOp("k"))
    cluster.restart("n1")
    assert cluster.is_up("n1") and cluster.stats.restarts == 1


def test_a_message_sent_while_its_destination_is_down_is_refused_even_if_it_restarts_meanwhile() -> None:
    cluster = SimCluster(SEED, config(), latency=FixedLatency(10))
    key = owned_keys(cluster.config, "n2", 1)[0]
    cluster.crash("n2")
    first = cluster.submit("n1", PutOp(key, b"refused"))
    cluster.run_for(5)
    cluster.restart("n2")  # too late: the connection was refused when the forward was sent
    cluster.run_for(50)
    assert failure_code(cluster.result(first)) == "unavailable"
    # The next forward reaches the new n2: refused once (n1 does not know its incarnation), sent again.
    assert isinstance(cluster.request("n1", PutOp(key, b"ok")), Written)
    assert cluster.request("n3", GetOp(key)) == Found(key, b"ok", 1)
    assert cluster.stats.lost_to_crash == 0


# ---------------------------------------------------------------- durability


def test_fsync_always_holds_replies_for_a_group_commit() -> None:
    cluster = SimCluster(SEED, config(), fsync_latency_ms=5)
    keys = owned_keys(cluster.config, "n1", 10)
    ids = [cluster.submit("n1", PutOp(k, b"v")) for k in keys]
    cluster.run_until(4)
    assert [cluster.result(i) for i in ids] == [None] * 10
    cluster.run_until(5)  # the first sync covered only the first write
    assert cluster.result(ids[0]) == Written(keys[0], 1)
    assert cluster.result(ids[1]) is None
    cluster.run_until(10)  # one more sync covered the other nine
    assert all(isinstance(cluster.result(i), Written) for i in ids[1:])
    assert cluster.stats.syncs == 2
    storage = cluster.storage("n1")
    assert storage.synced_lsn == storage.written_lsn


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_acknowledged_writes_after_crashing_every_node(fsync: FsyncPolicy) -> None:
    cluster = SimCluster(SEED, config(fsync=fsync))
    keys = [k for owner in cluster.node_ids() for k in owned_keys(cluster.config, owner, 3)]
    acked = {key: cluster.request("n1", PutOp(key, key.encode())) for key in keys}
    assert all(isinstance(r, Written) for r in acked.values())
    for node_id in cluster.node_ids():
        cluster.crash(node_id)
        cluster.restart(node_id)
    reads = {key: cluster.request("n3", GetOp(key)) for key in keys}
    if fsync == "always":
        assert reads == {k: Found(k, k.encode(), w.version) for k, w in acked.items() if isinstance(w, Written)}
    else:
        assert {failure_code(r) for r in reads.values()} == {"not_found"}
        assert cluster.stats.syncs == 0


def test_fsync_batch_acknowledges_first_and_syncs_every_interval() -> None:
    cluster = SimCluster(SEED, config(fsync="batch", batch_interval_ms=10))
    early, late = owned_keys(cluster.config, "n1", 2)
    cluster.run_until(1)
    assert cluster.request("n1", PutOp(early, b"1")) == Written(early, 1)  # acknowledged before any sync
    cluster.run_until(12)  # the tick at 10 ms started a sync, done at 11 ms
    assert isinstance(cluster.request("n1", PutOp(late, b"2")), Written)
    cluster.crash("n1", "power")
    cluster.restart("n1")
    assert cluster.request("n1", GetOp(early)) == Found(early, b"1", 1)
    assert failure_code(cluster.request("n1", GetOp(late))) == "not_found"


# ---------------------------------------------------------------- clocks


def sweep_events(cluster: SimCluster, node_id: str) -> list[tuple[object, ...]]:
    """The TTL sweep timers that fired on ``node_id``, one per replica it holds, with the partition dropped."""
    return sorted(
        {(e[0], e[1], e[2], e[3]) for e in cluster.trace.last() if e[0] == "timer" and e[2] == node_id
         and str(e[4]).endswith("ttl-sweep")}
    )


def test_clock_skew_runs_node_timers_in_the_node_clock() -> None:
    cluster = SimCluster(SEED, config(), SkewPolicy({"n2": [(0, 500)]}), latency=FixedLatency(2))
    assert cluster.node_clock_ms("n2") == 500
    cluster.run_until(1000)
    # n2 booted at node time 500 and asked for its sweeps at 1500: true time 1000.
    assert sweep_events(cluster, "n2") == [("timer", 1000, "n2", 1500)]
    assert sweep_events(cluster, "n1") == [("timer", 1000, "n1", 1000)]
    key = owned_keys(cluster.config, "n2", 1)[0]
    cluster.request("n1", PutOp(key, b"v", ttl_ms=100))
    found = cluster.request("n1", GetOp(key))
    # The first forward (n1 does not know n2's incarnation yet) is refused at 1002 ms and sent again; it
    # reaches n2 at 1006 ms, which n2's clock reads as 1506 ms.
    assert isinstance(found, Found) and found.expires_at_ms == 1506 + 100


def test_a_clock_set_back_delays_timers_until_the_node_clock_reaches_them() -> None:
    cluster = SimCluster(SEED, config(), SkewPolicy({"n1": [(100, -400)]}))
    cluster.run_until(2000)
    assert sweep_events(cluster, "n1") == [("timer", 1400, "n1", 1000)]


# ---------------------------------------------------------------- message faults


@pytest.mark.parametrize("duplicate_after_ms", [3, 25])
def test_duplicated_messages_do_not_break_read_your_writes(duplicate_after_ms: int) -> None:
    cluster = SimCluster(SEED, config(), DelayPolicy((0, duplicate_after_ms)), latency=FixedLatency(1))
    rng = random.Random(5)
    keys = ["a", "b", "c"]
    last: dict[str, bytes] = {}
    for i in range(60):
        key = rng.choice(keys)
        value = f"v{i}".encode()
        assert isinstance(cluster.request(rng.choice(cluster.node_ids()), PutOp(key, value)), Written)
        last[key] = value
        read = cluster.request(rng.choice(cluster.node_ids()), GetOp(key))
        assert isinstance(read, Found) and read.value == last[key], f"seed={SEED} step {i}: {read!r}"
    cluster.run_until_idle()
    # Each write op a replica applies takes the partition's next index: no forward was executed twice.
    applied = sum(cluster.storage(n).log(p).applied_index() for n in cluster.node_ids() for p in range(16))
    assert applied == 60
    assert cluster.network.copies_scheduled == 2 * cluster.network.sent


class DuplicateForwardsLate:
    """Every Forward arrives twice, the copy 100 ms late; everything else once."""

    def on_send(self, now_ms: int, msg: Message) -> Sequence[int]:
        return (0, 100) if isinstance(msg.body, Forward) else (0,)

    def clock_offset_ms(self, node_id: str, now_ms: int) -> int:
        return 0


def test_a_late_duplicate_forward_does_not_undo_a_newer_write_across_a_restart() -> None:
    cluster = SimCluster(SEED, config(), DuplicateForwardsLate(), latency=FixedLatency(2))
    key = owned_keys(cluster.config, "n2", 1)[0]
    assert cluster.request("n1", PutOp(key, b"old")) == Written(key, 1)
    assert cluster.request("n2", PutOp(key, b"new")) == Written(key, 2)
    cluster.crash("n2")
    cluster.restart("n2")
    cluster.run_for(200)  # the duplicate of the first forward arrives
    assert cluster.request("n3", GetOp(key)) == Found(key, b"new", 2)


def test_dropped_messages_time_out() -> None:
    cluster = SimCluster(SEED, config(), DelayPolicy(()))
    key = owned_keys(cluster.config, "n3", 1)[0]
    assert failure_code(cluster.request("n1", GetOp(key))) == "timeout"
    assert cluster.now_ms == TIMEOUT_MS
    assert cluster.stats.delivered == 0


# ---------------------------------------------------------------- the driver itself


def test_errors_inside_a_run_name_the_seed() -> None:
    cluster = SimCluster(SEED, config())

    def broken_step(now_ms: int, inp: object) -> list[object]:
        raise AssertionError("broken invariant")

    cluster.node("n1").step = broken_step  # type: ignore[assignment, method-assign]
    with pytest.raises(SimulationError, match=f"seed={SEED} at 0 ms: broken invariant"):
        cluster.request("n1", GetOp("k"))


def test_a_run_that_cannot_finish_says_so() -> None:
    cluster = SimCluster(SEED, config(), DelayPolicy((10_000,)))
    key = owned_keys(cluster.config, "n2", 1)[0]
    cluster.submit("n1", GetOp(key))
    cluster.run_until(TIMEOUT_MS)  # the client has its timeout, the late reply is still on the wire
    with pytest.raises(SimulationError, match=f"seed={SEED}: not idle after 100 ms"):
        cluster.run_until_idle(limit_ms=100)


def test_callbacks_may_submit_but_not_run_the_simulation() -> None:
    cluster = SimCluster(SEED, config())
    seen: list[Result] = []

    def again(request_id: int, result: Result) -> None:
        seen.append(result)
        if len(seen) < 3:
            cluster.submit("n2", GetOp("k"), again)

    cluster.submit("n1", GetOp("k"), again)
    cluster.run_until_idle()
    assert [failure_code(r) for r in seen] == ["not_found"] * 3

    def reenter(request_id: int, result: Result) -> None:
        cluster.run_for(1)

    cluster.submit("n1", GetOp("k"), reenter)
    with pytest.raises(SimulationError, match="from inside one of its own callbacks"):
        cluster.run_until_idle()


def test_the_event_budget_bounds_a_run() -> None:
    cluster = SimCluster(SEED, config(), max_events_per_run=5)
    with pytest.raises(SimulationError, match="more than 5 events in one run"):
        cluster.run_until(10_000)


def test_config_storage_engine_is_ignored_but_fsync_is_honoured() -> None:
    cfg = replace(config(), storage=StorageConfig(engine="sqlite", fsync="never"))
    cluster = SimCluster(SEED, cfg)
    key = owned_keys(cfg, "n1", 1)[0]
    assert cluster.request("n1", PutOp(key, b"v")) == Written(key, 1)
    assert cluster.storage("n1").synced_lsn == 0
