"""SingleCopy: the only copy of a partition (``single`` mode), ordering and applying every write itself.

There is nobody to agree with, so a write is ordered the moment it arrives: its command is the one at
``applied_index + 1`` of the partition's log (the storage's applied index, persisted atomically with the
records, so the numbering goes on across restarts), applied at once and answered in the same step. That
index is the version of what the command writes. A command that writes nothing leaves the applied index
where it was, and the next write takes the same index. Reads are answered from the records.

Expired records are purged through the same path: a sweep timer makes a purge command and applies it
as the next index. A single copy sends no messages, so peer input and ``Synced`` mean nothing to it.
"""

from __future__ import annotations

from replication.replica import (
    Answer,
    ClientCall,
    PartitionLog,
    ReplicaEffect,
    ReplicaInput,
    ReplicaStarted,
    StartTimer,
    StateMachine,
    TimerFired,
)

SWEEP_TIMER = "ttl-sweep"


class SingleCopy:
    def __init__(
        self,
        partition: int,
        machine: StateMachine,
        log: PartitionLog,
        *,
        sweep_interval_ms: int,
        sweep_max_keys: int,
    ) -> None:
        self.partition = partition
        self._machine = machine
        self._log = log
        self._sweep_interval_ms = sweep_interval_ms
        self._sweep_max_keys = sweep_max_keys

    def step(self, now_ms: int, inp: ReplicaInput) -> list[ReplicaEffect]:
        if isinstance(inp, ClientCall):
            machine, op = self._machine, inp.op
            if machine.is_read(op):
                return [Answer(inp.token, machine.read(op, now_ms))]
            # The log is read each time, not cached: apply records the index only when it writes.
            return [Answer(inp.token, machine.apply(self._log.applied_index() + 1, machine.command(op, now_ms)))]
        if isinstance(inp, TimerFired):
            if inp.key == SWEEP_TIMER:
                command = self._machine.purge_command(now_ms, self._sweep_max_keys)
                if command is not None:
                    self._machine.apply(self._log.applied_index() + 1, command)
                return [StartTimer(SWEEP_TIMER, now_ms + self._sweep_interval_ms)]
            return []
        if isinstance(inp, ReplicaStarted):
            return [StartTimer(SWEEP_TIMER, now_ms + self._sweep_interval_ms)]
        # PeerMessage, PeerUnreachable, Synced, SnapshotInstalled: a single copy talks to nobody and answers at once.
        return []

    def scan(self, now_ms: int, start: str, end: str | None, limit: int) -> object:
        return self._machine.scan(now_ms, start, end, limit)

    def read(self, now_ms: int, op: object) -> object:
        """A read answered at once, as ``step`` answers it, without the call and answer around it (batch reads)."""
        return self._machine.read(op, now_ms)
