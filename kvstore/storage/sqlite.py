"""SqliteStorage: the durable engine. MemoryStorage serves reads; a SqliteJournal keeps its state on disk.

On disk (schema version 4; one SQLite file in WAL mode, owned by one process: exclusive locking):

- ``records``: every stored record as of the last fold, one row per (partition, key): value (NULL for a
  tombstone), the protocol's version, expiry, causal context and siblings (msgpack
  ``[[value, version, context], ...]``, NULL when there are none);
- ``journal``: the record changes since then, in sequence order (``seq``): a write carries the record's
  columns, a removal a NULL version;
- ``log_entries``: each partition's replication log, one row per (partition, index);
- ``partition_state``: per partition, the protocol's hard state, the applied index and the snapshot point
  (index and term) the log was compacted to;
- ``meta``: node-level named values; ``state``: the schema version and ``folded_seq``, the last journal row
  folded into records.

A sync job writes its events into these tables as one transaction (group commit: one fsync for the batch
under ``synchronous=FULL``; ``never`` turns the fsync off), so an applied index is durable exactly when the
records written with it are. It first reduces its events to the last change per record, meta name and
partition state, so a value overwritten within the job is never written at all; record changes are
appended to the journal (sequential: a few pages per commit, where upserting random keys in place dirtied
a page per key), a log truncation or compaction is one ``DELETE`` by index range. Once the journal holds
``fold_rows`` rows, the job also folds it into records, in SQL statements that SQLite runs without the
interpreter lock (see ``_FOLD``); a clean close folds the rest. Every row carries ``crc``, a CRC-32 of a
canonical encoding of its other columns, computed by the job (a node runs jobs on a worker thread) from the
events it was given; a journal row's is the one its records row will have, and the fold copies it. A
partition's state row is rewritten from the journal's own copy of it, never from rows read back. So a page
damaged after it was written cannot re-enter the file under a fresh checksum.

Opening never serves data it cannot vouch for. It takes ``<file>.lock`` and refuses, with a
``StorageError`` that names the file and what is wrong:

- before SQLite opens the files, so that both stay as they are: a database file cut to 1 byte, or empty
  or missing beside a non-empty WAL (SQLite would start afresh and delete the WAL); a WAL in which a
  damaged frame or header would make SQLite drop committed transactions in silence (``wal_scan``);
- then: a file ``PRAGMA quick_check`` finds damaged, anywhere; a row whose checksum does not match; a
  partition log that does not run on from its snapshot point without a gap; a journal whose sequence does
  not run on from ``folded_seq`` without a gap.

A WAL that merely ends in a torn or cut write is recovered to its last intact commit, with a warning
saying how much was dropped. Recovery hands every verified row to the in-memory state as an event
(``restore``): the records, then the journal's changes over them in sequence order. An event restored
is neither logged again nor given an LSN. Files of schema versions 1 and 2 (an event log folded into a
snapshot) and 3 (records upserted in place, no journal) are migrated on open, in one transaction.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, Protocol

import msgpack

from kvstore.config import FSYNC_POLICIES, FsyncPolicy
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
    Sibling,
    SyncJob,
)
from kvstore.storage.memory import MemoryStorage
from kvstore.storage.wal_scan import WalScan, scan_wal
from replication.replica import LogEntry

log = logging.getLogger(__name__)

# 4: record changes appended to a journal, folded into records in SQL. Versions 1 to 3 are migrated on open.
SCHEMA_VERSION = 4

_RECORDS_TABLE = (
    "CREATE TABLE records (partition INTEGER NOT NULL, key TEXT NOT NULL, value BLOB, version INTEGER NOT NULL,"
    " expires_at_ms INTEGER, context BLOB NOT NULL, siblings BLOB, crc INTEGER NOT NULL,"
    " PRIMARY KEY (partition, key)) WITHOUT ROWID"
)
# A record change per row, in sequence order (seq is the rowid: appends fill the table's last page). A write
# carries the record's columns and the very checksum its records row will have; a removal has a NULL version
# (and NULL value, expiry, context and siblings) and a checksum of its own.
_JOURNAL_TABLE = (
    "CREATE TABLE journal (seq INTEGER PRIMARY KEY, partition INTEGER NOT NULL, key TEXT NOT NULL, value BLOB,"
    " version INTEGER, expires_at_ms INTEGER, context BLOB, siblings BLOB, crc INTEGER NOT NULL)"
)
_SCHEMA = (
    _RECORDS_TABLE,
    _JOURNAL_TABLE,
    "CREATE TABLE log_entries (partition INTEGER NOT NULL, idx INTEGER NOT NULL, term INTEGER NOT NULL,"
    " data BLOB NOT NULL, crc INTEGER NOT NULL, PRIMARY KEY (partition, idx)) WITHOUT ROWID",
    "CREATE TABLE partition_state (partition INTEGER PRIMARY KEY, hard_state BLOB, applied_index INTEGER NOT NULL,"
    " snapshot_index INTEGER NOT NULL, snapshot_term INTEGER NOT NULL, crc INTEGER NOT NULL)",
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL, crc INTEGER NOT NULL)",
    "CREATE TABLE state (name TEXT PRIMARY KEY, value INTEGER NOT NULL, crc INTEGER NOT NULL)",
)
_RECORD_COLUMNS = "partition, key, value, version, expires_at_ms, context, siblings"
_ENTRY_COLUMNS = "partition, idx, term, data"
_PARTITION_COLUMNS = "partition, hard_state, applied_index, snapshot_index, snapshot_term"
_UPSERT_RECORD = f"INSERT OR REPLACE INTO records ({_RECORD_COLUMNS}, crc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_UPSERT_META = "INSERT OR REPLACE INTO meta (name, value, crc) VALUES (?, ?, ?)"
# A job's rows go in with multi-row INSERTs (see _insert): (statement head, columns per row).
_APPEND_JOURNAL = (f"INSERT INTO journal (seq, {_RECORD_COLUMNS}, crc) VALUES ", 9)
_INSERT_ENTRIES = (f"INSERT INTO log_entries ({_ENTRY_COLUMNS}, crc) VALUES ", 5)
_UPSERT_PARTITIONS = (f"INSERT OR REPLACE INTO partition_state ({_PARTITION_COLUMNS}, crc) VALUES ", 6)
# Rows per multi-row INSERT, largest first: a job's rows take one statement per bit of their count (each size
# one cached statement per table). 256 rows of 9 columns bind 2,304 values, far under SQLite's limit (32,766).
_INSERT_SIZES = (256, 128, 64, 32, 16, 8, 4, 2, 1)
_UPSERT_STATE = "INSERT OR REPLACE INTO state (name, value, crc) VALUES (?, ?, ?)"
# The fold of the journal rows with seq <= ? into records, all in SQLite: no row crosses into Python, and the
# checksum a records row gets is its journal row's, copied. Every write replaces its key's row in sequence
# order, so the last one stays (measured faster than grouping by key first: no sort); then, only when the
# range holds a removal, each key whose last change is a removal goes (SQLite takes a bare column of a max()
# aggregate from the row holding the maximum); then the folded rows go.
_FOLD = (
    f"INSERT OR REPLACE INTO records ({_RECORD_COLUMNS}, crc) SELECT {_RECORD_COLUMNS}, crc FROM journal"
    " WHERE seq <= ?1 AND version IS NOT NULL ORDER BY seq",
    "DELETE FROM records WHERE (partition, key) IN (SELECT partition, key FROM"
    " (SELECT partition, key, version, max(seq) FROM journal WHERE seq <= ?1 GROUP BY partition, key)"
    " WHERE version IS NULL)",
    "DELETE FROM journal WHERE seq <= ?1",
)
# SQLite's page cache, in KiB (a negative cache_size): its default, 2 MiB, holds the records pages of about
# 15,000 records, and a fold over a larger table then rereads and spills pages (measured 2-3x slower).
# Pages are only allocated as they are used.
_CACHE_KIB = 64 << 10
# A sync job folds the journal into records once it holds this many rows (and close folds what is left). A
# fold writes each records page it changes once, however many of the folded rows fell on it, so the larger
# the fold the fewer pages per write; the smaller, the shorter the job that runs it, and the fewer rows an
# open replays.
FOLD_ROWS = 10_000

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
# so NULL differs from 0 and from empty bytes) and the byte lengths of its variable-length columns but the
# last, then those columns in order (text as UTF-8). A column that comes back from a damaged page with the
# wrong type makes the computation raise, which counts as a mismatch. CRC-32 catches every error burst of
# up to 32 bits (any single damaged byte) and misses a larger random change with probability 2**-32;
# zlib's is the fastest checksum in the stdlib.
_RECORD_HEAD = struct.Struct("<BBqqqIII")  # tag, nulls, partition, version, expires_at_ms, len(key, value, context)
_ENTRY_HEAD = struct.Struct("<Bqqq")  # tag, partition, idx, term
_PARTITION_HEAD = struct.Struct("<BBqqqq")  # tag, nulls, partition, applied_index, snapshot_index, snapshot_term
_META_HEAD = struct.Struct("<BI")  # tag, len(name)
_STATE_HEAD = struct.Struct("<BqI")  # tag, value, len(name)
_REMOVAL_HEAD = struct.Struct("<Bq")  # tag, partition
_STATE_TAG, _RECORD_TAG, _ENTRY_TAG, _PARTITION_TAG, _META_TAG, _REMOVAL_TAG = 4, 5, 6, 7, 8, 9
_crc32 = zlib.crc32


def _record_crc(
    partition: int,
    key: str,
    value: bytes | None,
    version: int,
    expires: int | None,
    context: bytes,
    siblings: bytes | None,
) -> int:
    text = key.encode()
    nulls = (value is None) | (expires is None) << 1 | (siblings is None) << 2
    head = _RECORD_HEAD.pack(
        _RECORD_TAG,
        nulls,
        partition,
        version,
        0 if expires is None else expires,
        len(text),
        0 if value is None else len(value),
        len(context),
    )
    crc = _crc32(context, _crc32(b"" if value is None else value, _crc32(text, _crc32(head))))
    return crc if siblings is None else _crc32(siblings, crc)


def _removal_crc(partition: int, key: str) -> int:
    """A journal row saying ``key`` was removed (its other record columns NULL)."""
    return _crc32(key.encode(), _crc32(_REMOVAL_HEAD.pack(_REMOVAL_TAG, partition)))


def _journal_row_matches(
    partition: int,
    key: str,
    value: bytes | None,
    version: int | None,
    expires: int | None,
    context: bytes | None,
    siblings: bytes | None,
    crc: int,
) -> bool:
    if version is None:
        nulls = value is None and expires is None and context is None and siblings is None
        return nulls and _matches(crc, _removal_crc, partition, key)
    return _matches(crc, _record_crc, partition, key, value, version, expires, context, siblings)


def _entry_crc(partition: int, idx: int, term: int, data: bytes) -> int:
    return _crc32(data, _crc32(_ENTRY_HEAD.pack(_ENTRY_TAG, partition, idx, term)))


def _partition_crc(
    partition: int, hard_state: bytes | None, applied_index: int, snapshot_index: int, snapshot_term: int
) -> int:
    head = _PARTITION_HEAD.pack(
        _PARTITION_TAG, hard_state is None, partition, applied_index, snapshot_index, snapshot_term
    )
    return _crc32(b"" if hard_state is None else hard_state, _crc32(head))


def _meta_crc(name: str, value: bytes) -> int:
    text = name.encode()
    return _crc32(value, _crc32(text, _crc32(_META_HEAD.pack(_META_TAG, len(text)))))


def _state_crc(name: str, value: int) -> int:
    text = name.encode()
    return _crc32(text, _crc32(_STATE_HEAD.pack(_STATE_TAG, value, len(text))))


def _matches(crc: object, compute: Callable[..., int], *columns: Any) -> bool:
    """Whether ``crc`` is ``compute(*columns)``; a column of the wrong type (a damaged record) never matches."""
    try:
        return bool(crc == compute(*columns))
    except (TypeError, AttributeError, struct.error, UnicodeError, OverflowError):
        return False


class StorageError(Exception):
    """The storage file cannot be opened, read or written; the message names the file."""


# ------------------------------------------------------------ rows


def _encode_siblings(siblings: tuple[Sibling, ...]) -> bytes | None:
    if not siblings:
        return None
    return msgpack.packb([[s.value, s.version, s.context] for s in siblings], use_bin_type=True)


def _decode_siblings(data: bytes | None) -> tuple[Sibling, ...]:
    if data is None:
        return ()
    return tuple(Sibling(value, version, context) for value, version, context in msgpack.unpackb(data))


def _record_row(partition: int, key: str, record: Record) -> tuple[Any, ...]:
    value, version, expires, context, siblings = record
    encoded = _encode_siblings(siblings) if siblings else None
    crc = _record_crc(partition, key, value, version, expires, context, encoded)
    return (partition, key, value, version, expires, context, encoded, crc)


def _journal_row(seq: int, partition: int, key: str, record: Record | None) -> tuple[Any, ...]:
    """A journal row: the record's columns and checksum as its records row will hold them, or a removal."""
    if record is None:
        return (seq, partition, key, None, None, None, None, None, _removal_crc(partition, key))
    return (seq, *_record_row(partition, key, record))


