"""The Storage protocol every engine implements, the record it stores, and the events that change it.

Storage is keyed by partition: every call names the partition, so a node can hold replicas of many
partitions and a protocol can move a partition as a unit. Per partition it keeps:

- records: ``key -> Record``. The *protocol* supplies a record's version (a log index, an HLC
  timestamp...) and its causal context; a record may be a tombstone (``value is None``: a delete the
  protocol must remember, purgeable from ``expires_at_ms``) and may carry sibling values (concurrent
  writes a leaderless protocol keeps side by side);
- a replication log (``replication.replica.PartitionLog``: append, read a range, term at an index,
  truncate a suffix, compact a prefix), the protocol's hard state (opaque bytes) and the applied index.
  ``log(partition)`` returns that view.

Every change is applied to the in-memory state at once (reads are served from memory) and recorded as
*written*. Changes become *synced* (durable) only through a sync, which covers every partition's
pending changes at once (group commit):

    job = storage.prepare_sync()      # on the driver's thread: takes the unsynced events
    job.run()                         # blocking IO; may run in a worker thread; touches no memory state
    storage.complete_sync(job)        # on the driver's thread: advances synced_lsn

``sync()`` does the three in a row. Every change takes the next log sequence number (LSN) of the
storage: ``written_lsn`` and ``synced_lsn`` are the driver's durability cursor, counted from 0 at every
open, and mean nothing across restarts (versions and log indexes, which do, are the protocol's).
Changes made in one step are synced by one job, in one transaction: an applied index is durable exactly
when the records written with it are.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from replication.replica import LogEntry, PartitionLog


class Sibling(NamedTuple):
    """A value kept beside a record's own: a concurrent write the protocol has not resolved."""

    value: bytes | None
    version: int
    context: bytes = b""


# Named tuples, not frozen dataclasses: a PUT builds one per write, and a frozen dataclass costs twice as
# much to build (measured 1.2 against 0.45 us).
class Record(NamedTuple):
    # None: a tombstone. It is never served; the protocol keeps it until it may be purged.
    value: bytes | None
    version: int
    # A value is hidden once its clock passes this (and may be purged); a tombstone may be purged then.
    expires_at_ms: int | None = None
    # The protocol's causal context (an encoded dotted version vector...); opaque to storage.
    context: bytes = b""
    siblings: tuple[Sibling, ...] = ()

    @property
    def tombstone(self) -> bool:
        return self.value is None

    def expired(self, now_ms: int) -> bool:
        return self.expires_at_ms is not None and self.expires_at_ms <= now_ms

    def live(self, now_ms: int) -> bool:
        """Served to clients: a value, not expired at ``now_ms``."""
        return self.value is not None and (self.expires_at_ms is None or self.expires_at_ms > now_ms)


def record_size(key: str, record: Record) -> int:
    """What a record holds, roughly as stored: its key (characters) and its values and context (bytes)."""
    size = len(key) + len(record.context) + (0 if record.value is None else len(record.value))
    for sibling in record.siblings:
        size += len(sibling.context) + (0 if sibling.value is None else len(sibling.value))
    return size


# ---------------------------------------------------------------- events: what a sync job makes durable


class RecordWritten(NamedTuple):
    lsn: int
    partition: int
    key: str
    record: Record


class RecordRemoved(NamedTuple):
    lsn: int
    partition: int
    key: str


class MetaWritten(NamedTuple):
    lsn: int
    name: str
    # None: the name was removed.
    value: bytes | None


class LogAppended(NamedTuple):
    lsn: int
    partition: int
    entries: tuple[LogEntry, ...]


class LogTruncated(NamedTuple):
    """Entries with ``index >= from_index`` were dropped."""

    lsn: int
    partition: int
    from_index: int


class LogCompacted(NamedTuple):
    """Entries up to ``through_index`` were dropped; it is the snapshot point, of term ``term``."""

    lsn: int
    partition: int
    through_index: int
    term: int


class HardStateWritten(NamedTuple):
    lsn: int
    partition: int
    value: bytes


class AppliedIndexWritten(NamedTuple):
    lsn: int
    partition: int
    index: int  # type: ignore[assignment]  # shadows tuple.index, which nothing here calls


Event = (
    RecordWritten
    | RecordRemoved
    | MetaWritten
    | LogAppended
    | LogTruncated
    | LogCompacted
    | HardStateWritten
    | AppliedIndexWritten
)


