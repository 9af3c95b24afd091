"""When a driver syncs storage: one schedule, followed by the server and the simulator alike.

A driver starts a sync (``prepare_sync`` / ``SyncJob.run`` / ``complete_sync``) when any of these holds
and none is running; writes made while one runs wait for the next (group commit):

- a durable ``Send`` or ``Reply`` waits for the writes of its step (every policy, see ``kvstore.effects``);
- under ``always``, as soon as anything is written; in leader mode (``records_from_log``), as soon as a log
  entry, hard state or node metadata is written: the records and applied index an apply writes can be
  rebuilt from the log (a crash re-applies it), so they ride along with the next sync instead of costing one
  of their own (an apply per write would double the fsyncs a write waits behind);
- under ``batch`` every ``batch_interval_ms``, under ``never`` every ``NEVER_FLUSH_INTERVAL_MS``;
- under ``batch`` and ``never``, early, once ``EARLY_FLUSH_EVENTS`` writes are pending, so what a node
  holds unsynced stays bounded.

Under ``never`` a sync is a write-out without fsync: it survives a process crash (the OS keeps the pages)
but not a power loss. The kernel writes dirty pages out on its own every ``DISK_WRITEBACK_INTERVAL_MS``;
the simulator plays that part for its disks.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvstore.config import FsyncPolicy

# Under "never" storage is written out (without fsync) this often, to bound what a process crash loses.
NEVER_FLUSH_INTERVAL_MS = 1000
# Under "batch" and "never", flush before the interval is up once this many writes are pending.
EARLY_FLUSH_EVENTS = 10_000
# Linux's default dirty_expire_centisecs: how old written-but-not-durable pages get before the kernel
# writes them to the device whatever the fsync policy.
DISK_WRITEBACK_INTERVAL_MS = 30_000


@dataclass(frozen=True)
class FlushSchedule:
    # Time between periodic syncs; None: no periodic sync, every write is synced at once ("always").
    interval_ms: int | None
    # Whether a sync makes its writes durable on the device (fsync) or only writes them out to the OS.
    fsync: bool
    # Leader mode: records are rebuilt from the log, so under "always" only log writes call for a sync at once.
    records_from_log: bool = False

    @classmethod
    def of(cls, policy: FsyncPolicy, batch_interval_ms: int, records_from_log: bool = False) -> FlushSchedule:
        if policy == "always":
            return cls(None, fsync=True, records_from_log=records_from_log)
        if policy == "batch":
            return cls(batch_interval_ms, fsync=True, records_from_log=records_from_log)
        return cls(NEVER_FLUSH_INTERVAL_MS, fsync=False, records_from_log=records_from_log)

    def sync_now(self, pending_writes: int, durable_waiting: bool, log_pending: bool = True) -> bool:
        """Whether to start a sync at once (rather than at the next interval), given what is pending:
        ``log_pending`` says whether a log entry, hard state or metadata is among the pending writes."""
        if pending_writes <= 0:
            return False
        if durable_waiting or pending_writes >= EARLY_FLUSH_EVENTS:
            return True
        return self.interval_ms is None and (log_pending or not self.records_from_log)
