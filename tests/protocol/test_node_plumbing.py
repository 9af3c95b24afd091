"""Leader mode: what a client asks for (replication, consistency, staleness, session position) reaches the
replica as ``ClientCall`` fields, through forwarding too, and the answer's ``Answer.position`` comes back to
the client's node as ``Reply.position``.

The replicas are the real Raft ones behind a recorder, which keeps every ``ClientCall`` a replica is given
and stamps each answer with the replica's applied index (the position a replica reports: what the node must
carry back, whatever the protocol puts there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvstore.config import ClusterConfig, ReplicationConfig, StorageConfig, local_cluster
from kvstore.effects import Effect, Reply
from kvstore.errors import ErrorCode
from kvstore.messages import (
    CasOp,
    Deleted,
    DeleteOp,
    Failure,
    Forward,
    ForwardReply,
    Found,
    GetOp,
    Message,
    PutOp,
    Written,
)
from replication.raft import RaftReplica
from replication.replica import Answer, ClientCall, ReplicaEffect, ReplicaInput
from tests.protocol.test_node_leader import Net as LeaderNet
from tests.protocol.test_node_leader import P


class Recorder:
    """A replica that hands everything to a Raft replica, keeps the ``ClientCall``s and stamps positions."""

    def __init__(self, inner: RaftReplica) -> None:
        self.inner = inner
        self.partition = inner.partition
        self.calls: list[ClientCall] = []

    @property
    def leader(self) -> str | None:
        return self.inner.leader

    def step(self, now_ms: int, inp: ReplicaInput) -> list[ReplicaEffect]:
        if isinstance(inp, ClientCall):
            self.calls.append(inp)
        effects = self.inner.step(now_ms, inp)
        for effect in effects:
            if isinstance(effect, Answer):
                effect.position = self.inner.applied
        return effects

    def scan(self, now_ms: int, start: str, end: str | None, limit: int) -> object:
        return self.inner.scan(now_ms, start, end, limit)


def plumbing_config(nodes: int = 4, **replication: object) -> ClusterConfig:
    return local_cluster(
        nodes,
        partitions=1,
        mode="leader",
        replicas=3,
        storage=StorageConfig(fsync="always"),
        replication=ReplicationConfig(**replication),  # type: ignore[arg-type]
    )


@dataclass
class Net(LeaderNet):
    """The leader-mode network, keeping each reply's position and every forward and forward reply sent."""

    positions: dict[int, int] = field(default_factory=dict)
    sent: list[Message] = field(default_factory=list)

    def step(self, node_id: str, inp: object) -> list[Effect]:
        queued = len(self.queue)
        effects = super().step(node_id, inp)
        for effect in effects:
            if isinstance(effect, Reply):
                self.positions[effect.request_id] = effect.position
        self.sent.extend(m for m in self.queue[queued:] if isinstance(m.body, (Forward, ForwardReply)))
        return effects

    def recorders(self) -> dict[str, Recorder]:
        """Put a recorder in front of every replica (once the group has its leader)."""
        out: dict[str, Recorder] = {}
        for node_id, node in self.nodes.items():
            replica = node.replicas.get(P)
            if isinstance(replica, RaftReplica):
                out[node_id] = node.replicas[P] = Recorder(replica)  # type: ignore[assignment]
        return out


def started(cfg: ClusterConfig) -> tuple[Net, dict[str, Recorder]]:
    net = Net(cfg=cfg)
    net.run_for(500)
    return net, net.recorders()


def test_a_get_names_its_read_mode_staleness_bound_and_session_position() -> None:
    net, recorders = started(plumbing_config(reads="lease"))
    n1 = recorders["n1"]
    assert isinstance(net.call("n1", GetOp("k")), Failure)  # not found; the call is what matters
    assert isinstance(net.call("n1", GetOp("k", "linearizable")), Failure)
    assert isinstance(net.call("n1", GetOp("k", "unsafe", min_index=7)), Failure)
    assert isinstance(net.call("n1", GetOp("k", "read-index")), Failure)
    assert [(c.read, c.max_staleness_ms, c.min_index) for c in n1.calls] == [
        ("lease", None, 0),  # the cluster's reads
        ("lease", None, 0),  # its linearizable method
        ("unsafe", None, 7),
        ("read-index", None, 0),
    ]


def test_linearizable_is_read_index_when_the_cluster_reads_unsafely() -> None:
    net, recorders = started(plumbing_config(reads="unsafe"))
    net.call("n1", GetOp("k", "linearizable"))
    net.call("n1", GetOp("k"))
    assert [c.read for c in recorders["n1"].calls] == ["read-index", "unsafe"]