class SyncJob(Protocol):
    @property
    def up_to_lsn(self) -> int:
        """The highest LSN this job makes durable."""
        ...

    def run(self) -> None:
        """Write the job's events durably. Blocking; safe to call from a worker thread."""
        ...


class Storage(Protocol):
    # ------------------------------------------------------------ records

    def get(self, partition: int, key: str, now_ms: int) -> Record | None:
        """The live record (a value, not expired at ``now_ms``), or None."""
        ...

    def get_stored(self, partition: int, key: str) -> Record | None:
        """The stored record, whatever it is: a tombstone, expired, or live."""
        ...

    def write(self, partition: int, key: str, record: Record) -> None:
        """Store ``record`` (a value or a tombstone) under ``key``, replacing what was there."""
        ...

    def remove(self, partition: int, key: str) -> bool:
        """Forget ``key`` entirely (a delete in ``single`` mode, or a purge); whether it was stored.
        Removing an absent key writes nothing."""
        ...

    def scan(self, partition: int, start: str, end: str | None, limit: int, now_ms: int) -> list[tuple[str, Record]]:
        """Up to ``limit`` live records with ``start <= key < end`` (``end=None``: unbounded), key order."""
        ...

    def expired_keys(self, partition: int, now_ms: int, max_keys: int) -> list[str]:
        """Up to ``max_keys`` keys of ``partition`` whose record's ``expires_at_ms <= now_ms`` (expired values,
        purgeable tombstones), earliest deadline first. Nothing is removed: the protocol purges them."""
        ...

    def copy_of(self, partition: int) -> list[tuple[str, Record]]:
        """Every stored record of ``partition``, tombstones and expired ones included, in key order."""
        ...

    def records_after(self, partition: int, after: str | None, limit: int) -> list[tuple[str, Record]]:
        """Up to ``limit`` stored records of ``partition`` (tombstones and expired ones included) whose keys
        come after ``after`` (None: from the first), in key order: a partition read page by page."""
        ...

    def changes_after(
        self, partition: int, after: int, limit: int, prefix: str = "", max_examined: int = 100_000
    ) -> tuple[list[tuple[str, Record]], int, bool]:
        """The change feed's read (``kvstore/changes.py``): stored records of ``partition`` (tombstones too) whose
        version is above ``after``, by version, keys starting with ``prefix`` only, up to ``limit`` of them and
        ``max_examined`` examined; with the position to read on from (past every record examined) and whether
        records above it remained. A key written again since shows once, at its newest version; a removed key
        not at all."""
        ...

    def partition_stats(self) -> dict[int, tuple[int, int]]:
        """Per partition holding records: (records, size of their keys and values by ``record_size``)."""
        ...

    def partitions(self) -> list[int]:
        """Partitions that hold at least one record, ascending."""
        ...

    def key_count(self) -> int:
        """Stored records of every partition, tombstones and expired ones included."""
        ...

    # ------------------------------------------------------------ per-partition protocol state

    def log(self, partition: int) -> PartitionLog:
        """The partition's replication log, hard state and applied index."""
        ...

    def set_applied_index(self, partition: int, index: int) -> None:
        """Record that commands up to ``index`` are applied (synced with the records written in this step)."""
        ...

    # ------------------------------------------------------------ node-level metadata

    def get_meta(self, name: str) -> bytes | None:
        """Small named values of the node as a whole (a partition map epoch...); durable with the next sync."""
        ...

    def put_meta(self, name: str, value: bytes) -> None: ...

    def remove_meta(self, name: str) -> None:
        """Forget ``name`` (durable with the next sync); removing an absent name writes nothing."""
        ...

    def meta_names(self, prefix: str) -> list[str]:
        """The names that start with ``prefix``, sorted (a node's hints are kept as ``hint/...`` names)."""
        ...

    # ------------------------------------------------------------ durability

    @property
    def written_lsn(self) -> int: ...

    @property
    def written_log_lsn(self) -> int:
        """The LSN of the last change that is not a record write or removal or an applied index."""
        ...

    @property
    def synced_lsn(self) -> int: ...

    def prepare_sync(self) -> SyncJob | None:
        """Take the events written since the last prepare; None when there are none."""
        ...

    def complete_sync(self, job: SyncJob) -> None: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...
