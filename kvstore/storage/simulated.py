"""The simulator's storage: a disk that survives crashes and holds exactly what was synced.

``SimDisk`` keeps a synced image of the state (a ``MemoryStorage`` the sync jobs apply events to), so a
restart copies it instead of replaying a log. ``SimStorage(disk)`` is the node's storage: writes change
its memory state at once and wait in its unsynced list until a sync job applies them to the disk. A
crash is the simulator dropping the ``SimStorage``; ``SimStorage(disk)`` then starts from the disk alone,
so unsynced writes (and meta values) are gone, as on a real disk under that fsync policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvstore.storage.base import SyncJob
from kvstore.storage.memory import Event, MemoryStorage


class SimDisk:
    def __init__(self) -> None:
        self._image = MemoryStorage()
        self.syncs = 0

    @property
    def synced_lsn(self) -> int:
        return self._image.written_lsn

    @property
    def image(self) -> MemoryStorage:
        """The synced state; read-only for callers (tests, checkers)."""
        return self._image

    def write(self, events: list[Event]) -> None:
        for event in events:
            self._image.apply(event)
        self.syncs += 1


@dataclass(frozen=True)
class SimSyncJob:
    disk: SimDisk
    events: list[Event]
    up_to_lsn: int

    def run(self) -> None:
        self.disk.write(self.events)


@dataclass(frozen=True)
class _SimJournal:
    disk: SimDisk

    def job(self, events: list[Event], up_to_lsn: int) -> SyncJob:
        return SimSyncJob(self.disk, events, up_to_lsn)

    def close(self) -> None:
        """Nothing to release: the disk outlives every SimStorage built on it."""


class SimStorage(MemoryStorage):
    def __init__(self, disk: SimDisk) -> None:
        super().__init__(_SimJournal(disk))
        self.disk = disk
        self.load_copy(disk.image)
