"""Node.step: the sans-IO core that routes every input to the right partition's protocol instance.

A client request names keys; the node maps each key to its partition and the partition to its owner.
Ops for partitions it holds go to the local replica (``replication.replica.PartitionReplica``, one per
partition, built for the cluster's mode); the rest are forwarded to the owner
(``kvstore/forwarding.py``: the incarnation handshake, the duplicate memory, the forward timers).
Scans and batches fan out to every owner involved and are gathered back into one result
(``kvstore/gather.py``); in leader mode each partition this node scans is a part of its own, a ``ScanRead``
its replica answers once a read-index round confirmed its leadership (so a cut-off leader serves no stale
scan), while single mode scans its partitions at once. The node routes each input to the one that handles
it and composes their effects: a replica's ``SendTo`` becomes a ``Send`` of a ``Message`` for its partition
(in leader mode, an item of an envelope: below), its ``Answer`` completes whoever waits on the token, its
timers become node timers ``p/<partition>/<key>``.

Multi-Raft transport (leader mode, ``kvstore/raft_batching.py``): the replicas' messages of one step leave at
its end as one ``RaftBatch`` envelope of ``(partition, body)`` items per (peer, durable) pair; an envelope
received is unpacked item by item into its partitions' replicas in one step (so their answers coalesce
again), and one that could not be sent is each item's ``PeerUnreachable``. Every leader's ``heartbeat`` timer
is the node's one ``raft-tick``, so a node's leaders heartbeat together: at rest, peer traffic does not grow
with the number of partitions.

Everything waiting for an answer is one entry in ``_waiting``, keyed by a token the node allocates:
a client request, a forwarded request to answer, a part of a gather. Its size is bounded by
``limits.max_inflight``; past that, new requests are refused as ``overloaded`` (definite). Every entry
has a deadline: a forward its forward timer, an op a replica did not answer in the step that gave it one
a ``call/<token>`` timer (an op answered at once, as every ``single``-mode op is, costs no timer).

A replica that cannot serve an op answers with a ``Redirect``. An op of this node's own clients is then
forwarded once to the leader the replica names, if it names another member; otherwise (and always for an
op a peer forwarded here, so that ops never travel in circles) it fails with a definite ``not_leader`` or
``wrong_epoch``.

Leader mode settings: an op's replication setting, read consistency, staleness bound and session position
are resolved against the cluster's ``[replication]`` table into the ``ClientCall`` (``_client_call``), and the
replica's ``Answer.position`` travels back with the result (``Reply.position``, through ``ForwardReply`` from
another node). A stale read is served by this node's replica of the partition, whatever its role, else
forwarded to the partition's holders in turn (``_route_key_op``); a redirect of it goes to the leader.

Moves (``single`` mode): ``MovePartition(p, target)`` at ``p``'s owner streams ``p`` to ``target``; ``Mover``
(``kvstore/handoff.py``) holds every transition of both ends. The node hands it the stream messages, the
``move/<p>`` timers and ``Started``, reports every write op it applied to a moving partition, holds back the
TTL sweep of a moving partition, and fails every op for a fenced partition ``unavailable`` (definite).

Snapshots (``leader`` mode): ``RaftSnapshots`` (``kvstore/raft_snapshots.py``) sends a partition's records to a
follower behind its leader's log compaction and installs them at the follower. The node builds each leader-mode
replica with its watched state machine (which reports applied keys to running transfers), hands it the
``RaftSnapshotPart`` messages and the ``raft-snapshots`` timer, and takes the replica effects it produces.

Durability: under ``fsync = "always"`` every ``Send`` and ``Reply`` is marked durable (a client is told
only what survives a crash); under every policy, an answer a replica marks durable is carried durable to
the ``Reply`` or ``Send`` that passes its result on, through a gather too (a gathered result is durable
if any part was).

Peer messages arrive type-checked by the codec but are otherwise untrusted: one not addressed to this
node by another member is ignored, a forwarded op is checked like a client's, and an answer that does
not fit the op it answers fails that op. Nothing a peer sends may raise out of ``step``: for a node
process that is fatal. A replica gets the bodies of peer messages for its partition as they came, so it
must hold to the same rule.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

from kvstore import codec
from kvstore.changes import changes_page
from kvstore.config import ClusterConfig
from kvstore.effects import CancelTimer, Effect, Reply, Send, SetTimer
from kvstore.errors import ErrorCode, KvError
from kvstore.forwarding import FORWARD_TIMER_PREFIX, Done, Forwarder, PeerWaiter
from kvstore.gather import GatherPart, batch_parts, merge_pages, partition_scan_parts, scan_parts
from kvstore.group_changes import GroupChanger
from kvstore.handoff import MOVE_TIMER_PREFIX, Mover, MoveStats
from kvstore.leader_balance import LEADER_BALANCE_TIMER, handbacks
from kvstore.leader_wait import LEADER_WAIT_TIMER, LeaderWait
from kvstore.leaderless_mode import HANDOFF_TIMER, LeaderlessMode
from kvstore.map_gossip import GOSSIP_TIMER, MapGossip
from kvstore.membership import REBALANCE_TIMER, Rebalancer, apply_order
from kvstore.messages import (
    NODE_PARTITION,
    BatchGetOp,
    BatchPutOp,
    BatchResults,
    CasOp,
    ChangesOp,
    ClientOp,
    ClientRequest,
    DeleteOp,
    Failure,
    Forward,
    ForwardRefused,
    ForwardReply,
    GetOp,
    Input,
    KeyOp,
    MapUpdate,
    Message,
    MovePartition,
    PutOp,
    RaftBatch,
    RaftSnapshotPart,
    Result,
    ScanOp,
    ScanPage,
    ScanPartitionsOp,
    SendFailed,
    SetMember,
    Started,
    Synced,
    TimerFired,
)
from kvstore.raft_batching import RAFT_TICK_TIMER, HeartbeatTicker, RaftOutbox, batch_items, sort_items
from kvstore.raft_snapshots import SNAPSHOT_TIMER, TICK_MS, RaftSnapshots
from kvstore.ranges import RANGES_TIMER, RangeKeeper
from kvstore.state_machine import KvStateMachine
from kvstore.storage.base import Storage
from kvstore.validation import check_op
from partitioning.partition_map import PartitionMap
from partitioning.stream import StreamAck, StreamChunk, StreamDone, StreamRestart
from replication.leaderless import LeaderlessReplica, LocalScan
from replication.raft import HEARTBEAT_TIMER, LEADER, RaftReplica
from replication.raft_messages import RaftOutcomeUnknown, RaftRefused, ScanRead, TransferLeader
from replication.raft_stats import RaftStats
from replication.replica import (
    Answer,
    ClientCall,
    PartitionReplica,
    PeerMessage,
    PeerUnreachable,
    Recovered,
    Redirect,
    ReplicaEffect,
    ReplicaInput,
    ReplicaStarted,
    SendTo,
    StartTimer,
    StopTimer,
)
from replication.replica import Synced as ReplicaSynced
from replication.replica import TimerFired as ReplicaTimerFired
from replication.single_copy import SWEEP_TIMER, SingleCopy

# The most expired keys one replica purges per sweep.
TTL_SWEEP_MAX_KEYS = 1000
REPLICA_TIMER_PREFIX = "p/"
CALL_TIMER_PREFIX = "call/"
_NODE_TRAFFIC = (Forward, ForwardReply, ForwardRefused, MapUpdate)
_STREAM_TRAFFIC = (StreamChunk, StreamAck, StreamRestart, StreamDone)
# The node's partition map, kept in storage's metadata once it differs from the one its config gives.
MAP_META = "partition_map"
# How soon the rebalancer looks again after this node changed its map (a move handed over, an order).
REBALANCE_SOON_MS = 10
_WRONG_EPOCH = ErrorCode.WRONG_EPOCH.value
# Synced carries nothing: one instance serves every replica.
_SYNCED = ReplicaSynced()


# ---------------------------------------------------------------- who is waiting for a token


@dataclass(slots=True)
class _ToClient:
    request_id: int


_Target = _ToClient | PeerWaiter
_Waiter = _ToClient | PeerWaiter | GatherPart[_Target]


class Node:
    def __init__(self, node_id: str, config: ClusterConfig, storage: Storage, rng: random.Random) -> None:
        if node_id not in config.node_ids:
            raise ValueError(f"{node_id!r} is not a member of the cluster {config.node_ids}")
        self.node_id = node_id
        self.config = config
        self.storage = storage
        self._rng = rng
        self._limits = config.limits
        # The in-flight table's bound, less the partition count (the map may change): checked after every step.
        self._waiting_slack = config.limits.max_inflight + config.limits.max_batch_keys
        self._request_timeout_ms = config.timeouts.request_timeout_ms
        # Under "always" a client is told only what survives a crash, so every Send and Reply waits for a sync.
        # Leader mode: Raft marks what must be durable itself (votes, append acknowledgements, early answers) and
        # answers a write only once a majority holds it durably, so no blanket rule delays its other messages.
        # Leaderless mode: a replica marks its acknowledgements and answers durable, as Raft does.
        self._always_durable = config.storage.fsync == "always" and config.mode == "single"
        self.partition_map = _starting_map(config, storage)
        # Leader mode: a node holds a voter of a partition's group from the start only where the founders' layout
        # puts it; anywhere else it was added later, as a learner (its stored configuration, once it has one,
        # says what it became).
        self._founding_layout = _initial_map(config).replicas
        # Who may send to this node: every node its roster knows (removed ones still forward and hand over),
        # and every node of its config (one added to the config talks before it is admitted).
        self._peers = self._known_peers()
        self._leader_mode = config.mode == "leader"
        # Leaderless mode's side of the node (kvstore/leaderless_mode.py); None in the other modes.
        self._leaderless = LeaderlessMode(node_id, config, storage, rng) if config.mode == "leaderless" else None
        # Leader mode: per partition, the node this one believes leads it (its own replicas' view after every
        # step, and the hints of redirects). Ops for partitions held elsewhere go there, else to the owner.
        self.leader_hints: dict[int, str] = {}
        # Leader mode: ops held while their partition elects a leader.
        self._leader_wait = LeaderWait()
        # Leader mode: how many stale reads this node sent away, which picks the replica the next one goes to.
        self._stale_turn = 0
        # Leader mode: elections, leadership changes and commit latency of every Raft replica here (for /metrics).
        self.raft_stats = RaftStats()
        # Leader mode: snapshot transfers to followers behind compaction, both ends (kvstore/raft_snapshots.py).
        # Built before the replicas: a leader's state machine reports what it applies to the transfers.
        self.snapshots = RaftSnapshots(
            node_id,
            storage,
            rng,
            replicas=lambda: self.replicas,
            clock=lambda: self._now_ms,
            replica_clock=lambda: self._expiry_clock_ms,
            replica_effects=self._take_effects,
            emit=lambda effects: self._effects.extend(effects),
            always_durable=self._always_durable,
        )
        self.replicas: dict[int, PartitionReplica] = {
            p: self._build_replica(p) for p in self.partition_map.partitions_of(node_id)
        }
        # Scopes this run's forward ids, so a restarted node's ids never collide with its old ones.
        # Never 0, which in a Forward means "the owner's incarnation is not known yet".
        self.incarnation = rng.randrange(1, 1 << 63)
        self._next_token = 1
        self._waiting: dict[int, _Waiter] = {}
        # Ops handed to a local replica and not answered yet: token -> (partition, op). Leader mode hands a
        # replica a ScanRead for each partition a scan covers here: it answers once its read index is confirmed.
        self._calls: dict[int, tuple[int, KeyOp | ScanRead]] = {}
        # Those of them whose deadline timer runs: the step that made the call ended without an answer.
        # token -> the deadline its timer fires at (an op held for a leader after its replica refused it keeps it).
        self._timed_calls: dict[int, int] = {}
        self._forwarder = Forwarder(
            node_id,
            self.incarnation,
            config.timeouts.request_timeout_ms,
            memory_capacity=4 * self._limits.max_inflight,
            always_durable=self._always_durable,
        )
        self._forwarder.map_epoch = self.partition_map.epoch
        # How this node's map reaches the others (kvstore/map_gossip.py).
        self._gossip = MapGossip(node_id)
        # Partition moves, both ends (kvstore/handoff.py).
        self._mover = Mover(
            node_id,
            storage,
            rng,
            get_map=lambda: self.partition_map,
            install_map=self._install_and_announce,
            always_durable=self._always_durable,
            # Under "never" nothing is fsynced: a power loss could forget a fence after the target installed.
            moves_refused=None if config.storage.fsync != "never" else 'moves need fsync "always" or "batch"',
            # Leader mode: a node out of a partition's group keeps its records with the log and applied index
            # they go with (added back, it resumes from them); clearing the records alone would lose data.
            clear_unheld=config.mode == "single",
        )
        self._rebalancer = Rebalancer(node_id, config.replication_factor if config.mode != "single" else None)
        # Leader mode: the membership changes of the groups this node leads (kvstore/group_changes.py).
        self._group_changer = GroupChanger(node_id)
        # Range mode: this node's splits and merges of the ranges it owns (kvstore/ranges.py).
        self._range_keeper = (
            RangeKeeper(node_id, storage, config.ranges.policy()) if config.partitioner == "range" else None
        )
        # When the rebalance timer is due (None: not armed).
        self._rebalance_due_ms: int | None = None
        self._rebalance_interval_ms = config.timeouts.rebalance_interval_ms
        # Why the last operator order (a move, a membership change) did nothing; None if it did something.
        self.order_refusal: str | None = None
        self._effects: list[Effect] = []
        # Leader mode's multi-Raft transport (kvstore/raft_batching.py): the replicas' messages of a step leave
        # as one envelope per peer, and one node timer ticks every leader's heartbeat.
        self._raft_out = RaftOutbox(node_id)
        self._heartbeats = HeartbeatTicker(config.timeouts.heartbeat_interval_ms)
        self._now_ms = 0
        # The latest time this node has seen. Replicas get this clock, so TTL expiry is judged on it and a
        # clock that steps back (a skew fault ending, NTP) cannot bring an expired key back.
        self._expiry_clock_ms = 0
        self.started = False

    def _build_replica(self, partition: int) -> PartitionReplica:
        if self.config.mode == "single":
            return SingleCopy(
                partition,
                KvStateMachine(self.storage, partition),
                self.storage.log(partition),
                sweep_interval_ms=self.config.timeouts.ttl_sweep_interval_ms,
                sweep_max_keys=TTL_SWEEP_MAX_KEYS,
            )
        if self.config.mode == "leader":
            timeouts = self.config.timeouts
            voters = self.partition_map.replicas[partition]
            learners: tuple[str, ...] = ()
            others = tuple(n for n in voters if n != self.node_id)
            if self.node_id not in self._founding_layout[partition] and others:
                voters, learners = others, (self.node_id,)
            return RaftReplica(
                partition,
                self.node_id,
                voters,
                self.snapshots.machine(partition),
                self.storage.log(partition),
                # A child generator per replica, drawn in partition order: the simulator stays deterministic.
                random.Random(self._rng.getrandbits(64)),
                learners=learners,
                election_timeout_ms=timeouts.election_timeout_ms,
                heartbeat_interval_ms=timeouts.heartbeat_interval_ms,
                sweep_interval_ms=timeouts.ttl_sweep_interval_ms,
                sweep_max_keys=TTL_SWEEP_MAX_KEYS,
                lease_drift_ms=self.config.replication.lease_drift_ms,
                stats=self.raft_stats,
                compact_threshold=self._limits.raft_compact_entries,
            )
        if self._leaderless is not None:
            return self._leaderless.build_replica(partition, self.partition_map)
        raise ValueError(f"no replica for mode {self.config.mode!r}")

    # ------------------------------------------------------------ public

    @property
    def move_stats(self) -> MoveStats:
        """What this node's outgoing moves did since it started."""
        return self._mover.stats

    @property
    def moves_in_progress(self) -> int:
        return len(self._mover.moving)

    @property
    def range_changes(self) -> tuple[int, int]:
        """Range mode: the splits and merges this node made since it started ((0, 0) in hash mode)."""
        keeper = self._range_keeper
        return (0, 0) if keeper is None else (keeper.splits, keeper.merges)

    @property
    def leaderless(self) -> LeaderlessMode | None:
        """Leaderless mode's node side (its stats, hints and placement); None in other modes."""
        return self._leaderless

    @property
    def known_nodes(self) -> tuple[str, ...]:
        """Every node this one may talk to (its roster and its config) and itself, by id."""
        return tuple(sorted(self._peers | {self.node_id}))

    def is_peer(self, node_id: str) -> bool:
        """Whether ``node_id`` is another node this one takes messages from."""
        return node_id in self._peers

    def address_of(self, node_id: str) -> str:
        """Where ``node_id`` listens: its config's address (what the operator controls: a node's port may have
        changed since its roster entry was made), else its roster entry's (nodes added at run time); "" if
        neither says."""
        return self.config.address_text(node_id) or self.partition_map.address_of(node_id)

    @property
    def balanced(self) -> bool:
        """Whether this node's map is where the rebalancer wants it and no move of this node's runs."""
        return not self._mover.moving and self._rebalancer.balanced(self.partition_map)

    def install_map(self, incoming: PartitionMap) -> None:
        """Learn what ``incoming`` knows: merged into this node's map (per partition the higher epoch). A
        partition this node no longer holds stops being served here at once (its waiting ops fail
        ``wrong_epoch``, definitely, for a retry at the new owner); one it now holds is served from its storage,
        which a move fills before it flips the map. A map of another partition count is ignored."""
        current = self.partition_map
        if incoming.partition_count != current.partition_count or incoming.partitioner != current.partitioner:
            return
        try:
            merged = current.merge(incoming)
        except ValueError:
            return  # ranges that do not tile the key space together: a map no node could have made
        if merged == current:
            return
        self.partition_map = merged
        self._peers = self._known_peers()
        self._effects.extend(self._gossip.start_round(self._now_ms, self._peers))
        self._arm_rebalance()
        self._forwarder.map_epoch = merged.epoch
        # Durable with the next sync: a restart keeps what it learnt.
        self.storage.put_meta(MAP_META, codec.encode(MapUpdate.of(merged)))
        held = set(merged.partitions_of(self.node_id))
        for partition in sorted(self.replicas.keys() - held):
            self._drop_replica(partition)
        if self._leaderless is not None:
            for partition, replica in self.replicas.items():
                self._leaderless.place(cast(LeaderlessReplica, replica), partition, merged)
        for partition in sorted(held - self.replicas.keys()):
            self.replicas[partition] = self._build_replica(partition)
            if self.started:
                log = self.storage.log(partition)
                recovered = Recovered(log.applied_index(), log.hard_state(), log.bounds())
                self._run_replica(partition, ReplicaStarted(recovered))

    def leadership(self) -> list[dict[str, object]]:
        """Leader mode, per partition: the leader this node knows of and, for a partition it holds, its replica's
        role, term, commit and applied index, and on a leader each follower's match index and lag."""
        out: list[dict[str, object]] = []
        for partition in range(self.partition_map.partition_count):
            entry: dict[str, object] = {"partition": partition, "leader": self.leader_hints.get(partition)}
            replica = self.replicas.get(partition)
            if isinstance(replica, RaftReplica):
                entry.update(role=replica.role, term=replica.term, commit=replica.commit, applied=replica.applied)
                if replica.role == LEADER:
                    last = replica.status()["last"]
                    assert isinstance(last, int)
                    entry["followers"] = [
                        {"node_id": peer, "match": pr.match, "lag": max(0, last - pr.match)}
                        for peer, pr in sorted(replica.progress.items())
                    ]
            out.append(entry)
        return out

    def leads(self) -> int:
        """How many partitions this node's replicas lead now."""
        return sum(1 for r in self.replicas.values() if isinstance(r, RaftReplica) and r.role == LEADER)

    @property
    def inflight(self) -> int:
        return len(self._waiting)

    def step(self, now_ms: int, inp: Input) -> list[Effect]:
        self._now_ms = now_ms
        if now_ms > self._expiry_clock_ms:
            self._expiry_clock_ms = now_ms
        # Every handler appends to self._effects; only a step does, so the list needs no reset after it.
        effects: list[Effect] = []
        self._effects = effects
        if isinstance(inp, ClientRequest):
            self._on_client_request(inp)
        elif isinstance(inp, Message):
            self._on_message(inp)
        elif isinstance(inp, TimerFired):
            self._on_timer(inp.key)
        elif isinstance(inp, Synced):
            for partition in self.replicas:
                self._run_replica(partition, _SYNCED)
        elif isinstance(inp, SendFailed):
            self._on_send_failed(inp.msg)
        elif isinstance(inp, Started):
            self._on_started()
        elif isinstance(inp, MovePartition):
            self.order_refusal = "the node has not started" if not self.started else None
            if self.started and self.config.mode == "single":
                self._effects.extend(self._mover.start(now_ms, inp.partition, inp.target))
                self.order_refusal = self._mover.refusal
            elif self.started and self._leader_mode:
                # Leader mode: a partition's replicas change through its Raft group, driven by the rebalancer.
                self.order_refusal = (
                    "moves are not supported in leader mode: add or remove nodes (POST /admin/members) and the "
                    "partitions' leaders re-replicate them"
                )
            elif self.started:
                self.order_refusal = "moves are not supported in leaderless mode: a partition's replicas are fixed"
        elif isinstance(inp, SetMember):
            self._on_set_member(inp)
        else:
            raise TypeError(f"not a node input: {inp!r}")
        # Whatever the replicas sent in this step leaves now, one envelope per peer (and durability).
        effects.extend(self._raft_out.flush())
        assert len(self._waiting) <= self._waiting_slack + len(self.partition_map.replicas), (
            "in-flight table exceeded its bound"
        )
        return effects

    # ------------------------------------------------------------ inputs

    def _on_started(self) -> None:
        self.started = True
        self._effects.extend(self._mover.on_started(self._now_ms))
        # What this node learnt just before it stopped may not have been synced: compare maps with everyone.
        self._effects.extend(self._gossip.start_round(self._now_ms, self._peers))
        me = self.partition_map.member(self.node_id)
        here = self.config.address_text(self.node_id)
        if me is not None and me.state != "removed" and here and me.address != here:
            # This node listens somewhere else than the roster says (its port was taken and re-picked): tell the
            # nodes whose config does not name it.
            self._install_and_announce(self.partition_map.with_member(self.node_id, me.state, here))
        self._arm_rebalance()
        if self._range_keeper is not None:
            self._effects.append(SetTimer(RANGES_TIMER, self._now_ms + self.config.ranges.check_interval_ms))
        for partition in self.replicas:
            log = self.storage.log(partition)
            recovered = Recovered(log.applied_index(), log.hard_state(), log.bounds())
            self._run_replica(partition, ReplicaStarted(recovered))
        if self._leaderless is not None:
            self._effects.extend(self._leaderless.start(self._now_ms))
        if self._leader_mode:
            self._effects.append(SetTimer(SNAPSHOT_TIMER, self._now_ms + TICK_MS))
            # The preferred owner is expected to lead: it campaigns at once rather than after an election
            # timeout (pre-vote keeps a restarted one from disturbing a leader its peers still hear from).
            for partition, replica in self.replicas.items():
                if isinstance(replica, RaftReplica) and self.partition_map.owner(partition) == self.node_id:
                    self._take_effects(partition, replica.campaign(self._expiry_clock_ms))
            self._effects.append(SetTimer(LEADER_BALANCE_TIMER, self._now_ms + self._rebalance_interval_ms))

    def _on_client_request(self, req: ClientRequest) -> None:
        target = _ToClient(req.request_id)
        if len(self._waiting) >= self._limits.max_inflight:
            self._deliver(target, Failure.of(ErrorCode.OVERLOADED, "too many requests in flight; retry later"))
            return
        self._start(req.op, target)

    def _on_message(self, msg: Message) -> None:
        if msg.dst != self.node_id or msg.src not in self._peers:
            return  # misrouted, or from outside the cluster: there is nobody to answer
        if self._leaderless is not None:
            self._leaderless.heard_from(msg.src)
        body = msg.body
        if isinstance(body, Forward):
            self._on_forward(msg.src, msg.partition, body)
            self._effects.extend(self._gossip.heard_epoch(self._now_ms, self.partition_map, msg.src, body.map_epoch))
        elif isinstance(body, (ForwardReply, ForwardRefused)):
            self._absorb(self._forwarder.on_answer(msg.src, body))
            self._effects.extend(self._gossip.heard_epoch(self._now_ms, self.partition_map, msg.src, body.map_epoch))
        elif isinstance(body, MapUpdate):
            try:
                incoming = body.to_map()
            except ValueError:
                return  # not a valid map (a bug or another version): nothing to learn from it
            self.install_map(incoming)
            self._effects.extend(self._gossip.received(self._now_ms, self.partition_map, incoming, msg.src))
            if self._mover.moving:
                self._effects.extend(self._mover.on_map_changed())
        elif isinstance(body, _STREAM_TRAFFIC):
            self._effects.extend(self._mover.on_message(self._now_ms, msg.src, msg.partition, body))
        elif isinstance(body, RaftBatch):
            items, unheld = sort_items(msg, body, self.replicas, self.partition_map.partition_count)
            for partition, item in items:
                self._run_replica(partition, PeerMessage(msg.src, item))
            if unheld:
                # Raft traffic for a group this node is not in by its map: the sender's map says otherwise (a node
                # that missed every announcement of its addition). Sending it this map gets the fuller one back.
                self._effects.extend(self._gossip.answer(self._now_ms, self.partition_map, msg.src))
        elif isinstance(body, RaftSnapshotPart):
            if self._leader_mode:
                self._effects.extend(self.snapshots.on_message(self._now_ms, msg.src, msg.partition, body))
        elif self._leaderless is not None and (
            handled := self._leaderless.on_message(self._now_ms, msg, self.partition_map)
        ) is not None:
            self._effects.extend(handled)
        elif msg.partition in self.replicas:
            self._run_replica(msg.partition, PeerMessage(msg.src, body))

    def _on_send_failed(self, msg: Message) -> None:
        if isinstance(msg.body, (*_STREAM_TRAFFIC, RaftSnapshotPart)):
            return  # a move's stream retries on its own timer, a snapshot transfer on its tick
        if isinstance(msg.body, _NODE_TRAFFIC):
            if isinstance(msg.body, Forward):
                if self._leader_mode:
                    self._route_around(msg.dst)
                elif self._leaderless is not None:
                    self._leaderless.unreachable(msg.dst, self._now_ms)
            self._absorb(self._forwarder.on_send_failed(msg))
        elif isinstance(msg.body, RaftBatch):
            for partition, item in batch_items(msg, msg.body, self.replicas):
                self._run_replica(partition, PeerUnreachable(msg.dst, item))
        elif self._leaderless is not None and self._leaderless.on_send_failed(self._now_ms, msg):
            return
        elif msg.partition in self.replicas:
            self._run_replica(msg.partition, PeerUnreachable(msg.dst, msg.body))

    def _on_forward(self, src: str, partition: int, fwd: Forward) -> None:
        received = self._forwarder.receive(src, partition, fwd)
        if not isinstance(received, PeerWaiter):
            if received is not None:
                self._effects.append(received)
            return
        if len(self._waiting) >= self._limits.max_inflight:
            self._deliver(received, Failure.of(ErrorCode.OVERLOADED, f"{self.node_id} has too many requests in flight"))
            return
        self._start(fwd.op, received)

    def _on_timer(self, key: str) -> None:
        if key.startswith(FORWARD_TIMER_PREFIX):
            self._absorb(self._forwarder.on_timer(key))
        elif key.startswith(CALL_TIMER_PREFIX):
            token = int(key[len(CALL_TIMER_PREFIX) :])
            self._timed_calls.pop(token, None)
            call = self._calls.pop(token, None)
            if call is not None:
                if isinstance(call[1], ScanRead):
                    message = f"partition {call[0]} did not answer a scan in time (its leader may be cut off)"
                else:
                    message = f"partition {call[0]} did not answer in time; the op may have happened"
                self._complete(token, Failure.of(ErrorCode.TIMEOUT, message))
        elif key.startswith(REPLICA_TIMER_PREFIX):
            partition_text, _, replica_key = key[len(REPLICA_TIMER_PREFIX) :].partition("/")
            partition = int(partition_text)
            if partition in self._mover.moving and replica_key == SWEEP_TIMER:
                # No purge while the partition moves (the new owner purges): the sweep waits for the next turn.
                self._effects.append(SetTimer(key, self._now_ms + self.config.timeouts.ttl_sweep_interval_ms))
            elif partition in self.replicas:
                self._run_replica(partition, ReplicaTimerFired(replica_key))
        elif key == RAFT_TICK_TIMER:
            heartbeat = ReplicaTimerFired(HEARTBEAT_TIMER)
            for partition in self._heartbeats.fire(self._now_ms):
                if partition in self.replicas:
                    self._run_replica(partition, heartbeat)
            self._effects.extend(self._heartbeats.rearm())
        elif key.startswith(MOVE_TIMER_PREFIX):
            self._effects.extend(self._mover.on_timer(self._now_ms, key))
        elif key == SNAPSHOT_TIMER and self._leader_mode:
            self._effects.extend(self.snapshots.on_tick(self._now_ms))
        elif key == GOSSIP_TIMER:
            self._effects.extend(self._gossip.tick(self._now_ms, self.partition_map, self._peers))
        elif key == REBALANCE_TIMER:
            self._rebalance_due_ms = None
            self._rebalance()
        elif key == HANDOFF_TIMER and self._leaderless is not None:
            self._effects.extend(self._leaderless.tick(self._now_ms))
        elif key == LEADER_WAIT_TIMER:
            self._end_leader_waits()
        elif key == LEADER_BALANCE_TIMER:
            self._hand_back_leadership()
        elif key == RANGES_TIMER and self._range_keeper is not None:
            self._split_or_merge()
            self._effects.append(SetTimer(RANGES_TIMER, self._now_ms + self.config.ranges.check_interval_ms))

    # ------------------------------------------------------------ membership and rebalancing

    def _on_set_member(self, order: SetMember) -> None:
        if not self.started:
            self.order_refusal = "the node has not started"
            return
        if self._leaderless is not None:
            self.order_refusal = (
                "membership changes are not supported in leaderless mode yet: its partitions' replicas are the "
                "founders' layout"
            )
            return
        outcome = apply_order(self.partition_map, order)
        self.order_refusal = outcome.refusal
        if outcome.new_map is not None:
            self._install_and_announce(outcome.new_map)

    def _rebalance(self) -> None:
        """The rebalancer's turn (``kvstore/membership.py``): the roster changes due here (drained leavers marked
        removed; this node active again if no member is), then move away the partitions this node owns that the
        balanced layout puts elsewhere."""
        changed = self._rebalancer.changes(self.partition_map)
        if changed is not None:
            self._install_and_announce(changed)
        if not self.config.rebalance:
            return
        if self._leader_mode:
            self._change_groups()
            return
        if self._leaderless is not None:
            return  # a partition's replicas are fixed (membership changes are refused)
        mover = self._mover
        pending = [(p, target) for p, target in self._rebalancer.moves(self.partition_map) if p not in mover.moving]
        for partition, target in pending:
            effects = mover.start(self._now_ms, partition, target)
            if mover.refusal is not None:
                break  # refused for this node as a whole (busy, or moves refused under its fsync policy)
            self._effects.extend(effects)
        if pending and not mover.moving:
            return  # moves are refused here (fsync "never"): nothing will change by looking again
        self._arm_rebalance()  # more to do than could start now: look again in a while

    def _arm_rebalance(self, soon: bool = False) -> None:
        """Run the rebalancer in ``rebalance_interval_ms`` (``soon``: in ``REBALANCE_SOON_MS``) if it has anything
        to do here, unless it is due by then already. Asked at start and on every change of the map (soon after
        a change this node made: a finished move frees room for the next one); a balanced cluster has no
        timer."""
        if not self.started:
            return
        at_ms = self._now_ms + (REBALANCE_SOON_MS if soon else self._rebalance_interval_ms)
        if self._rebalance_due_ms is not None and self._rebalance_due_ms <= at_ms:
            return
        partition_map = self.partition_map
        if not self.config.rebalance or self._leaderless is not None:
            work = False
        elif self._leader_mode:
            target = self._rebalancer.target(partition_map)
            work = self._group_changer.due(partition_map, target, self.replicas)
        else:
            work = bool(self._rebalancer.moves(partition_map))
        if work or self._rebalancer.changes(partition_map):
            self._rebalance_due_ms = at_ms
            self._effects.append(SetTimer(REBALANCE_TIMER, at_ms))

    def _change_groups(self) -> None:
        """Leader mode: the next membership change of each group this node leads that the balanced layout wants
        elsewhere (``kvstore/group_changes.py``); the map made to say what the groups are where it lags."""
        target = self._rebalancer.target(self.partition_map)
        repaired, calls = self._group_changer.turn(self.partition_map, target, self.replicas, self._new_token)
        if repaired is not None:
            self._install_and_announce(repaired)
        for partition, call in calls:
            if partition in self.replicas:  # the repaired map may have dropped it (its call was forgotten then)
                self._run_replica(partition, call)
        self._arm_rebalance()  # a learner catching up, a refused step: look again in a while

    def _new_token(self) -> int:
        token = self._next_token
        self._next_token += 1
        return token

    def _split_or_merge(self) -> None:
        """Range mode: one due split or merge of the ranges this node owns (``kvstore/ranges.py``), its records
        moved between slots in this step, the new map installed and announced."""
        assert self._range_keeper is not None
        busy = self._mover.moving.keys() | self._mover.receiving
        changed = self._range_keeper.turn(self.partition_map, busy)
        if changed is not None:
            self._install_and_announce(changed)

    def _install_and_announce(self, partition_map: PartitionMap) -> None:
        """Install a map this node changed itself (a membership order, a move's hand-over) and send it to every
        node of the roster at once, so that routing, the rebalancers and the drains see it without waiting
        for the next forward to find out."""
        before = self.partition_map.epoch
        self.install_map(partition_map)
        current = self.partition_map
        if current.epoch == before:
            return
        self._arm_rebalance(soon=True)
        self._effects.extend(self._gossip.announce(current))

    # ------------------------------------------------------------ starting operations

    def _start(self, op: ClientOp | ScanPartitionsOp, target: _Target) -> None:
        try:
            check_op(op, self._limits, self.config.mode, self.config.replication.reads, self.config.replication_factor)
            if self._leaderless is not None and isinstance(op, PutOp):
                self._leaderless.check(op)
            elif self._leaderless is not None and isinstance(op, BatchPutOp):
                for index, item in enumerate(op.items):
                    try:
                        self._leaderless.check(item)
                    except KvError as exc:
                        # As check_op does: one bad entry refuses the whole batch, named.
                        raise KvError(exc.code, f"put[{index}]: {exc.message}") from None
        except KvError as exc:
            self._deliver(target, Failure.of(exc.code, exc.message))
            return
        if isinstance(op, (GetOp, PutOp, DeleteOp, CasOp)):
            self._start_key_op(op, target)
        elif isinstance(op, ScanOp):
            self._start_scan(op, target)
        elif isinstance(op, ScanPartitionsOp):
            if self._leader_mode:
                self._start_partition_scan(op, target)
            else:
                self._deliver(target, self._local_scan(op.partitions, op.start, op.end, op.limit, op.epochs))
        elif isinstance(op, (BatchGetOp, BatchPutOp)):
            self._start_batch(op, target)
        elif isinstance(op, ChangesOp):
            self._start_changes(op, target)
        else:
            self._deliver(target, Failure.of(ErrorCode.BAD_REQUEST, f"unknown operation {type(op).__name__}"))

    def _start_changes(self, op: ChangesOp, target: _Target) -> None:
        """A page of a partition's change feed (``kvstore/changes.py``): in leader mode from the partition's leader as
        this node knows it (every replica's records are committed, but a follower's may lag), otherwise from this
        node's replica when it holds one, else forwarded to the partition's owner."""
        partition = op.partition
        if partition >= self.partition_map.partition_count:
            message = f"partition {partition} does not exist (the map has {self.partition_map.partition_count})"
            self._deliver(target, Failure.of(ErrorCode.BAD_REQUEST, message))
            return
        leader = self.leader_hints.get(partition) if self._leader_mode else None
        if leader is not None and leader != self.node_id and not isinstance(target, PeerWaiter):
            # A follower's records may lag what the leader acknowledged: a reader caught up with the leader is
            # caught up with every acknowledged write (a forwarded read is served where it lands: no second hop).
            self._forward(self._wait(target), leader, partition, op)
        elif partition in self.replicas:
            leaderless = self._leaderless
            if leaderless is not None:
                page = changes_page(self.storage, op, self.node_id, leaderless.change_value)
            elif self.partition_map.ranges is not None:
                # A merge moves records into a range at the versions they had, possibly below where a reader of
                # that range is: the range's epoch names the positions, so such a reader starts it again.
                page = changes_page(self.storage, op, f"epoch-{self.partition_map.epoch_of(partition)}")
            else:
                page = changes_page(self.storage, op, "")
            # Single and leaderless mode number changes as they store them: a page must not show a position that a
            # power loss could take back (and hand to another change). Leader mode's are log indexes, committed.
            self._deliver(target, page, durable=not self._leader_mode)
        elif isinstance(target, PeerWaiter):
            # Forwarded here by a map that has moved on: passing it on again could go round in circles.
            self._deliver(target, self._not_here(partition))
        else:
            self._forward(self._wait(target), self._route(partition), partition, op)

    def _start_key_op(self, op: KeyOp, waiter: _Waiter) -> None:
        # The hot path of every GET and PUT: _wait inlined, one lookup finds the replica.
        partition_map = self.partition_map
        partition = partition_map.partition_for_key(op.key)
        token = self._next_token
        self._next_token = token + 1
        self._waiting[token] = waiter
        replica = self.replicas.get(partition)
        if replica is None:
            if isinstance(waiter, PeerWaiter):
                # Forwarded here by a map that has moved on: passing it on again could go round in circles.
                self._complete(token, self._not_here(partition))
                return
            self._forward(token, self._route_key_op(partition, op), partition, op)
            return
        moving = self._mover.moving
        if moving and partition in moving:
            if self._mover.fenced(partition):
                self._complete(token, self._moving_away(partition))
                return
            if not isinstance(op, GetOp):
                # A write: the stream must send the key again once it is applied.
                self._calls[token] = (partition, op)
                self._take_effects(partition, replica.step(self._expiry_clock_ms, self._client_call(token, op)))
                self._effects.extend(self._mover.changed(self._now_ms, partition, op.key))
                self._arm_call_timer(token)
                return
        self._call_replica(replica, partition, token, op)

    def _call_replica(
        self, replica: PartitionReplica, partition: int, token: int, op: KeyOp, deadline_ms: int | None = None
    ) -> None:
        calls = self._calls
        calls[token] = (partition, op)
        self._take_effects(partition, replica.step(self._expiry_clock_ms, self._client_call(token, op)))
        if token in calls:
            # Not answered in this step: it waits, and nothing waits forever.
            at_ms = self._now_ms + self._request_timeout_ms if deadline_ms is None else deadline_ms
            self._timed_calls[token] = at_ms
            self._effects.append(SetTimer(CALL_TIMER_PREFIX + str(token), at_ms))

    def _client_call(self, token: int, op: KeyOp) -> ClientCall:
        """What the replica is asked: the op, and in leader mode the settings it names, resolved against the
        cluster's (``ReplicationConfig.read_mode``/``write_mode``). Single mode has one way to do each."""
        if not self._leader_mode:
            if self._leaderless is not None:
                return self._leaderless.call(token, op)
            return ClientCall(token, op)
        settings = self.config.replication
        if isinstance(op, GetOp):
            read = settings.read_mode(op.consistency)
            return ClientCall(token, op, read=read, max_staleness_ms=op.max_staleness_ms, min_index=op.min_index)
        return ClientCall(token, op, replication=settings.write_mode(op.replication))

    def _route_key_op(self, partition: int, op: KeyOp) -> str:
        """Where a key op for a partition held elsewhere goes: a stale read to a replica of the partition (any of
        them may serve it, so they take turns), everything else to the leader (``_route``)."""
        if self._leader_mode and isinstance(op, GetOp) and self.config.replication.read_mode(op.consistency) == "stale":
            group = self.partition_map.replicas[partition]
            self._stale_turn += 1
            return group[self._stale_turn % len(group)]
        return self._route(partition)

    def _arm_call_timer(self, token: int) -> None:
        if token in self._calls:
            at_ms = self._now_ms + self._request_timeout_ms
            self._timed_calls[token] = at_ms
            self._effects.append(SetTimer(CALL_TIMER_PREFIX + str(token), at_ms))

    def _start_scan(self, op: ScanOp, target: _Target) -> None:
        partition_map = self.partition_map
        ranges = partition_map.ranges
        if ranges is None:
            by_owner = self._group_by_owner(range(partition_map.partition_count))
            epoch_of = None
        else:
            # Only the ranges the scan overlaps; each part names their epochs, since a split or a merge since
            # would change what a range holds.
            by_owner = self._group_by_owner([r.partition for r in ranges.ranges_overlapping(op.start, op.end)])
            epoch_of = partition_map.epoch_of
        # Leader mode: each partition this node scans is a part of its own, answered by its replica once a
        # read-index round confirmed its leadership (single mode: one part for them all, answered at once).
        split = self.node_id if self._leader_mode else None
        for owner, part, waiter in scan_parts(op, by_owner, target, epoch_of, split):
            token = self._wait(waiter)
            if owner != self.node_id:
                self._forward(token, owner, NODE_PARTITION, part)
            elif self._leader_mode:
                self._scan_replica(token, part.partitions[0], ScanRead(op.start, op.end, op.limit))
            else:
                self._complete(token, self._local_scan(part.partitions, op.start, op.end, op.limit))

    def _start_partition_scan(self, op: ScanPartitionsOp, target: _Target) -> None:
        """Leader mode: a peer's scan of partitions it believes this node leads. Refused at once as a whole, as
        ``_local_scan`` refuses it, if a partition is not held here or changed epoch; else each replica answers
        its partition's part once its read index is confirmed."""
        partition_map = self.partition_map
        for i, p in enumerate(op.partitions):
            if (
                not 0 <= p < partition_map.partition_count
                or p not in self.replicas
                or (op.epochs and partition_map.epoch_of(p) != op.epochs[i])
            ):
                # The synchronous path words the refusal (it stops at the first partition it cannot serve).
                self._deliver(target, self._local_scan(op.partitions[: i + 1], op.start, op.end, 0, op.epochs))
                return
        read = ScanRead(op.start, op.end, op.limit)
        for p, waiter in partition_scan_parts(op.partitions, op.limit, target):
            self._scan_replica(self._wait(waiter), p, read)

    def _scan_replica(self, token: int, partition: int, read: ScanRead) -> None:
        """Hand partition ``partition``'s replica a scan, answered (``_on_answer``) through the token."""
        replica = self.replicas.get(partition)
        if replica is None:
            self._complete(token, self._not_here(partition))
            return
        self._calls[token] = (partition, read)
        self._take_effects(partition, replica.step(self._expiry_clock_ms, ClientCall(token, read)))
        self._arm_call_timer(token)

    def _start_batch(self, op: BatchGetOp | BatchPutOp, target: _Target) -> None:
        if isinstance(op, BatchGetOp) and not self._leader_mode and self._leaderless is None:
            answered = self._read_batch_at_once(op)
            if answered is not None:
                self._deliver(target, answered)
                return
        remote, local = batch_parts(op, self._batch_owner(target), self.node_id, target)
        for owner, part, waiter in remote:
            if isinstance(target, PeerWaiter):
                # A forwarded batch part holding keys this node does not own: their map has moved on.
                message = f"{self.node_id} does not hold these keys (its map puts them on {owner})"
                self._complete(self._wait(waiter), Failure.of(ErrorCode.WRONG_EPOCH, message + "; not applied"))
                continue
            self._forward(self._wait(waiter), owner, NODE_PARTITION, part)
        if isinstance(op, BatchGetOp) and not self._leader_mode and self._leaderless is None:
            # Single mode reads its own copy at once: each key read without a call, an answer and a token.
            self._read_batch_here(local)
            return
        for key_op, waiter in local:
            self._start_key_op(key_op, waiter)

    def _read_batch_at_once(self, op: BatchGetOp) -> BatchResults | None:
        """Single mode, every key's partition held here and not moving away: the batch read at once, without a
        gather (the common case of a batch sent to the node that owns it all). None: some key is elsewhere."""
        results: list[Result] = []
        for key in op.keys:
            result = self._read_single_copy(GetOp(key))
            if result is None:
                return None
            results.append(result)
        return BatchResults(tuple(results))  # type: ignore[arg-type]

    def _read_batch_here(self, local: list[tuple[KeyOp, GatherPart[_Target]]]) -> None:
        for key_op, waiter in local:
            result = self._read_single_copy(key_op)
            if result is None:
                self._start_key_op(key_op, waiter)
                continue
            final = waiter.add(result, False)
            if final is not None:
                self._deliver(waiter.gather.target, final, waiter.gather.durable)

    def _read_single_copy(self, op: KeyOp) -> Result | None:
        """Single mode: ``op`` (a read) answered from this node's copy at once; None when no copy here may serve it
        (its partition is elsewhere, or moving away behind a fence)."""
        partition = self.partition_map.partition_for_key(op.key)
        replica = self.replicas.get(partition)
        moving = self._mover.moving
        if replica is None or not isinstance(replica, SingleCopy) or (moving and self._mover.fenced(partition)):
            return None
        return cast(Result, replica.read(self._expiry_clock_ms, op))

    # ------------------------------------------------------------ replicas

    def _run_replica(self, partition: int, inp: ReplicaInput) -> None:
        self._take_effects(partition, self.replicas[partition].step(self._expiry_clock_ms, inp))

    def _route(self, partition: int) -> str:
        """Where an op for ``partition`` goes: the leader this node knows of, else the preferred owner; in
        leaderless mode, where there is no leader, this node if it holds a replica, else one that is not silent."""
        if self._leaderless is not None:
            replicas = self.partition_map.replicas[partition]
            return self.node_id if self.node_id in replicas else self._leaderless.route(replicas, self._now_ms)
        hint = self.leader_hints.get(partition) if self._leader_mode else None
        return hint if hint is not None else self.partition_map.owner(partition)

    def _route_around(self, unreachable: str) -> None:
        """Leader mode: a forward to ``unreachable`` could not be sent at all. Every partition this node holds no
        replica of and routes there is routed to the next replica of its group instead (which passes the op on
        to the leader it knows): a hint to a node that died would otherwise send every op to it for ever. The
        partitions this node holds learn their leader from their own replica."""
        partition_map = self.partition_map
        for partition in range(partition_map.partition_count):
            if partition in self.replicas or self._route(partition) != unreachable:
                continue
            group = partition_map.replicas[partition]
            after = group.index(unreachable) + 1 if unreachable in group else 0
            rotated = [node for node in group[after:] + group[:after] if node != unreachable]
            if rotated:
                self.leader_hints[partition] = rotated[0]
            else:
                self.leader_hints.pop(partition, None)

    def _take_effects(self, partition: int, effects: list[ReplicaEffect]) -> None:
        leader = None
        if self._leader_mode:
            # Learn who leads from the replica itself, after every step (and before its answers are acted on).
            leader = getattr(self.replicas.get(partition), "leader", None)
            if leader is not None:
                if leader == self.node_id and self.leader_hints.get(partition) != self.node_id:
                    self._arm_rebalance(soon=True)  # a new leader drives its group's changes
                self.leader_hints[partition] = leader
            elif self.leader_hints.get(partition) == self.node_id:
                del self.leader_hints[partition]  # this node stopped leading and knows of no other leader
        for effect in effects:
            if isinstance(effect, Answer):
                self._on_answer(effect)
            elif isinstance(effect, SendTo):
                durable = effect.durable or self._always_durable
                if self._leader_mode:
                    # Leaves at the end of the step, in one envelope with the step's other messages to that peer.
                    self._raft_out.add(effect.dst, durable, partition, effect.body)
                else:
                    self._effects.append(Send(Message(self.node_id, effect.dst, partition, effect.body), durable))
            elif isinstance(effect, StartTimer):
                # The replica counts on the expiry clock, the driver on the node clock: keep the delay.
                at_ms = effect.at_ms - self._expiry_clock_ms + self._now_ms
                if effect.key == HEARTBEAT_TIMER and self._leader_mode:
                    self._effects.extend(self._heartbeats.start(partition, at_ms))
                else:
                    self._effects.append(SetTimer(f"{REPLICA_TIMER_PREFIX}{partition}/{effect.key}", at_ms))
            elif isinstance(effect, StopTimer) and effect.key == HEARTBEAT_TIMER and self._leader_mode:
                self._heartbeats.stop(partition)
            else:
                self._effects.append(CancelTimer(f"{REPLICA_TIMER_PREFIX}{partition}/{effect.key}"))
        if leader is not None and self._leader_wait.holds(partition):
            self._release_held(partition, leader)

    def _release_held(self, partition: int, leader: str) -> None:
        """The partition has a leader again: its held ops go to the replica here if it leads, else on to it."""
        replica = self.replicas.get(partition)
        for token, op, until_ms in self._leader_wait.release(partition):
            if token not in self._waiting:
                continue
            key_op = cast(KeyOp, op)
            if leader == self.node_id and replica is not None:
                self._call_replica(replica, partition, token, key_op, until_ms)
            else:
                self._redirected(token, (partition, key_op), Redirect("not_leader", leader))

    def _end_leader_waits(self) -> None:
        expired, next_at = self._leader_wait.expire(self._now_ms)
        for partition, token in expired:
            message = f"partition {partition} elected no leader {self.node_id} knows of in time; the op did not happen"
            self._complete(token, Failure.of(ErrorCode.NOT_LEADER, message))
        if next_at is not None:
            self._effects.append(SetTimer(LEADER_WAIT_TIMER, next_at))

    def _hand_back_leadership(self) -> None:
        """Leader spread (``kvstore/leader_balance.py``): hand partitions back to their preferred owners."""
        for partition, owner in handbacks(self.node_id, self.partition_map, self.replicas):
            # Nobody waits on the answer: the next look shows whether it worked.
            self._run_replica(partition, ClientCall(self._new_token(), TransferLeader(owner)))
        self._effects.append(SetTimer(LEADER_BALANCE_TIMER, self._now_ms + self._rebalance_interval_ms))

    def _on_answer(self, answer: Answer) -> None:
        token = answer.token
        if self._group_changer.owns(token):
            changed = self._group_changer.answered(token, answer.result, self.partition_map)
            if changed is not None:
                self._install_and_announce(changed)
            return
        call = self._calls.pop(token, None)
        if call is None:
            return  # timed out already (or never asked): whoever waited has had its answer
        timed_calls = self._timed_calls
        deadline_ms = None
        if timed_calls and token in timed_calls:
            deadline_ms = timed_calls.pop(token)
            self._effects.append(CancelTimer(CALL_TIMER_PREFIX + str(token)))
        result = answer.result
        if isinstance(result, Redirect):
            self._redirected(token, call, result, deadline_ms)
        elif self._leader_mode and isinstance(result, (RaftOutcomeUnknown, RaftRefused)):
            self._complete(token, _raft_failure(self.node_id, call[0], result))
        elif self._leaderless is not None and not isinstance(call[1], ScanRead):
            self._complete(token, self._leaderless.result(call[1], result), answer.durable)
        else:
            # Not typing.cast: a call per op. The replica's results are the state machine's, i.e. Results.
            self._complete(token, result, answer.durable, answer.position)  # type: ignore[arg-type]

    def _redirected(
        self, token: int, call: tuple[int, KeyOp | ScanRead], redirect: Redirect, deadline_ms: int | None = None
    ) -> None:
        """``deadline_ms``: when the op's call timer would have fired (None: the replica answered at once)."""
        waiter = self._waiting.get(token)
        if waiter is None:
            return
        target = waiter.gather.target if isinstance(waiter, GatherPart) else waiter
        leader = redirect.leader
        partition = call[0]
        if leader is not None and self._leader_mode:
            self.leader_hints[partition] = leader
        op = call[1]
        if isinstance(op, ScanRead):
            # A scan part is not passed on: the scan fails (definitely) and the client retries it.
            self._complete(token, _redirect_failure(self.node_id, partition, redirect))
            return
        # Passed on once, and only for this node's own clients: a forwarded op redirected again would travel
        # in circles while leadership moves. One exception (leader mode): an op forwarded here by a node that
        # holds no replica of the partition, whose hint was stale, is passed on once more. The next hop then
        # comes from this node, which holds one, so that node never passes it on again: at most two hops
        # after the client's node (a layout never changes in leader mode, so every node agrees who holds it).
        if (
            redirect.reason == "not_leader"
            and leader in self._peers
            and (
                isinstance(target, _ToClient)
                or (
                    # A key op, or one key of a batch part, forwarded here.
                    self._leader_mode
                    and isinstance(target, PeerWaiter)
                    and target.src not in self.partition_map.replicas[partition]
                )
            )
        ):
            assert leader is not None
            self._forward(token, leader, partition, op)
            return
        if redirect.reason == "not_leader" and leader is None and self._leader_mode and partition in self.replicas:
            # An election is under way: hold the op until a leader is known, for a bounded time.
            wait_ms = self._request_timeout_ms if isinstance(waiter, _ToClient) else self._request_timeout_ms // 2
            until_ms = self._now_ms + wait_ms
            if deadline_ms is not None:
                # The op waited at the replica already (a read at a leader that then stepped down): the hold
                # takes what is left of its time, never a second request timeout.
                until_ms = min(until_ms, deadline_ms)
            if until_ms > self._now_ms:
                at_ms = self._leader_wait.hold(until_ms, partition, token, op)
                if at_ms is not None:
                    self._effects.append(SetTimer(LEADER_WAIT_TIMER, at_ms))
                return
        self._complete(token, _redirect_failure(self.node_id, call[0], redirect))

    def _drop_replica(self, partition: int) -> None:
        del self.replicas[partition]
        for token, _, _ in self._leader_wait.release(partition):
            self._complete(token, self._not_here(partition))
        self._group_changer.forget(partition)
        orphaned = [token for token, (p, _) in self._calls.items() if p == partition]
        for token in orphaned:
            del self._calls[token]
            self._timed_calls.pop(token, None)
            self._complete(token, self._not_here(partition))

    def _known_peers(self) -> frozenset[str]:
        roster = (m.node_id for m in self.partition_map.roster)
        return frozenset((*roster, *self.config.node_ids)) - {self.node_id}

    def _moving_away(self, partition: int) -> Failure:
        out = self._mover.moving[partition]
        message = f"partition {partition} is moving to {out.target}; retry (the op did not happen)"
        return Failure.of(ErrorCode.UNAVAILABLE, message)

    def _not_here(self, partition: int) -> Failure:
        owner = self.partition_map.owner(partition)
        epoch = self.partition_map.epoch_of(partition)
        message = f"{self.node_id} does not hold partition {partition} (epoch {epoch} puts it on {owner})"
        return Failure.of(ErrorCode.WRONG_EPOCH, message + "; the op did not happen")

    # ------------------------------------------------------------ helpers

    def _wait(self, waiter: _Waiter) -> int:
        token = self._next_token
        self._next_token += 1
        self._waiting[token] = waiter
        return token

    def _forward(self, token: int, dst: str, partition: int, op: ClientOp | ScanPartitionsOp) -> None:
        assert token in self._waiting, "a forward is tracked with nobody waiting on it"
        if self._leaderless is not None:
            self._leaderless.forwarded_to(dst, self._now_ms)
        self._effects.extend(self._forwarder.forward(self._now_ms, token, dst, partition, op))

    def _owner_of_key(self, key: str) -> str:
        return self.partition_map.owner(self.partition_map.partition_for_key(key))

    def _batch_owner(self, target: _Target) -> Callable[[str], str]:
        """Where each key of a batch is served. Leaderless mode: started here, each key routed as a single op.
        Leader mode: a client's batch goes to each partition's leader as
        this node knows it (its preferred owner may be down or a follower); a forwarded one is served here for
        every partition held here (a follower's replica refuses its part, not_leader, and the client retries)."""
        if self._leaderless is not None:
            # Any replica coordinates: each key is started here and routed as a single op is (around silent ones).
            here = self.node_id
            return lambda _key: here
        if not self._leader_mode:
            return self._owner_of_key
        partition_for_key = self.partition_map.partition_for_key
        if isinstance(target, PeerWaiter):
            held, owner = self.replicas, self.partition_map.owner
            return lambda key: self.node_id if (p := partition_for_key(key)) in held else owner(p)
        return lambda key: self._route(partition_for_key(key))

    def _group_by_owner(self, partitions: Iterable[int]) -> dict[str, list[int]]:
        by_owner: dict[str, list[int]] = {}
        for p in partitions:
            # Leader mode: each partition's part goes to the leader this node knows of (a follower cannot scan).
            by_owner.setdefault(self._route(p), []).append(p)
        # Insertion order follows the partition numbers, so the grouping is the same on every run.
        return by_owner

    def _local_scan(
        self, partitions: tuple[int, ...], start: str, end: str | None, limit: int, epochs: tuple[int, ...] = ()
    ) -> Result:
        pages = []
        partition_map = self.partition_map
        for i, p in enumerate(partitions):
            if epochs and 0 <= p < partition_map.partition_count and partition_map.epoch_of(p) != epochs[i]:
                message = f"partition {p} changed since the scan was planned (epoch {partition_map.epoch_of(p)})"
                return Failure.of(ErrorCode.WRONG_EPOCH, message + "; retry")
            replica = self.replicas.get(p)
            if replica is not None and self._mover.fenced(p):
                return self._moving_away(p)
            if replica is None:
                if 0 <= p < self.partition_map.partition_count:
                    return self._not_here(p)
                return Failure.of(ErrorCode.UNAVAILABLE, f"{self.node_id} does not hold partition {p}")
            page = replica.scan(self._expiry_clock_ms, start, end, limit)
            if isinstance(page, Redirect):
                return _redirect_failure(self.node_id, p, page)
            if isinstance(page, LocalScan) and self._leaderless is not None:
                page = self._leaderless.scan_page(page)
            pages.append(cast(ScanPage, page))
        return merge_pages(pages, limit)

    def _absorb(self, effects: list[Effect | Done]) -> None:
        """Take the forwarder's effects: its ``Done(token, result)`` completes a token."""
        for effect in effects:
            if isinstance(effect, Done):
                self._complete(effect.token, effect.result, position=effect.position)
            else:
                self._effects.append(effect)

    def _complete(self, token: int, result: Result, durable: bool = False, position: int = 0) -> None:
        """Hand ``result`` to whoever waits on ``token``; ``position``: the partition log position it reflects
        (``Answer.position``), which a gathered result, spanning partitions, does not carry."""
        waiter = self._waiting.pop(token, None)
        if waiter is None:
            return
        if isinstance(waiter, GatherPart):
            final = waiter.add(result, durable)
            if final is not None:
                self._deliver(waiter.gather.target, final, waiter.gather.durable)
        else:
            self._deliver(waiter, result, durable, position)

    def _deliver(self, target: _Target, result: Result, durable: bool = False, position: int = 0) -> None:
        if isinstance(target, _ToClient):
            self._effects.append(Reply(target.request_id, result, durable or self._always_durable, position))
        else:
            if isinstance(result, Failure) and result.code == _WRONG_EPOCH:
                # The peer routed by a map that is wrong here, whatever epoch it names: two maps that each know
                # a change the other does not can have one epoch, and only this answer shows the difference.
                self._effects.extend(self._gossip.answer(self._now_ms, self.partition_map, target.src))
            self._effects.append(self._forwarder.answer(target, result, durable, position))


