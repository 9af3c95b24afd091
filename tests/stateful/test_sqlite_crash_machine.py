"""Hypothesis drives a SqliteStorage through record, meta and log changes, syncs and crashes, against a model.

The model (storage_model.py, shared with the SimStorage crash machine) is kept twice: what was written (the
storage's memory must always equal it) and what a sync made durable. A crash is a process killed at some point:

- between steps: the journal's connection closes without the pending sync, so the unsynced changes are
  never written;
- inside a sync job, before any of its SQL statements (the checkpoint, each multi-row insert, the range
  deletes, the statements of a fold of the journal into records, the commit): the database and WAL files
  are copied as they are at that instant and the machine goes on from the copy, as a restarted node would;
- inside the fold a clean close runs (after a sync), before any of its statements.

Jobs fold the journal every few record changes, so crashes land before, inside and after folds.

After a crash the reopened storage must hold exactly the durable state: every partition's log with its
truncations and compactions, hard state and applied index, the records and meta, and nothing unsynced.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from storage_model import Model, view_of

from kvstore.storage import sqlite as sqlite_engine
from kvstore.storage.base import (
    AppliedIndexWritten,
    HardStateWritten,
    LogAppended,
    LogCompacted,
    LogTruncated,
    MetaWritten,
    Record,
    RecordRemoved,
    RecordWritten,
    Sibling,
)
from kvstore.storage.sqlite import SqliteStorage
from replication.replica import LogEntry

PARTITIONS = range(2)
partitions = st.sampled_from(PARTITIONS)
keys = st.sampled_from(["a", "b", "c"])
DB = "kv.sqlite3"
# Small, so that jobs checkpoint the WAL now and then, and crashes land around checkpoints too.
CHECKPOINT_WAL_BYTES = 16 << 10
# Small, so that jobs fold the journal often.
FOLD_ROWS = 3


def copy_files(source: Path, dest: Path) -> None:
    """The database at ``source`` and its WAL (where there is one), copied to ``dest``."""
    for suffix in ("", "-wal"):
        if Path(f"{source}{suffix}").exists():
            shutil.copyfile(f"{source}{suffix}", f"{dest}{suffix}")


class SqliteCrashMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.checkpoint_wal_bytes = sqlite_engine.CHECKPOINT_WAL_BYTES
        sqlite_engine.CHECKPOINT_WAL_BYTES = CHECKPOINT_WAL_BYTES
        self.dir = Path(tempfile.mkdtemp(prefix="sqlite-crash-"))
        self.crashes = 0
        self.path = self.dir / "run0" / DB
        self.storage = SqliteStorage(self.path, fsync="never", fold_rows=FOLD_ROWS)
        self.written = Model(PARTITIONS)
        self.durable = Model(PARTITIONS)
        self.changes = 0  # makes every value unique

    def _next(self) -> int:
        self.changes += 1
        return self.changes

    # ------------------------------------------------------------ records and meta

    @rule(p=partitions, key=keys, tombstone=st.booleans(), siblings=st.integers(0, 2))
    def write(self, p: int, key: str, tombstone: bool, siblings: int) -> None:
        n = self._next()
        record = Record(
            None if tombstone else b"v%d" % n,
            n,
            n + 1000 if n % 3 == 0 else None,
            b"ctx%d" % n if n % 2 else b"",
            tuple(Sibling(b"s%d" % i if i else None, n - i, b"c") for i in range(siblings)),
        )
        self.storage.write(p, key, record)
        self.written.apply(RecordWritten(0, p, key, record))

    @rule(p=partitions, key=keys)
    def remove(self, p: int, key: str) -> None:
        present = (p, key) in self.written.records
        assert self.storage.remove(p, key) == present
        if present:
            self.written.apply(RecordRemoved(0, p, key))

    @rule(name=st.sampled_from(["epoch", "map"]))
    def put_meta(self, name: str) -> None:
        value = b"m%d" % self._next()
        self.storage.put_meta(name, value)
        self.written.apply(MetaWritten(0, name, value))

    # ------------------------------------------------------------ logs and partition state

    @rule(p=partitions, count=st.integers(1, 4), new_term=st.booleans())
    def append(self, p: int, count: int, new_term: bool) -> None:
        log = self.written.logs[p]
        term = log.last_term + new_term
        added = tuple(LogEntry(log.last_index + 1 + i, term, b"e%d" % self._next()) for i in range(count))
        self.storage.log(p).append(added)
        self.written.apply(LogAppended(0, p, added))

    @rule(p=partitions, data=st.data())
    def truncate_suffix(self, p: int, data: st.DataObject) -> None:
        log = self.written.logs[p]
        from_index = data.draw(st.integers(log.snapshot_index + 1, log.last_index + 1), label="from_index")
        self.storage.log(p).truncate_suffix(from_index)
        self.written.apply(LogTruncated(0, p, from_index))

    @rule(p=partitions, data=st.data())
    def compact_prefix(self, p: int, data: st.DataObject) -> None:
        log = self.written.logs[p]
        through = data.draw(st.integers(log.snapshot_index, min(log.last_index, log.applied_index)), label="through")
        if through > log.snapshot_index:
            self.written.apply(LogCompacted(0, p, through, log.term_at(through)))
        self.storage.log(p).compact_prefix(through)

    @rule(p=partitions, step=st.integers(1, 3))
    def set_applied_index(self, p: int, step: int) -> None:
        index = self.written.logs[p].applied_index + step
        self.storage.set_applied_index(p, index)
        self.written.apply(AppliedIndexWritten(0, p, index))

    @rule(p=partitions)
    def set_hard_state(self, p: int) -> None:
        value = b"term=%d" % self._next()
        self.storage.log(p).set_hard_state(value)
        self.written.apply(HardStateWritten(0, p, value))

    # ------------------------------------------------------------ syncs and crashes

    @rule()
    def sync(self) -> None:
        self.storage.sync()
        self.durable = copy.deepcopy(self.written)
        # A crash right now must find all of it: open a copy of the files as they are.
        scratch = self.dir / "scratch" / DB
        scratch.parent.mkdir()
        copy_files(self.path, scratch)
        copied = SqliteStorage(scratch, fsync="never", fold_rows=FOLD_ROWS)
        try:
            assert view_of(copied, PARTITIONS) == self.durable.view()
        finally:
            copied.journal.close(fold=False)
            shutil.rmtree(scratch.parent)

    @rule()
    def crash(self) -> None:
        # Without the pending sync or a fold: a process killed after its last commit.
        self.storage.journal.close(fold=False)
        self._reopen(self.path)

    @precondition(lambda self: self.storage.written_lsn != self.storage.synced_lsn)
    @rule(at_statement=st.integers(0, 15))
    def crash_inside_a_sync(self, at_statement: int) -> None:
        """The files as a crash would leave them just before the job's ``at_statement``-th statement (or, past
        its last, once it committed)."""
        crashed = self._crash_at(at_statement, self.storage.sync)
        if crashed is not None:  # the crash came before the commit: the job is lost whole
            self.written = copy.deepcopy(self.durable)
        else:
            self.durable = copy.deepcopy(self.written)
        self.storage.journal.close(fold=False)
        self._reopen(crashed or self.path)

    @rule(at_statement=st.integers(0, 8))
    def crash_inside_the_fold_of_a_close(self, at_statement: int) -> None:
        """A clean close syncs, then folds the whole journal in a transaction of its own: the files as a crash
        would leave them just before the fold's ``at_statement``-th statement (or after it committed)."""
        self.storage.sync()
        self.durable = copy.deepcopy(self.written)
        crashed = self._crash_at(at_statement, self.storage.journal.fold)
        self.storage.journal.close(fold=False)
        self._reopen(crashed or self.path)

    def _crash_at(self, at_statement: int, run: Callable[[], object]) -> Path | None:
        """Runs ``run`` and copies the files as they are just before its ``at_statement``-th SQL statement:
        the copy's path, or None when ``run`` made fewer statements (a crash after it finished)."""
        crashed = self.dir / f"crash{self.crashes}" / DB
        statements = 0

        def maybe_copy(_sql: str) -> None:
            nonlocal statements
            if statements == at_statement:
                crashed.parent.mkdir()
                copy_files(self.path, crashed)
            statements += 1

        conn = self.storage.journal._conn
        conn.set_trace_callback(maybe_copy)
        try:
            run()
        finally:
            conn.set_trace_callback(None)
        return crashed if statements > at_statement else None

    def _reopen(self, path: Path) -> None:
        self.crashes += 1
        moved = self.dir / f"run{self.crashes}" / DB
        moved.parent.mkdir()
        copy_files(path, moved)
        self.path = moved
        self.storage = SqliteStorage(moved, fsync="never", fold_rows=FOLD_ROWS)
        self.written = copy.deepcopy(self.durable)
        assert self.storage.written_lsn == 0

    @invariant()
    def memory_matches_what_was_written(self) -> None:
        assert view_of(self.storage, PARTITIONS) == self.written.view()

    def teardown(self) -> None:
        self.storage.close()
        shutil.rmtree(self.dir)
        sqlite_engine.CHECKPOINT_WAL_BYTES = self.checkpoint_wal_bytes


TestSqliteCrashMachine = SqliteCrashMachine.TestCase
TestSqliteCrashMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
