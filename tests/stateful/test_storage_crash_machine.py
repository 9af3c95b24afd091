"""Hypothesis drives a SimStorage through writes, log changes, syncs and crashes against a reference model.

The model (storage_model.py, shared with the SqliteStorage crash machine) is kept three times: the live
state and the disk's two images (OS-written and durable); between them, the changes written but not yet
handed to a job and the job in flight. Faults are rules like any other: a job may be prepared and
lost to a crash before it runs, a write-out may skip the fsync, the kernel may write back at any point,
and a crash is a process crash (the OS image survives) or a power loss (only the durable image does).
After each step the storage, both disk images and every partition's ``synced_through`` must match the
model exactly; so a power loss loses exactly the unsynced suffix of every partition's log and hard
state, and truncation and compaction survive a crash at every point.
"""

from __future__ import annotations

import copy

import hypothesis.strategies as st
import storage_model
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

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
)
from kvstore.storage.memory import MemoryStorage
from kvstore.storage.simulated import CrashKind, SimDisk, SimStorage, SimSyncJob
from replication.replica import LogEntry

PARTITIONS = range(3)
partitions = st.sampled_from(PARTITIONS)
keys = st.sampled_from(["a", "b", "c", "d"])
small = st.integers(0, 20)


# The shared model and view over this machine's partitions, under the names the machine's rules use. (Its
# source seeds ``derandomize``: an edit to the class body changes which examples run.)
class Model(storage_model.Model):
    def __init__(self) -> None:
        super().__init__(PARTITIONS)


def view(s: MemoryStorage) -> storage_model.View:
    return storage_model.view_of(s, PARTITIONS)


class StorageCrashMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.disk = SimDisk()
        self.storage = SimStorage(self.disk)
        self.live = Model()
        self.unsynced: list[Event] = []  # written, not yet in a job
        self.job: SimSyncJob | None = None
        self.job_changes: list[Event] = []
        self.os = Model()
        self.durable = Model()
        self.step = 0

    def change(self, change: Event) -> None:
        self.live.apply(change)
        self.unsynced.append(change)

    # ------------------------------------------------------------ records and meta

    @rule(
        p=partitions, key=keys, value=st.one_of(st.none(), st.binary(max_size=3)), deadline=st.one_of(st.none(), small)
    )
    def write(self, p: int, key: str, value: bytes | None, deadline: int | None) -> None:
        self.step += 1
        record = Record(value, self.step, deadline)
        self.storage.write(p, key, record)
        self.change(RecordWritten(0, p, key, record))

    @rule(p=partitions, key=keys)
    def remove(self, p: int, key: str) -> None:
        present = (p, key) in self.live.records
        assert self.storage.remove(p, key) is present
        if present:
            self.change(RecordRemoved(0, p, key))

    @rule(name=st.sampled_from(["epoch", "id"]), value=st.binary(max_size=2))
    def put_meta(self, name: str, value: bytes) -> None:
        self.storage.put_meta(name, value)
        self.change(MetaWritten(0, name, value))

    @rule(p=partitions, now_ms=small, max_keys=st.integers(0, 5))
    def expired_keys(self, p: int, now_ms: int, max_keys: int) -> None:
        due = sorted(
            (record.expires_at_ms, key)
            for (q, key), record in self.live.records.items()
            if q == p and record.expires_at_ms is not None and record.expires_at_ms <= now_ms
        )
        assert self.storage.expired_keys(p, now_ms, max_keys) == [key for _, key in due[:max_keys]]

    # ------------------------------------------------------------ logs

    @rule(p=partitions, terms=st.lists(st.integers(0, 3), min_size=1, max_size=3), data=st.binary(max_size=2))
    def append(self, p: int, terms: list[int], data: bytes) -> None:
        first = self.live.logs[p].last_index + 1
        entries = tuple(LogEntry(first + i, term, data) for i, term in enumerate(terms))
        self.storage.log(p).append(entries)
        self.change(LogAppended(0, p, entries))

    @rule(p=partitions, pick=small)
    def truncate(self, p: int, pick: int) -> None:
        log = self.live.logs[p]
        from_index = log.snapshot_index + 1 + pick % (log.last_index - log.snapshot_index + 1)
        self.storage.log(p).truncate_suffix(from_index)
        if from_index <= log.last_index:
            self.change(LogTruncated(0, p, from_index))

    @rule(p=partitions, pick=small)
    def compact(self, p: int, pick: int) -> None:
        log = self.live.logs[p]
        highest = min(log.applied_index, log.last_index)
        if highest <= log.snapshot_index:
            return
        through = log.snapshot_index + 1 + pick % (highest - log.snapshot_index)
        term = log.entries[through - log.snapshot_index - 1].term
        self.storage.log(p).compact_prefix(through)
        self.change(LogCompacted(0, p, through, term))

    @rule(p=partitions, value=st.binary(max_size=3))
    def set_hard_state(self, p: int, value: bytes) -> None:
        self.storage.log(p).set_hard_state(value)
        self.change(HardStateWritten(0, p, value))

    @rule(p=partitions, step=st.integers(1, 4))
    def set_applied_index(self, p: int, step: int) -> None:
        index = self.live.logs[p].applied_index + step
        self.storage.set_applied_index(p, index)
        self.change(AppliedIndexWritten(0, p, index))

    # ------------------------------------------------------------ syncing and faults

    @precondition(lambda self: self.job is None)
    @rule(fsync=st.booleans())
    def prepare_sync(self, fsync: bool) -> None:
        self.job = self.storage.prepare_sync(fsync=fsync)
        assert (self.job is None) == (not self.unsynced)
        self.job_changes, self.unsynced = self.unsynced, []

    @precondition(lambda self: self.job is not None)
    @rule()
    def run_sync(self) -> None:
        job = self.job
        assert job is not None
        job.run()
        self.storage.complete_sync(job)
        for change in self.job_changes:
            self.os.apply(change)
        if job.fsync:
            self.durable = copy.deepcopy(self.os)
        self.job, self.job_changes = None, []
        assert self.storage.synced_lsn == job.up_to_lsn

    @rule()
    def writeback(self) -> None:
        self.disk.writeback()
        self.durable = copy.deepcopy(self.os)

    @rule(kind=st.sampled_from(["process", "power"]))
    def crash(self, kind: CrashKind) -> None:
        self.disk.crash(kind)
        if kind == "power":
            self.os = copy.deepcopy(self.durable)
        # The job in flight (if any) and everything unsynced die with the process.
        self.storage = SimStorage(self.disk)
        self.live = copy.deepcopy(self.os)
        self.unsynced, self.job, self.job_changes = [], None, []

    # ------------------------------------------------------------ checks

    @invariant()
    def storage_matches_the_model(self) -> None:
        assert view(self.storage) == self.live.view()
        assert view(self.disk.image) == self.os.view()
        assert view(self.disk.durable_image) == self.durable.view()

    @invariant()
    def synced_through_is_what_completed_jobs_made_durable(self) -> None:
        for p in PARTITIONS:
            live, written = self.live.logs[p], self.os.logs[p]
            # Appends and truncations not yet covered by a completed job bound it from below their index.
            pending = [
                c.entries[0].index if isinstance(c, LogAppended) else c.from_index
                for c in (*self.job_changes, *self.unsynced)
                if isinstance(c, (LogAppended, LogTruncated)) and c.partition == p
            ]
            expected = min([live.last_index, *(index - 1 for index in pending)])
            synced_through = self.storage.log(p).synced_through()
            assert synced_through == expected
            # And it is safe: the synced log holds exactly these entries up to there.
            for entry in live.entries:
                if entry.index <= synced_through and entry.index > written.snapshot_index:
                    assert written.entries[entry.index - written.snapshot_index - 1] == entry


StorageCrashMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
test_storage_crash_machine = StorageCrashMachine.TestCase