class PartitionState(NamedTuple):
    """A partition's row of ``partition_state``: what the journal last committed for it."""

    hard_state: bytes | None = None
    applied_index: int = 0
    snapshot_index: int = 0
    snapshot_term: int = 0


_NO_STATE = PartitionState()


def _partition_row(partition: int, state: PartitionState) -> tuple[Any, ...]:
    return (partition, *state, _partition_crc(partition, *state))


@dataclass
class _LogChanges:
    """One job's net changes to a partition's log: durable entries to drop, then entries to insert."""

    truncate_from: int | None = None  # drop durable entries with idx >= this
    compacted: tuple[int, int] | None = None  # (through_index, term): drop durable entries with idx <= through_index
    entries: dict[int, LogEntry] = field(default_factory=dict)  # appended by the job and still in the log

    def truncate(self, from_index: int) -> None:
        self.entries = {i: e for i, e in self.entries.items() if i < from_index}
        self.truncate_from = from_index if self.truncate_from is None else min(self.truncate_from, from_index)

    def compact(self, through_index: int, term: int) -> None:
        self.entries = {i: e for i, e in self.entries.items() if i > through_index}
        self.compacted = (through_index, term)


class _Restorable(Protocol):
    def restore(self, event: Event) -> None: ...


# ------------------------------------------------------------ schema version 2, read for migration only
#
# An event log (``log``: puts, deletes and meta writes by LSN) folded now and then into ``snapshot`` and
# ``meta``; ``state.snapshot_lsn`` is the LSN the snapshot covers. A record's version was the LSN that wrote it.

