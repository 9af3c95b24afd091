"""Raft's peer messages, its admin op and the results a ``RaftReplica`` answers with that are not the state
machine's.

Peer messages travel as ``PeerMessage`` bodies; the node registers ``RAFT_MESSAGES`` with the codec (this
package cannot import kvstore). Every message carries the sender's term; the sender is the transport's
``src``, never a field a peer could forge differently from the envelope.

Results (``RaftRefused``, ``RaftOutcomeUnknown``, ``TransferStarted``) are handed to the node in ``Answer``
and never travel: the node translates them (see each class) before anything leaves it.
"""

from __future__ import annotations

from dataclasses import dataclass

from replication.replica import LogEntry

# ---------------------------------------------------------------- peer messages


@dataclass(frozen=True, slots=True)
class RequestVote:
    """A (pre-)candidate asks for a vote in ``term``. A pre-vote names the term it would campaign in and
    changes nobody's state. ``transfer``: the campaign follows a ``TimeoutNow``, so a voter that heard from
    the leader recently grants it anyway (the leader itself asked for it)."""

    term: int
    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class VoteReply:
    term: int
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """The leader's entries after ``prev_index`` (whose term is ``prev_term``), and its commit index."""

    term: int
    prev_index: int
    prev_term: int
    entries: tuple[LogEntry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendReply:
    """``success``: the follower's log matches the leader's through ``index`` (durably: it is sent durable).
    Otherwise ``index`` is the ``prev_index`` that did not match and ``hint_index``/``hint_term`` the
    follower's last entry at or below it whose term is at most the leader's ``prev_term``: the leader skips
    every index in between at once (etcd-io/raft's fast back-off)."""

    term: int
    success: bool
    index: int
    hint_index: int = 0
    hint_term: int = 0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Leadership and commit index (never above what the follower matched); ``round`` numbers the
    leader's read-index confirmation round the reply counts towards. ``leader_commit`` is the leader's own
    commit index, uncapped: a follower that applied through it knows how fresh its state is (``stale`` reads)."""

    term: int
    commit: int
    round: int
    leader_commit: int = 0


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    term: int
    round: int
    # The follower's last index, so a leader that lost track of it (a dropped reply) probes again.
    last_index: int


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leadership transfer: the leader caught the target up; it campaigns at once, without pre-vote."""

    term: int


# ---------------------------------------------------------------- admin op (a ClientCall op)


@dataclass(frozen=True, slots=True)
class TransferLeader:
    """Ask the leader to hand leadership to voter ``target``. Answered ``TransferStarted`` (the leader sent
    or will send ``TimeoutNow`` once the target caught up), ``RaftRefused`` or a ``Redirect``."""

    target: str


@dataclass(frozen=True, slots=True)
class ScanRead:
    """Up to ``limit`` live records in ``[start, end)`` of the partition, served like a read: once a read-index
    round confirmed that this replica still leads and it applied everything committed before the op arrived.
    Answered asynchronously with the state machine's ``scan`` result, or a ``Redirect`` / ``RaftRefused``. A
    node-local op (a ``ClientCall`` op): it never travels."""

    start: str
    end: str | None
    limit: int


RAFT_MESSAGES: tuple[type, ...] = (
    RequestVote,
    VoteReply,
    AppendEntries,
    AppendReply,
    Heartbeat,
    HeartbeatReply,
    TimeoutNow,
    TransferLeader,
)


# ---------------------------------------------------------------- results (node-local, never on the wire)


@dataclass(frozen=True, slots=True)
class RaftRefused:
    """Definite: the op was not executed and never will be. ``reason``:

    - ``overloaded``: the leader's log runs ``max_pending_proposals`` entries ahead of its commit index, or
      ``max_pending_reads`` reads wait already (the node: ``overloaded``);
    - ``transferring``: leadership is being handed over, proposals wait for the new leader (``unavailable``);
    - ``bad_target``: a transfer to a node that is not a voter (a bad request);
    - ``bad_request``: the ``ClientCall`` names an unknown ``replication`` setting or ``read`` mode, or a
      negative (or non-integer) ``max_staleness_ms`` or ``min_index``; or, on the leader, a ``min_index``
      beyond its log's last index (a position never written in this partition, or an ``async``/``semi-sync``
      write a failover lost): no replica could serve it (a bad request).
    - ``bad_entry``: the committed entry the write would be answered by holds no decodable command (only a faulty
      peer's append carries one): every replica skips it alike.

    A read a leader accepted but never served because it stepped down is answered ``Redirect("not_leader",
    hint)`` instead: definite too, and the node may pass it on to the leader it names.
    """

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class RaftOutcomeUnknown:
    """Indefinite: the write is in the log at ``index`` of ``term`` but this replica stopped leading before
    it saw it commit; it may still commit (the node: an indefinite ``timeout``)."""

    index: int
    term: int
    message: str


@dataclass(frozen=True, slots=True)
class TransferStarted:
    target: str
