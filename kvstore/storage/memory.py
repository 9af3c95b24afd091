"""MemoryStorage: the in-memory state every engine serves from, and the events that change it.

Per partition a dict ``key -> Record`` answers point reads, a ``SortedList`` of the same key strings
answers range scans, and a heap of ``(expires_at_ms, key)`` finds the records whose deadline passed
(expired values and purgeable tombstones). Per partition there is also a replication log
(``PartitionLogState``: entries, snapshot point, hard state, applied index).

Used alone it is the ``memory`` engine (nothing is durable: written == synced). The durable engines are
the same object given a ``Journal``: every change is then also recorded as an ``Event`` (base.py), and
``prepare_sync`` hands the recorded events to the journal as a ``SyncJob``. On restart they rebuild the
state with ``restore`` (one recovered event, which is neither recorded again nor given an LSN).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Sequence
from heapq import heapify, heappop, heappush
from itertools import islice
from typing import Protocol

from sortedcontainers import SortedList

from kvstore.storage.base import (
    AppliedIndexWritten,
    Event,
    HardStateWritten,
    LogAppended,
    LogCompacted,
    LogTruncated,
    MetaWritten,
    Record,
    RecordRemoved,
    RecordWritten,
    Sibling,
    SyncJob,
    record_size,
)
from replication.replica import LogBounds, LogEntry

# Stale heap entries (keys rewritten or removed since) may pile up; past this slack over the number of
# records with a deadline, the partition's heap is rebuilt from its records, so its size stays O(those records).
_HEAP_SLACK_ENTRIES = 1024
_CHANGE_SLACK_ENTRIES = 1024


class Journal(Protocol):
    """Where a durable engine's events go: it turns a batch of them into a job that makes them durable."""

    def job(self, events: list[Event], up_to_lsn: int) -> SyncJob: ...

    def close(self) -> None: ...


class _Records:
    """One partition's records, their sorted keys, their deadline heap and their change index."""

    __slots__ = ("bytes", "change_keys", "change_versions", "changes_sorted", "deadlines", "heap", "keys", "records")

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}
        # Keys and values held, in characters and bytes (``record_size``): what /cluster and the metrics show.
        self.bytes = 0
        self.keys = SortedList()
        # (expires_at_ms, key); an entry whose key now holds another deadline (or nothing) is stale.
        self.heap: list[tuple[int, str]] = []
        # Records with a deadline: what the heap would hold without stale entries.
        self.deadlines = 0
        # The change index (``changes_after``): (version, key) of every store, in store order. Versions grow as a
        # protocol applies writes, so appending keeps it sorted and costs O(1); an entry whose key now holds
        # another version (or nothing) is stale and skipped. A store of an older version (a recovery, a move, a
        # snapshot install) leaves it unsorted until the next read sorts it.
        self.change_versions: list[int] = []
        self.change_keys: list[str] = []
        self.changes_sorted = True

    def copy(self) -> _Records:
        other = _Records()
        other.records = dict(self.records)
        other.keys = self.keys.copy()
        other.heap = list(self.heap)
        other.deadlines = self.deadlines
        other.bytes = self.bytes
        other.change_versions = list(self.change_versions)
        other.change_keys = list(self.change_keys)
        other.changes_sorted = self.changes_sorted
        return other

    def note_change(self, version: int, key: str) -> None:
        versions = self.change_versions
        if versions and version < versions[-1]:
            self.changes_sorted = False
        versions.append(version)
        self.change_keys.append(key)
        if len(versions) > 2 * len(self.records) + _CHANGE_SLACK_ENTRIES:
            self.rebuild_changes()

    def rebuild_changes(self) -> None:
        """The index of the current records only, by version (then key, so ties come out in one order)."""
        entries = sorted((r.version, key) for key, r in self.records.items())
        self.change_versions = [version for version, _ in entries]
        self.change_keys = [key for _, key in entries]
        self.changes_sorted = True

    def changes_after(
        self, after: int, limit: int, prefix: str, max_examined: int
    ) -> tuple[list[tuple[str, Record]], int, bool]:
        if not self.changes_sorted:
            self.rebuild_changes()
        versions, keys, records = self.change_versions, self.change_keys, self.records
        i = bisect_right(versions, after)
        end = len(versions)
        out: list[tuple[str, Record]] = []
        position = after
        examined = 0
        while i < end:
            version = versions[i]
            # A page ends between two versions only, so the next one (after = position) misses no tie.
            if (len(out) >= limit or examined >= max_examined) and version != position:
                break
            key = keys[i]
            record = records.get(key)
            if record is not None and record.version == version and key.startswith(prefix):
                out.append((key, record))
            position = version
            examined += 1
            i += 1
        return out, position, i < end

    def rebuild_heap(self) -> None:
        self.heap = [(r.expires_at_ms, key) for key, r in self.records.items() if r.expires_at_ms is not None]
        heapify(self.heap)


