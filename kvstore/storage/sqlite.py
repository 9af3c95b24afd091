"""SqliteStorage: the durable engine. MemoryStorage serves reads; SQLite keeps the event log and a snapshot.

On disk (one SQLite file in WAL mode, owned by one process: exclusive locking):

- ``log``: the append-only event log, one row per write (put, delete, meta), keyed by LSN;
- ``snapshot`` / ``meta``: the state folded from older log rows; ``state.snapshot_lsn`` is the LSN it covers.

Every row of every table carries ``crc``, a CRC-32 of a canonical encoding of all its other columns,
computed by the sync job that writes it. A sync job writes its events as one transaction (group commit:
one fsync for the batch under ``synchronous=FULL``; ``never`` turns the fsync off). Once
``compact_after_writes`` rows are logged, the job instead folds them, and its own events, into the
snapshot and empties the log. What it folds is the journal's own copy of what it logged, never rows read
back, so a page damaged after it was written cannot enter the snapshot under a fresh checksum.

Opening never serves data it cannot vouch for. It takes ``<file>.lock`` and refuses, with a
``StorageError`` that names the file and what is wrong:

- before SQLite opens the files, so that both stay as they are: a database file cut to 1 byte, or empty
  or missing beside a non-empty WAL (SQLite would start afresh and delete the WAL); a WAL in which a
  damaged frame or header would make SQLite drop committed transactions in silence (``wal_scan``);
- then: a file ``PRAGMA quick_check`` finds damaged, anywhere; a row whose checksum does not match; a
  log that does not run on from the snapshot without a gap.

A WAL that merely ends in a torn or cut write is recovered to its last intact commit, with a warning
saying how much was dropped. Recovery = load the snapshot, then replay the log rows above
``snapshot_lsn`` in LSN order.

Only the sync job (and open / close) touches the connection, so a job may run in a worker thread while
the driver's thread keeps writing to memory: the job owns its events and never reads memory state.
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from kvstore.config import FSYNC_POLICIES, FsyncPolicy
from kvstore.storage.base import SyncJob
from kvstore.storage.memory import DeleteEvent, Event, MemoryStorage, MetaEvent, PutEvent
from kvstore.storage.wal_scan import WalScan, scan_wal

log = logging.getLogger(__name__)

# 2: every row carries a checksum. A version 1 file is migrated on open.
SCHEMA_VERSION = 2

# Event kinds in the log's ``kind`` column.
_PUT, _DELETE, _META = 0, 1, 2

_SCHEMA = (
    "CREATE TABLE log (lsn INTEGER PRIMARY KEY, kind INTEGER NOT NULL, partition INTEGER, key TEXT NOT NULL,"
    " value BLOB, expires_at_ms INTEGER, crc INTEGER NOT NULL)",
    "CREATE TABLE snapshot (partition INTEGER NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,"
    " version INTEGER NOT NULL, expires_at_ms INTEGER, crc INTEGER NOT NULL, PRIMARY KEY (partition, key))"
    " WITHOUT ROWID",
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL, lsn INTEGER NOT NULL, crc INTEGER NOT NULL)",
    "CREATE TABLE state (name TEXT PRIMARY KEY, value INTEGER NOT NULL, crc INTEGER NOT NULL)",
)

_LOG_COLUMNS = "lsn, kind, partition, key, value, expires_at_ms"
_SNAPSHOT_COLUMNS = "partition, key, value, version, expires_at_ms"
_META_COLUMNS = "name, value, lsn"

# How long a second opener waits for the file's lock before it is told another process holds it.
_LOCK_WAIT_S = 1.0
_LOCK_POLL_S = 0.01
# The WAL is checkpointed into the database file once about this much was written to it (SQLite's own
# automatic checkpoint, 1000 pages, is about the same size). A restart truncates a WAL that one large
# transaction grew past twice that, so the file, and what opening scans, stay bounded.
CHECKPOINT_WAL_BYTES = 4 << 20
# quick_check lists up to this many problems; the first few say enough.
_QUICK_CHECK_SHOWN = 3

# ------------------------------------------------------------ row checksums
#
# CRC-32 over: a table tag and the row's integer columns (with a bitmap of which nullable ones are NULL,
# so NULL differs from 0) and the byte length of its text column, then that text as UTF-8, then its blob
# column. A column that comes back from a damaged page with the wrong type makes the computation raise,
# which counts as a mismatch. CRC-32 catches every error burst of up to 32 bits (any single damaged byte)
# and misses a larger random change with probability 2**-32; zlib's is the fastest checksum in the stdlib.
_LOG_HEAD = struct.Struct("<BBqqqqI")  # tag, nulls, lsn, kind, partition, expires_at_ms, len(key)
_SNAPSHOT_HEAD = struct.Struct("<BBqqqI")  # tag, nulls, partition, version, expires_at_ms, len(key)
_META_HEAD = struct.Struct("<BqI")  # tag, lsn, len(name)
_STATE_HEAD = struct.Struct("<BqI")  # tag, value, len(name)
_LOG_TAG, _SNAPSHOT_TAG, _META_TAG, _STATE_TAG = 1, 2, 3, 4


def _log_crc(lsn: int, kind: int, partition: int | None, key: str, value: bytes | None, expires: int | None) -> int:
    text = key.encode()
    nulls = (partition is None) | (value is None) << 1 | (expires is None) << 2
    head = _LOG_HEAD.pack(
        _LOG_TAG, nulls, lsn, kind, 0 if partition is None else partition, 0 if expires is None else expires, len(text)
    )
    return zlib.crc32(b"" if value is None else value, zlib.crc32(text, zlib.crc32(head)))


def _snapshot_crc(partition: int, key: str, value: bytes, version: int, expires: int | None) -> int:
    text = key.encode()
    head = _SNAPSHOT_HEAD.pack(
        _SNAPSHOT_TAG, expires is None, partition, version, 0 if expires is None else expires, len(text)
    )
    return zlib.crc32(value, zlib.crc32(text, zlib.crc32(head)))


def _meta_crc(name: str, value: bytes, lsn: int) -> int:
    text = name.encode()
    return zlib.crc32(value, zlib.crc32(text, zlib.crc32(_META_HEAD.pack(_META_TAG, lsn, len(text)))))


def _state_crc(name: str, value: int) -> int:
    text = name.encode()
    return zlib.crc32(text, zlib.crc32(_STATE_HEAD.pack(_STATE_TAG, value, len(text))))


def _matches(crc: object, compute: Callable[..., int], *columns: Any) -> bool:
    """Whether ``crc`` is ``compute(*columns)``; a column of the wrong type (a damaged record) never matches."""
    try:
        return bool(crc == compute(*columns))
    except (TypeError, AttributeError, struct.error, UnicodeError):
        return False


class StorageError(Exception):
    """The storage file cannot be opened, read or written; the message names the file."""


def _log_row(event: Event) -> tuple[int, int, int | None, str, bytes | None, int | None, int]:
    partition: int | None
    value: bytes | None
    expires: int | None
    if isinstance(event, PutEvent):
        lsn, partition, key, value, expires = event
        kind = _PUT
    elif isinstance(event, DeleteEvent):
        lsn, partition, key = event
        kind, value, expires = _DELETE, None, None
    else:
        lsn, key, value = event
        kind, partition, expires = _META, None, None
    return (lsn, kind, partition, key, value, expires, _log_crc(lsn, kind, partition, key, value, expires))


def _snapshot_row(event: PutEvent) -> tuple[int, str, bytes, int, int | None, int]:
    fields = (event.partition, event.key, event.value, event.lsn, event.expires_at_ms)
    return (*fields, _snapshot_crc(*fields))


def _event(lsn: int, kind: int, partition: int, key: str, value: bytes, expires_at_ms: int | None) -> Event:
    if kind == _PUT:
        return PutEvent(lsn, partition, key, value, expires_at_ms)
    if kind == _DELETE:
        return DeleteEvent(lsn, partition, key)
    return MetaEvent(lsn, key, value)


def _fold(latest: dict[tuple[int | None, str], Event], events: list[Event]) -> None:
    """Keep in ``latest`` the last of ``events`` per record (partition, key) and per meta name (None, name)."""
    for event in events:
        if isinstance(event, MetaEvent):
            latest[None, event.name] = event
        else:
            latest[event.partition, event.key] = event


class SqliteJournal:
    """The SQLite side of a SqliteStorage: schema, sync jobs, compaction, recovery."""

    def __init__(self, path: Path, fsync: FsyncPolicy, compact_after_writes: int) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, got {fsync!r}")
        if compact_after_writes < 1:
            raise ValueError(f"compact_after_writes must be positive, got {compact_after_writes}")
        self.path = path
        self.wal_path = Path(f"{path}-wal")
        self._compact_after_writes = compact_after_writes
        # Jobs may come from worker threads; the lock keeps them (and close) from overlapping on the connection.
        self._lock = threading.Lock()
        # The latest logged event per record or meta name since the last compaction: what the next one folds.
        # Only the latest, so no overwritten value stays alive here.
        self._unfolded: dict[tuple[int | None, str], Event] = {}
        self._log_rows = 0
        self._logged_lsn = 0
        # What the WAL holds since the last checkpoint, estimated (SQLite does not say without checkpointing).
        self._wal_bytes = 0
        self._closed = False
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = self._take_lock_file()
        try:
            # Both checks come before SQLite opens the files: once it has, closing the connection (as a refusal
            # does) checkpoints the WAL and deletes it, and with it the transactions a damaged frame hides.
            self._refuse_cut_database()
            scan = scan_wal(self.wal_path)
            self._check_wal(scan)
            self._wal_bytes = scan.kept_end
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=_LOCK_WAIT_S)
            try:
                self._open_schema("OFF" if fsync == "never" else "FULL")
                if scan.dropped_bytes:
                    # The loss is accepted and reported once: fold the intact log into the database file and
                    # empty the WAL, so the dropped tail is not found and reported again at every start.
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    self._wal_bytes = 0
            except BaseException:
                self._conn.close()
                raise
        except BaseException:
            self._lock_file.close()
            raise

    def _take_lock_file(self) -> BinaryIO:
        """Hold ``<file>.lock`` (flock) while open, so no other kvstore process writes the WAL while this one
        scans it. SQLite's own lock cannot serve: taking it makes SQLite read the WAL first."""
        lock_file = open(f"{self.path}.lock", "ab")  # noqa: SIM115 - held open until close()
        deadline = time.monotonic() + _LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return lock_file
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    lock_file.close()
                    raise StorageError(f"{self.path}: locked by another process (is another node using it?)") from None
                time.sleep(_LOCK_POLL_S)

    def _refuse_cut_database(self) -> None:
        """Refuse, before SQLite opens them, a database file SQLite would take for a new, empty one."""
        db_bytes = self.path.stat().st_size if self.path.exists() else None
        # SQLite's unix layer reports a 1-byte file as empty (a workaround for one filesystem); nothing else
        # leaves one, and a node would start empty on it.
        if db_bytes == 1:
            raise StorageError(f"{self.path}: the database file is 1 byte long: it was cut short")
        wal_bytes = self.wal_path.stat().st_size if self.wal_path.exists() else 0
        if wal_bytes and not db_bytes:  # SQLite would delete the WAL of a missing or empty database file
            state = "missing" if db_bytes is None else "empty"
            raise StorageError(
                f"{self.path}: the database file is {state} but its WAL {self.wal_path} holds {wal_bytes} bytes"
                " (the file was truncated or removed); SQLite would delete the WAL. Restore the database file,"
                " or remove both files to start empty"
            )

    def _open_schema(self, synchronous: str) -> None:
        conn = self._conn
        try:
            # Exclusive: one node process owns the file (and WAL then needs no shared-memory file).
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            # Checkpoints are the sync job's (see write), not SQLite's automatic ones.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute(f"PRAGMA journal_size_limit={2 * CHECKPOINT_WAL_BYTES}")
            conn.execute("BEGIN IMMEDIATE")
            with conn:
                self._page_bytes = int(conn.execute("PRAGMA page_size").fetchone()[0])
                self._quick_check()
                tables = sorted(row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
                if not tables:
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.executemany(
                        "INSERT INTO state (name, value, crc) VALUES (?, ?, ?)",
                        [
                            (name, value, _state_crc(name, value))
                            for name, value in (("schema_version", SCHEMA_VERSION), ("snapshot_lsn", 0))
                        ],
                    )
                elif "state" not in tables:
                    raise StorageError(f"{self.path}: an SQLite file, but not a kvstore database (tables: {tables})")
                else:
                    self._check_version()
                    # A write that changes nothing: SQLite refuses it on a file it will only read (a damaged
                    # header byte can make it one), so that shows now rather than at the first sync.
                    conn.execute("UPDATE state SET value = value WHERE 0")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise StorageError(f"{self.path}: locked by another process (is another node using it?)") from exc
            raise StorageError(f"{self.path}: cannot open the database: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{self.path}: not a kvstore database, or a damaged one: {exc}") from exc

    def _check_wal(self, scan: WalScan) -> None:
        wal = self.wal_path
        accept = "To start anyway, accepting that loss, keep a copy of both files and run: "
        accept += f"truncate -s {scan.kept_end} {wal}"
        if scan.header_hides_frames:
            raise StorageError(
                f"{wal}: the WAL header is damaged ({scan.header_problem}); SQLite would silently ignore the"
                f" {scan.dropped_bytes} bytes of log after it, committed transactions included. {accept}"
            )
        if scan.lost_commits:
            raise StorageError(
                f"{wal}: frame {scan.bad_frame} is damaged ({scan.bad_reason}); SQLite would silently drop it and"
                f" everything after it, including {scan.lost_commits} committed transaction(s). The intact log ends"
                f" at byte {scan.kept_end}. {accept}"
            )
        if scan.dropped_bytes:
            if scan.header_problem is not None:
                why = f"its header is unusable ({scan.header_problem})"
            elif scan.bad_frame is not None:
                why = f"frame {scan.bad_frame} is damaged ({scan.bad_reason}) and no intact commit follows it"
            else:
                why = "it ends in a torn or cut write"
            log.warning(
                "%s: recovered up to the last intact commit (byte %d) and dropped the %d bytes after it, so any"
                " writes they held are lost: %s",
                wal,
                scan.kept_end,
                scan.dropped_bytes,
                why,
            )

    def _quick_check(self) -> None:
        """Structural damage anywhere in the file, including pages recovery does not read (indexes, free list)."""
        # One row per problem; the b-tree checker's rows hold several lines under a "*** in database" heading.
        rows = [row[0] for row in self._conn.execute("PRAGMA quick_check")]
        problems = [line for row in rows for line in row.splitlines() if not line.startswith("*** ")]
        if problems != ["ok"]:
            shown = "; ".join(problems[:_QUICK_CHECK_SHOWN])
            more = f" (and {len(problems) - _QUICK_CHECK_SHOWN} more)" if len(problems) > _QUICK_CHECK_SHOWN else ""
            raise StorageError(f"{self.path}: the database file is damaged: quick_check found {shown}{more}")

    def _check_version(self) -> None:
        conn = self._conn
        row = conn.execute("SELECT * FROM state WHERE name = 'schema_version'").fetchone()
        if row is None:
            raise StorageError(f"{self.path}: state value 'schema_version' is missing")
        if len(row) == 2 and row[1] == 1:  # version 1 had no checksum column
            self._migrate_from_v1()
            return
        if len(row) != 3 or not _matches(row[2], _state_crc, *row[:2]):
            raise self._damaged("state", "row 'schema_version': checksum mismatch")
        if row[1] != SCHEMA_VERSION:
            raise StorageError(f"{self.path}: schema version {row[1]}, this build reads {SCHEMA_VERSION}")

    def _migrate_from_v1(self) -> None:
        """Add the checksum column to every table (inside the caller's transaction). Version 1 rows have no
        checksum to verify, so they are trusted as read; quick_check has already looked at the file."""
        conn = self._conn
        conn.create_function("kv_log_crc", 6, _log_crc, deterministic=True)
        conn.create_function("kv_snapshot_crc", 5, _snapshot_crc, deterministic=True)
        conn.create_function("kv_meta_crc", 3, _meta_crc, deterministic=True)
        conn.create_function("kv_state_crc", 2, _state_crc, deterministic=True)
        for table in ("log", "snapshot", "meta", "state"):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN crc INTEGER NOT NULL DEFAULT 0")
        conn.execute("UPDATE state SET value = ? WHERE name = 'schema_version'", (SCHEMA_VERSION,))
        conn.execute(f"UPDATE log SET crc = kv_log_crc({_LOG_COLUMNS})")
        conn.execute(f"UPDATE snapshot SET crc = kv_snapshot_crc({_SNAPSHOT_COLUMNS})")
        conn.execute(f"UPDATE meta SET crc = kv_meta_crc({_META_COLUMNS})")
        conn.execute("UPDATE state SET crc = kv_state_crc(name, value)")
        log.info("%s: migrated from schema version 1 to %d (row checksums added)", self.path, SCHEMA_VERSION)

    def _damaged(self, where: str, what: str) -> StorageError:
        return StorageError(
            f"{self.path}: table {where}: {what}. The stored data is damaged and this node holds no other copy"
        )

    # ------------------------------------------------------------ recovery

    def recover_into(self, state: MemoryStorage) -> None:
        """Rebuild ``state`` (empty) from the snapshot plus the log rows above it, verifying every row."""
        conn = self._conn
        table = "state"
        try:
            values: dict[str, int] = {}
            for name, value, crc in conn.execute("SELECT name, value, crc FROM state"):
                if not _matches(crc, _state_crc, name, value):
                    raise self._damaged("state", f"row {name!r}: checksum mismatch")
                values[name] = value
            if "snapshot_lsn" not in values:
                raise self._damaged("state", "row 'snapshot_lsn' is missing")
            snapshot_lsn = values["snapshot_lsn"]
            table = "snapshot"
            for partition, key, value, version, expires_at_ms, crc in conn.execute(
                f"SELECT {_SNAPSHOT_COLUMNS}, crc FROM snapshot"
            ):
                if not _matches(crc, _snapshot_crc, partition, key, value, version, expires_at_ms):
                    raise self._damaged("snapshot", f"key {key!r} in partition {partition}: checksum mismatch")
                state.apply(PutEvent(version, partition, key, value, expires_at_ms))
            table = "meta"
            for name, value, lsn, crc in conn.execute(f"SELECT {_META_COLUMNS}, crc FROM meta"):
                if not _matches(crc, _meta_crc, name, value, lsn):
                    raise self._damaged("meta", f"name {name!r}: checksum mismatch")
                state.apply(MetaEvent(lsn, name, value))
            table = "log"
            expected = snapshot_lsn + 1
            logged = []
            for *row, crc in conn.execute(f"SELECT {_LOG_COLUMNS}, crc FROM log ORDER BY lsn"):
                if not _matches(crc, _log_crc, *row):
                    raise self._damaged("log", f"LSN {row[0]}: checksum mismatch")
                if row[0] != expected:
                    raise self._damaged("log", f"LSN {row[0]} follows {expected - 1}: rows are missing or misplaced")
                event = _event(*row)
                state.apply(event)
                logged.append(event)
                expected += 1
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{self.path}: cannot read table {table} (the file is damaged): {exc}") from exc
        state.mark_recovered(snapshot_lsn)
        _fold(self._unfolded, logged)
        self._log_rows = len(logged)
        self._logged_lsn = state.written_lsn

    # ------------------------------------------------------------ sync jobs

    def job(self, events: list[Event], up_to_lsn: int) -> SyncJob:
        return SqliteSyncJob(self, events, up_to_lsn)

    def write(self, events: list[Event], up_to_lsn: int) -> None:
        """Log ``events`` in one transaction, or fold them into the snapshot when due. A failed write may be retried."""
        with self._lock:
            if self._closed:
                raise StorageError(f"{self.path}: storage is closed")
            if events[0].lsn != self._logged_lsn + 1:
                raise StorageError(
                    f"{self.path}: sync job starts at LSN {events[0].lsn} but the log ends at {self._logged_lsn}: "
                    "jobs must run once each, in the order they were prepared"
                )
            conn = self._conn
            compact = self._log_rows + len(events) >= self._compact_after_writes
            try:
                # Checkpoint right before a commit, which then restarts the WAL (new salts: the copied frames
                # become stale). SQLite's automatic checkpoint runs after a commit and leaves the copied frames
                # current until the next one, maybe for long: a damaged WAL cut back to an earlier commit then
                # would lay old pages over a database file that already holds newer ones.
                if self._wal_bytes >= CHECKPOINT_WAL_BYTES:
                    conn.execute("PRAGMA wal_checkpoint(RESTART)")
                    self._wal_bytes = 0
                conn.execute("BEGIN IMMEDIATE")
                with conn:
                    if compact:
                        self._compact(events, up_to_lsn)
                    else:
                        conn.executemany(
                            f"INSERT INTO log ({_LOG_COLUMNS}, crc) VALUES (?, ?, ?, ?, ?, ?, ?)", map(_log_row, events)
                        )
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: sync failed: {exc}") from exc
            # Only once committed: a failed job leaves the journal as it was, for a retry.
            if compact:
                self._unfolded.clear()
                self._log_rows = 0
                self._wal_bytes = CHECKPOINT_WAL_BYTES  # a fold rewrites pages all over: checkpoint next time
            else:
                _fold(self._unfolded, events)
                self._log_rows += len(events)
                # A commit writes at least one page; the rows take about their own size.
                self._wal_bytes += self._page_bytes + sum(
                    len(e.value) if isinstance(e, PutEvent | MetaEvent) else len(e.key) for e in events
                )
            self._logged_lsn = up_to_lsn

    def _compact(self, events: list[Event], up_to_lsn: int) -> None:
        """Fold the logged rows and ``events`` into the snapshot tables and empty the log (in the caller's
        transaction). ``events`` are never logged: the snapshot covers them once this commits."""
        latest = dict(self._unfolded)
        _fold(latest, events)
        conn = self._conn
        conn.executemany(
            f"INSERT OR REPLACE INTO snapshot ({_SNAPSHOT_COLUMNS}, crc) VALUES (?, ?, ?, ?, ?, ?)",
            [_snapshot_row(e) for e in latest.values() if isinstance(e, PutEvent)],
        )
        conn.executemany(
            "DELETE FROM snapshot WHERE partition = ? AND key = ?",
            [(e.partition, e.key) for e in latest.values() if isinstance(e, DeleteEvent)],
        )
        conn.executemany(
            f"INSERT OR REPLACE INTO meta ({_META_COLUMNS}, crc) VALUES (?, ?, ?, ?)",
            [
                (e.name, e.value, e.lsn, _meta_crc(e.name, e.value, e.lsn))
                for e in latest.values()
                if isinstance(e, MetaEvent)
            ],
        )
        conn.execute("DELETE FROM log")
        conn.execute(
            "UPDATE state SET value = ?, crc = ? WHERE name = 'snapshot_lsn'",
            (up_to_lsn, _state_crc("snapshot_lsn", up_to_lsn)),
        )

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()
                self._lock_file.close()


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
