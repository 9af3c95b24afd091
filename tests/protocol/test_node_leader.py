"""Node.step in leader mode: every partition a Raft group of three replicas, driven by hand.

A hand-cranked network as in test_node_moves.py: messages go through the codec and arrive in order, a node
syncs its storage after every step that wrote anything and is then stepped ``Synced`` (what a driver does;
so every durable effect is covered), timers fire in time order when no message is in flight. A node that is
down or cut off by a partition loses the messages sent to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from kvstore.config import ClusterConfig, ConfigError, StorageConfig, Timeouts, local_cluster
from kvstore.effects import Effect
from kvstore.errors import ErrorCode
from kvstore.messages import (
    ClientOp,
    ClientRequest,
    Failure,
    Found,
    GetOp,
    MovePartition,
    PutOp,
    Result,
    ScanOp,
    ScanPage,
    SendFailed,
    Synced,
    TimerFired,
    Written,
)
from replication.raft import LEADER, RaftReplica
from tests.protocol.test_node_moves import Net as MovesNet

P = 0  # one partition: every key is in it; n1 is its preferred owner


def leader_config(nodes: int = 3, replicas: int = 3, timeouts: Timeouts | None = None) -> ClusterConfig:
    return local_cluster(
        nodes,
        partitions=1,
        mode="leader",
        replicas=replicas,
        storage=StorageConfig(fsync="always"),
        timeouts=timeouts or Timeouts(),
    )


# Leader spread off: a leader hands no partition back to its preferred owner within any test's time.
NO_SPREAD = Timeouts(rebalance_interval_ms=10_000_000)


@dataclass
class Net(MovesNet):
    """test_node_moves.py's network for leader mode: every step that wrote anything is synced and followed by
    ``Synced`` (Raft counts its own entries only once durable), messages to a node that is down or cut off are
    lost, and ``run`` fires timers in time order between deliveries."""

    cfg: ClusterConfig = field(default_factory=leader_config)
    down: set[str] = field(default_factory=set)
    # Pairs of nodes that cannot reach each other (both ways).
    cut: set[frozenset[str]] = field(default_factory=set)

    def boot(self, node_id: str) -> None:
        self.down.discard(node_id)
        super().boot(node_id)

    def crash(self, node_id: str) -> None:
        """A process crash; the node stays down until ``boot``."""
        self.disks[node_id].crash("process")
        self.down.add(node_id)
        self.timers[node_id] = {}

    def partition(self, alone: str) -> None:
        self.cut = {frozenset((alone, other)) for other in self.cfg.node_ids if other != alone}

    def heal(self) -> None:
        self.cut = set()

    def step(self, node_id: str, inp: object) -> list[Effect]:
        storage = self.nodes[node_id].storage
        synced_before = storage.synced_lsn
        effects = super().step(node_id, inp)
        if storage.written_lsn > storage.synced_lsn:
            storage.sync()
        if storage.synced_lsn > synced_before:
            self.step(node_id, Synced(storage.synced_lsn))
        return effects

    def deliver_all(self) -> None:
        while self.queue:
            msg = self.queue.pop(0)
            if msg.dst in self.down or msg.src in self.down or frozenset((msg.src, msg.dst)) in self.cut:
                continue
            self.step(msg.dst, msg)

    def run_for(self, ms: int) -> None:
        """Deliver messages and fire timers in time order for ``ms`` of time."""
        until = self.now + ms
        while True:
            self.deliver_all()
            pending = [
                (at, node_id, key)
                for node_id, timers in self.timers.items()
                if node_id not in self.down
                for key, at in timers.items()
            ]
            if not pending or min(pending)[0] > until:
                break
            at, node_id, key = min(pending)
            del self.timers[node_id][key]
            self.now = max(self.now, at)
            self.step(node_id, TimerFired(key))
        self.now = until

    def submit(self, node_id: str, op: ClientOp) -> int:
        rid = self.next_request
        self.next_request += 1
        self.step(node_id, ClientRequest(rid, op))
        return rid

    def call(self, node_id: str, op: ClientOp, within_ms: int = 3000) -> Result:
        rid = self.submit(node_id, op)
        waited = 0
        while rid not in self.replies and waited < within_ms:
            self.run_for(10)
            waited += 10
        assert rid in self.replies, f"no answer to {op} at {node_id} within {within_ms} ms"
        return self.replies[rid]

    def replica(self, node_id: str) -> RaftReplica:
        replica = self.nodes[node_id].replicas[P]
        assert isinstance(replica, RaftReplica)
        return replica

    def leader(self) -> str | None:
        leaders = [
            n
            for n in self.nodes
            if n not in self.down and self.replica_or_none(n) is not None and self.replica(n).role == LEADER
        ]
        # Several may think they lead (a deposed one not told yet): the one of the highest term.
        return max(leaders, key=lambda n: self.replica(n).term, default=None)

    def replica_or_none(self, node_id: str) -> RaftReplica | None:
        replica = self.nodes[node_id].replicas.get(P)
        return replica if isinstance(replica, RaftReplica) else None


def value_of(result: Result) -> bytes | None:
    assert isinstance(result, Found), result
    return result.value


def test_the_config_checks_mode_and_replicas() -> None:
    assert leader_config().replication_factor == 3
    assert local_cluster(3).replication_factor == 1
    with pytest.raises(ConfigError, match="replicas = 4 needs at least as many founding nodes"):
        local_cluster(3, mode="leader", replicas=4)
    with pytest.raises(ConfigError, match="single mode keeps one copy"):
        local_cluster(3, replicas=3)
    with pytest.raises(ConfigError, match="positive int"):
        local_cluster(3, mode="leader", replicas=0)
    with pytest.raises(ConfigError, match="not one of"):
        local_cluster(3, mode="quorum")
    cfg = ClusterConfig.from_dict({**leader_config().to_dict()})
    assert cfg.mode == "leader" and cfg.replicas == 3


def test_the_preferred_owner_leads_and_every_node_holds_a_replica() -> None:
    net = Net()
    net.run_for(500)
    assert net.leader() == "n1"
    assert all(net.nodes[n].partition_map.replicas[P] == ("n1", "n2", "n3") for n in net.nodes)
    assert all(net.nodes[n].leader_hints[P] == "n1" for n in net.nodes)
    # Moves are refused in leader mode, with a reason.
    net.step("n1", MovePartition(P, "n2"))
    assert net.nodes["n1"].order_refusal is not None and "leader mode" in net.nodes["n1"].order_refusal


def test_a_write_through_a_follower_is_forwarded_and_acknowledged_once_committed() -> None:
    net = Net()
    net.run_for(500)
    assert isinstance(net.call("n2", PutOp("k", b"v1")), Written)
    # Acknowledged only once committed: a majority holds it and the leader applied it.
    leader = net.replica("n1")
    assert leader.commit >= 2 and leader.applied == leader.commit
    assert sum(1 for pr in leader.progress.values() if pr.match >= leader.commit) >= 1
    for node_id in ("n1", "n2", "n3"):
        assert value_of(net.call(node_id, GetOp("k"))) == b"v1"


def test_a_leader_crash_elects_a_new_leader_and_acknowledged_writes_stay_readable() -> None:
    net = Net()
    net.run_for(500)
    for i in range(5):
        assert isinstance(net.call("n1", PutOp(f"k{i}", f"v{i}".encode())), Written)
    net.crash("n1")
    net.run_for(4000)
    new_leader = net.leader()
    assert new_leader in ("n2", "n3")
    for i in range(5):
        assert value_of(net.call("n2", GetOp(f"k{i}"))) == f"v{i}".encode()
    # The old leader comes back as a follower and catches up.
    net.boot("n1")
    assert isinstance(net.call("n3", PutOp("k0", b"after")), Written)
    net.run_for(1000)
    assert net.replica("n1").applied >= net.replica(new_leader).commit
    assert value_of(net.call("n1", GetOp("k0"))) == b"after"
    # Leader spread: the caught-up preferred owner is handed its partition back.
    net.run_for(2000)
    assert net.leader() == "n1"
    assert value_of(net.call("n2", GetOp("k1"))) == b"v1"


def test_a_deposed_leader_cut_off_serves_no_stale_read() -> None:
    net = Net()
    net.run_for(500)
    assert isinstance(net.call("n1", PutOp("k", b"old")), Written)
    net.partition("n1")
    net.run_for(4000)
    assert net.leader() in ("n2", "n3")
    assert isinstance(net.call("n2", PutOp("k", b"new")), Written)
    # n1 may still believe it leads, or not: either way it must not answer the old value.
    rid = net.submit("n1", GetOp("k"))
    net.run_for(3000)
    answer = net.replies[rid]
    assert isinstance(answer, Failure), answer
    assert answer.code in (ErrorCode.NOT_LEADER.value, ErrorCode.TIMEOUT.value, ErrorCode.UNAVAILABLE.value)
    net.heal()
    net.run_for(2000)
    assert value_of(net.call("n1", GetOp("k"))) == b"new"


def test_a_node_without_a_replica_forwards_to_the_leader_even_with_a_stale_hint() -> None:
    net = Net(cfg=leader_config(nodes=4, replicas=3, timeouts=NO_SPREAD))
    net.run_for(500)
    assert net.nodes["n4"].replicas == {}
    assert isinstance(net.call("n4", PutOp("k", b"v1")), Written)
    assert value_of(net.call("n4", GetOp("k"))) == b"v1"
    # Leadership moves away from the preferred owner n1, which n4 still routes to: n1, a follower now, passes
    # n4's ops on once to the leader it knows.
    net.crash("n1")
    net.run_for(4000)
    new_leader = net.leader()
    assert new_leader in ("n2", "n3")
    net.boot("n1")
    net.run_for(1000)
    assert net.leader() == new_leader and net.replica("n1").leader == new_leader
    assert net.nodes["n4"].leader_hints.get(P) in (None, "n1")
    # A read first: n4 learns n1's new incarnation from the refusal (a write refused so would be indefinite).
    assert value_of(net.call("n4", GetOp("k"))) == b"v1"
    assert isinstance(net.call("n4", PutOp("k", b"v2")), Written)
    assert value_of(net.call("n4", GetOp("k"))) == b"v2"
    assert net.replica(new_leader).applied >= 4


def test_a_node_without_a_replica_routes_around_a_leader_it_cannot_reach() -> None:
    net = Net(cfg=leader_config(nodes=4, replicas=3))
    net.run_for(500)
    assert isinstance(net.call("n4", PutOp("k", b"v1")), Written)
    assert net.nodes["n4"].leader_hints.get(P) in (None, "n1")
    net.crash("n1")  # and stays down: n4's forwards to it cannot even be sent
    net.run_for(4000)
    new_leader = net.leader()
    assert new_leader in ("n2", "n3")
    rid = net.submit("n4", GetOp("k"))
    [forward] = [m for m in net.queue if m.src == "n4" and m.dst == "n1"]
    net.queue.remove(forward)
    net.step("n4", SendFailed(forward))  # what the transport reports for a refused connection
    failed = net.replies.pop(rid)
    assert isinstance(failed, Failure) and failed.code == ErrorCode.UNAVAILABLE.value  # definite: retry
    assert net.nodes["n4"].leader_hints[P] == "n2", "the next replica of the group"
    # The retry reaches the group: n2 serves it or passes it on once to the leader.
    assert value_of(net.call("n4", GetOp("k"))) == b"v1"
    assert isinstance(net.call("n4", PutOp("k", b"v2")), Written)


def test_an_expired_key_is_purged_from_every_replica_through_the_log() -> None:
    net = Net()
    net.run_for(500)
    assert isinstance(net.call("n2", PutOp("ttl", b"v", ttl_ms=50)), Written)
    assert isinstance(net.call("n2", PutOp("keep", b"v")), Written)
    net.run_for(200)  # every follower has learnt the commit
    assert all(net.nodes[n].storage.get_stored(P, "ttl") is not None for n in net.nodes)
    before = {n: net.replica(n).applied for n in net.nodes}
    net.run_for(net.cfg.timeouts.ttl_sweep_interval_ms + 500)
    for node_id in net.nodes:
        storage = net.nodes[node_id].storage
        assert storage.get_stored(P, "ttl") is None, node_id
        assert storage.get_stored(P, "keep") is not None, node_id
        # Purged by an entry of the log, applied at the same index everywhere.
        assert net.replica(node_id).applied > before[node_id]
    assert len({net.replica(n).applied for n in net.nodes}) == 1
    assert value_of(net.call("n1", GetOp("keep"))) == b"v"


def scanned(result: Result) -> dict[str, bytes]:
    assert isinstance(result, ScanPage), result
    return {item.key: item.value for item in result.items}


def test_a_healthy_leader_scans_every_acknowledged_write_through_a_read_index_round() -> None:
    cfg = local_cluster(3, partitions=4, mode="leader", replicas=3, storage=StorageConfig(fsync="always"))
    net = Net(cfg=cfg)
    net.run_for(500)
    written = {}
    for i in range(12):
        key, value = f"k{i:02}", f"v{i}".encode()
        assert isinstance(net.call(f"n{i % 3 + 1}", PutOp(key, value)), Written)
        written[key] = value
    # No sleep between the last write and the scans: each part waits for its leader's read index.
    for node_id in ("n1", "n2", "n3"):
        assert scanned(net.call(node_id, ScanOp("", None, 100))) == written
    page = net.call("n2", ScanOp("k03", "k07", 2))
    assert isinstance(page, ScanPage) and [i.key for i in page.items] == ["k03", "k04"] and page.truncated
    # Nothing is left waiting.
    assert all(net.nodes[n].inflight == 0 for n in net.nodes)


def test_a_cut_off_leader_that_has_not_stepped_down_serves_no_stale_scan() -> None:
    net = Net()
    net.run_for(500)
    assert isinstance(net.call("n1", PutOp("k", b"old")), Written)
    assert scanned(net.call("n1", ScanOp("", None, 10))) == {"k": b"old"}
    net.partition("n1")
    # n1 still believes it leads (check-quorum has not run yet), and has confirmed its leadership before.
    assert net.replica("n1").role == LEADER
    rid = net.submit("n1", ScanOp("", None, 10))
    assert rid not in net.replies  # not served from n1's state: it waits for a read-index round
    net.run_for(4000)
    assert net.leader() in ("n2", "n3")
    assert isinstance(net.call("n2", PutOp("k", b"new")), Written)
    net.run_for(net.cfg.timeouts.request_timeout_ms)
    answer = net.replies[rid]
    assert isinstance(answer, Failure), answer
    assert answer.code in (ErrorCode.NOT_LEADER.value, ErrorCode.TIMEOUT.value)
    assert net.nodes["n1"].inflight == 0
    # Healed, n1 (a follower now) has its scan served by the new leader.
    net.heal()
    net.run_for(2000)
    assert scanned(net.call("n1", ScanOp("", None, 10))) == {"k": b"new"}


def test_a_scan_a_cut_off_leader_holds_times_out_when_it_never_steps_down() -> None:
    net = Net()
    net.run_for(500)
    assert isinstance(net.call("n1", PutOp("k", b"v")), Written)
    net.partition("n1")
    rid = net.submit("n1", ScanOp("", None, 10))
    # Only n1's call timer fires: the leader never learns it lost its quorum, and the scan still ends.
    node = net.nodes["n1"]
    call_timers = [key for key in net.timers["n1"] if key.startswith("call/")]
    assert len(call_timers) == 1
    net.now = net.timers["n1"][call_timers[0]]
    net.step("n1", TimerFired(call_timers[0]))
    answer = net.replies[rid]
    assert isinstance(answer, Failure) and answer.code == ErrorCode.TIMEOUT.value, answer
    assert node.inflight == 0


def test_an_op_arriving_during_an_election_waits_for_the_new_leader() -> None:
    # A client's op waits up to the request timeout: long enough here for any election to end.
    net = Net(cfg=leader_config(timeouts=Timeouts(request_timeout_ms=8000, rebalance_interval_ms=10_000_000)))
    net.run_for(500)
    assert isinstance(net.call("n2", PutOp("k", b"v1")), Written)
    net.crash("n1")
    net.crash("n3")
    # n2 stops hearing from n1 and campaigns, alone: it knows no leader. An op submitted now is held, not
    # refused, and served once n3 is back and the election is over.
    for _ in range(400):
        if net.replica("n2").leader is None:
            break
        net.run_for(10)
    assert net.replica("n2").leader is None
    rid = net.submit("n2", PutOp("k", b"v2"))
    net.run_for(100)
    assert rid not in net.replies
    net.boot("n3")
    net.run_for(5000)
    assert isinstance(net.replies[rid], Written), net.replies[rid]
    assert value_of(net.call("n3", GetOp("k"))) == b"v2"


def test_an_op_held_without_a_leader_fails_definitely_when_its_wait_ends() -> None:
    net = Net(cfg=leader_config(timeouts=NO_SPREAD))
    net.run_for(500)
    net.crash("n1")
    net.crash("n3")  # n2 alone can elect nobody
    for _ in range(400):
        if net.replica("n2").leader is None:
            break
        net.run_for(10)
    assert net.replica("n2").leader is None
    rid = net.submit("n2", GetOp("k"))
    net.run_for(1900)
    assert rid not in net.replies  # a client's op is held for the request timeout
    net.run_for(200)
    failed = net.replies[rid]
    assert isinstance(failed, Failure) and failed.code == ErrorCode.NOT_LEADER.value, failed
    assert "elected no leader" in failed.message
