"""The simulator's storage: a disk with an OS page cache, which a crash may or may not keep.

``SimDisk`` models two images of the node's state. A sync job *writes* its events to the OS image (what
the kernel holds: it survives a process crash); a job run with ``fsync`` (policies ``always`` and
``batch``) also makes everything written so far *durable*, and so does ``writeback()``, the kernel's
periodic flush of dirty pages. ``crash("process")`` keeps the OS image; ``crash("power")`` leaves only
the durable one.

To stay cheap (every simulated message goes through a node's storage) the disk keeps one materialised
image, the durable one, plus the list of events written since the last flush; the OS image is built
from the two only when asked for (a restart, a checker). ``SimStorage(disk)`` is the node's storage:
its changes apply to its memory at once and reach the disk through its sync jobs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, cast

from kvstore.storage.base import Event
from kvstore.storage.memory import MemoryStorage

CrashKind = Literal["process", "power"]


class SimDisk:
    def __init__(self) -> None:
        self._durable = MemoryStorage()
        # Written to the OS image, not yet durable, in the order they were made.
        self._dirty: list[Event] = []
        # The OS image, built on demand from the durable one and the dirty events; None once stale.
        self._os_image: MemoryStorage | None = None
        self.syncs = 0

    @property
    def image(self) -> MemoryStorage:
        """The OS image: what a restart loads. Read-only for callers (tests, checkers)."""
        if not self._dirty:
            return self._durable
        if self._os_image is None:
            image = MemoryStorage()
            image.load_copy(self._durable)
            for event in self._dirty:
                image.restore(event)
            self._os_image = image
        return self._os_image

    @property
    def durable_image(self) -> MemoryStorage:
        """What survives a power loss. Read-only for callers (tests, checkers)."""
        return self._durable

    def write(self, events: list[Event], *, fsync: bool) -> None:
        """A sync job: write ``events`` to the OS image and, with ``fsync``, make everything written durable."""
        self.syncs += 1
        if fsync:
            self._flush()
            self._restore_durable(events)
        else:
            self._dirty.extend(events)
            self._os_image = None

    def writeback(self) -> None:
        """The kernel's periodic flush: everything written to the OS image becomes durable."""
        self._flush()

    def crash(self, kind: CrashKind) -> None:
        """The node's process died (the OS image is kept) or the machine lost power (only the durable
        image is kept)."""
        if kind == "power":
            self._dirty = []
            self._os_image = None
        elif kind != "process":
            raise ValueError(f"crash kind must be 'process' or 'power', got {kind!r}")

    def _flush(self) -> None:
        if self._dirty:
            self._restore_durable(self._dirty)
            self._dirty = []
            self._os_image = None

    def _restore_durable(self, events: list[Event]) -> None:
        restore = self._durable.restore
        for event in events:
            restore(event)


@dataclass(frozen=True, slots=True)
class SimSyncJob:
    disk: SimDisk
    events: list[Event]
    up_to_lsn: int
    fsync: bool = True

    def run(self) -> None:
        self.disk.write(self.events, fsync=self.fsync)


@dataclass(frozen=True, slots=True)
class _SimJournal:
    disk: SimDisk

    def job(self, events: list[Event], up_to_lsn: int) -> SimSyncJob:
        return SimSyncJob(self.disk, events, up_to_lsn)

    def close(self) -> None:
        """Nothing to release: the disk outlives every SimStorage built on it."""


class SimStorage(MemoryStorage):
    def __init__(self, disk: SimDisk) -> None:
        super().__init__(_SimJournal(disk))
        self.disk = disk
        self.load_copy(disk.image)

    def prepare_sync(self, *, fsync: bool = True) -> SimSyncJob | None:
        """The pending events as a job; ``fsync=False`` only writes them to the OS image (the periodic
        write-out under ``fsync = "never"``)."""
        job = cast(SimSyncJob | None, super().prepare_sync())
        return job if job is None or fsync else replace(job, fsync=False)
