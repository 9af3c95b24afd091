"""A leaderless replica's key states on the node's storage (``replication.replica.VersionStore``).

A key's whole state (``replication.dvv.Versions``: its siblings with their dots and timestamps, and its causal
context) is kept canonically encoded in the record's ``context``; the record's ``value`` is the first live
sibling (None once every sibling is a tombstone), so what storage reports of a partition (sizes, counts) stays
meaningful. Leaderless mode orders nothing across replicas (dots name the writes), so the version is this
replica's own change counter for the partition: every store takes the next (kept as the partition's applied index,
durable with the record), which makes it the key's position in this replica's change feed (``kvstore/changes.py``).
"""

from __future__ import annotations

from kvstore.storage.base import Record, Storage
from replication.dvv import Versions, decode, encode


class KvVersionStore:
    def __init__(self, storage: Storage, partition: int) -> None:
        self._storage = storage
        self._partition = partition

    def get(self, key: str) -> Versions | None:
        record = self._storage.get_stored(self._partition, key)
        if record is None:
            return None
        # Written by ``put`` alone and checksummed by the engine: a state that does not decode is a bug, and
        # failing loudly beats serving the key as absent (a write would then drop its siblings).
        return decode(record.context)

    def put(self, key: str, state: Versions) -> None:
        values = state.values
        storage, partition = self._storage, self._partition
        position = storage.log(partition).applied_index() + 1
        storage.write(partition, key, Record(values[0] if values else None, position, None, encode(state)))
        storage.set_applied_index(partition, position)

    def remove(self, key: str) -> None:
        self._storage.remove(self._partition, key)

    def keys_from(self, start: str, limit: int) -> list[str]:
        if limit <= 0:
            return []
        first = [start] if start and self._storage.get_stored(self._partition, start) is not None else []
        rows = self._storage.records_after(self._partition, start or None, limit - len(first))
        return first + [key for key, _ in rows]
