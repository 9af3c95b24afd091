"""MemoryStorage: the in-memory state every engine serves from, and the events that change it.

Per partition a dict ``key -> Record`` answers point reads and a ``SortedList`` of the same key strings
answers range scans; a heap of ``(expires_at_ms, partition, key)`` finds expired keys to purge.

Used alone it is the ``memory`` engine (nothing is durable: written == synced). The durable engines are
the same object given a ``Journal``: every write is then also recorded as an ``Event``, and
``prepare_sync`` hands the recorded events to the journal as a ``SyncJob``. On restart they rebuild the
state with ``apply`` (one logged event, with its own LSN) and ``mark_recovered``.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush
from typing import NamedTuple, Protocol

from sortedcontainers import SortedList

from kvstore.storage.base import Record, SyncJob

# Stale heap entries (keys rewritten or deleted since) may pile up; past this slack over the number of live
# records with a TTL, the heap is rebuilt from the records, so its size stays O(live TTL records).
_HEAP_SLACK_ENTRIES = 1024


class PutEvent(NamedTuple):
    lsn: int
    partition: int
    key: str
    value: bytes
    expires_at_ms: int | None


class DeleteEvent(NamedTuple):
    lsn: int
    partition: int
    key: str


class MetaEvent(NamedTuple):
    lsn: int
    name: str
    value: bytes


Event = PutEvent | DeleteEvent | MetaEvent


class Journal(Protocol):
    """Where a durable engine's events go: it turns a batch of them into a job that makes them durable."""

    def job(self, events: list[Event], up_to_lsn: int) -> SyncJob: ...

    def close(self) -> None: ...