_V2_PUT, _V2_DELETE, _V2_META = 0, 1, 2
_V2_LOG_COLUMNS = "lsn, kind, partition, key, value, expires_at_ms"
_V2_SNAPSHOT_COLUMNS = "partition, key, value, version, expires_at_ms"
_V2_META_COLUMNS = "name, value, lsn"
_V2_LOG_HEAD = struct.Struct("<BBqqqqI")  # tag, nulls, lsn, kind, partition, expires_at_ms, len(key)
_V2_SNAPSHOT_HEAD = struct.Struct("<BBqqqI")  # tag, nulls, partition, version, expires_at_ms, len(key)
_V2_META_HEAD = struct.Struct("<BqI")  # tag, lsn, len(name)
_V2_LOG_TAG, _V2_SNAPSHOT_TAG, _V2_META_TAG = 1, 2, 3


def _v2_log_crc(lsn: int, kind: int, partition: int | None, key: str, value: bytes | None, expires: int | None) -> int:
    text = key.encode()
    nulls = (partition is None) | (value is None) << 1 | (expires is None) << 2
    head = _V2_LOG_HEAD.pack(
        _V2_LOG_TAG,
        nulls,
        lsn,
        kind,
        0 if partition is None else partition,
        0 if expires is None else expires,
        len(text),
    )
    return _crc32(b"" if value is None else value, _crc32(text, _crc32(head)))


