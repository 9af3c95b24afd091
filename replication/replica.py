"""The interface between a node and one partition's replication protocol: sans-IO, knowing nothing of kvstore.

A node keeps one ``PartitionReplica`` per partition it holds a copy of and hands it every input for that
partition: ``step(now_ms, input) -> list[effect]``. The replica never does IO. What it stores goes through
two injected objects:

- a ``PartitionLog``: the partition's own durable log (append, read a range within a byte budget, term at
  an index, truncate a suffix, compact a prefix, install a snapshot point received from a leader), its hard
  state (opaque bytes: a term and a vote, a ballot, whatever the protocol keeps) and its applied index. Every
  change is *written* at once and *synced* later by the driver's group commit, which one fsync serves for
  every partition on the node;
- a ``StateMachine``: the data itself. The protocol turns a client op into a *command* once, where it is
  ordered (``command`` fixes everything apply needs: an absolute expiry, the time the command judges
  expiry at), and applies commands in order (``apply``), so that every replica applying the same
  commands ends with the same records, whatever its own clock says. Versions are the protocol's: the
  index it applies a command at becomes the version of what the command writes.

Inputs: ``ReplicaStarted`` (first, after every boot, with what storage recovered), ``ClientCall`` (an op
to execute, answered with ``Answer`` carrying the same token), ``PeerMessage``, ``PeerUnreachable``
(the transport could deliver no copy of a message this replica sent), ``TimerFired``, ``Synced``
(storage became more durable: ask the log what ``synced_through`` is now) and ``SnapshotInstalled`` (the node
installed a snapshot its leader streamed: commit and apply move to its index).

Effects: ``SendTo`` (a peer message for the same partition on another node), ``Answer``, ``StartTimer`` /
``StopTimer`` (keys are local to the replica). ``SendTo`` and ``Answer`` may be marked ``durable``: the
driver then releases them only once everything the node wrote up to the end of this step is synced,
whatever the client fsync policy (a vote or an append acknowledgement must never leave before the state
it promises is on disk). An ``Answer`` whose result is a ``Redirect`` says that this replica cannot serve
the op (not the leader, or the op names another epoch of the partition map); the node passes the op on
to the hinted node or fails it definitely.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from replication.dvv import Versions

# ---------------------------------------------------------------- storage a replica is given


@dataclass(frozen=True, slots=True)
class LogEntry:
    index: int
    term: int
    data: bytes


@dataclass(frozen=True, slots=True)
class LogBounds:
    """The log holds entries ``first_index .. last_index``; everything up to ``snapshot_index`` was compacted
    into the state machine's records (``snapshot_term`` is the term of the entry at ``snapshot_index``)."""

    snapshot_index: int
    snapshot_term: int
    last_index: int

    @property
    def first_index(self) -> int:
        return self.snapshot_index + 1