class MemoryStorage:
    def __init__(self, journal: Journal | None = None) -> None:
        self._records: dict[int, dict[str, Record]] = {}
        self._indexes: dict[int, SortedList] = {}
        self._meta: dict[str, bytes] = {}
        self._expiry_heap: list[tuple[int, int, str]] = []
        self._ttl_records = 0
        self._lsn = 0
        self._synced_lsn = 0
        self._journal = journal
        # Written but not yet handed to a sync job; only kept when there is a journal to hand them to.
        self._unsynced: list[Event] | None = None if journal is None else []

    # ------------------------------------------------------------ reads

    def get(self, partition: int, key: str, now_ms: int) -> Record | None:
        records = self._records.get(partition)
        if records is None:
            return None
        record = records.get(key)
        if record is None or (record.expires_at_ms is not None and record.expires_at_ms <= now_ms):
            return None
        return record

    def scan(self, partition: int, start: str, end: str | None, limit: int, now_ms: int) -> list[tuple[str, Record]]:
        if limit < 0:
            raise ValueError(f"scan limit must not be negative, got {limit}")
        index = self._indexes.get(partition)
        if index is None or limit == 0:
            return []
        records = self._records[partition]
        out: list[tuple[str, Record]] = []
        for key in index.irange(start, end, inclusive=(True, False)):
            record = records[key]
            if record.expires_at_ms is None or record.expires_at_ms > now_ms:
                out.append((key, record))
                if len(out) == limit:
                    break
        return out

    def partitions(self) -> list[int]:
        return sorted(self._records)

    def key_count(self) -> int:
        """Stored records, including expired ones not purged yet."""
        return sum(len(records) for records in self._records.values())

    def get_meta(self, name: str) -> bytes | None:
        return self._meta.get(name)

    def items(self) -> list[tuple[int, str, Record]]:
        """Every stored record as ``(partition, key, record)``, in partition then key order (for tests, export)."""
        return [(p, key, self._records[p][key]) for p in sorted(self._indexes) for key in self._indexes[p]]

    def meta_items(self) -> list[tuple[str, bytes]]:
        return sorted(self._meta.items())

    # ------------------------------------------------------------ writes

    def put(self, partition: int, key: str, value: bytes, expires_at_ms: int | None = None) -> Record:
        # Checked before anything changes: a wrong type would otherwise fail half-way (inside the index).
        if type(key) is not str or type(value) is not bytes or type(partition) is not int:
            raise TypeError(f"put expects (int, str, bytes), got ({partition!r}, {key!r}, {type(value).__name__})")
        if expires_at_ms is not None and type(expires_at_ms) is not int:
            raise TypeError(f"expires_at_ms must be an int or None, got {expires_at_ms!r}")
        self._lsn += 1
        record = Record(value, self._lsn, expires_at_ms)
        self._store(partition, key, record)
        if self._unsynced is not None:
            self._unsynced.append(PutEvent(self._lsn, partition, key, value, expires_at_ms))
        return record

    def delete(self, partition: int, key: str) -> bool:
        if self._remove(partition, key) is None:
            return False
        self._lsn += 1
        if self._unsynced is not None:
            self._unsynced.append(DeleteEvent(self._lsn, partition, key))
        return True

    def purge_expired(self, now_ms: int, max_keys: int) -> int:
        heap = self._expiry_heap
        purged = 0
        while heap and purged < max_keys and heap[0][0] <= now_ms:
            expires_at_ms, partition, key = heappop(heap)
            record = self._records.get(partition, {}).get(key)
            # An entry whose key was deleted or rewritten since is stale: the current record has its own entry.
            if record is not None and record.expires_at_ms == expires_at_ms:
                self.delete(partition, key)
                purged += 1
        return purged

    def put_meta(self, name: str, value: bytes) -> None:
        if type(name) is not str or type(value) is not bytes:
            raise TypeError(f"put_meta expects (str, bytes), got ({name!r}, {type(value).__name__})")
        # A meta write is a write: it takes an LSN, so a caller can wait for synced_lsn to pass it.
        self._lsn += 1
        self._meta[name] = value
        if self._unsynced is not None:
            self._unsynced.append(MetaEvent(self._lsn, name, value))

    # ------------------------------------------------------------ durability

    @property
    def written_lsn(self) -> int:
        return self._lsn

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

    def apply(self, event: Event) -> None:
        """Replay one logged event with its own LSN (recovery); it is not logged again."""
        if isinstance(event, PutEvent):
            self._store(event.partition, event.key, Record(event.value, event.lsn, event.expires_at_ms))
        elif isinstance(event, DeleteEvent):
            self._remove(event.partition, event.key)
        else:
            self._meta[event.name] = event.value
        self.mark_recovered(event.lsn)

    def mark_recovered(self, lsn: int) -> None:
        """Everything up to ``lsn`` is on disk already (a snapshot may end in deletes no record shows)."""
        self._lsn = max(self._lsn, lsn)
        self._synced_lsn = max(self._synced_lsn, lsn)

    def load_copy(self, image: MemoryStorage) -> None:
        """Make this (empty) storage a copy of ``image``'s state, all of it synced. Records are shared: immutable."""
        if self._lsn:
            raise ValueError("load_copy needs an empty storage")
        self._records = {p: dict(records) for p, records in image._records.items()}
        self._indexes = {p: index.copy() for p, index in image._indexes.items()}
        self._meta = dict(image._meta)
        self._expiry_heap = list(image._expiry_heap)
        self._ttl_records = image._ttl_records
        self.mark_recovered(image._lsn)

    # ------------------------------------------------------------ internals

    def _store(self, partition: int, key: str, record: Record) -> None:
        records = self._records.get(partition)
        if records is None:
            records = self._records[partition] = {}
            self._indexes[partition] = SortedList()
        old = records.get(key)
        records[key] = record
        if old is None:
            self._indexes[partition].add(key)
        elif old.expires_at_ms is not None:
            self._ttl_records -= 1
        if record.expires_at_ms is not None:
            self._ttl_records += 1
            heappush(self._expiry_heap, (record.expires_at_ms, partition, key))
            if len(self._expiry_heap) > 2 * self._ttl_records + _HEAP_SLACK_ENTRIES:
                self._rebuild_expiry_heap()

    def _remove(self, partition: int, key: str) -> Record | None:
        records = self._records.get(partition)
        if records is None:
            return None
        old = records.pop(key, None)
        if old is None:
            return None
        if old.expires_at_ms is not None:
            self._ttl_records -= 1
        if records:
            self._indexes[partition].remove(key)
        else:
            del self._records[partition], self._indexes[partition]
        return old

    def _rebuild_expiry_heap(self) -> None:
        self._expiry_heap = [
            (record.expires_at_ms, p, key)
            for p, records in self._records.items()
            for key, record in records.items()
            if record.expires_at_ms is not None
        ]
        heapify(self._expiry_heap)
