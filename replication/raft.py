"""RaftReplica: one partition's Raft group member (leader/follower replication), sans-IO.

Follows etcd-io/raft closely: pre-vote and check-quorum, leadership transfer by ``TimeoutNow``, per-follower
progress (probe / replicate / snapshot) with a bounded window of in-flight appends and a byte budget per
append, fast back-off of the next index by a hint in every rejection, read-index reads, an empty entry at
the start of every term. What differs is how it meets the node (``replication/replica.py``):

- Time is ``now_ms``. Two timers: ``election`` (followers and candidates; re-armed lazily: a message from
  the leader only moves ``_election_start``, and the timer, when it fires early, re-arms at the real
  deadline) and ``heartbeat`` (the leader).
- Durability is a mark on effects. Every ``SendTo`` of a step that wrote the hard state (a term or a vote)
  is durable, so a vote never leaves before it is on disk, and so is every append acknowledgement: the
  leader only counts what followers hold durably. The leader counts its own entries once
  ``log.synced_through()`` covers them (the node steps ``Synced`` after every sync).
- Client ops are ``ClientCall``: a write becomes a command appended to the log. Every write commits the same
  way (a majority of voters holds it durably); ``replication`` says when its client hears of it: ``sync``
  once committed and applied here, with ``machine.apply``'s result; ``semi-sync`` once a voting follower
  acknowledged the entry (its match reached it), and ``async`` in the step that appends it, both with
  ``machine.early_result`` and marked durable (released once the leader's own copy is synced). A write
  whose early result is None, and a semi-sync one on a group of one voter, is answered as ``sync``. Only an
  early-answered write that never committed can be lost (a failover before a majority held it); nothing
  answers a token twice. The log runs at most ``max_pending_proposals`` entries ahead of the commit index.
  ``TransferLeader`` (``raft_messages``) is an op of its own, and so is ``ScanRead``: a scan of the
  partition, served like a read (with a read mode, a session position; so a cut-off leader never serves
  one under ``read-index``).
- Reads (``read``): ``read-index`` waits for a heartbeat round a quorum acknowledged and for the commit
  index of its arrival to be applied. ``lease`` is served at once while the leader's lease holds (see
  ``_lease_holds``: from the send time of the latest round a quorum acknowledged, for an election timeout
  less ``lease_drift_ms``, once this term's first entry is applied, never in a term that saw a transfer
  begin; ``lease_drift_ms=None`` turns leases off), else as ``read-index``. The lease rests on
  check-quorum's vote refusal; with leases on, a voter that restarted also neither votes nor campaigns for
  an election timeout after boot. ``unsafe`` is served at once from the leader's applied state, no check.
  ``stale`` is served at once by any replica, leader, follower or learner; with ``max_staleness_ms``, only
  while its staleness (``_staleness_ms``) is within it: a follower answers ``Redirect("not_leader")``
  otherwise, a leader serves it as ``read-index``. Any read waits until the replica applied the session's
  ``min_index`` (at most ``max_pending_reads`` reads wait); a position beyond a follower's log goes to the
  leader (``Redirect``), one beyond the leader's log is refused (``bad_request``). ``Answer.position``: a
  write's entry index, the applied index a read was served from.
- Expired records (``sweep_interval_ms``): the leader alone sweeps, every interval, proposing
  ``machine.purge_command`` as a log entry (one at a time, no client waits on it), so every replica purges
  the same keys at the same index; a follower never purges on its own.

Answers other than the state machine's results (see ``raft_messages``): ``Redirect("not_leader", hint)``
for any op this replica never executed and cannot (not the leader; a read accepted by a leader that
stepped down before serving it): definite. ``RaftOutcomeUnknown`` for a write appended by a leader that
stepped down before it saw it commit: indefinite. ``RaftRefused`` (definite) for ops refused at once.

Log entry data: ``b""`` is the empty entry a leader appends at the start of its term; ``b"\\x01" + encoded
command`` a client command; ``b"\\x02" + encoded change`` a configuration change (``raft_membership``).

Membership (``raft_membership``): the admin op ``ChangeReplicas`` adds a learner, promotes a caught-up learner
(its match at least the leader's commit) or removes a member, one change at a time (refused ``change_pending``
until the last one, or this term's first entry, is applied). A change takes effect where it is applied; the
hard state keeps the configuration of the last applied change, so a restart or a compaction keeps it. Learners
receive the log and answer vote requests (the candidate counts them only once its configuration makes them
voters, as etcd-io/raft does, so a promotion a learner has not applied yet cannot block an election), but never
campaign and never count towards a commit. A leader that applies its own removal sends ``TimeoutNow`` to the
voter holding most of its log (if it holds the removal) and steps down. A replica follows appends and heartbeats
from any node (its own configuration may lag the group's until it applied the log), but takes vote requests,
votes and ``TimeoutNow`` only from members.

Snapshots (the transfer itself is the node's, ``kvstore/raft_snapshots.py``): a follower that needs entries the
leader compacted puts its progress into the ``snapshot`` state: the leader stops sending it appends (it still
sends heartbeats, so the follower does not campaign) and lists it in ``followers_needing_snapshot()``. The
leader's node streams the records as of ``snapshot_point()`` to it; the follower's node stages them while
``snapshot_source(src, term)`` holds (``src`` leads this follower's current term), installs them only if
``snapshot_needed(index, term)`` (past its commit index, and not an entry its log already holds) and steps
``SnapshotInstalled``, which moves commit and applied to the snapshot index. Once the follower acknowledged
the install, the leader's node calls ``snapshot_sent`` and replication goes on from the log.
"""

from __future__ import annotations

import heapq
import random
import struct
from collections import deque
from dataclasses import dataclass, field

from replication.raft_membership import (
    PROMOTE,
    ChangeReplicas,
    Configuration,
    decode_change,
    decode_configuration,
    encode_change,
    encode_configuration,
    well_formed_change,
)
from replication.raft_messages import (
    AppendEntries,
    AppendReply,
    Heartbeat,
    HeartbeatReply,
    RaftOutcomeUnknown,
    RaftRefused,
    RequestVote,
    ScanRead,
    TimeoutNow,
    TransferLeader,
    TransferStarted,
    VoteReply,
)
from replication.raft_stats import RaftStats, ReplicaStats
from replication.replica import (
    READ_MODES,
    REPLICATION_SETTINGS,
    Answer,
    ClientCall,
    LogEntry,
    PartitionLog,
    PeerMessage,
    PeerUnreachable,
    Redirect,
    ReplicaEffect,
    ReplicaInput,
    ReplicaStarted,
    SendTo,
    SnapshotInstalled,
    StartTimer,
    StateMachine,
    StopTimer,
    Synced,
    TimerFired,
)

FOLLOWER = "follower"
PRE_CANDIDATE = "pre-candidate"
CANDIDATE = "candidate"
LEADER = "leader"

ELECTION_TIMER = "election"
HEARTBEAT_TIMER = "heartbeat"
# The leader's TTL sweep: its purge command goes through the log, so every replica purges the same keys at
# the same index (the same key as SingleCopy's sweep, so a node treats both alike).
SWEEP_TIMER = "ttl-sweep"

PROBE = "probe"
REPLICATE = "replicate"
SNAPSHOT = "snapshot"