class PartitionLog(Protocol):
    """One partition's durable log, hard state and applied index, on the node's storage."""

    def bounds(self) -> LogBounds: ...

    def append(self, entries: Sequence[LogEntry]) -> None:
        """Append entries numbered ``last_index + 1`` onwards (ValueError otherwise)."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[LogEntry]:
        """Entries with ``lo <= index < hi``, stopping before the one that would take the data past
        ``max_bytes`` (but always the first, if ``lo`` is in the log). ValueError if ``lo`` was compacted."""
        ...

    def term_at(self, index: int) -> int | None:
        """The term of entry ``index`` (``snapshot_term`` at ``snapshot_index``; 0 at index 0); None when the
        log does not hold it (compacted below the snapshot, or beyond ``last_index``)."""
        ...

    def truncate_suffix(self, from_index: int) -> None:
        """Drop every entry with ``index >= from_index`` (ValueError at or below ``snapshot_index``)."""
        ...

    def compact_prefix(self, through_index: int) -> None:
        """Drop entries up to ``through_index``, which becomes the snapshot point; it must be applied already
        (the state machine's records are the snapshot) and held by the log (ValueError otherwise)."""
        ...

    def install_snapshot(self, index: int, term: int) -> None:
        """Replace the log by a snapshot point received from the leader: no entries, ``snapshot_index = index``
        of term ``term``, applied index ``index``. The caller replaces the state machine's records in the same
        step, so one sync makes both durable (never a mix). ValueError if ``index`` is below the applied index
        or the snapshot point (a snapshot never takes a replica back)."""
        ...

    def synced_through(self) -> int:
        """The highest index such that the durable log equals this log on ``first_index .. index``."""
        ...

    def hard_state(self) -> bytes | None: ...

    def set_hard_state(self, value: bytes) -> None: ...

    def applied_index(self) -> int:
        """The index of the last command applied; persisted atomically with what that command wrote."""
        ...


class VersionStore(Protocol):
    """One partition's key states in leaderless mode (``replication.dvv.Versions``), on the node's storage: a
    change is written at once and synced by the driver's next group commit, like the log's."""

    def get(self, key: str) -> Versions | None: ...

    def put(self, key: str, state: Versions) -> None: ...

    def remove(self, key: str) -> None: ...

    def keys_from(self, start: str, limit: int) -> list[str]:
        """Up to ``limit`` keys ``>= start`` that hold a state (tombstones included), in key order."""
        ...


class StateMachine(Protocol):
    """The records one partition replicates. Ops, commands and results are opaque to the protocol."""

    def is_read(self, op: object) -> bool: ...

    def read(self, op: object, now_ms: int) -> object:
        """Answer a read-only op from this copy's records, as of ``now_ms``."""
        ...

    def command(self, op: object, now_ms: int) -> object:
        """Turn a write op into the command every replica applies: fixes absolute expiry and judging time."""
        ...

    def apply(self, index: int, command: object) -> object:
        """Apply ``command`` as the one at ``index`` (its writes take ``index`` as their version) and return
        the op's result. Deterministic: depends only on the records and the command. Records the applied
        index atomically with what it writes; a command that writes nothing need not record it."""
        ...

    def early_result(self, command: object, index: int) -> object | None:
        """The result of ``command`` as the one at ``index``, for a write acknowledged before it is applied
        (``semi-sync``, ``async``); None when the result depends on the records (then it waits for apply)."""
        ...

    def purge_command(self, now_ms: int, max_keys: int) -> object | None:
        """A command purging up to ``max_keys`` records expired (or tombstones purgeable) at ``now_ms``."""
        ...

    def scan(self, now_ms: int, start: str, end: str | None, limit: int) -> object:
        """Up to ``limit`` live records in ``[start, end)`` of this copy."""
        ...

    def encode_command(self, command: object) -> bytes: ...

    def decode_command(self, data: bytes) -> object: ...


# ---------------------------------------------------------------- inputs
#
# The inputs and effects that pass between a node and its replicas on every op are plain slots
# dataclasses, not frozen ones: they never go on the wire and nothing hashes them, and a frozen one costs
# an ``object.__setattr__`` per field to build (``Answer``: ~380 ns against ~110 ns). Nobody changes
# one once it is made. What a replica is given to keep (``Recovered``, ``LogBounds``, ``LogEntry``)
# and ``Redirect`` stay frozen.


@dataclass(frozen=True, slots=True)
class Recovered:
    """What the partition's storage holds after a boot."""

    applied_index: int
    hard_state: bytes | None
    log: LogBounds


@dataclass(frozen=True, slots=True)
class ReplicaStarted:
    recovered: Recovered


# When a write is acknowledged (``ClientCall.replication``). Every setting commits an entry the same way (a
# majority of voters holds it); they differ in when the client hears of it:
# - ``sync``: once committed and applied here (the default: an acknowledged write survives any minority);
# - ``semi-sync``: once the leader and at least one follower hold it durably;
# - ``async``: once the leader holds it durably. A failover can lose what was acknowledged.
# A write whose result depends on the records (``StateMachine.early_result`` gives None) always waits for apply.
REPLICATION_SETTINGS = ("sync", "semi-sync", "async")
# How a read is served (``ClientCall.read``):
# - ``read-index``: on the leader, once a round of heartbeats confirmed it still leads (linearizable);
# - ``lease``: on the leader at once while its lease holds (linearizable within the clock-drift bound),
#   else as ``read-index``;
# - ``unsafe``: on the leader at once, from its local state, with no check (may be stale);
# - ``stale``: on any replica at once, from its local state (``max_staleness_ms`` bounds how old).
READ_MODES = ("read-index", "lease", "unsafe", "stale")


@dataclass(slots=True)
class ClientCall:
    token: int
    op: object
    replication: str = "sync"
    read: str = "read-index"
    # ``stale`` reads: the most the replica's state may lag behind the leader's (None: any lag).
    max_staleness_ms: int | None = None
    # A session's last position seen in this partition: a read is served only from a state that applied at
    # least this index (read-your-writes, monotonic reads).
    min_index: int = 0


@dataclass(slots=True)
class PeerMessage:
    src: str
    body: object


@dataclass(slots=True)
class PeerUnreachable:
    """No copy of ``body``, sent to ``dst``, can have arrived (the transport failed definitely)."""

    dst: str
    body: object


@dataclass(slots=True)
class TimerFired:
    key: str


@dataclass(frozen=True, slots=True)
class Synced:
    """Storage is more durable than before: ``PartitionLog.synced_through`` may have moved."""


@dataclass(frozen=True, slots=True)
class SnapshotInstalled:
    """The node replaced this replica's records and log with a snapshot streamed from its leader: the state as of
    entry ``index`` (of term ``term``), installed with ``PartitionLog.install_snapshot`` in this same step."""

    index: int
    term: int
    # The protocol's own configuration as of ``index``, as the leader's replica gave it (opaque to the node; the
    # replica checks it): the changes that made it may be among the entries the snapshot replaces.
    config: object = None


ReplicaInput = ReplicaStarted | ClientCall | PeerMessage | PeerUnreachable | TimerFired | Synced | SnapshotInstalled


# ---------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class Redirect:
    """This replica cannot serve the op: ``not_leader`` (``leader`` hints who can, if known) or
    ``wrong_epoch`` (the op was routed with another epoch of the partition map than ``epoch``)."""

    reason: Literal["not_leader", "wrong_epoch"]
    leader: str | None = None
    epoch: int | None = None


@dataclass(slots=True)
class SendTo:
    dst: str
    body: object
    durable: bool = False


@dataclass(slots=True)
class Answer:
    token: int
    result: object
    durable: bool = False
    # The partition's log position the answer reflects (0 if none): a write's entry index, the applied index
    # a read was served from. A session keeps the highest it saw (``ClientCall.min_index``).
    position: int = 0


@dataclass(slots=True)
class StartTimer:
    """Fire ``TimerFired(key)`` at ``at_ms`` (node clock); starting a running key moves it."""

    key: str
    at_ms: int


@dataclass(slots=True)
class StopTimer:
    key: str


ReplicaEffect = SendTo | Answer | StartTimer | StopTimer


class PartitionReplica(Protocol):
    partition: int

    def step(self, now_ms: int, inp: ReplicaInput) -> list[ReplicaEffect]: ...

    def scan(self, now_ms: int, start: str, end: str | None, limit: int) -> object:
        """Up to ``limit`` live records in ``[start, end)`` as this replica may serve them, or a ``Redirect``."""
        ...
