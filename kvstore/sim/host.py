"""NodeHost: one node's slot in the simulated cluster, across its crashes and restarts.

The disk outlives every crash (what of it survives depends on the crash's kind). While the node is up,
the host also holds its ``Node``, its storage, its live timers and the durable ``Send`` and ``Reply``
effects waiting for a sync (the durability contract of kvstore/effects.py: a durable effect waits until
storage is synced up to the ``written_lsn`` the step that made it left behind).
"""

from __future__ import annotations

from collections import deque

from kvstore.effects import Reply, Send
from kvstore.node import Node
from kvstore.sim.events import SimulationError
from kvstore.storage.base import SyncJob
from kvstore.storage.simulated import CrashKind, SimDisk, SimStorage

Outbound = Send | Reply


class NodeHost:
    def __init__(self, node_id: str, max_held_effects: int) -> None:
        self.node_id = node_id
        self.disk = SimDisk()
        self.node: Node | None = None
        self.storage: SimStorage | None = None
        # Bumped at every crash: events scheduled in an earlier life (syncs, ticks, refusals) are then stale.
        self.life = 0
        # Timer key -> generation of its live entry on the event heap; a fired entry with another
        # generation was moved or cancelled, so heap entries never need to be removed.
        self.timers: dict[str, int] = {}
        self.sync_job: SyncJob | None = None
        # (written_lsn of the step, effect), in the order the steps produced them.
        self._held: deque[tuple[int, Outbound]] = deque()
        self._max_held_effects = max_held_effects

    @property
    def up(self) -> bool:
        return self.node is not None

    @property
    def held_count(self) -> int:
        return len(self._held)

    def boot(self, node: Node, storage: SimStorage) -> None:
        if self.up:
            raise SimulationError(f"{self.node_id} is already up")
        self.node, self.storage = node, storage

    def crash(self, kind: CrashKind) -> None:
        """Forget everything but the disk, which loses what a crash of ``kind`` loses; a sync in flight
        never completes (its life is over)."""
        if not self.up:
            raise SimulationError(f"{self.node_id} is already down")
        self.life += 1
        self.node = self.storage = None
        self.timers.clear()
        self.sync_job = None
        self._held.clear()
        self.disk.crash(kind)

    def pending_writes(self) -> int:
        """Writes not yet synced."""
        storage = self.live_storage()
        return storage.written_lsn - storage.synced_lsn

    def log_pending(self) -> bool:
        """Whether a log entry, hard state or metadata is among the writes not yet synced."""
        storage = self.live_storage()
        return storage.written_log_lsn > storage.synced_lsn

    def hold(self, written_lsn: int, effect: Outbound) -> None:
        """Keep ``effect`` until storage is synced up to ``written_lsn``."""
        if len(self._held) >= self._max_held_effects:
            raise SimulationError(f"{self.node_id} holds {len(self._held) + 1} effects waiting for a sync")
        self._held.append((written_lsn, effect))

    def releasable(self) -> list[Outbound]:
        """Held effects whose writes are now synced, in the order their steps produced them."""
        synced_lsn = self.live_storage().synced_lsn
        out: list[Outbound] = []
        while self._held and self._held[0][0] <= synced_lsn:
            out.append(self._held.popleft()[1])
        return out

    def live_node(self) -> Node:
        if self.node is None:
            raise SimulationError(f"{self.node_id} is down")
        return self.node

    def live_storage(self) -> SimStorage:
        if self.storage is None:
            raise SimulationError(f"{self.node_id} is down")
        return self.storage