ENTRY_COMMAND = 1
ENTRY_CONF_CHANGE = 2
_COMMAND_TAG = bytes([ENTRY_COMMAND])
_CONF_CHANGE_TAG = bytes([ENTRY_CONF_CHANGE])
_INT64_MAX = 2**63 - 1
_HARD_STATE = struct.Struct(">Bq")
# Version 1: term, vote. Version 2: term, vote (length-prefixed), the configuration as of the last applied change.
_HARD_STATE_VERSION = 1
_HARD_STATE_WITH_CONFIG = 2
_VOTE_LENGTH = struct.Struct(">H")
# What one apply pass reads from the log at a time (entries, not a limit on what is applied).
_APPLY_BATCH_BYTES = 1 << 20
# Heartbeat rounds a leader remembers the send time of while no quorum acknowledged them; dropping the oldest
# only makes the lease and the staleness measure more conservative.
_MAX_UNCONFIRMED_ROUNDS = 64


def encode_hard_state(term: int, vote: str | None, config: Configuration | None = None) -> bytes:
    if config is None:
        return _HARD_STATE.pack(_HARD_STATE_VERSION, term) + (b"" if vote is None else vote.encode())
    raw_vote = b"" if vote is None else vote.encode()
    head = _HARD_STATE.pack(_HARD_STATE_WITH_CONFIG, term) + _VOTE_LENGTH.pack(len(raw_vote)) + raw_vote
    return head + encode_configuration(config)


def decode_hard_state(data: bytes | None) -> tuple[int, str | None, Configuration | None]:
    """(term, vote, configuration or None) from stored hard state; ValueError for bytes no RaftReplica wrote."""
    if data is None:
        return 0, None, None
    if len(data) < _HARD_STATE.size:
        raise ValueError(f"raft hard state too short: {data!r}")
    version, term = _HARD_STATE.unpack_from(data)
    if version not in (_HARD_STATE_VERSION, _HARD_STATE_WITH_CONFIG) or term < 0:
        raise ValueError(f"not a raft hard state: {data!r}")
    if version == _HARD_STATE_VERSION:
        vote = data[_HARD_STATE.size :].decode()
        return term, (vote or None), None
    (length,) = _VOTE_LENGTH.unpack_from(data, _HARD_STATE.size)
    at = _HARD_STATE.size + _VOTE_LENGTH.size
    vote = data[at : at + length].decode()
    return term, (vote or None), decode_configuration(data[at + length :])


def command_entry_data(encoded_command: bytes) -> bytes:
    return _COMMAND_TAG + encoded_command


def _is_index(value: object) -> bool:
    return type(value) is int and 0 <= value <= _INT64_MAX


def _is_term(value: object) -> bool:
    """A term a peer may name: one below the largest, so a campaign's next term still fits the hard state."""
    return type(value) is int and 0 <= value < _INT64_MAX


@dataclass(slots=True)
class Progress:
    """What the leader knows of one follower (etcd-io/raft's ``Progress``)."""

    match: int = 0
    next: int = 1
    state: str = PROBE
    # Last index of each append sent in the replicate state and not yet acknowledged (oldest first).
    inflight: deque[int] = field(default_factory=deque)
    # In the probe state, one append is out: wait for its answer (or the next heartbeat's) before another.
    probe_sent: bool = False
    # Heard from since the last check-quorum round.
    active: bool = False
    # In the snapshot state: the snapshot point the follower needs (at least).
    pending_snapshot: int = 0

    def become_probe(self) -> None:
        self.state, self.next, self.probe_sent = PROBE, self.match + 1, False
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state, self.next = REPLICATE, self.match + 1
        self.inflight.clear()