def _check_record(record: Record) -> None:
    """Refuse a record no engine could store, before anything changes (a wrong type would otherwise fail
    half-way, or later in a sync job on another thread). ``write`` calls it for records off its fast path:
    tombstones, records with siblings, and wrong ones."""
    value, expires_at_ms = record.value, record.expires_at_ms
    if (
        (value is not None and type(value) is not bytes)
        or type(record.version) is not int
        or (expires_at_ms is not None and type(expires_at_ms) is not int)
        or type(record.context) is not bytes
        or type(record.siblings) is not tuple
    ):
        raise TypeError(f"record fields have wrong types: {record!r}")
    for sibling in record.siblings:
        if (
            type(sibling) is not Sibling
            or (sibling.value is not None and type(sibling.value) is not bytes)
            or type(sibling.version) is not int
            or type(sibling.context) is not bytes
        ):
            raise TypeError(f"record siblings must be Sibling(bytes | None, int, bytes), got {sibling!r}")


def _check_index(name: str, index: object) -> None:
    if type(index) is not int:
        raise TypeError(f"{name} must be an int, got {index!r}")


class PartitionLogState:
    """One partition's replication log, hard state and applied index: the ``PartitionLog`` view that
    ``MemoryStorage.log(partition)`` hands out (one per partition). Every change goes through the storage,
    which gives it an LSN and records its event."""

    __slots__ = (
        "_applied_index",
        "_entries",
        "_hard_state",
        "_partition",
        "_snapshot_index",
        "_snapshot_term",
        "_storage",
        "_unsynced_from",
    )

    def __init__(self, storage: MemoryStorage, partition: int) -> None:
        self._storage = storage
        self._partition = partition
        # Entry of index i is _entries[i - snapshot_index - 1].
        self._entries: list[LogEntry] = []
        self._snapshot_index = 0
        self._snapshot_term = 0
        self._hard_state: bytes | None = None
        self._applied_index = 0
        # (lsn, first index) of unsynced appends: until synced_lsn reaches lsn, the durable log may differ
        # from this one from that index on. Kept increasing in both (see _mark_unsynced). A truncation needs
        # no mark: it lowers last_index itself, and whatever is appended after it gets its own mark.
        self._unsynced_from: deque[tuple[int, int]] = deque()

    # ------------------------------------------------------------ reads

    @property
    def _last_index(self) -> int:
        return self._snapshot_index + len(self._entries)

    def bounds(self) -> LogBounds:
        return LogBounds(self._snapshot_index, self._snapshot_term, self._last_index)

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[LogEntry]:
        _check_index("lo", lo)
        _check_index("hi", hi)
        _check_index("max_bytes", max_bytes)
        if max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative, got {max_bytes}")
        if lo <= self._snapshot_index:
            raise ValueError(
                f"partition {self._partition}: entry {lo} is not in the log, which starts at "
                f"{self._snapshot_index + 1} (compacted through {self._snapshot_index})"
            )
        first = self._snapshot_index + 1
        stop = min(hi, self._last_index + 1) - first
        out: list[LogEntry] = []
        total_bytes = 0
        for position in range(lo - first, stop):
            entry = self._entries[position]
            total_bytes += len(entry.data)
            if total_bytes > max_bytes and out:
                break
            out.append(entry)
        return out

    def term_at(self, index: int) -> int | None:
        _check_index("index", index)
        if index == self._snapshot_index:
            return self._snapshot_term
        if index < self._snapshot_index or index > self._last_index:
            return None
        return self._entries[index - self._snapshot_index - 1].term

    def synced_through(self) -> int:
        unsynced_from = self._unsynced_from
        synced_lsn = self._storage.synced_lsn
        while unsynced_from and unsynced_from[0][0] <= synced_lsn:
            unsynced_from.popleft()
        last_index = self._last_index
        return min(last_index, unsynced_from[0][1] - 1) if unsynced_from else last_index

    def hard_state(self) -> bytes | None:
        return self._hard_state

    def applied_index(self) -> int:
        return self._applied_index

    # ------------------------------------------------------------ changes

    def append(self, entries: Sequence[LogEntry]) -> None:
        if not entries:
            return
        expected = self._last_index + 1
        for offset, entry in enumerate(entries):
            if type(entry) is not LogEntry:
                raise TypeError(f"log entries must be LogEntry, got {entry!r}")
            if type(entry.index) is not int or type(entry.term) is not int or type(entry.data) is not bytes:
                raise TypeError(f"log entry fields must be (int, int, bytes), got {entry!r}")
            if entry.index != expected + offset:
                raise ValueError(
                    f"partition {self._partition}: append must continue the log at index {expected + offset}, "
                    f"got entry {entry.index} (log holds {self._snapshot_index + 1}..{self._last_index})"
                )
            if entry.term < 0:
                raise ValueError(f"log entry term must not be negative, got {entry.term}")
        added = tuple(entries)
        self._entries.extend(added)
        storage = self._storage
        lsn = storage._next_lsn()
        if storage._unsynced is not None:
            storage._unsynced.append(LogAppended(lsn, self._partition, added))
            self._mark_unsynced(lsn, expected)

    def truncate_suffix(self, from_index: int) -> None:
        _check_index("from_index", from_index)
        if from_index <= self._snapshot_index:
            raise ValueError(
                f"partition {self._partition}: cannot truncate from {from_index}, at or below the snapshot "
                f"index {self._snapshot_index}"
            )
        if from_index > self._last_index:
            return  # nothing to drop: nothing changes
        del self._entries[from_index - self._snapshot_index - 1 :]
        storage = self._storage
        lsn = storage._next_lsn()
        if storage._unsynced is not None:
            storage._unsynced.append(LogTruncated(lsn, self._partition, from_index))

    def compact_prefix(self, through_index: int) -> None:
        _check_index("through_index", through_index)
        if through_index < self._snapshot_index or through_index > self._last_index:
            raise ValueError(
                f"partition {self._partition}: cannot compact through {through_index}, not in the log "
                f"(snapshot {self._snapshot_index}, last {self._last_index})"
            )
        if through_index > self._applied_index:
            raise ValueError(
                f"partition {self._partition}: cannot compact through {through_index}, past the applied "
                f"index {self._applied_index}"
            )
        if through_index == self._snapshot_index:
            return  # already the snapshot point: nothing changes
        term = self._entries[through_index - self._snapshot_index - 1].term
        self._compact(through_index, term)
        storage = self._storage
        lsn = storage._next_lsn()
        if storage._unsynced is not None:
            # No unsynced mark: compaction drops nothing above the snapshot point, where the logs are compared.
            storage._unsynced.append(LogCompacted(lsn, self._partition, through_index, term))

    def install_snapshot(self, index: int, term: int) -> None:
        _check_index("index", index)
        _check_index("term", term)
        if term < 0 or index < max(self._snapshot_index, self._applied_index):
            raise ValueError(
                f"partition {self._partition}: cannot install snapshot ({index}, term {term}) below the snapshot "
                f"point {self._snapshot_index} or the applied index {self._applied_index}, or of a negative term"
            )
        # Recorded as the events a sync already knows, in one step: drop every entry, move the snapshot point
        # (past the end of the log), move the applied index. One job carries them all, in one transaction.
        storage = self._storage
        if self._entries:
            first = self._snapshot_index + 1
            self._entries.clear()
            lsn = storage._next_lsn()
            if storage._unsynced is not None:
                storage._unsynced.append(LogTruncated(lsn, self._partition, first))
        if (index, term) != (self._snapshot_index, self._snapshot_term):
            self._compact(index, term)
            lsn = storage._next_lsn()
            if storage._unsynced is not None:
                storage._unsynced.append(LogCompacted(lsn, self._partition, index, term))
        self._set_applied_index(index)

    def set_hard_state(self, value: bytes) -> None:
        if type(value) is not bytes:
            raise TypeError(f"hard state must be bytes, got {type(value).__name__}")
        self._hard_state = value
        storage = self._storage
        lsn = storage._next_lsn()
        if storage._unsynced is not None:
            storage._unsynced.append(HardStateWritten(lsn, self._partition, value))

    def _set_applied_index(self, index: int) -> None:
        if type(index) is not int:  # _check_index inlined: every write comes here
            _check_index("applied index", index)
        applied = self._applied_index
        if index <= applied:
            if index < applied:
                raise ValueError(f"partition {self._partition}: applied index cannot go back from {applied} to {index}")
            return
        self._applied_index = index
        storage = self._storage
        storage._lsn += 1
        if storage._unsynced is not None:
            storage._unsynced.append(AppliedIndexWritten(storage._lsn, self._partition, index))

    # ------------------------------------------------------------ internals

    def _mark_unsynced(self, lsn: int, index: int) -> None:
        # An earlier mark at an index >= this one can never be the minimum again: it is synced no later
        # than this one (LSNs are synced in order), and this one bounds synced_through lower until then.
        unsynced_from = self._unsynced_from
        while unsynced_from and unsynced_from[-1][1] >= index:
            unsynced_from.pop()
        unsynced_from.append((lsn, index))

    def _compact(self, through_index: int, term: int) -> None:
        del self._entries[: max(0, through_index - self._snapshot_index)]
        self._snapshot_index, self._snapshot_term = through_index, term

    def _restore(self, event: Event) -> None:
        """Apply a recovered log event as it was recorded (already validated when it was made)."""
        if isinstance(event, LogAppended):
            if event.entries and event.entries[0].index != self._last_index + 1:
                raise ValueError(
                    f"partition {self._partition}: recovered entries start at {event.entries[0].index}, "
                    f"the log ends at {self._last_index}"
                )
            self._entries.extend(event.entries)
        elif isinstance(event, LogTruncated):
            del self._entries[max(0, event.from_index - self._snapshot_index - 1) :]
        elif isinstance(event, LogCompacted):
            # Recovery may name a snapshot point past the entries it restored (they were compacted away).
            self._compact(event.through_index, event.term)
        elif isinstance(event, HardStateWritten):
            self._hard_state = event.value
        elif isinstance(event, AppliedIndexWritten):
            self._applied_index = event.index

    def _copy_into(self, storage: MemoryStorage) -> PartitionLogState:
        other = PartitionLogState(storage, self._partition)
        other._entries = list(self._entries)
        other._snapshot_index, other._snapshot_term = self._snapshot_index, self._snapshot_term
        other._hard_state, other._applied_index = self._hard_state, self._applied_index
        return other


