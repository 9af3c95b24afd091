"""SqliteStorage: the durable engine. MemoryStorage serves reads; SQLite keeps the event log and a snapshot.

On disk (one SQLite file in WAL mode, owned by one process: exclusive locking):

- ``log``: the append-only event log, one row per write (put, delete, meta), keyed by LSN;
- ``snapshot`` / ``meta``: the state folded from older log rows; ``state.snapshot_lsn`` is the LSN it covers.

A sync job writes its events as one transaction (group commit: one fsync for the batch under
``synchronous=FULL``; ``never`` turns the fsync off). After ``compact_after_writes`` logged rows the same
transaction folds the log into the snapshot and empties the log. Recovery = load the snapshot, then
replay log rows above ``snapshot_lsn`` in LSN order; a torn last transaction is discarded by SQLite itself.

Only the sync job (and open / close) touches the connection, so a job may run in a worker thread while
the driver's thread keeps writing to memory: the job owns its events and never reads memory state.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvstore.config import FSYNC_POLICIES, FsyncPolicy
from kvstore.storage.base import SyncJob
from kvstore.storage.memory import DeleteEvent, Event, MemoryStorage, MetaEvent, PutEvent

SCHEMA_VERSION = 1

# Event kinds in the log's ``kind`` column.
_PUT, _DELETE, _META = 0, 1, 2

_SCHEMA = (
    "CREATE TABLE log (lsn INTEGER PRIMARY KEY, kind INTEGER NOT NULL, partition INTEGER, key TEXT NOT NULL,"
    " value BLOB, expires_at_ms INTEGER)",
    "CREATE TABLE snapshot (partition INTEGER NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,"
    " version INTEGER NOT NULL, expires_at_ms INTEGER, PRIMARY KEY (partition, key)) WITHOUT ROWID",
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL, lsn INTEGER NOT NULL)",
    "CREATE TABLE state (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)

_LOG_COLUMNS = "lsn, kind, partition, key, value, expires_at_ms"
_LogRow = tuple[int, int, int | None, str, bytes | None, int | None]

# How long a second opener waits for the file's lock before it is told another process holds it.
_LOCK_WAIT_S = 1.0


class StorageError(Exception):
    """The storage file cannot be opened, read or written; the message names the file."""


def _row(event: Event) -> _LogRow:
    if isinstance(event, PutEvent):
        return (event.lsn, _PUT, event.partition, event.key, event.value, event.expires_at_ms)
    if isinstance(event, DeleteEvent):
        return (event.lsn, _DELETE, event.partition, event.key, None, None)
    return (event.lsn, _META, None, event.name, event.value, None)


def _event(row: Any) -> Event:
    lsn, kind, partition, key, value, expires_at_ms = row
    if kind == _PUT:
        return PutEvent(lsn, partition, key, value, expires_at_ms)
    if kind == _DELETE:
        return DeleteEvent(lsn, partition, key)
    return MetaEvent(lsn, key, value)


class SqliteJournal:
    """The SQLite side of a SqliteStorage: schema, sync jobs, compaction, recovery."""

    def __init__(self, path: Path, fsync: FsyncPolicy, compact_after_writes: int) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, got {fsync!r}")
        if compact_after_writes < 1:
            raise ValueError(f"compact_after_writes must be positive, got {compact_after_writes}")
        self.path = path
        self._compact_after_writes = compact_after_writes
        # Jobs may come from worker threads; the lock keeps them (and close) from overlapping on the connection.
        self._lock = threading.Lock()
        self._log_rows = 0
        self._logged_lsn = 0
        self._closed = False
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=_LOCK_WAIT_S)
        try:
            self._open_schema("OFF" if fsync == "never" else "FULL")
        except BaseException:
            self._conn.close()
            raise

    def _open_schema(self, synchronous: str) -> None:
        conn = self._conn
        try:
            # Exclusive: one node process owns the file (and WAL then needs no shared-memory file).
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            conn.execute("BEGIN IMMEDIATE")
            with conn:
                tables = sorted(row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
                if not tables:
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO state VALUES ('schema_version', ?), ('snapshot_lsn', 0)", (SCHEMA_VERSION,)
                    )
                elif "state" not in tables:
                    raise StorageError(f"{self.path}: an SQLite file, but not a kvstore database (tables: {tables})")
            version = self._state_value("schema_version")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise StorageError(f"{self.path}: locked by another process (is another node using it?)") from exc
            raise StorageError(f"{self.path}: cannot open the database: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{self.path}: not a kvstore database or corrupt: {exc}") from exc
        if version != SCHEMA_VERSION:
            raise StorageError(f"{self.path}: schema version {version}, this build reads {SCHEMA_VERSION}")

    def _state_value(self, name: str) -> int:
        row = self._conn.execute("SELECT value FROM state WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise StorageError(f"{self.path}: state value {name!r} is missing")
        return int(row[0])

    # ------------------------------------------------------------ recovery

    def recover_into(self, state: MemoryStorage) -> None:
        """Rebuild ``state`` (empty) from the snapshot plus the log rows above it."""
        conn = self._conn
        try:
            snapshot_lsn = self._state_value("snapshot_lsn")
            for partition, key, value, version, expires_at_ms in conn.execute(
                "SELECT partition, key, value, version, expires_at_ms FROM snapshot"
            ):
                state.apply(PutEvent(version, partition, key, value, expires_at_ms))
            for name, value, lsn in conn.execute("SELECT name, value, lsn FROM meta"):
                state.apply(MetaEvent(lsn, name, value))
            log_rows = 0
            for row in conn.execute(f"SELECT {_LOG_COLUMNS} FROM log WHERE lsn > ? ORDER BY lsn", (snapshot_lsn,)):
                state.apply(_event(row))
                log_rows += 1
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{self.path}: cannot read the stored data (corrupt?): {exc}") from exc
        state.mark_recovered(snapshot_lsn)
        self._log_rows = log_rows
        self._logged_lsn = state.written_lsn

    # ------------------------------------------------------------ sync jobs

    def job(self, events: list[Event], up_to_lsn: int) -> SyncJob:
        return SqliteSyncJob(self, events, up_to_lsn)

    def write(self, events: list[Event], up_to_lsn: int) -> None:
        """Append ``events`` to the log in one transaction (compacting when due). A failed write may be retried."""
        with self._lock:
            if self._closed:
                raise StorageError(f"{self.path}: storage is closed")
            if events[0].lsn != self._logged_lsn + 1:
                raise StorageError(
                    f"{self.path}: sync job starts at LSN {events[0].lsn} but the log ends at {self._logged_lsn}: "
                    "jobs must run once each, in the order they were prepared"
                )
            conn = self._conn
            log_rows = self._log_rows + len(events)
            try:
                conn.execute("BEGIN IMMEDIATE")
                with conn:
                    conn.executemany(f"INSERT INTO log ({_LOG_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", map(_row, events))
                    if log_rows >= self._compact_after_writes:
                        self._compact()
                        log_rows = 0
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: sync failed: {exc}") from exc
            self._log_rows = log_rows
            self._logged_lsn = up_to_lsn

    def _compact(self) -> None:
        """Fold every log row into the snapshot tables and empty the log (inside the caller's transaction)."""
        conn = self._conn
        latest: dict[tuple[int, str], tuple[int, int, str, bytes | None, int, int | None]] = {}
        metas: dict[str, tuple[str, bytes, int]] = {}
        last_lsn = 0
        for lsn, kind, partition, key, value, expires_at_ms in conn.execute(
            f"SELECT {_LOG_COLUMNS} FROM log ORDER BY lsn"
        ):
            if kind == _META:
                metas[key] = (key, value, lsn)
            else:
                latest[(partition, key)] = (kind, partition, key, value, lsn, expires_at_ms)
            last_lsn = lsn
        conn.executemany(
            "INSERT OR REPLACE INTO snapshot (partition, key, value, version, expires_at_ms) VALUES (?, ?, ?, ?, ?)",
            [(p, k, v, lsn, exp) for kind, p, k, v, lsn, exp in latest.values() if kind == _PUT],
        )
        conn.executemany(
            "DELETE FROM snapshot WHERE partition = ? AND key = ?",
            [(p, k) for kind, p, k, _, _, _ in latest.values() if kind == _DELETE],
        )
        conn.executemany("INSERT OR REPLACE INTO meta (name, value, lsn) VALUES (?, ?, ?)", metas.values())
        conn.execute("DELETE FROM log")
        conn.execute("UPDATE state SET value = ? WHERE name = 'snapshot_lsn'", (last_lsn,))

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()


@dataclass(frozen=True)
class SqliteSyncJob:
    journal: SqliteJournal
    events: list[Event]
    up_to_lsn: int

    def run(self) -> None:
        self.journal.write(self.events, self.up_to_lsn)


class SqliteStorage(MemoryStorage):
    def __init__(self, path: str | Path, fsync: FsyncPolicy = "always", compact_after_writes: int = 10_000) -> None:
        self.path = Path(path)
        journal = SqliteJournal(self.path, fsync, compact_after_writes)
        super().__init__(journal)
        try:
            journal.recover_into(self)
        except BaseException:
            journal.close()
            raise