def _redirect_failure(node_id: str, partition: int, redirect: Redirect) -> Failure:
    """The definite failure of an op a replica redirected and the node did not pass on."""
    if redirect.reason == "wrong_epoch":
        epoch = "another epoch" if redirect.epoch is None else f"epoch {redirect.epoch}"
        message = f"partition {partition} is at {epoch} on {node_id}, not the epoch the op was routed with"
        return Failure.of(ErrorCode.WRONG_EPOCH, message + "; the op did not happen")
    leader = "no leader is known" if redirect.leader is None else f"its leader is {redirect.leader}"
    message = f"{node_id} does not lead partition {partition} ({leader}); the op did not happen"
    return Failure.of(ErrorCode.NOT_LEADER, message)


def _raft_failure(node_id: str, partition: int, result: RaftOutcomeUnknown | RaftRefused) -> Failure:
    """What a client is told of a Raft result that is not the state machine's."""
    if isinstance(result, RaftOutcomeUnknown):
        message = f"{node_id}: {result.message}; the write may still commit"
        return Failure.of(ErrorCode.TIMEOUT, message)
    if result.reason == "overloaded":
        return Failure.of(ErrorCode.OVERLOADED, f"partition {partition} on {node_id}: {result.message}")
    if result.reason == "transferring":
        return Failure.of(ErrorCode.UNAVAILABLE, f"partition {partition} on {node_id}: {result.message}")
    return Failure.of(ErrorCode.BAD_REQUEST, f"partition {partition} on {node_id}: {result.message}")