class RaftReplica:
    def __init__(
        self,
        partition: int,
        node_id: str,
        voters: tuple[str, ...],
        machine: StateMachine,
        log: PartitionLog,
        rng: random.Random,
        *,
        learners: tuple[str, ...] = (),
        election_timeout_ms: int = 1000,
        heartbeat_interval_ms: int = 100,
        max_append_bytes: int = 1 << 20,
        max_inflight_appends: int = 64,
        max_pending_proposals: int = 4096,
        max_pending_reads: int = 4096,
        compact_threshold: int = 10_000,
        check_quorum: bool = True,
        pre_vote: bool = True,
        sweep_interval_ms: int | None = None,
        sweep_max_keys: int = 1000,
        lease_drift_ms: int | None = None,
        stats: RaftStats | None = None,
    ) -> None:
        if not voters or len(set(voters)) != len(voters) or set(voters) & set(learners):
            raise ValueError(f"voters must be distinct, non-empty and not learners: {voters!r} / {learners!r}")
        if node_id not in voters and node_id not in learners:
            raise ValueError(f"{node_id!r} is neither a voter nor a learner of partition {partition}")
        if not 0 < heartbeat_interval_ms < election_timeout_ms:
            raise ValueError("need 0 < heartbeat_interval_ms < election_timeout_ms")
        if max_inflight_appends < 1 or max_append_bytes < 1 or compact_threshold < 1:
            raise ValueError("max_inflight_appends, max_append_bytes and compact_threshold must be positive")
        if (sweep_interval_ms is not None and sweep_interval_ms < 1) or sweep_max_keys < 1:
            raise ValueError("sweep_interval_ms (when given) and sweep_max_keys must be positive")
        if lease_drift_ms is not None and not 0 <= lease_drift_ms < election_timeout_ms:
            raise ValueError("need 0 <= lease_drift_ms < election_timeout_ms (or no lease_drift_ms: no leases)")
        self.partition = partition
        self.node_id = node_id
        # The configuration until the log says otherwise (the hard state keeps the one of the last applied change).
        self._initial_config = Configuration(tuple(voters), tuple(learners))
        self._machine = machine
        self._log = log
        self._rng = rng
        self._election_timeout = election_timeout_ms
        self._heartbeat_interval = heartbeat_interval_ms
        self._max_append_bytes = max_append_bytes
        self._max_inflight = max_inflight_appends
        self._max_pending_proposals = max_pending_proposals
        self._max_pending_reads = max_pending_reads
        self._compact_threshold = compact_threshold
        self._check_quorum = check_quorum
        self._pre_vote = pre_vote
        self._sweep_interval = sweep_interval_ms
        self._sweep_max_keys = sweep_max_keys
        self._stats = ReplicaStats(stats if stats is not None else RaftStats())
        self._lease_drift = lease_drift_ms
        # A restarted voter neither grants (pre-)votes nor campaigns until then (see ``_on_boot``).
        self._boot_vote_block_until = 0
        # Per step.
        self._now = 0
        self._out: list[ReplicaEffect] = []
        self._hard_state_written = False
        self._recover()

    # ------------------------------------------------------------ state (read-only for drivers and tests)

    def _recover(self) -> None:
        self.term, self.vote, stored_config = decode_hard_state(self._log.hard_state())
        self._set_config(stored_config or self._initial_config)
        self.role = FOLLOWER
        self.leader: str | None = None
        bounds = self._log.bounds()
        # Everything applied was committed; nothing says more was (the commit index is not persisted).
        self.applied = max(self._log.applied_index(), bounds.snapshot_index)
        self.commit = self.applied
        self._votes: dict[str, bool] = {}
        self._election_start = self._now
        self._randomized_timeout = self._random_timeout()
        # Leader state.
        self.progress: dict[str, Progress] = {}
        self._term_start_index = 0
        self._pending_writes: dict[int, tuple[int, int]] = {}  # index -> (token, term)
        # Pending ``semi-sync`` writes answered once a voting follower holds them: index -> early result, in
        # index order (a subset of ``_pending_writes``).
        self._semi_sync_writes: dict[int, object] = {}
        # The index of this leader's last purge command: no new one while it is not applied.
        self._purge_index = 0
        self._pending_reads: deque[tuple[int, object, int, int]] = deque()  # (token, op, read index, round)
        # Reads that need no (more) round, waiting for the applied index to reach theirs: a heap of
        # (index, token, op), served in index order (any role: ``stale`` reads wait on followers too).
        self._waiting_reads: list[tuple[int, int, object]] = []
        self._round = 0
        # (round, send time) of this term's heartbeat rounds no quorum acknowledged yet, oldest first.
        self._round_sent: deque[tuple[int, int]] = deque()
        # The send time of the latest round a quorum acknowledged in this term (the lease starts there).
        self._quorum_confirmed_at: int | None = None
        # A leadership transfer began in this term: no lease until the term ends (a late ``TimeoutNow`` may
        # still start an election that voters grant inside the lease).
        self._transfer_begun = False
        # Follower: the last time it had applied everything its leader had committed when the leader sent a
        # message it received (see ``_staleness_ms``).
        self._fresh_at: int | None = None
        self._round_acks: dict[str, int] = {}
        self._want_round = False
        self._scan_round: int | None = None
        self._want_broadcast = False
        self._transferee: str | None = None
        self._transfer_deadline = 0
        self._quorum_check_at = 0
        # The index of this leader's last configuration change: no new one while it is not applied.
        self._conf_change_index = 0

    def status(self) -> dict[str, object]:
        bounds = self._log.bounds()
        return {
            "role": self.role,
            "term": self.term,
            "vote": self.vote,
            "leader": self.leader,
            "commit": self.commit,
            "applied": self.applied,
            "first": bounds.first_index,
            "last": bounds.last_index,
            "voters": self.voters,
            "learners": self.learners,
        }

    def followers_needing_snapshot(self) -> dict[str, int]:
        """Followers the leader cannot catch up from its log: peer -> the snapshot point they need."""
        return {p: pr.pending_snapshot for p, pr in self.progress.items() if pr.state == SNAPSHOT}

    def snapshot_point(self) -> tuple[int, int, bytes]:
        """(index, term) of the last entry applied here (the state machine's records are the state as of it), and
        the configuration as of it (changes take effect when applied), encoded."""
        return self.applied, self._log.term_at(self.applied) or 0, encode_configuration(self.config)

    def snapshot_source(self, src: str, term: int) -> bool:
        """Whether a snapshot ``src`` streams under ``term`` may be taken: ``src`` leads this follower's term."""
        return self.role == FOLLOWER and self.term == term and self.leader == src and src != self.node_id

    def snapshot_needed(self, index: int, term: int) -> bool:
        """Whether a snapshot at ``index`` (of ``term``) brings anything: past the commit index (a stale or
        duplicate one is not), and not an entry the log already holds (the log then catches up by appends)."""
        return _is_index(index) and index > self.commit and self._log.term_at(index) != term

    def snapshot_sent(self, now_ms: int, peer: str, index: int) -> list[ReplicaEffect]:
        """The node installed this replica's state through ``index`` at ``peer``: replicate from there."""
        self._begin(now_ms)
        pr = self.progress.get(peer)
        if self.role == LEADER and pr is not None and pr.state == SNAPSHOT and _is_index(index):
            # The follower holds ``index`` durably (it acknowledged the install once synced): its match is known,
            # so replicate at once. Probing from it would never leave the probe state, since an answer that only
            # repeats the match index does not count as progress.
            pr.match = max(pr.match, min(index, self._last_index()))
            pr.become_replicate()
            if self._send_append(peer, allow_empty=True):
                self._send_appends(peer)
        return self._end()

    def campaign(self, now_ms: int) -> list[ReplicaEffect]:
        """Start an election now (pre-vote first, if enabled), as if the election timeout had passed."""
        self._begin(now_ms)
        if self.role != LEADER:
            self._campaign(transfer=False)
        return self._end()

    # ------------------------------------------------------------ step

    def step(self, now_ms: int, inp: ReplicaInput) -> list[ReplicaEffect]:
        self._begin(now_ms)
        if isinstance(inp, PeerMessage):
            self._on_message(inp.src, inp.body)
        elif isinstance(inp, ClientCall):
            self._on_call(inp)
        elif isinstance(inp, Synced):
            if self.role == LEADER:
                self._maybe_commit()
        elif isinstance(inp, TimerFired):
            if inp.key == ELECTION_TIMER:
                self._on_election_timer()
            elif inp.key == HEARTBEAT_TIMER:
                self._on_heartbeat_timer()
            elif inp.key == SWEEP_TIMER:
                self._on_sweep_timer()
        elif isinstance(inp, PeerUnreachable):
            pr = self.progress.get(inp.dst) if self.role == LEADER else None
            if pr is not None and pr.state == REPLICATE and isinstance(inp.body, AppendEntries):
                pr.become_probe()
        elif isinstance(inp, SnapshotInstalled):
            # The log starts after the snapshot point now, and the records are the state as of it; so is the
            # configuration, whose changes may be among the entries the snapshot replaced.
            if inp.index > self.commit:
                self.commit = self.applied = inp.index
                self._adopt_snapshot_config(inp.index, inp.config)
        elif isinstance(inp, ReplicaStarted):
            self._recover()
            self._reset_election_timer()
            if self._is_voter():
                self._arm(ELECTION_TIMER, self._election_deadline())
                self._on_boot()
        return self._end()

    def scan(self, now_ms: int, start: str, end: str | None, limit: int) -> object:
        # The synchronous interface method. A node in leader mode scans with ``ScanRead`` instead, which is
        # linearizable: this one may still serve a leader cut off since its last confirmed round, until it
        # steps down (an election timeout at most). It serves only once a read-index round started after this
        # term's first entry was applied has confirmed that this node still led.
        if self.role != LEADER or self._scan_round is None or self._confirmed_round() < self._scan_round:
            return Redirect("not_leader", None if self.role == LEADER else self.leader)
        return self._machine.scan(now_ms, start, end, limit)

    def _begin(self, now_ms: int) -> None:
        self._now = now_ms
        self._out = []
        self._hard_state_written = False

    def _end(self) -> list[ReplicaEffect]:
        if self.role == LEADER and not self._is_voter():
            self._become_follower(self.term, None)  # it applied its own removal (see _apply_change)
        if self.role == LEADER:
            if self._want_round:
                self._start_read_round()
            if self._want_broadcast:
                self._want_broadcast = False
                for peer in self.progress:
                    self._send_appends(peer)
        if self._pending_reads or self._waiting_reads:
            self._serve_reads()
        out = self._out
        if self._hard_state_written:
            # Whatever this step sent may rest on the term or vote it wrote: nothing leaves before it is synced.
            for effect in out:
                if isinstance(effect, SendTo):
                    effect.durable = True
        self._out = []
        return out

    # ------------------------------------------------------------ helpers

    def _last_index(self) -> int:
        return self._log.bounds().last_index

    def _last_term(self) -> int:
        return self._log.term_at(self._last_index()) or 0

    def _is_voter(self) -> bool:
        return self.node_id in self.voters

    def _send(self, dst: str, body: object, durable: bool = False) -> None:
        self._out.append(SendTo(dst, body, durable))

    def _arm(self, key: str, at_ms: int) -> None:
        self._out.append(StartTimer(key, at_ms))

    def _random_timeout(self) -> int:
        return self._rng.randrange(self._election_timeout, 2 * self._election_timeout)

    def _reset_election_timer(self) -> None:
        self._election_start = self._now
        self._randomized_timeout = self._random_timeout()

    def _election_deadline(self) -> int:
        return self._election_start + self._randomized_timeout

    def _set_term_vote(self, term: int, vote: str | None) -> None:
        if term != self.term or vote != self.vote:
            self.term, self.vote = term, vote
            self._write_hard_state()

    def _write_hard_state(self) -> None:
        self._log.set_hard_state(encode_hard_state(self.term, self.vote, self.config))
        self._hard_state_written = True

    def _in_lease(self) -> bool:
        # Heard from a leader (or, as leader, from a quorum) within an election timeout.
        if not self._check_quorum or self.leader is None:
            return False
        return self._now - self._election_start < self._election_timeout

    def _on_boot(self) -> None:
        # A voter that acknowledged a leader's heartbeat and then restarted has forgotten it: were it to vote at
        # once, a new leader could win inside the old one's lease. Where leases are on (every replica of a group
        # is configured alike), a voter that has been in a term neither grants (pre-)votes nor campaigns (the node
        # campaigns at boot) for one election timeout after boot, as if it had just heard from a leader.
        if self._lease_drift is not None and self._check_quorum and self.term > 0:
            self._boot_vote_block_until = self._now + self._election_timeout

    # ------------------------------------------------------------ roles

    def _become_follower(self, term: int, leader: str | None) -> None:
        was_leader = self.role == LEADER
        if term != self.term:
            self._set_term_vote(term, None)
        self.role = FOLLOWER
        self.leader = leader
        self._votes = {}
        self._reset_election_timer()
        if was_leader:
            self._stats.not_leading()
            self._step_down()
            self._out.append(StopTimer(HEARTBEAT_TIMER))
            if self._sweep_interval is not None:
                self._out.append(StopTimer(SWEEP_TIMER))
            if self._is_voter():
                self._arm(ELECTION_TIMER, self._election_deadline())

    def _step_down(self) -> None:
        """Fail everything a leader had waiting: it can serve none of it any more."""
        for index, (token, term) in sorted(self._pending_writes.items()):
            message = f"lost leadership of partition {self.partition} before entry {index} of term {term} committed"
            self._out.append(Answer(token, RaftOutcomeUnknown(index, term, message)))
        for token, _, _, _ in self._pending_reads:
            self._out.append(Answer(token, Redirect("not_leader", self.leader)))
        for _, token, _ in sorted(self._waiting_reads):
            self._out.append(Answer(token, Redirect("not_leader", self.leader)))
        self._pending_writes.clear()
        self._semi_sync_writes.clear()
        self._pending_reads.clear()
        self._waiting_reads.clear()
        self.progress = {}
        self._round_acks = {}
        self._round_sent.clear()
        self._quorum_confirmed_at = None
        self._want_round = self._want_broadcast = False
        self._scan_round = None
        self._transferee = None

    def _campaign(self, transfer: bool) -> None:
        if not self._is_voter():
            return
        if not transfer and self._now < self._boot_vote_block_until:
            # Its own vote too would be one inside a lease it may have acknowledged before it restarted.
            self._arm(ELECTION_TIMER, self._boot_vote_block_until)
            return
        if self._pre_vote and not transfer:
            self._stats.campaign(pre_vote=True)
            self.role = PRE_CANDIDATE
            self.leader = None
            self._votes = {self.node_id: True}
            self._reset_election_timer()
            self._arm(ELECTION_TIMER, self._election_deadline())
            if not self._tally():
                self._request_votes(self.term + 1, pre_vote=True, transfer=False)
            return
        self._campaign_for_real(transfer)

    def _campaign_for_real(self, transfer: bool) -> None:
        self._stats.campaign(pre_vote=False)
        self._set_term_vote(self.term + 1, self.node_id)
        self.role = CANDIDATE
        self.leader = None
        self._votes = {self.node_id: True}
        self._reset_election_timer()
        self._arm(ELECTION_TIMER, self._election_deadline())
        if not self._tally():
            self._request_votes(self.term, pre_vote=False, transfer=transfer)

    def _request_votes(self, term: int, pre_vote: bool, transfer: bool) -> None:
        body = RequestVote(term, self._last_index(), self._last_term(), pre_vote, transfer)
        for voter in self.voters:
            if voter != self.node_id:
                self._send(voter, body)

    def _tally(self) -> bool:
        """Count the votes of this (pre-)campaign; act on a decided outcome. True once decided."""
        granted = sum(1 for v, ok in self._votes.items() if ok and v in self.voters)
        rejected = sum(1 for v, ok in self._votes.items() if not ok and v in self.voters)
        if granted >= self._quorum:
            if self.role == PRE_CANDIDATE:
                self._campaign_for_real(transfer=False)
            else:
                self._become_leader()
            return True
        if rejected >= self._quorum:
            self._become_follower(self.term, None)
            return True
        return False

    def _become_leader(self) -> None:
        self._stats.leading()
        self.role = LEADER
        self.leader = self.node_id
        self._votes = {}
        last = self._last_index()
        self.progress = {p: Progress(next=last + 1) for p in sorted(self._members) if p != self.node_id}
        self._round_acks = {}
        self._round_sent.clear()
        self._quorum_confirmed_at = None
        self._transfer_begun = False
        self._scan_round = None
        self._transferee = None
        self._election_start = self._now  # the leader's lease starts now (see _in_lease)
        self._quorum_check_at = self._now + self._election_timeout
        self._out.append(StopTimer(ELECTION_TIMER))
        self._arm(HEARTBEAT_TIMER, self._now + self._heartbeat_interval)
        self._purge_index = 0
        if self._sweep_interval is not None:
            self._arm(SWEEP_TIMER, self._now + self._sweep_interval)
        # The empty entry of the term: committing it commits every earlier entry (only entries of the
        # current term are committed by counting), and reads wait for it.
        self._term_start_index = last + 1
        # A change of an earlier term may be in the log, not applied yet: none before this term's first entry is.
        self._conf_change_index = last + 1
        self._log.append([LogEntry(last + 1, self.term, b"")])
        self._want_broadcast = True
        self._maybe_commit()

    # ------------------------------------------------------------ timers

    def _on_election_timer(self) -> None:
        if self.role == LEADER or not self._is_voter():
            return
        if self._now >= self._election_deadline():
            self._campaign(transfer=False)
        else:
            self._arm(ELECTION_TIMER, self._election_deadline())

    def _on_heartbeat_timer(self) -> None:
        if self.role != LEADER:
            return
        if self._transferee is not None and self._now >= self._transfer_deadline:
            self._transferee = None  # the target did not take over in time: serve again
        if self._check_quorum and self._now >= self._quorum_check_at:
            active = 1 + sum(1 for p, pr in self.progress.items() if pr.active and p in self.voters)
            for pr in self.progress.values():
                pr.active = False
            if active < self._quorum:
                self._become_follower(self.term, None)
                return
            self._election_start = self._now
            self._quorum_check_at = self._now + self._election_timeout
        self._arm(HEARTBEAT_TIMER, self._now + self._heartbeat_interval)
        if self._lease_drift is not None:
            self._start_read_round()  # every heartbeat is a round whose acknowledgements extend the lease
        else:
            self._broadcast_heartbeats()

    def _on_sweep_timer(self) -> None:
        """The leader proposes a purge of expired records; followers purge only what the log tells them to."""
        if self.role != LEADER or self._sweep_interval is None:
            return  # a timer left over from a leadership that ended: followers never sweep
        self._arm(SWEEP_TIMER, self._now + self._sweep_interval)
        if self._purge_index > self.applied or self._transferee is not None:
            return  # the last purge is not applied yet (one at a time), or leadership is being handed over
        if self.applied < self._term_start_index or len(self._pending_writes) >= self._max_pending_proposals:
            return  # this term's first entry is not applied (the records may lag), or too much waits
        command = self._machine.purge_command(self._now, self._sweep_max_keys)
        if command is None:
            return
        index = self._last_index() + 1
        self._log.append([LogEntry(index, self.term, command_entry_data(self._machine.encode_command(command)))])
        self._purge_index = index
        self._want_broadcast = True
        self._maybe_commit()

    def _broadcast_heartbeats(self) -> None:
        for peer, pr in self.progress.items():
            self._send(peer, Heartbeat(self.term, min(pr.match, self.commit), self._round, self.commit))

    # ------------------------------------------------------------ client ops

    def _on_call(self, call: ClientCall) -> None:
        token, op = call.token, call.op
        problem = _call_problem(call)
        if problem is not None:
            self._out.append(Answer(token, RaftRefused("bad_request", problem)))
            return
        machine = self._machine
        if isinstance(op, ScanRead) or (not isinstance(op, TransferLeader) and machine.is_read(op)):
            self._on_read(call)
            return
        if self.role != LEADER:
            self._out.append(Answer(token, Redirect("not_leader", self.leader)))
            return
        if isinstance(op, TransferLeader):
            self._transfer(token, op.target)
            return
        if isinstance(op, ChangeReplicas):
            self._propose_change(token, op)
            return
        if self._transferee is not None:
            message = f"leadership of partition {self.partition} is moving to {self._transferee}; the op did not happen"
            self._out.append(Answer(token, RaftRefused("transferring", message)))
            return
        if self._last_index() - self.commit >= self._max_pending_proposals:
            # Bounds how far the log runs ahead of the commit index, also for writes acknowledged early.
            self._out.append(Answer(token, RaftRefused("overloaded", "too many writes wait to commit")))
            return
        command = machine.command(op, self._now)
        index = self._last_index() + 1
        self._log.append([LogEntry(index, self.term, command_entry_data(machine.encode_command(command)))])
        self._stats.appended(index, self._now)
        # With no other voter, nobody but this leader can acknowledge: semi-sync is sync.
        early_allowed = call.replication == "async" or (call.replication == "semi-sync" and len(self.voters) > 1)
        early = machine.early_result(command, index) if early_allowed else None
        if early is not None and call.replication == "async":
            # Released once this leader's own entry is synced; it may still be lost by a failover.
            self._out.append(Answer(token, early, durable=True, position=index))
        else:
            self._pending_writes[index] = (token, self.term)
            if early is not None:
                self._semi_sync_writes[index] = early
        self._want_broadcast = True
        self._maybe_commit()

    def _on_read(self, call: ClientCall) -> None:
        token, op, mode = call.token, call.op, call.read
        leading = self.role == LEADER
        if mode == "stale" and not self._fresh_enough(call.max_staleness_ms):
            if not leading:
                self._out.append(Answer(token, Redirect("not_leader", self.leader)))
                return
            mode = "read-index"  # the leader confirms it leads instead: then its state is not stale at all
        elif mode != "stale" and not leading:
            self._out.append(Answer(token, Redirect("not_leader", self.leader)))
            return
        if call.min_index > self._last_index():
            if leading:
                message = (
                    f"position {call.min_index} is beyond partition {self.partition}'s log (last {self._last_index()}):"
                    " it was never written here, or was an unreplicated write a failover lost"
                )
                self._out.append(Answer(token, RaftRefused("bad_request", message)))
            else:  # this replica's log may lag: the leader's holds every position
                self._out.append(Answer(token, Redirect("not_leader", self.leader)))
            return
        at_once = mode in ("stale", "unsafe") or (mode == "lease" and self._lease_holds())
        must_wait = not at_once or call.min_index > self.applied
        if must_wait and len(self._pending_reads) + len(self._waiting_reads) >= self._max_pending_reads:
            self._out.append(Answer(token, RaftRefused("overloaded", "too many reads wait")))
            return
        if at_once:
            heapq.heappush(self._waiting_reads, (call.min_index, token, op))  # served at the end of this step
            return
        read_index = max(self.commit, self._term_start_index, call.min_index)
        self._pending_reads.append((token, op, read_index, self._round + 1))
        self._want_round = True

    def _lease_holds(self) -> bool:
        """Whether no other leader can exist now, so this leader's applied state is linearizable: a quorum
        acknowledged a heartbeat this leader sent at ``_quorum_confirmed_at``, and each of those voters refuses
        (pre-)votes for an election timeout after receiving it (``_in_lease``, the boot window). The lease is
        shortened by ``lease_drift_ms``, the most the clocks may drift apart within an election timeout."""
        confirmed_at = self._quorum_confirmed_at
        return (
            self._lease_drift is not None
            and self._check_quorum
            and confirmed_at is not None
            and not self._transfer_begun
            and self.applied >= self._term_start_index
            and self._now < confirmed_at + self._election_timeout - self._lease_drift
        )

    def _staleness_ms(self) -> int | None:
        """How far this replica's applied state may lag behind the partition's committed state, in ms; None
        when unknown. A leader: now minus the send time of the latest heartbeat round a quorum acknowledged,
        once this term's first entry is applied (unknown before): up to that time no other leader was elected,
        and this leader had applied everything committed before it. Any other replica: now minus the last time
        it had applied everything its leader had committed, at an entry of the leader's term, when the leader
        sent a message this replica received (unknown if never since boot). Neither counts the message's
        transit time, and a follower cut off with a deposed leader trusts it until that leader steps down
        (check-quorum: within two election timeouts)."""
        if self.role == LEADER:
            since = self._quorum_confirmed_at if self.applied >= self._term_start_index else None
        else:
            since = self._fresh_at
        return None if since is None else max(0, self._now - since)

    def _fresh_enough(self, max_staleness_ms: int | None) -> bool:
        if max_staleness_ms is None:
            return True
        staleness = self._staleness_ms()
        return staleness is not None and staleness <= max_staleness_ms

    def _transfer(self, token: int, target: object) -> None:
        if target == self.node_id:
            self._out.append(Answer(token, TransferStarted(self.node_id)))
            return
        if not isinstance(target, str) or target not in self.voters:
            self._out.append(Answer(token, RaftRefused("bad_target", f"{target!r} is not a voter")))
            return
        self._transferee = target
        self._transfer_begun = True
        self._transfer_deadline = self._now + self._election_timeout
        pr = self.progress[target]
        if pr.match == self._last_index():
            self._send(target, TimeoutNow(self.term))
        else:
            self._send_append(target, allow_empty=False)
        self._out.append(Answer(token, TransferStarted(target)))

    # ------------------------------------------------------------ configuration changes (raft_membership)

    @property
    def config(self) -> Configuration:
        return self._config

    @property
    def config_settled(self) -> bool:
        """Whether this replica leads and its configuration is the group's latest: it applied its term's first
        entry (so every change of earlier terms) and no change of its own waits to be applied."""
        return self.role == LEADER and self.applied >= max(self._term_start_index, self._conf_change_index)

    def _adopt_snapshot_config(self, index: int, encoded: object) -> None:
        if type(encoded) is not bytes or not encoded:
            return  # a snapshot from a leader that sent no configuration: the log's changes still apply
        try:
            config = decode_configuration(encoded)
        except ValueError:
            return
        if self.config.index < config.index <= index:
            was_voter = self._is_voter()
            self._set_config(config)
            self._write_hard_state()
            if self._is_voter() and not was_voter:
                self._reset_election_timer()  # promoted within the snapshot: it may campaign from now on
                self._arm(ELECTION_TIMER, self._election_deadline())

    def _set_config(self, config: Configuration) -> None:
        self._config = config
        self.voters = config.voters
        self.learners = config.learners
        self._members = frozenset(config.members)
        self._quorum = len(config.voters) // 2 + 1

    def _propose_change(self, token: int, change: ChangeReplicas) -> None:
        refusal: RaftRefused | None = None
        if not well_formed_change(change):
            refusal = RaftRefused("bad_change", f"not a configuration change: {change!r:.200}")
        elif self._transferee is not None:
            refusal = RaftRefused("transferring", f"leadership of partition {self.partition} is moving")
        elif self._conf_change_index > self.applied:
            message = f"partition {self.partition} applies change {self._conf_change_index} first; retry later"
            refusal = RaftRefused("change_pending", message)
        elif (reason := self.config.refusal(change)) is not None:
            refusal = RaftRefused("bad_change", reason)
        elif change.action == PROMOTE and (match := self._match_of(change.node)) < self.commit:
            refusal = RaftRefused("not_caught_up", f"{change.node} holds {match} of {self.commit} committed entries")
        elif len(self._pending_writes) >= self._max_pending_proposals:
            refusal = RaftRefused("overloaded", "too many writes wait to commit")
        if refusal is not None:
            self._out.append(Answer(token, refusal))
            return
        index = self._last_index() + 1
        self._log.append([LogEntry(index, self.term, _CONF_CHANGE_TAG + encode_change(change))])
        self._pending_writes[index] = (token, self.term)
        self._conf_change_index = index
        self._want_broadcast = True
        self._maybe_commit()

    def _match_of(self, node: str) -> int:
        pr = self.progress.get(node)
        return 0 if pr is None else pr.match

    def _apply_change(self, index: int, change: ChangeReplicas) -> Configuration:
        """The change at ``index`` takes effect here, and the hard state keeps the configuration it made."""
        if index <= self.config.index:
            return self.config  # applied again after a restart: the stored configuration has it already
        was_voter = self._is_voter()
        self._set_config(self.config.changed(change, index))
        self._write_hard_state()
        if self.role == LEADER:
            last = self._last_index()
            for node in self.config.members:
                if node != self.node_id and node not in self.progress:
                    self.progress[node] = Progress(next=last + 1)
            for node in [p for p in self.progress if p not in self._members]:
                del self.progress[node]
                self._round_acks.pop(node, None)
            if self._transferee is not None and self._transferee not in self.voters:
                self._transferee = None
            if not self._is_voter():
                self._hand_over_after_removal(index)
        elif self._is_voter() and not was_voter:
            self._reset_election_timer()  # promoted: it may campaign from now on
            self._arm(ELECTION_TIMER, self._election_deadline())
        return self.config

    def _hand_over_after_removal(self, index: int) -> None:
        """This leader applied its own removal; it steps down at the end of the step. The voter holding the most
        of its log campaigns at once if it holds the removal: sent before the commit that tells the others, which
        then no longer take messages from this node."""
        best = max(sorted(self.voters), key=lambda v: self.progress[v].match)
        if self.progress[best].match >= index:
            self._send(best, TimeoutNow(self.term))

    def _start_read_round(self) -> None:
        self._want_round = False
        self._round += 1
        if self._scan_round is None and self.applied >= self._term_start_index:
            self._scan_round = self._round
        self._round_sent.append((self._round, self._now))
        if len(self._round_sent) > _MAX_UNCONFIRMED_ROUNDS:
            self._round_sent.popleft()
        self._note_confirmed()  # a leader with no other voter confirms its round at once
        self._broadcast_heartbeats()

    def _confirmed_round(self) -> int:
        """The latest read round a quorum of voters (this leader included) has acknowledged."""
        acks = sorted(
            (self._round if v == self.node_id else self._round_acks.get(v, 0) for v in self.voters), reverse=True
        )
        return acks[self._quorum - 1]

    def _note_confirmed(self) -> None:
        """Move ``_quorum_confirmed_at`` to the send time of the latest round a quorum acknowledged."""
        sent = self._round_sent
        if not sent:
            return
        confirmed = self._confirmed_round()
        while sent and sent[0][0] <= confirmed:
            _, self._quorum_confirmed_at = sent.popleft()

    def _serve_reads(self) -> None:
        reads, waiting = self._pending_reads, self._waiting_reads
        if reads:
            confirmed = self._confirmed_round()
            while reads and reads[0][3] <= confirmed:
                token, op, read_index, _ = reads.popleft()
                heapq.heappush(waiting, (read_index, token, op))
        machine = self._machine
        while waiting and waiting[0][0] <= self.applied:
            _, token, op = heapq.heappop(waiting)
            if isinstance(op, ScanRead):
                result = machine.scan(self._now, op.start, op.end, op.limit)
            else:
                result = machine.read(op, self._now)
            self._out.append(Answer(token, result, position=self.applied))

    def _drop_unreachable_reads(self) -> None:
        """A follower's log lost its suffix: reads waiting for a position it no longer holds go to the leader."""
        last = self._last_index()
        waiting = self._waiting_reads
        if not waiting or max(index for index, _, _ in waiting) <= last:
            return
        for index, token, _ in sorted(waiting):
            if index > last:
                self._out.append(Answer(token, Redirect("not_leader", self.leader)))
        self._waiting_reads = [read for read in waiting if read[0] <= last]
        heapq.heapify(self._waiting_reads)

    # ------------------------------------------------------------ peer messages

    def _on_message(self, src: str, body: object) -> None:
        if src == self.node_id or not _well_formed(body):
            return
        if src not in self._members and not isinstance(body, (AppendEntries, Heartbeat)):
            # Only members campaign and vote here. A leader's messages count from anyone: this replica's
            # configuration may lag the group's (a new learner's guess, a node added again with an old one), and
            # one leader per term holds whatever its configuration.
            return
        assert isinstance(body, _PEER_MESSAGES)
        term = body.term
        if term > self.term:
            if isinstance(body, RequestVote):
                if not body.transfer and (self._in_lease() or self._now < self._boot_vote_block_until):
                    return  # a leader is alive (or may be): a rejoining node must not depose it
                if body.pre_vote:
                    self._on_request_vote(src, body)  # a pre-vote changes no term
                    return
            elif isinstance(body, VoteReply) and body.pre_vote and body.granted:
                self._on_vote_reply(src, body)  # the term is taken when the real campaign starts
                return
            from_leader = isinstance(body, (AppendEntries, Heartbeat))
            self._become_follower(term, src if from_leader else None)
        elif term < self.term:
            if isinstance(body, (AppendEntries, Heartbeat)):
                # A deposed leader (or one cut off and back): tell it the term so it steps down.
                self._send(src, AppendReply(self.term, False, 0))
            elif isinstance(body, RequestVote) and body.pre_vote:
                self._send(src, VoteReply(self.term, False, True))
            return
        if isinstance(body, RequestVote):
            self._on_request_vote(src, body)
        elif isinstance(body, VoteReply):
            self._on_vote_reply(src, body)
        elif isinstance(body, (AppendEntries, Heartbeat, TimeoutNow)):
            if self.role == LEADER:
                return  # one leader per term: a peer cannot be leader of ours
            if self.role != FOLLOWER or self.leader != src:
                self._become_follower(self.term, src)
            self._election_start = self._now
            if isinstance(body, AppendEntries):
                self._on_append(src, body)
                self._note_fresh(body.commit)
            elif isinstance(body, Heartbeat):
                self._on_heartbeat(src, body)
                self._note_fresh(body.leader_commit)
            else:
                self._campaign(transfer=True)
        elif self.role == LEADER:
            pr = self.progress.get(src)
            if pr is None:
                return
            pr.active = True
            if isinstance(body, AppendReply):
                self._on_append_reply(src, pr, body)
            else:
                self._on_heartbeat_reply(src, pr, body)

    def _on_request_vote(self, src: str, body: RequestVote) -> None:
        can_vote = (
            self.vote == src or (self.vote is None and self.leader is None) or (body.pre_vote and body.term > self.term)
        )
        up_to_date = (body.last_term, body.last_index) >= (self._last_term(), self._last_index())
        if can_vote and up_to_date:
            if not body.pre_vote:
                self._set_term_vote(self.term, src)
                self._reset_election_timer()
            self._send(src, VoteReply(body.term, True, body.pre_vote), durable=not body.pre_vote)
        else:
            self._send(src, VoteReply(self.term, False, body.pre_vote))

    def _on_vote_reply(self, src: str, body: VoteReply) -> None:
        if src not in self.voters:
            return
        if self.role == PRE_CANDIDATE and body.pre_vote:
            if body.granted and body.term != self.term + 1:
                return  # an answer to an earlier pre-campaign
        elif not (self.role == CANDIDATE and not body.pre_vote and body.term == self.term):
            return
        self._votes.setdefault(src, body.granted)
        self._tally()

    def _on_append(self, src: str, body: AppendEntries) -> None:
        if body.prev_index < self.commit:
            # Everything up to the commit index matches any leader's log: say so, the leader moves on.
            self._send(src, AppendReply(self.term, True, self.commit), durable=True)
            return
        log = self._log
        if log.term_at(body.prev_index) != body.prev_term:
            hint = min(body.prev_index, self._last_index())
            hint_index, hint_term = self._find_conflict_by_term(hint, body.prev_term)
            self._send(src, AppendReply(self.term, False, body.prev_index, hint_index, hint_term))
            return
        last_new = body.prev_index + len(body.entries)
        for position, entry in enumerate(body.entries):
            if log.term_at(entry.index) != entry.term:
                if entry.index <= self.commit:
                    return  # would rewrite a committed entry: no correct leader sends that
                if entry.index <= self._last_index():
                    log.truncate_suffix(entry.index)
                log.append(body.entries[position:])
                self._drop_unreachable_reads()
                break
        self._advance_commit(min(body.commit, last_new))
        self._send(src, AppendReply(self.term, True, last_new), durable=True)

    def _on_heartbeat(self, src: str, body: Heartbeat) -> None:
        # The leader sends at most what this follower matched, so the log holds it.
        self._advance_commit(min(body.commit, self._last_index()))
        self._send(src, HeartbeatReply(self.term, body.round, self._last_index()))

    def _note_fresh(self, leader_commit: int) -> None:
        # Only a commit index at an entry of the leader's own term covers what earlier leaders committed (a new
        # leader's commit index lags until its first entry commits).
        if self.applied >= leader_commit and self._log.term_at(leader_commit) == self.term:
            self._fresh_at = self._now

    def _advance_commit(self, index: int) -> None:
        if index > self.commit:
            self.commit = index
            self._apply()

    def _find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The last index at or below ``index`` whose term is at most ``term``, and its term."""
        log = self._log
        snapshot_index = log.bounds().snapshot_index
        while index > snapshot_index:
            at = log.term_at(index)
            if at is None or at <= term:
                break
            index -= 1
        return index, log.term_at(index) or 0

    # ------------------------------------------------------------ leader: replication

    def _send_append(self, peer: str, allow_empty: bool) -> bool:
        pr = self.progress[peer]
        if pr.state == SNAPSHOT or (pr.state == PROBE and pr.probe_sent) or len(pr.inflight) >= self._max_inflight:
            return False
        log = self._log
        bounds = log.bounds()
        prev_index = pr.next - 1
        prev_term = log.term_at(prev_index)
        if prev_term is None or prev_index < bounds.snapshot_index:
            # Compacted away: only a copy of the state machine can catch this follower up.
            pr.state, pr.pending_snapshot = SNAPSHOT, bounds.snapshot_index
            pr.inflight.clear()
            return False
        entries: list[LogEntry] = []
        if pr.next <= bounds.last_index:
            entries = log.entries(pr.next, bounds.last_index + 1, self._max_append_bytes)
        if not entries and not allow_empty:
            return False
        self._send(peer, AppendEntries(self.term, prev_index, prev_term, tuple(entries), self.commit))
        if pr.state == REPLICATE:
            if entries:
                pr.next = entries[-1].index + 1
                pr.inflight.append(entries[-1].index)
        else:
            pr.probe_sent = True
        return True

    def _send_appends(self, peer: str) -> None:
        while self._send_append(peer, allow_empty=False):
            pass

    def _on_append_reply(self, src: str, pr: Progress, body: AppendReply) -> None:
        if body.success:
            if body.index > self._last_index():
                return  # acknowledges entries this leader never had: not from our term's log
            was_paused = (pr.state == PROBE and pr.probe_sent) or len(pr.inflight) >= self._max_inflight
            while pr.inflight and pr.inflight[0] <= body.index:
                pr.inflight.popleft()
            if body.index > pr.match:
                pr.match = body.index
                if self._semi_sync_writes and src in self.voters:
                    self._answer_semi_sync(pr.match)
                if pr.state == PROBE:
                    pr.become_replicate()
                pr.next = max(pr.next, body.index + 1)
                if self._maybe_commit():
                    was_paused = False  # the commit broadcast just carried the news to this follower
                if src not in self.progress:
                    return  # the commit applied src's removal
            elif pr.state == PROBE:
                if body.index == pr.match:
                    # The probe found where the logs match, though nothing new was acknowledged (etcd-io/raft:
                    # ``Match == m.Index`` in probe): replicate from there, or the probing never ends.
                    pr.become_replicate()
                else:
                    pr.probe_sent = False
            if src == self._transferee and pr.match == self._last_index():
                self._send(src, TimeoutNow(self.term))
            sent = self._send_append(src, allow_empty=was_paused)
            while sent:
                sent = self._send_append(src, allow_empty=False)
            return
        rejected = body.index
        if pr.state == REPLICATE:
            if rejected <= pr.match:
                return  # stale
            pr.become_probe()
        elif pr.state == PROBE:
            if rejected != pr.next - 1:
                return  # an answer to an earlier probe
            next_probe = body.hint_index
            if body.hint_term > 0:
                next_probe, _ = self._find_conflict_by_term(body.hint_index, body.hint_term)
            pr.next = max(min(rejected, next_probe + 1), pr.match + 1)
            pr.probe_sent = False
        else:
            return
        self._send_append(src, allow_empty=True)

    def _answer_semi_sync(self, match: int) -> None:
        """A voting follower durably holds this leader's log through ``match``: answer the semi-sync writes
        up to there with their early results (released once the leader's own copy is synced too)."""
        semi = self._semi_sync_writes
        synced = self._log.synced_through()
        while semi:
            index = next(iter(semi))
            if index > match:
                return
            early = semi.pop(index)
            token, _ = self._pending_writes.pop(index)
            # Waits for a sync only while this leader's own copy is not durable yet (a sync of other writes
            # would otherwise delay it: an apply's records, since the commit may have moved in this step).
            self._out.append(Answer(token, early, durable=index > synced, position=index))

    def _on_heartbeat_reply(self, src: str, pr: Progress, body: HeartbeatReply) -> None:
        if body.round > self._round_acks.get(src, 0) and body.round <= self._round:
            self._round_acks[src] = body.round
            self._note_confirmed()
        pr.probe_sent = False
        if len(pr.inflight) >= self._max_inflight:
            pr.inflight.popleft()  # an append (or its answer) was lost: let one more go
        if pr.match < self._last_index():
            self._send_append(src, allow_empty=True)

    def _maybe_commit(self) -> bool:
        log = self._log
        last = self._last_index()
        own = min(last, log.synced_through())
        matches = sorted((own if v == self.node_id else self.progress[v].match for v in self.voters), reverse=True)
        candidate = matches[self._quorum - 1]
        if candidate > self.commit and log.term_at(candidate) == self.term:
            self.commit = candidate
            self._stats.committed(candidate, self._now)
            self._apply()
            # Followers learn the new commit index from the next append or heartbeat; send it now.
            for peer in self.progress:
                self._send_append(peer, allow_empty=True)
            return True
        return False

    # ------------------------------------------------------------ apply

    def _apply(self) -> None:
        log, machine = self._log, self._machine
        while self.applied < self.commit:
            batch = log.entries(self.applied + 1, self.commit + 1, _APPLY_BATCH_BYTES)
            if not batch:
                break  # the log ends below the commit index: cannot happen, but never spin
            for entry in batch:
                result: object = None
                if entry.data[:1] == _CONF_CHANGE_TAG:
                    result = self._apply_change(entry.index, decode_change(entry.data[1:]))
                elif entry.data:
                    try:
                        command = machine.decode_command(entry.data[1:])
                    except ValueError as exc:
                        # Only a faulty peer's append carries one; every replica fails to decode the same bytes,
                        # so every replica skips it alike, and none crashes on it at every restart.
                        result = RaftRefused("bad_entry", f"entry {entry.index} holds no command: {exc}")
                    else:
                        result = machine.apply(entry.index, command)
                self.applied = entry.index
                waiting = self._pending_writes.pop(entry.index, None)
                if waiting is not None:
                    self._semi_sync_writes.pop(entry.index, None)
                    token, term = waiting
                    if term == entry.term:
                        # Not durable: committed means a majority holds the entry durably, so the answer
                        # need not wait for this apply's records to be synced (a crash re-applies the log).
                        self._out.append(Answer(token, result, position=entry.index))
                    else:  # cannot happen while leading; kept so a token is never left unanswered
                        self._out.append(Answer(token, RaftOutcomeUnknown(entry.index, term, "entry replaced")))
        if self.role == LEADER and self._scan_round is None and self.applied >= self._term_start_index:
            self._want_round = True  # confirm leadership once more, so scans can be served
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        log = self._log
        applied = log.applied_index()
        if applied - log.bounds().snapshot_index < self._compact_threshold:
            return
        through = applied
        if self.role == LEADER:
            # Keep what an active follower still needs; an inactive one may have to take a snapshot.
            for pr in self.progress.values():
                if pr.active and pr.state != SNAPSHOT:
                    through = min(through, pr.match)
        if through > log.bounds().snapshot_index and log.term_at(through) is not None:
            log.compact_prefix(through)


def _call_problem(call: ClientCall) -> str | None:
    """Why a client's call names settings no replica can honour (None: it does not)."""
    if type(call.replication) is not str or call.replication not in REPLICATION_SETTINGS:
        return f"unknown replication setting {call.replication!r}: one of {', '.join(REPLICATION_SETTINGS)}"
    if type(call.read) is not str or call.read not in READ_MODES:
        return f"unknown read mode {call.read!r}: one of {', '.join(READ_MODES)}"
    if call.max_staleness_ms is not None and not _is_index(call.max_staleness_ms):
        return f"max_staleness_ms must be a non-negative integer, not {call.max_staleness_ms!r}"
    if not _is_index(call.min_index):
        return f"min_index must be a non-negative integer, not {call.min_index!r}"
    return None


_PEER_MESSAGES = (RequestVote, VoteReply, AppendEntries, AppendReply, Heartbeat, HeartbeatReply, TimeoutNow)


def _well_formed_data(data: bytes) -> bool:
    if not data or data[0] == ENTRY_COMMAND:
        return True
    if data[0] != ENTRY_CONF_CHANGE:
        return False
    try:
        decode_change(data[1:])
    except ValueError:
        return False
    return True


def _well_formed(body: object) -> bool:
    """Whether a peer's message has the types and ranges this replica relies on (a peer is untrusted)."""
    if isinstance(body, AppendEntries):
        if not (
            _is_term(body.term)
            and _is_index(body.prev_index)
            and _is_index(body.prev_term)
            and _is_index(body.commit)
            and type(body.entries) is tuple
        ):
            return False
        expected, term = body.prev_index + 1, body.prev_term
        for entry in body.entries:
            if (
                type(entry) is not LogEntry
                or entry.index != expected
                or not _is_index(entry.term)
                or not term <= entry.term <= body.term
                or type(entry.data) is not bytes
                or not _well_formed_data(entry.data)
            ):
                return False
            expected, term = expected + 1, entry.term
        return expected - 1 <= _INT64_MAX
    if isinstance(body, RequestVote):
        return (
            _is_term(body.term)
            and _is_index(body.last_index)
            and _is_index(body.last_term)
            and type(body.pre_vote) is bool
            and type(body.transfer) is bool
        )
    if isinstance(body, VoteReply):
        return _is_term(body.term) and type(body.granted) is bool and type(body.pre_vote) is bool
    if isinstance(body, AppendReply):
        return (
            _is_term(body.term)
            and type(body.success) is bool
            and _is_index(body.index)
            and _is_index(body.hint_index)
            and _is_index(body.hint_term)
        )
    if isinstance(body, Heartbeat):
        return (
            _is_term(body.term) and _is_index(body.commit) and _is_index(body.round) and _is_index(body.leader_commit)
        )
    if isinstance(body, HeartbeatReply):
        return _is_term(body.term) and _is_index(body.round) and _is_index(body.last_index)
    if isinstance(body, TimeoutNow):
        return _is_term(body.term)
    return False