class MemoryStorage:
    def __init__(self, journal: Journal | None = None) -> None:
        self._parts: dict[int, _Records] = {}
        self._logs: dict[int, PartitionLogState] = {}
        self._meta: dict[str, bytes] = {}
        self._lsn = 0
        self._log_lsn = 0
        self._synced_lsn = 0
        self._journal = journal
        # Written but not yet handed to a sync job; only kept when there is a journal to hand them to.
        self._unsynced: list[Event] | None = None if journal is None else []

    # ------------------------------------------------------------ record reads

    def get(self, partition: int, key: str, now_ms: int) -> Record | None:
        part = self._parts.get(partition)
        if part is None:
            return None
        record = part.records.get(key)
        if (
            record is None
            or record.value is None
            or (record.expires_at_ms is not None and record.expires_at_ms <= now_ms)
        ):
            return None
        return record

    def get_stored(self, partition: int, key: str) -> Record | None:
        part = self._parts.get(partition)
        return None if part is None else part.records.get(key)

    def scan(self, partition: int, start: str, end: str | None, limit: int, now_ms: int) -> list[tuple[str, Record]]:
        if limit < 0:
            raise ValueError(f"scan limit must not be negative, got {limit}")
        part = self._parts.get(partition)
        if part is None or limit == 0:
            return []
        records = part.records
        out: list[tuple[str, Record]] = []
        for key in part.keys.irange(start, end, inclusive=(True, False)):
            record = records[key]
            if record.value is not None and (record.expires_at_ms is None or record.expires_at_ms > now_ms):
                out.append((key, record))
                if len(out) == limit:
                    break
        return out

    def expired_keys(self, partition: int, now_ms: int, max_keys: int) -> list[str]:
        if max_keys < 0:
            raise ValueError(f"max_keys must not be negative, got {max_keys}")
        part = self._parts.get(partition)
        if part is None:
            return []
        heap, records = part.heap, part.records
        found: list[tuple[int, str]] = []
        seen: set[str] = set()
        # Pop in deadline order; stale entries (and duplicates of a key) are dropped on the way, the
        # current ones are pushed back: nothing is removed, the protocol purges.
        while heap and len(found) < max_keys and heap[0][0] <= now_ms:
            entry = heappop(heap)
            record = records.get(entry[1])
            if record is not None and record.expires_at_ms == entry[0] and entry[1] not in seen:
                seen.add(entry[1])
                found.append(entry)
        for entry in found:
            heappush(heap, entry)
        return [key for _, key in found]

    def copy_of(self, partition: int) -> list[tuple[str, Record]]:
        part = self._parts.get(partition)
        if part is None:
            return []
        records = part.records
        return [(key, records[key]) for key in part.keys]

    def records_after(self, partition: int, after: str | None, limit: int) -> list[tuple[str, Record]]:
        part = self._parts.get(partition)
        if part is None or limit < 1:
            return []
        keys = part.keys if after is None else part.keys.irange(minimum=after, inclusive=(False, True))
        records = part.records
        return [(key, records[key]) for key in islice(keys, limit)]

    def changes_after(
        self, partition: int, after: int, limit: int, prefix: str = "", max_examined: int = 100_000
    ) -> tuple[list[tuple[str, Record]], int, bool]:
        part = self._parts.get(partition)
        if part is None or limit < 1:
            return [], after, False
        return part.changes_after(after, limit, prefix, max_examined)

    def partition_stats(self) -> dict[int, tuple[int, int]]:
        return {p: (len(part.records), part.bytes) for p, part in sorted(self._parts.items())}

    def partitions(self) -> list[int]:
        return sorted(self._parts)

    def key_count(self) -> int:
        return sum(len(part.records) for part in self._parts.values())

    def items(self) -> list[tuple[int, str, Record]]:
        """Every stored record as ``(partition, key, record)``, in partition then key order (tests compare
        whole engines with it)."""
        return [(p, key, record) for p in sorted(self._parts) for key, record in self.copy_of(p)]

    # ------------------------------------------------------------ record writes

    def write(self, partition: int, key: str, record: Record) -> None:
        # Checked before anything changes: a wrong type would otherwise fail half-way (inside the index).
        if type(partition) is not int or type(key) is not str or type(record) is not Record:
            raise TypeError(f"write expects (int, str, Record), got ({partition!r}, {key!r}, {type(record).__name__})")
        # The common record (bytes value, int version, no siblings) is checked inline: a call costs ~10%.
        # One unpack reads the five fields faster than five attribute lookups.
        value, version, expires_at_ms, context, siblings = record
        if (
            type(value) is not bytes
            or type(version) is not int
            or (expires_at_ms is not None and type(expires_at_ms) is not int)
            or type(context) is not bytes
            or siblings
        ):
            _check_record(record)
        self._lsn += 1
        self._store(partition, key, record)
        if self._unsynced is not None:
            self._unsynced.append(RecordWritten(self._lsn, partition, key, record))

    def remove(self, partition: int, key: str) -> bool:
        if not self._remove(partition, key):
            return False
        self._lsn += 1
        if self._unsynced is not None:
            self._unsynced.append(RecordRemoved(self._lsn, partition, key))
        return True

    # ------------------------------------------------------------ per-partition protocol state

    def log(self, partition: int) -> PartitionLogState:
        # Checked on every call: a bool would otherwise find partition 0's or 1's log (True == 1).
        if type(partition) is not int:
            raise TypeError(f"partition must be an int, got {partition!r}")
        log = self._logs.get(partition)
        if log is None:
            log = self._logs[partition] = PartitionLogState(self, partition)
        return log

    def set_applied_index(self, partition: int, index: int) -> None:
        # Every write calls this, so the common case (an int moving an existing log's index forward) is
        # done here; everything else goes through log() and _set_applied_index, which check and refuse.
        log = self._logs.get(partition) if type(partition) is int else None
        if log is None or type(index) is not int or index <= log._applied_index:
            (self.log(partition) if log is None else log)._set_applied_index(index)
            return
        log._applied_index = index
        self._lsn += 1
        if self._unsynced is not None:
            self._unsynced.append(AppliedIndexWritten(self._lsn, partition, index))

    # ------------------------------------------------------------ node-level metadata

    def get_meta(self, name: str) -> bytes | None:
        return self._meta.get(name)

    def put_meta(self, name: str, value: bytes) -> None:
        if type(name) is not str or type(value) is not bytes:
            raise TypeError(f"put_meta expects (str, bytes), got ({name!r}, {type(value).__name__})")
        self._lsn += 1
        self._log_lsn = self._lsn
        self._meta[name] = value
        if self._unsynced is not None:
            self._unsynced.append(MetaWritten(self._lsn, name, value))

    def remove_meta(self, name: str) -> None:
        if self._meta.pop(name, None) is None:
            return
        self._lsn += 1
        self._log_lsn = self._lsn
        if self._unsynced is not None:
            self._unsynced.append(MetaWritten(self._lsn, name, None))

    def meta_names(self, prefix: str) -> list[str]:
        return sorted(name for name in self._meta if name.startswith(prefix))

    def meta_items(self) -> list[tuple[str, bytes]]:
        return sorted(self._meta.items())

    # ------------------------------------------------------------ durability

    @property
    def written_lsn(self) -> int:
        return self._lsn

    @property
    def written_log_lsn(self) -> int:
        """The LSN of the last change that is not a record or an applied index: a log entry, a truncation, a
        compaction, a snapshot point, hard state or metadata (what a replicated protocol cannot rebuild)."""
        return self._log_lsn

    @property
    def synced_lsn(self) -> int:
        return self._lsn if self._journal is None else self._synced_lsn

    def prepare_sync(self) -> SyncJob | None:
        if self._journal is None or not self._unsynced:
            return None
        events, self._unsynced = self._unsynced, []
        return self._journal.job(events, self._lsn)

    def complete_sync(self, job: SyncJob) -> None:
        self._synced_lsn = max(self._synced_lsn, job.up_to_lsn)

    def sync(self) -> None:
        job = self.prepare_sync()
        if job is not None:
            job.run()
            self.complete_sync(job)

    def close(self) -> None:
        if self._journal is not None:
            self.sync()
            self._journal.close()

    # ------------------------------------------------------------ recovery

    def restore(self, event: Event) -> None:
        """Apply one recovered event to memory: it is not recorded again and moves no LSN (they count from 0
        at every open). Events must come in the order they were made."""
        if isinstance(event, RecordWritten):
            self._store(event.partition, event.key, event.record)
        elif isinstance(event, RecordRemoved):
            self._remove(event.partition, event.key)
        elif isinstance(event, MetaWritten):
            if event.value is None:
                self._meta.pop(event.name, None)
            else:
                self._meta[event.name] = event.value
        else:
            self.log(event.partition)._restore(event)

    def load_copy(self, image: MemoryStorage) -> None:
        """Make this (new) storage a copy of ``image``'s state, all of it synced. Records and log entries
        are shared: they are immutable."""
        if self._lsn or self._parts or self._logs or self._meta:
            raise ValueError("load_copy needs a new, empty storage")
        self._parts = {p: part.copy() for p, part in image._parts.items()}
        self._logs = {p: log._copy_into(self) for p, log in image._logs.items()}
        self._meta = dict(image._meta)

    # ------------------------------------------------------------ internals

    def _next_lsn(self) -> int:
        # Every log, hard-state and snapshot change takes its LSN here: see ``written_log_lsn``.
        self._lsn += 1
        self._log_lsn = self._lsn
        return self._lsn

    def _store(self, partition: int, key: str, record: Record) -> None:
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = _Records()
        records = part.records
        old = records.get(key)
        records[key] = record
        if old is None or old.version != record.version:
            # The same version again (a restarted move's copy) is the index entry already there.
            part.note_change(record.version, key)
        old_deadline = None
        part.bytes += record_size(key, record) - (0 if old is None else record_size(key, old))
        if old is None:
            part.keys.add(key)
        elif old.expires_at_ms is not None:
            old_deadline = old.expires_at_ms
            part.deadlines -= 1
        deadline = record.expires_at_ms
        if deadline is not None:
            part.deadlines += 1
            # The old record's entry stays current when the deadline did not move: no second entry.
            if deadline != old_deadline:
                heappush(part.heap, (deadline, key))
                if len(part.heap) > 2 * part.deadlines + _HEAP_SLACK_ENTRIES:
                    part.rebuild_heap()

    def _remove(self, partition: int, key: str) -> bool:
        part = self._parts.get(partition)
        if part is None:
            return False
        old = part.records.pop(key, None)
        if old is None:
            return False
        part.bytes -= record_size(key, old)
        if old.expires_at_ms is not None:
            part.deadlines -= 1
        if part.records:
            part.keys.remove(key)
        else:
            del self._parts[partition]
        return True