def _initial_map(config: ClusterConfig) -> PartitionMap:
    """The founders' map: where every node starts."""
    founders = config.founding_nodes
    addresses = tuple(config.address_text(node_id) for node_id in founders)
    if config.partitioner == "range":
        return PartitionMap.range_initial(founders, config.partitions, addresses)
    return PartitionMap.round_robin(
        founders, config.partitions, replication_factor=config.replication_factor, addresses=addresses
    )


def _starting_map(config: ClusterConfig, storage: Storage) -> PartitionMap:
    """The config's map, merged with what this node learnt and stored before it last stopped."""
    initial = _initial_map(config)
    stored = storage.get_meta(MAP_META)
    if stored is None:
        return initial
    try:
        update = codec.decode(stored)
        if not isinstance(update, MapUpdate):
            raise ValueError(f"a {type(update).__name__}, not a MapUpdate")
        learnt = update.to_map()
    except ValueError as exc:
        raise ValueError(f"the stored partition map is not readable: {exc}") from exc
    if learnt.partitioner != initial.partitioner:
        raise ValueError(
            f"the stored partition map is {learnt.partitioner}-partitioned but cluster.partitioner is "
            f"{initial.partitioner}: a cluster keeps its partitioner"
        )
    if learnt.partition_count != initial.partition_count:
        raise ValueError(
            f"the stored partition map has {learnt.partition_count} partitions but cluster.partitions is "
            f"{initial.partition_count}: a cluster keeps its partition count"
        )
    return initial.merge(learnt)