def _v2_snapshot_crc(partition: int, key: str, value: bytes, version: int, expires: int | None) -> int:
    text = key.encode()
    head = _V2_SNAPSHOT_HEAD.pack(
        _V2_SNAPSHOT_TAG, expires is None, partition, version, 0 if expires is None else expires, len(text)
    )
    return _crc32(value, _crc32(text, _crc32(head)))


def _v2_meta_crc(name: str, value: bytes, lsn: int) -> int:
    text = name.encode()
    return _crc32(value, _crc32(text, _crc32(_V2_META_HEAD.pack(_V2_META_TAG, lsn, len(text)))))


_insert_statements: dict[tuple[str, int, int], str] = {}


def _insert(conn: sqlite3.Connection, into: tuple[str, int], rows: list[tuple[Any, ...]], pad: bool = False) -> None:
    """Insert ``rows`` with a few multi-row statements rather than ``executemany``, which steps SQLite once
    per row: each step releases the interpreter lock and takes it back, and on a node whose loop thread keeps
    the lock busy each taking back can wait up to the switch interval (5 ms), while every release forces
    the loop thread to hand the lock over (measured: jobs of 100 writes took ~250 ms beside a busy thread,
    ~75 ms in statements of these sizes). ``pad``: the rows are upserts that may be repeated, so they are
    padded with copies of the last one up to a single statement's size."""
    head, columns = into
    start, count = 0, len(rows)
    if pad and 1 < count < _INSERT_SIZES[0]:
        size = min(size for size in _INSERT_SIZES if size >= count)
        rows = rows + [rows[-1]] * (size - count)
        count = size
    for size in _INSERT_SIZES:
        while count - start >= size:
            statement = _insert_statements.get((head, columns, size))
            if statement is None:
                one = "(" + ", ".join("?" * columns) + ")"
                statement = _insert_statements[head, columns, size] = head + ", ".join([one] * size)
            chunk = rows[start : start + size]
            conn.execute(statement, [column for row in chunk for column in row])
            start += size


