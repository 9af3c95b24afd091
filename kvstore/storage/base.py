"""The Storage protocol every engine implements, and the record it stores.

Storage is keyed by partition: every call names the partition, so a node can hold replicas of many
partitions and later protocols can move a partition as a unit.

Writes are applied to the in-memory state at once (the hot path serves reads from memory) and
appended to the engine's event log as *written*. They become *synced* (durable) only through a sync:

    job = storage.prepare_sync()      # on the driver's thread: takes the unsynced events
    job.run()                         # blocking IO; may run in a worker thread; touches no memory state
    storage.complete_sync(job)        # on the driver's thread: advances synced_lsn

``sync()`` does the three in a row. Every write gets a log sequence number (LSN) that increases by one
per write across the whole storage; a record's ``version`` is the LSN of the write that made it, so
versions only grow, even across a delete and re-create.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Record:
    value: bytes
    version: int
    expires_at_ms: int | None = None

    def expired(self, now_ms: int) -> bool:
        return self.expires_at_ms is not None and self.expires_at_ms <= now_ms


class SyncJob(Protocol):
    @property
    def up_to_lsn(self) -> int:
        """The highest LSN this job makes durable."""
        ...

    def run(self) -> None:
        """Write the job's events durably. Blocking; safe to call from a worker thread."""
        ...


class Storage(Protocol):
    def get(self, partition: int, key: str, now_ms: int) -> Record | None:
        """The live record, or None if absent or expired at ``now_ms``."""
        ...

    def put(self, partition: int, key: str, value: bytes, expires_at_ms: int | None = None) -> Record:
        """Write ``value``; returns the new record (its version is the write's LSN)."""
        ...

    def delete(self, partition: int, key: str) -> bool:
        """Remove ``key``; returns whether it was present. Deleting an absent key writes nothing."""
        ...

    def scan(self, partition: int, start: str, end: str | None, limit: int, now_ms: int) -> list[tuple[str, Record]]:
        """Up to ``limit`` live records with ``start <= key < end`` (``end=None``: unbounded), key order."""
        ...

    def purge_expired(self, now_ms: int, max_keys: int) -> int:
        """Delete up to ``max_keys`` records expired at ``now_ms`` (each a logged delete); returns how many."""
        ...

    def partitions(self) -> list[int]:
        """Partitions that hold at least one record, ascending."""
        ...

    def key_count(self) -> int:
        ...

    def get_meta(self, name: str) -> bytes | None:
        """Small named values for protocols (terms, votes, map epochs); durable with the next sync."""
        ...

    def put_meta(self, name: str, value: bytes) -> None:
        ...

    @property
    def written_lsn(self) -> int:
        ...

    @property
    def synced_lsn(self) -> int:
        ...

    def prepare_sync(self) -> SyncJob | None:
        """Take the events written since the last prepare; None when there are none."""
        ...

    def complete_sync(self, job: SyncJob) -> None:
        ...

    def sync(self) -> None:
        ...

    def close(self) -> None:
        ...