def test_a_write_names_its_replication_setting_or_the_clusters() -> None:
    net, recorders = started(plumbing_config(writes="semi-sync"))
    assert isinstance(net.call("n1", PutOp("k", b"v", replication="async")), Written)
    assert isinstance(net.call("n1", PutOp("k", b"w")), Written)
    assert isinstance(net.call("n1", DeleteOp("k", "sync")), Deleted)
    assert isinstance(net.call("n1", CasOp("k", None, b"x", replication="async")), Written)
    assert [(type(c.op).__name__, c.replication) for c in recorders["n1"].calls] == [
        ("PutOp", "async"),
        ("PutOp", "semi-sync"),
        ("DeleteOp", "sync"),
        ("CasOp", "async"),
    ]


def test_fields_travel_with_a_forward_and_the_position_comes_back_to_the_clients_node() -> None:
    net, recorders = started(plumbing_config())
    assert net.nodes["n4"].replicas == {}
    rid = net.submit("n4", PutOp("k", b"v1", replication="semi-sync"))
    net.run_for(200)
    assert isinstance(net.replies[rid], Written)
    written_at = recorders["n1"].inner.applied
    assert net.positions[rid] == written_at > 0
    [put] = [c for c in recorders["n1"].calls if isinstance(c.op, PutOp)]
    assert put.replication == "semi-sync"
    # The ForwardReply carried the position from n1 to n4.
    [reply] = [m.body for m in net.sent if isinstance(m.body, ForwardReply)]
    assert (reply.result, reply.position) == (Written("k", written_at), written_at)
    rid = net.submit("n4", GetOp("k", "read-index", min_index=written_at))
    net.run_for(200)
    assert isinstance(net.replies[rid], Found) and net.positions[rid] == written_at
    [get] = [c for c in recorders["n1"].calls if isinstance(c.op, GetOp)]
    assert (get.read, get.min_index) == ("read-index", written_at)


def test_a_stale_read_goes_to_the_replicas_in_turn_and_a_redirect_reaches_the_leader() -> None:
    net, recorders = started(plumbing_config())
    assert isinstance(net.call("n1", PutOp("k", b"v1")), Written)
    first_hops = []
    for _ in range(3):
        net.sent.clear()
        result = net.call("n4", GetOp("k", "stale", max_staleness_ms=500))
        # Today's replica serves stale reads on the leader only: a follower redirects, and passes the read on.
        assert isinstance(result, Found) and result.value == b"v1"
        first_hops.append(next(m.dst for m in net.sent if m.src == "n4"))
    assert sorted(first_hops) == ["n1", "n2", "n3"]
    for node_id in ("n2", "n3"):
        stale = [c for c in recorders[node_id].calls if isinstance(c.op, GetOp)]
        assert [(c.read, c.max_staleness_ms) for c in stale] == [("stale", 500)]


def test_a_stale_read_on_a_follower_asks_its_own_replica_first() -> None:
    net, recorders = started(plumbing_config(reads="stale"))
    assert isinstance(net.call("n1", PutOp("k", b"v1")), Written)
    assert isinstance(net.call("n2", GetOp("k")), Found)
    assert [c.read for c in recorders["n2"].calls] == ["stale"]


def test_bad_settings_are_refused_before_anything_happens() -> None:
    net, recorders = started(plumbing_config())
    for op, message in [
        (PutOp("k", b"v", replication="quorum"), "replication must be one of sync, semi-sync, async"),
        (GetOp("k", "eventual"), "consistency must be one of"),
        (GetOp("k", "read-index", max_staleness_ms=10), "max_staleness_ms bounds stale reads only"),
        (GetOp("k", "stale", max_staleness_ms=0), "max_staleness_ms must be 1.."),
        (GetOp("k", min_index=-1), "a session position must be 0.."),
    ]:
        for node_id in ("n1", "n4"):
            result = net.call(node_id, op)
            assert isinstance(result, Failure) and result.code == ErrorCode.BAD_REQUEST.value, (op, result)
            assert message in result.message
    assert all(recorder.calls == [] for recorder in recorders.values())


def test_single_mode_refuses_settings_it_does_not_serve_and_takes_the_defaults() -> None:
    cfg = local_cluster(2, partitions=2, storage=StorageConfig(engine="memory"))
    net = LeaderNet(cfg=cfg)
    assert isinstance(net.call("n1", PutOp("k", b"v", replication="sync")), Written)
    assert isinstance(net.call("n2", GetOp("k", "linearizable", min_index=3)), Found)
    for op in (PutOp("k", b"v", replication="async"), DeleteOp("k", "semi-sync"), GetOp("k", "stale")):
        result = net.call("n1", op)
        assert isinstance(result, Failure) and result.code == ErrorCode.BAD_REQUEST.value
        assert "needs leader mode" in result.message