class SqliteJournal:
    """The SQLite side of a SqliteStorage: schema, migration, sync jobs, recovery."""

    def __init__(self, path: Path, fsync: FsyncPolicy, fold_rows: int = FOLD_ROWS) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, got {fsync!r}")
        if type(fold_rows) is not int or fold_rows < 1:
            raise ValueError(f"fold_rows must be a positive int, got {fold_rows!r}")
        self.path = path
        self.fold_rows = fold_rows
        self.wal_path = Path(f"{path}-wal")
        # Jobs may come from worker threads; the lock keeps them (and close) from overlapping on the connection.
        self._lock = threading.Lock()
        # What the file holds for each partition's state row, as last committed: a job rewrites a row from this
        # copy and its own events, never from the row read back.
        self._partitions: dict[int, PartitionState] = {}
        self._logged_lsn = 0
        # The journal holds the record changes of sequence numbers folded_seq + 1 .. next_seq - 1; removals:
        # whether any of them is a removal (the fold's DELETE from records is skipped when none is).
        self._folded_seq = 0
        self._next_seq = 1
        self._removals = False
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
            conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
            conn.execute(f"PRAGMA journal_size_limit={2 * CHECKPOINT_WAL_BYTES}")
            conn.execute("BEGIN IMMEDIATE")
            with conn:
                self._page_bytes = int(conn.execute("PRAGMA page_size").fetchone()[0])
                self._quick_check()
                tables = sorted(row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
                if not tables:
                    self._create_schema()
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
        except UnicodeDecodeError as exc:
            # A damaged header can make a PRAGMA answer bytes that are not text (the journal mode, seen once).
            raise StorageError(f"{self.path}: a damaged database (a setting read back is not text: {exc})") from exc

    def _create_schema(self) -> None:
        for statement in _SCHEMA:
            self._conn.execute(statement)
        self._set_state("schema_version", SCHEMA_VERSION)
        self._set_state("folded_seq", 0)

    def _set_state(self, name: str, value: int) -> None:
        self._conn.execute(_UPSERT_STATE, (name, value, _state_crc(name, value)))

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
            self._migrate_from_v2()
            return
        if len(row) != 3 or not _matches(row[2], _state_crc, *row[:2]):
            raise self._damaged("state", "row 'schema_version': checksum mismatch")
        if row[1] == 2:
            self._migrate_from_v2()
        elif row[1] == 3:
            self._migrate_from_v3()
        elif row[1] != SCHEMA_VERSION:
            raise StorageError(f"{self.path}: schema version {row[1]}, this build reads {SCHEMA_VERSION}")

    def _migrate_from_v1(self) -> None:
        """Add the checksum column to every table (inside the caller's transaction), making the file version 2.
        Version 1 rows have no checksum to verify, so they are trusted as read; quick_check has already looked
        at the file."""
        conn = self._conn
        conn.create_function("kv_log_crc", 6, _v2_log_crc, deterministic=True)
        conn.create_function("kv_snapshot_crc", 5, _v2_snapshot_crc, deterministic=True)
        conn.create_function("kv_meta_crc", 3, _v2_meta_crc, deterministic=True)
        conn.create_function("kv_state_crc", 2, _state_crc, deterministic=True)
        for table in ("log", "snapshot", "meta", "state"):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN crc INTEGER NOT NULL DEFAULT 0")
        conn.execute("UPDATE state SET value = 2 WHERE name = 'schema_version'")
        conn.execute(f"UPDATE log SET crc = kv_log_crc({_V2_LOG_COLUMNS})")
        conn.execute(f"UPDATE snapshot SET crc = kv_snapshot_crc({_V2_SNAPSHOT_COLUMNS})")
        conn.execute(f"UPDATE meta SET crc = kv_meta_crc({_V2_META_COLUMNS})")
        conn.execute("UPDATE state SET crc = kv_state_crc(name, value)")
        log.info("%s: migrated from schema version 1 to 2 (row checksums added)", self.path)

    def _migrate_from_v3(self) -> None:
        """Add the journal (inside the caller's transaction), making the file version 4: the records table
        stays as it is, with nothing to fold."""
        self._conn.execute(_JOURNAL_TABLE)
        self._set_state("schema_version", SCHEMA_VERSION)
        self._set_state("folded_seq", 0)
        log.info("%s: migrated from schema version 3 to %d (record changes journaled, folded in SQL)", self.path, 4)

    def _migrate_from_v2(self) -> None:
        """Rewrite a version 2 file as the current version (inside the caller's transaction): recover the state its
        snapshot and log hold, verifying every row, write it into the new tables and drop the old ones.

        Version 2 versions were LSNs. Every partition the old data names gets the file's highest LSN as its
        applied index, so versions that come from the applied index (``single`` mode) continue above every
        version already stored instead of going back to 1."""
        conn = self._conn
        table = "state"
        try:
            row = conn.execute("SELECT name, value, crc FROM state WHERE name = 'snapshot_lsn'").fetchone()
            if row is None:
                raise self._damaged("state", "row 'snapshot_lsn' is missing")
            if not _matches(row[2], _state_crc, row[0], row[1]):
                raise self._damaged("state", "row 'snapshot_lsn': checksum mismatch")
            last_lsn = row[1]
            records: dict[tuple[int, str], Record | None] = {}
            meta: dict[str, bytes] = {}
            table = "snapshot"
            for partition, key, value, version, expires_at_ms, crc in conn.execute(
                f"SELECT {_V2_SNAPSHOT_COLUMNS}, crc FROM snapshot"
            ):
                if not _matches(crc, _v2_snapshot_crc, partition, key, value, version, expires_at_ms):
                    raise self._damaged("snapshot", f"key {key!r} in partition {partition}: checksum mismatch")
                records[partition, key] = Record(value, version, expires_at_ms)
            table = "meta"
            for name, value, lsn, crc in conn.execute(f"SELECT {_V2_META_COLUMNS}, crc FROM meta"):
                if not _matches(crc, _v2_meta_crc, name, value, lsn):
                    raise self._damaged("meta", f"name {name!r}: checksum mismatch")
                meta[name] = value
            table = "log"
            for lsn, kind, partition, key, value, expires_at_ms, crc in conn.execute(
                f"SELECT {_V2_LOG_COLUMNS}, crc FROM log ORDER BY lsn"
            ):
                if not _matches(crc, _v2_log_crc, lsn, kind, partition, key, value, expires_at_ms):
                    raise self._damaged("log", f"LSN {lsn}: checksum mismatch")
                if lsn != last_lsn + 1:
                    raise self._damaged("log", f"LSN {lsn} follows {last_lsn}: rows are missing or misplaced")
                last_lsn = lsn
                if kind == _V2_PUT:
                    records[partition, key] = Record(value, lsn, expires_at_ms)
                elif kind == _V2_DELETE:
                    records[partition, key] = None  # a delete still shows that its partition was written
                else:
                    meta[key] = value
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{self.path}: cannot read table {table} (the file is damaged): {exc}") from exc
        for old in ("log", "snapshot", "meta", "state"):
            conn.execute(f"DROP TABLE {old}")
        self._create_schema()
        conn.executemany(_UPSERT_RECORD, [_record_row(p, key, r) for (p, key), r in records.items() if r is not None])
        conn.executemany(_UPSERT_META, [(name, value, _meta_crc(name, value)) for name, value in meta.items()])
        applied = PartitionState(applied_index=last_lsn)
        _insert(conn, _UPSERT_PARTITIONS, [_partition_row(p, applied) for p in sorted({p for p, _ in records})])
        log.info(
            "%s: migrated from schema version 2 to %d (records, per-partition logs; the"
            " applied index of every partition is the old file's last LSN, %d)",
            self.path,
            SCHEMA_VERSION,
            last_lsn,
        )

    def _damaged(self, where: str, what: str) -> StorageError:
        return StorageError(
            f"{self.path}: table {where}: {what}. The stored data is damaged and this node holds no other copy"
        )

    # ------------------------------------------------------------ recovery

    def recover_into(self, state: _Restorable) -> None:
        """Restore every row into ``state`` (empty), verifying each one and every partition log's continuity."""
        conn = self._conn
        restore = state.restore
        table = "state"
        try:
            states: dict[str, int] = {}
            for name, value, crc in conn.execute("SELECT name, value, crc FROM state"):
                if not _matches(crc, _state_crc, name, value):
                    raise self._damaged("state", f"row {name!r}: checksum mismatch")
                states[name] = value
            if "folded_seq" not in states:
                raise self._damaged("state", "row 'folded_seq' is missing")
            folded_seq = states["folded_seq"]
            table = "meta"
            for name, value, crc in conn.execute("SELECT name, value, crc FROM meta"):
                if not _matches(crc, _meta_crc, name, value):
                    raise self._damaged("meta", f"name {name!r}: checksum mismatch")
                restore(MetaWritten(0, name, value))
            table = "records"
            for partition, key, value, version, expires, context, siblings, crc in conn.execute(
                f"SELECT {_RECORD_COLUMNS}, crc FROM records"
            ):
                if not _matches(crc, _record_crc, partition, key, value, version, expires, context, siblings):
                    raise self._damaged("records", f"key {key!r} in partition {partition}: checksum mismatch")
                record = Record(value, version, expires, context, _decode_siblings(siblings))
                restore(RecordWritten(0, partition, key, record))
            table = "journal"
            next_seq, removals = self._replay_journal(folded_seq, restore)
            table = "partition_state"
            partitions: dict[int, PartitionState] = {}
            for partition, *columns, crc in conn.execute(f"SELECT {_PARTITION_COLUMNS}, crc FROM partition_state"):
                if not _matches(crc, _partition_crc, partition, *columns):
                    raise self._damaged("partition_state", f"partition {partition}: checksum mismatch")
                partitions[partition] = PartitionState(*columns)
            table = "log_entries"
            logs = self._read_logs(partitions)
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{self.path}: cannot read table {table} (the file is damaged): {exc}") from exc
        for partition in sorted(partitions.keys() | logs.keys()):
            hard_state, applied_index, snapshot_index, snapshot_term = partitions.get(partition, _NO_STATE)
            if snapshot_index:
                restore(LogCompacted(0, partition, snapshot_index, snapshot_term))
            if partition in logs:
                restore(LogAppended(0, partition, tuple(logs[partition])))
            if hard_state is not None:
                restore(HardStateWritten(0, partition, hard_state))
            if applied_index:
                restore(AppliedIndexWritten(0, partition, applied_index))
        self._partitions = partitions
        self._folded_seq, self._next_seq, self._removals = folded_seq, next_seq, removals

    def _replay_journal(self, folded_seq: int, restore: Callable[[Event], None]) -> tuple[int, bool]:
        """Restore the journal's changes (over the records), each row verified, in sequence order, the
        sequence running on from the fold point without a gap; the next sequence number, and whether a
        removal is among them."""
        expected = folded_seq + 1
        removals = False
        for seq, partition, key, value, version, expires, context, siblings, crc in self._conn.execute(
            f"SELECT seq, {_RECORD_COLUMNS}, crc FROM journal ORDER BY seq"
        ):
            if seq != expected:
                raise self._damaged(
                    "journal",
                    f"row {seq} follows {expected - 1}: rows are missing or misplaced (folded to {folded_seq})",
                )
            if not _journal_row_matches(partition, key, value, version, expires, context, siblings, crc):
                raise self._damaged("journal", f"row {seq} (key {key!r} in partition {partition}): checksum mismatch")
            if version is None:
                removals = True
                restore(RecordRemoved(0, partition, key))
            else:
                record = Record(value, version, expires, context, _decode_siblings(siblings))
                restore(RecordWritten(0, partition, key, record))
            expected += 1
        return expected, removals

    def _read_logs(self, partitions: dict[int, PartitionState]) -> dict[int, list[LogEntry]]:
        """Every partition's log entries, verified, each log running on from its snapshot point without a gap."""
        logs: dict[int, list[LogEntry]] = {}
        entries: list[LogEntry] = []
        expected = 0
        for partition, idx, term, data, crc in self._conn.execute(
            f"SELECT {_ENTRY_COLUMNS}, crc FROM log_entries ORDER BY partition, idx"
        ):
            if not _matches(crc, _entry_crc, partition, idx, term, data):
                raise self._damaged("log_entries", f"partition {partition} index {idx}: checksum mismatch")
            if partition not in logs:
                entries = logs[partition] = []
                expected = partitions.get(partition, _NO_STATE).snapshot_index + 1
            if idx != expected:
                raise self._damaged(
                    "log_entries",
                    f"partition {partition} index {idx} follows {expected - 1}: entries are missing or misplaced",
                )
            entries.append(LogEntry(idx, term, data))
            expected += 1
        return logs

    # ------------------------------------------------------------ sync jobs

    def job(self, events: list[Event], up_to_lsn: int) -> SyncJob:
        return SqliteSyncJob(self, events, up_to_lsn)

    def write(self, events: list[Event], up_to_lsn: int) -> None:
        """Write ``events`` in one transaction. A failed write leaves the file and the journal as they were,
        and may be retried."""
        with self._lock:
            if self._closed:
                raise StorageError(f"{self.path}: storage is closed")
            if events[0].lsn != self._logged_lsn + 1:
                raise StorageError(
                    f"{self.path}: sync job starts at LSN {events[0].lsn} but the journal ends at {self._logged_lsn}:"
                    " jobs must run once each, in the order they were prepared"
                )
            records, meta, partitions, logs = self._fold(events)
            seq = self._next_seq
            journal = [_journal_row(seq + n, p, key, r) for n, ((p, key), r) in enumerate(records.items())]
            next_seq = seq + len(journal)
            removals = self._removals or any(r is None for r in records.values())
            appends = [
                (p, e.index, e.term, e.data, _entry_crc(p, e.index, e.term, e.data))
                for p, changes in logs.items()
                for e in changes.entries.values()
            ]
            fold = next_seq - 1 - self._folded_seq >= self.fold_rows
            conn = self._conn
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
                    if journal:
                        _insert(conn, _APPEND_JOURNAL, journal)
                    for p, changes in logs.items():
                        if changes.truncate_from is not None:
                            conn.execute(
                                "DELETE FROM log_entries WHERE partition = ? AND idx >= ?", (p, changes.truncate_from)
                            )
                        if changes.compacted is not None:
                            conn.execute(
                                "DELETE FROM log_entries WHERE partition = ? AND idx <= ?", (p, changes.compacted[0])
                            )
                    if appends:
                        _insert(conn, _INSERT_ENTRIES, appends)
                    if partitions:
                        _insert(conn, _UPSERT_PARTITIONS, [_partition_row(p, s) for p, s in partitions.items()], True)
                    if meta:
                        written = [(n, v, _meta_crc(n, v)) for n, v in meta.items() if v is not None]
                        conn.executemany(_UPSERT_META, written)
                        removed = [(n,) for n, v in meta.items() if v is None]
                        conn.executemany("DELETE FROM meta WHERE name = ?", removed)
                    folded_pages = self._fold_journal(next_seq - 1, removals) if fold else 0
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: sync failed: {exc}") from exc
            # Only once committed: a failed job leaves the journal as it was, for a retry.
            self._partitions.update(partitions)
            self._logged_lsn = up_to_lsn
            self._next_seq = next_seq
            if fold:
                self._folded_seq, self._removals = next_seq - 1, False
            else:
                self._removals = removals
            # Appended rows fill the last page of their table (rewritten whole at every commit) and the next
            # ones; each other changed row dirties a page, and a fold each records page it changes: estimates
            # on the high side, which only bring the next checkpoint earlier.
            pages = 2 + bool(partitions) + len(meta) + 2 * len(logs) + folded_pages
            payload = sum(len(row[3] or b"") + len(row[2]) + 40 for row in journal)
            payload += sum(len(row[3]) + 24 for row in appends)
            self._wal_bytes += self._page_bytes * pages + payload

    def _fold_journal(self, through_seq: int, removals: bool) -> int:
        """Fold the journal rows up to ``through_seq`` into records (inside the caller's transaction), in SQL;
        an estimate of the pages that changed."""
        conn = self._conn
        upsert_writes, delete_removed, drop_folded = _FOLD
        changed = conn.execute(upsert_writes, (through_seq,)).rowcount
        if removals:
            conn.execute(delete_removed, (through_seq,))
        conn.execute(drop_folded, (through_seq,))
        self._set_state("folded_seq", through_seq)
        # Every changed records row may sit on its own page, but the table holds no more pages than the file.
        file_pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        return 2 + min(max(changed, 0) + (through_seq - self._folded_seq) // 64, file_pages)

    def _fold(
        self, events: list[Event]
    ) -> tuple[
        dict[tuple[int, str], Record | None],
        dict[str, bytes | None],
        dict[int, PartitionState],
        dict[int, _LogChanges],
    ]:
        """The net effect of ``events``, in one pass: the last change per record and per meta name (None:
        removed), the partition state rows to write, and each partition log's changes."""
        records: dict[tuple[int, str], Record | None] = {}
        meta: dict[str, bytes | None] = {}
        applied: dict[int, int] = {}
        hard: dict[int, bytes] = {}
        logs: dict[int, _LogChanges] = {}
        for event in events:
            if isinstance(event, RecordWritten):
                records[event.partition, event.key] = event.record
            elif isinstance(event, AppliedIndexWritten):
                applied[event.partition] = event.index
            elif isinstance(event, RecordRemoved):
                records[event.partition, event.key] = None
            elif isinstance(event, LogAppended):
                changes = logs.setdefault(event.partition, _LogChanges())
                for entry in event.entries:
                    changes.entries[entry.index] = entry
            elif isinstance(event, LogTruncated):
                logs.setdefault(event.partition, _LogChanges()).truncate(event.from_index)
            elif isinstance(event, LogCompacted):
                logs.setdefault(event.partition, _LogChanges()).compact(event.through_index, event.term)
            elif isinstance(event, HardStateWritten):
                hard[event.partition] = event.value
            else:
                meta[event.name] = event.value
        partitions: dict[int, PartitionState] = {}
        compacted = {p: changes.compacted for p, changes in logs.items() if changes.compacted is not None}
        for p in applied.keys() | hard.keys() | compacted.keys():
            old = self._partitions.get(p, _NO_STATE)
            snapshot_index, snapshot_term = compacted.get(p, (old.snapshot_index, old.snapshot_term))
            partitions[p] = PartitionState(
                hard.get(p, old.hard_state), applied.get(p, old.applied_index), snapshot_index, snapshot_term
            )
        return records, meta, partitions, logs

    def fold(self) -> None:
        """Fold every journal row into records, in one transaction (close does it; so may a test)."""
        with self._lock:
            if self._closed:
                raise StorageError(f"{self.path}: storage is closed")
            if self._next_seq - 1 == self._folded_seq:
                return
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                with self._conn:
                    self._fold_journal(self._next_seq - 1, self._removals)
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: fold failed: {exc}") from exc
            self._folded_seq, self._removals = self._next_seq - 1, False

    def close(self, fold: bool = True) -> None:
        """Fold what the journal holds (a failed fold leaves it as it was, to be replayed at the next open),
        then close the file. ``fold=False`` leaves the journal as it is (tests: a process killed)."""
        if fold and not self._closed:
            try:
                self.fold()
            except StorageError as exc:
                log.warning("%s: closing without folding the journal: %s", self.path, exc)
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
    def __init__(self, path: str | Path, fsync: FsyncPolicy = "always", *, fold_rows: int = FOLD_ROWS) -> None:
        self.path = Path(path)
        self.journal = SqliteJournal(self.path, fsync, fold_rows)
        super().__init__(self.journal)
        try:
            self.journal.recover_into(self)
        except BaseException:
            self.journal.close(fold=False)
            raise
