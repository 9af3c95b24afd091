from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvstore.config import ClusterConfig, StorageConfig, local_cluster
from kvstore.storage import sqlite as sqlite_engine
from kvstore.storage.base import Record, Sibling, Storage
from kvstore.storage.factory import open_storage
from kvstore.storage.memory import MemoryStorage
from kvstore.storage.sqlite import SqliteStorage, StorageError
from replication.replica import LogBounds, LogEntry

PARTITIONS = range(4)

# Records, meta, and per partition: log bounds, entries, hard state, applied index.
State = tuple[list[tuple[int, str, Record]], list[tuple[str, bytes]], list[tuple[Any, ...]]]


def state_of(s: MemoryStorage) -> State:
    logs = []
    for p in PARTITIONS:
        log = s.log(p)
        bounds = log.bounds()
        entries = log.entries(bounds.first_index, bounds.last_index + 1, 1 << 30)
        logs.append((p, bounds, entries, log.hard_state(), log.applied_index()))
    return s.items(), s.meta_items(), logs


def crash(s: SqliteStorage) -> None:
    """A process killed after its last commit: the connection goes, the unsynced changes are never written,
    the journal is not folded."""
    s.journal.close(fold=False)


def entries(first: int, last: int, term: int) -> list[LogEntry]:
    return [LogEntry(i, term, b"entry %d/%d" % (i, term)) for i in range(first, last + 1)]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "node" / "kv.sqlite3"


def test_conforms_to_protocol_and_creates_missing_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "kv.sqlite3"
    storage: Storage = SqliteStorage(path)
    storage.close()
    assert path.exists()


def test_reopen_recovers_records_tombstones_siblings_logs_and_state(db: Path) -> None:
    s = SqliteStorage(db)
    s.write(0, "a", Record(b"1", 1))
    s.write(3, "b", Record(b"2", 7, expires_at_ms=500, context=b"ctx"))
    s.write(0, "a", Record(b"3", 2))
    s.write(0, "gone", Record(b"x", 3))
    s.remove(0, "gone")
    s.write(1, "dead", Record(None, 9, expires_at_ms=10_000, context=b"\x00dvv"))
    s.write(2, "both", Record(b"mine", 4, None, b"c", (Sibling(b"theirs", 5, b"c2"), Sibling(None, 6))))
    s.set_applied_index(0, 2)
    s.put_meta("epoch", b"4")
    log = s.log(1)
    log.append(entries(1, 10, 1))
    log.set_hard_state(b"term=3 vote=n2")
    s.set_applied_index(1, 6)
    log.compact_prefix(4)
    log.truncate_suffix(8)
    log.append(entries(8, 9, 2))
    s.log(2).append(entries(1, 3, 1))
    s.log(2).truncate_suffix(1)  # every entry dropped: an empty log, with no snapshot
    assert s.synced_lsn == 0
    s.sync()
    assert s.synced_lsn == s.written_lsn > 0
    before = state_of(s)
    s.close()

    again = SqliteStorage(db)
    assert state_of(again) == before
    assert again.items()[0] == (0, "a", Record(b"3", 2))
    assert again.log(1).bounds() == LogBounds(snapshot_index=4, snapshot_term=1, last_index=9)
    assert again.log(1).term_at(8) == 2
    assert again.log(2).bounds() == LogBounds(0, 0, 0)
    # LSNs are the driver's cursor of this open only: they restart from 0.
    assert (again.written_lsn, again.synced_lsn) == (0, 0)
    again.write(0, "c", Record(b"5", 3))
    assert again.written_lsn == 1
    again.close()


def test_close_syncs_pending_changes(db: Path) -> None:
    s = SqliteStorage(db, fsync="batch")
    s.write(1, "k", Record(b"v", 1))
    s.log(1).set_hard_state(b"h")
    s.close()
    s.close()  # closing twice is harmless
    again = SqliteStorage(db)
    assert again.get(1, "k", 0) == Record(b"v", 1)
    assert again.log(1).hard_state() == b"h"


def test_a_removed_meta_name_stays_removed_after_a_reopen_and_a_crash_keeps_an_unsynced_one(db: Path) -> None:
    s = SqliteStorage(db, fsync="never")
    s.put_meta("hint/1", b"a")
    s.put_meta("hint/2", b"b")
    s.sync()
    s.remove_meta("hint/1")
    s.sync()
    s.remove_meta("hint/2")  # not synced: a crash keeps it
    crash(s)
    again = SqliteStorage(db, fsync="never")
    assert again.meta_names("hint/") == ["hint/2"] and again.get_meta("hint/2") == b"b"
    again.close()


def test_a_crash_loses_exactly_the_unsynced_changes(db: Path) -> None:
    s = SqliteStorage(db, fsync="never")
    s.write(0, "synced", Record(b"1", 1))
    s.set_applied_index(0, 1)
    s.put_meta("vote", b"n1")
    s.log(0).append(entries(1, 5, 1))
    s.log(0).set_hard_state(b"t1")
    s.sync()
    synced = state_of(s)
    s.write(0, "unsynced", Record(b"2", 2))
    s.write(0, "synced", Record(b"changed", 2))
    s.set_applied_index(0, 2)
    s.put_meta("vote", b"n2")
    s.log(0).truncate_suffix(3)
    s.log(0).append(entries(3, 7, 2))
    s.log(0).compact_prefix(2)
    s.log(0).set_hard_state(b"t2")
    s.remove(0, "synced")
    crash(s)
    again = SqliteStorage(db, fsync="never")
    assert state_of(again) == synced
    again.close()


def test_a_job_writes_only_the_last_change_of_each_record(db: Path) -> None:
    s = SqliteStorage(db, fsync="never")
    for version in range(1, 101):
        s.write(0, "hot", Record(b"%d" % version, version))
        s.set_applied_index(0, version)
    s.write(0, "brief", Record(b"x", 101))
    s.remove(0, "brief")
    statements: list[str] = []
    s.journal._conn.set_trace_callback(statements.append)
    s.sync()
    s.journal._conn.set_trace_callback(None)
    # One multi-row INSERT (not a statement per row) of the two rows: b"100", the last value of "hot", bound
    # once, and the removal of "brief", with no value or version.
    [appended] = [sql for sql in statements if "INTO journal" in sql]
    assert appended.count("x'313030'") == 1 and appended.count("'hot'") == 1
    assert appended.endswith(f"(2, 0, 'brief', NULL, NULL, NULL, NULL, NULL, {sqlite_engine._removal_crc(0, 'brief')})")
    assert len([sql for sql in statements if "INTO partition_state" in sql]) == 1
    assert not [sql for sql in statements if "records" in sql]  # nothing folded yet
    s.close()
    assert SqliteStorage(db).items() == [(0, "hot", Record(b"100", 100))]


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_the_journal_is_folded_into_records_in_sql_inside_a_job(db: Path) -> None:
    s = SqliteStorage(db, fsync="never", fold_rows=6)
    s.write(0, "a", Record(b"a1", 1))
    s.write(1, "b", Record(b"b1", 2))
    s.write(0, "gone", Record(b"g", 3))
    s.sync()
    s.remove(0, "a")  # removed: its last change in the fold
    s.remove(0, "gone")
    s.write(0, "gone", Record(b"back", 4))  # removed, then written again
    s.sync()  # 5 rows: not folded yet
    assert s.journal._folded_seq == 0 and s.journal._next_seq == 6
    s.write(1, "b", Record(None, 5, expires_at_ms=99))  # a tombstone is a write
    s.write(2, "c", Record(b"c", 6, context=b"ctx", siblings=(Sibling(b"s", 1),)))
    statements: list[str] = []
    s.journal._conn.set_trace_callback(statements.append)
    s.sync()
    s.journal._conn.set_trace_callback(None)
    # One transaction: the job's own rows, then the fold of everything, in a few statements (no Python per row).
    assert statements[0] == "BEGIN IMMEDIATE" and statements[-1] == "COMMIT"
    fold = [sql for sql in statements if "records" in sql or "DELETE FROM journal" in sql]
    assert [sql.split(" (")[0].split(" WHERE")[0] for sql in fold] == [
        "INSERT OR REPLACE INTO records",
        "DELETE FROM records",
        "DELETE FROM journal",
    ]
    assert statements.index(fold[0]) > max(i for i, sql in enumerate(statements) if "INTO journal" in sql)
    assert s.journal._folded_seq == 7
    expected = s.items()
    crash(s)
    assert _rows(db, "SELECT count(*) FROM journal") == [(0,)]
    assert _rows(db, "SELECT value FROM state WHERE name = 'folded_seq'") == [(7,)]
    assert [(p, key) for p, key, *_ in _rows(db, "SELECT * FROM records ORDER BY partition, key")] == [
        (0, "gone"),
        (1, "b"),
        (2, "c"),
    ]
    # Each records row's checksum is the one computed for its journal row, copied.
    for p, key, value, version, expires, context, siblings, crc in _rows(db, "SELECT * FROM records"):
        assert crc == sqlite_engine._record_crc(p, key, value, version, expires, context, siblings)
    assert SqliteStorage(db).items() == expected


def test_recovery_replays_the_journal_over_the_records(db: Path) -> None:
    s = SqliteStorage(db, fsync="never", fold_rows=4)
    for i in range(10):
        s.write(0, f"k{i % 3}", Record(b"%d" % i, i + 1))
        if i % 4 == 3:
            s.remove(0, f"k{(i + 1) % 3}")
        s.sync()
    expected = state_of(s)
    crash(s)  # the journal holds what the last fold did not take
    assert _rows(db, "SELECT count(*) > 0 FROM journal") == [(1,)]
    again = SqliteStorage(db, fold_rows=4)
    assert state_of(again) == expected
    again.write(0, "k9", Record(b"more", 20))
    again.sync()  # sequence numbers continue from the recovered journal
    expected = state_of(again)
    again.close()  # close folds the rest
    assert _rows(db, "SELECT count(*) FROM journal") == [(0,)]
    assert state_of(SqliteStorage(db)) == expected


def test_a_fold_that_fails_leaves_the_journal_to_be_replayed(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = SqliteStorage(db, fsync="never")
    s.write(0, "a", Record(b"a", 1))
    s.sync()
    expected = s.items()
    s.journal._conn.execute("CREATE TRIGGER no_fold BEFORE INSERT ON records BEGIN SELECT RAISE(FAIL, 'no'); END")
    with caplog.at_level(logging.WARNING, logger="kvstore.storage.sqlite"):
        s.close()
    assert [r.getMessage() for r in caplog.records] == [
        f"{db}: closing without folding the journal: {db}: fold failed: no"
    ]
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DROP TRIGGER no_fold")
    conn.close()
    assert _rows(db, "SELECT count(*) FROM journal") == [(1,)]
    assert SqliteStorage(db).items() == expected


def test_log_truncation_and_compaction_are_range_deletes_in_the_jobs_transaction(db: Path) -> None:
    s = SqliteStorage(db, fsync="never")
    s.log(0).append(entries(1, 1000, 1))
    s.set_applied_index(0, 600)
    s.sync()
    s.log(0).compact_prefix(500)
    s.log(0).truncate_suffix(900)
    statements: list[str] = []
    s.journal._conn.set_trace_callback(statements.append)
    s.sync()
    s.journal._conn.set_trace_callback(None)
    assert [sql.split(" WHERE")[0] for sql in statements if "log_entries" in sql] == ["DELETE FROM log_entries"] * 2
    s.close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT min(idx), max(idx), count(*) FROM log_entries").fetchone() == (501, 899, 399)
        assert conn.execute("SELECT snapshot_index, snapshot_term FROM partition_state").fetchone() == (500, 1)
    finally:
        conn.close()


def test_sync_job_runs_in_a_thread_while_writes_arrive(db: Path) -> None:
    s = SqliteStorage(db)
    for i in range(500):
        s.write(0, f"a{i:03}", Record(b"first", i))
    s.log(0).append(entries(1, 100, 1))
    job = s.prepare_sync()
    assert job is not None and job.up_to_lsn == 501
    worker = threading.Thread(target=job.run)
    worker.start()
    for i in range(500):
        s.write(1, f"b{i:03}", Record(b"during", i))
        if i % 2:
            s.remove(0, f"a{i:03}")
    s.log(0).truncate_suffix(50)
    worker.join()
    s.complete_sync(job)
    assert s.synced_lsn == 501
    s.sync()
    expected = state_of(s)
    s.close()
    assert state_of(SqliteStorage(db)) == expected
    assert len(expected[0]) == 750


def test_jobs_must_run_in_order(db: Path) -> None:
    s = SqliteStorage(db)
    s.write(0, "a", Record(b"1", 1))
    first = s.prepare_sync()
    s.write(0, "b", Record(b"2", 2))
    second = s.prepare_sync()
    assert first is not None and second is not None
    with pytest.raises(StorageError, match="order"):
        second.run()
    first.run()
    second.run()
    with pytest.raises(StorageError, match="order"):
        second.run()  # once each
    s.complete_sync(second)
    s.close()
    assert [k for _, k, _ in SqliteStorage(db).items()] == ["a", "b"]


def test_a_failed_job_changes_nothing_and_can_be_retried(db: Path) -> None:
    s = SqliteStorage(db)
    s.log(0).append(entries(1, 3, 1))
    s.sync()
    s.write(0, "k", Record(b"v", 1))
    s.set_applied_index(0, 1)
    s.log(0).truncate_suffix(2)
    job = s.prepare_sync()
    assert job is not None
    s.journal._conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON partition_state BEGIN SELECT RAISE(FAIL, 'no'); END"
    )
    with pytest.raises(StorageError, match="sync failed"):
        job.run()
    s.journal._conn.execute("DROP TRIGGER refuse")
    job.run()
    s.complete_sync(job)
    expected = state_of(s)
    s.close()
    assert state_of(SqliteStorage(db)) == expected


def test_torn_last_transaction_is_discarded_with_a_warning(
    tmp_path: Path, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = SqliteStorage(db)
    states = []
    for batch in range(4):
        for i in range(20):
            s.write(batch, f"k{i}", Record(os.urandom(50), batch))
        s.log(batch).append(entries(1, 3, batch))
        s.sync()
        states.append(state_of(s))
    copy = tmp_path / "copy" / "kv.sqlite3"
    copy.parent.mkdir()
    shutil.copy(db, copy)
    torn = Path(f"{db}-wal").read_bytes()
    Path(f"{copy}-wal").write_bytes(torn[:-100])  # the last commit frame is cut short
    s.close()
    with caplog.at_level(logging.WARNING, logger="kvstore.storage.sqlite"):
        assert state_of(SqliteStorage(copy)) == states[-2]
    [warning] = caplog.records
    assert warning.getMessage().startswith(f"{copy}-wal: recovered up to the last intact commit")
    assert warning.getMessage().endswith("it ends in a torn or cut write")


def test_the_wal_is_checkpointed_just_before_a_commit(
    tmp_path: Path, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_engine, "CHECKPOINT_WAL_BYTES", 32 << 10)
    s = SqliteStorage(db)
    wal = Path(f"{db}-wal")
    states, generations = [state_of(s)], set()
    for i in range(120):
        s.write(i % 4, f"k{i:03}", Record(bytes([i % 256]) * 1000, i))
        s.log(i % 4).append([LogEntry(i // 4 + 1, 1, b"e" * 200)])
        s.sync()
        states.append(state_of(s))
        generations.add(wal.read_bytes()[16:24])  # the salts: new ones each time the WAL restarts
        # The database file alone never holds the last commit: a checkpoint is always followed by a commit
        # that restarts the WAL, so the WAL never holds only frames the database file has already.
        alone = tmp_path / f"alone{i}" / "kv.sqlite3"
        alone.parent.mkdir()
        shutil.copy(db, alone)
        opened = SqliteStorage(alone)
        assert state_of(opened) in states[:-1]
        opened.close()
    assert len(generations) >= 5
    assert wal.stat().st_size < 4 * (32 << 10)


# ------------------------------------------------------------ migration


# The first schema, as version 1 of this module created it.
_V1_SCHEMA = (
    "CREATE TABLE log (lsn INTEGER PRIMARY KEY, kind INTEGER NOT NULL, partition INTEGER, key TEXT NOT NULL,"
    " value BLOB, expires_at_ms INTEGER)",
    "CREATE TABLE snapshot (partition INTEGER NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,"
    " version INTEGER NOT NULL, expires_at_ms INTEGER, PRIMARY KEY (partition, key)) WITHOUT ROWID",
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL, lsn INTEGER NOT NULL)",
    "CREATE TABLE state (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)
# Version 1 rows: a snapshot up to LSN 4 and log rows 5..8 (kind 0 put, 1 delete, 2 meta).
_V1_SNAPSHOT = [(0, "a", b"old-a", 1, None), (2, "b", b"bee", 3, 900)]
_V1_META = [("term", b"7", 4)]
_V1_LOG = [
    (5, 0, 0, "a", b"new-a", None),
    (6, 1, 2, "b", None, None),
    (7, 2, None, "vote", b"n2", None),
    (8, 0, 1, "c", b"", 1234),
]


def _v1_file(db: Path) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("PRAGMA journal_mode=WAL")
        for statement in _V1_SCHEMA:
            conn.execute(statement)
        conn.execute("INSERT INTO state VALUES ('schema_version', 1), ('snapshot_lsn', 4)")
        conn.executemany("INSERT INTO snapshot VALUES (?, ?, ?, ?, ?)", _V1_SNAPSHOT)
        conn.executemany("INSERT INTO meta VALUES (?, ?, ?)", _V1_META)
        conn.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?, ?)", _V1_LOG)
    conn.close()


# Version 2's row checksums, as version 2 of this module computed them (written out here again, so that the
# migration is checked against the file format, not against its own reading of it).
def _v2_crc(head: bytes, *parts: bytes) -> int:
    crc = zlib.crc32(head)
    for part in parts:
        crc = zlib.crc32(part, crc)
    return crc


def _v2_log_row(
    lsn: int, kind: int, partition: int | None, key: str, value: bytes | None, expires: int | None
) -> tuple[Any, ...]:
    nulls = (partition is None) | (value is None) << 1 | (expires is None) << 2
    head = struct.pack("<BBqqqqI", 1, nulls, lsn, kind, partition or 0, expires or 0, len(key.encode()))
    return (lsn, kind, partition, key, value, expires, _v2_crc(head, key.encode(), value or b""))


def _v2_snapshot_row(partition: int, key: str, value: bytes, version: int, expires: int | None) -> tuple[Any, ...]:
    head = struct.pack("<BBqqqI", 2, expires is None, partition, version, expires or 0, len(key.encode()))
    return (partition, key, value, version, expires, _v2_crc(head, key.encode(), value))


def _v2_meta_row(name: str, value: bytes, lsn: int) -> tuple[Any, ...]:
    return (name, value, lsn, _v2_crc(struct.pack("<BqI", 3, lsn, len(name.encode())), name.encode(), value))


def _v2_state_row(name: str, value: int) -> tuple[Any, ...]:
    return (name, value, _v2_crc(struct.pack("<BqI", 4, value, len(name.encode())), name.encode()))


# The second schema, as version 2 of this module created it.
_V2_SCHEMA = (
    "CREATE TABLE log (lsn INTEGER PRIMARY KEY, kind INTEGER NOT NULL, partition INTEGER, key TEXT NOT NULL,"
    " value BLOB, expires_at_ms INTEGER, crc INTEGER NOT NULL)",
    "CREATE TABLE snapshot (partition INTEGER NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,"
    " version INTEGER NOT NULL, expires_at_ms INTEGER, crc INTEGER NOT NULL, PRIMARY KEY (partition, key))"
    " WITHOUT ROWID",
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL, lsn INTEGER NOT NULL, crc INTEGER NOT NULL)",
    "CREATE TABLE state (name TEXT PRIMARY KEY, value INTEGER NOT NULL, crc INTEGER NOT NULL)",
)


def _v2_file(db: Path) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("PRAGMA journal_mode=WAL")
        for statement in _V2_SCHEMA:
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO state VALUES (?, ?, ?)",
            [_v2_state_row("schema_version", 2), _v2_state_row("snapshot_lsn", 4)],
        )
        conn.executemany("INSERT INTO snapshot VALUES (?, ?, ?, ?, ?, ?)", [_v2_snapshot_row(*r) for r in _V1_SNAPSHOT])
        conn.executemany("INSERT INTO meta VALUES (?, ?, ?, ?)", [_v2_meta_row(*r) for r in _V1_META])
        conn.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?, ?, ?)", [_v2_log_row(*r) for r in _V1_LOG])
    conn.close()


# The state both files hold: versions were LSNs, and every partition the old data names (2 only through a
# delete) gets the file's last LSN as its applied index.
_MIGRATED: State = (
    [(0, "a", Record(b"new-a", 5)), (1, "c", Record(b"", 8, 1234))],
    [("term", b"7"), ("vote", b"n2")],
    [(p, LogBounds(0, 0, 0), [], None, 8 if p in (0, 1, 2) else 0) for p in PARTITIONS],
)


def _tables(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return sorted(row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    finally:
        conn.close()


def _v3_file(db: Path) -> None:
    """A version 3 file holding _MIGRATED: records upserted in place, no journal. Its tables and rows are the
    current ones but for the journal (a current file, folded at close, with the journal taken out)."""
    s = SqliteStorage(db)
    for p, key, record in _MIGRATED[0]:
        s.write(p, key, record)
    for name, value in _MIGRATED[1]:
        s.put_meta(name, value)
    for p in (0, 1, 2):
        s.set_applied_index(p, 8)
    s.close()
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DROP TABLE journal")
        conn.execute("DELETE FROM state WHERE name = 'folded_seq'")
        conn.execute(
            "UPDATE state SET value = 3, crc = ? WHERE name = 'schema_version'",
            (_v2_state_row("schema_version", 3)[2],),
        )
    conn.close()


@pytest.mark.parametrize("version", [1, 2, 3])
def test_old_files_are_migrated_to_version_4(db: Path, caplog: pytest.LogCaptureFixture, version: int) -> None:
    [_v1_file, _v2_file, _v3_file][version - 1](db)
    with caplog.at_level(logging.INFO, logger="kvstore.storage.sqlite"):
        s = SqliteStorage(db)
    assert [r.getMessage() for r in caplog.records] == [
        *([f"{db}: migrated from schema version 1 to 2 (row checksums added)"] if version == 1 else []),
        *(
            [
                f"{db}: migrated from schema version 2 to 4 (records, per-partition logs; the applied index of every"
                " partition is the old file's last LSN, 8)"
            ]
            if version < 3
            else [f"{db}: migrated from schema version 3 to 4 (record changes journaled, folded in SQL)"]
        ),
    ]
    assert state_of(s) == _MIGRATED
    # Single-mode versions come from the applied index: the next write's is above every old one.
    s.write(0, "d", Record(b"after", s.log(0).applied_index() + 1))
    s.set_applied_index(0, 9)
    s.close()
    assert _tables(db) == ["journal", "log_entries", "meta", "partition_state", "records", "state"]
    assert _rows(db, "SELECT name, value FROM state ORDER BY name") == [("folded_seq", 1), ("schema_version", 4)]
    again = SqliteStorage(db)
    assert again.get(0, "d", 0) == Record(b"after", 9)
    again.close()

    # The migrated rows have checksums: a value changed behind the storage's back is caught.
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE records SET value = X'00' WHERE key = 'a'")
    conn.close()
    with pytest.raises(StorageError, match=r"table records: key 'a' in partition 0: checksum mismatch"):
        SqliteStorage(db)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("UPDATE snapshot SET value = X'00' WHERE key = 'b'", r"table snapshot: key 'b' in partition 2: checksum"),
        ("UPDATE log SET key = 'z' WHERE lsn = 7", r"table log: LSN 7: checksum mismatch"),
        ("DELETE FROM log WHERE lsn = 6", r"table log: LSN 7 follows 5: rows are missing or misplaced"),
        ("UPDATE meta SET lsn = 3", r"table meta: name 'term': checksum mismatch"),
    ],
)
def test_a_damaged_version_2_file_is_refused_and_left_as_it_was(db: Path, damage: str, message: str) -> None:
    _v2_file(db)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(damage)
    conn.close()
    before = db.read_bytes()
    with pytest.raises(StorageError, match=message):
        SqliteStorage(db)
    assert _tables(db) == ["log", "meta", "snapshot", "state"]
    assert db.read_bytes() == before


def test_a_newer_schema_is_refused(db: Path) -> None:
    SqliteStorage(db).close()
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            "UPDATE state SET value = 5, crc = ? WHERE name = 'schema_version'",
            (_v2_state_row("schema_version", 5)[2],),
        )
    conn.close()
    with pytest.raises(StorageError, match="schema version 5, this build reads 4"):
        SqliteStorage(db)


# ------------------------------------------------------------ refusals


def test_corrupt_file_gets_a_clear_error(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match=str(db)):
        SqliteStorage(db)


def test_foreign_sqlite_file_is_refused(db: Path) -> None:
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    conn.close()
    with pytest.raises(StorageError, match="not a kvstore database"):
        SqliteStorage(db)


def test_a_log_with_a_gap_is_refused(db: Path) -> None:
    s = SqliteStorage(db)
    s.log(3).append(entries(1, 6, 1))
    s.set_applied_index(3, 2)
    s.log(3).compact_prefix(2)
    s.close()
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM log_entries WHERE idx = 5")
    conn.close()
    with pytest.raises(StorageError, match=r"table log_entries: partition 3 index 6 follows 4: entries are missing"):
        SqliteStorage(db)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM log_entries WHERE idx = 3")
    conn.close()
    with pytest.raises(StorageError, match=r"table log_entries: partition 3 index 4 follows 2"):
        SqliteStorage(db)


def test_second_opener_is_refused_while_the_first_holds_the_file(db: Path) -> None:
    s = SqliteStorage(db)
    with pytest.raises(StorageError, match="locked"):
        SqliteStorage(db)
    s.close()
    SqliteStorage(db).close()


def test_bad_settings_are_refused(db: Path) -> None:
    with pytest.raises(ValueError, match="fsync"):
        SqliteStorage(db, fsync="sometimes")  # type: ignore[arg-type]


def test_open_storage_follows_the_config(tmp_path: Path) -> None:
    memory = open_storage(local_cluster(2, storage=StorageConfig(engine="memory")), "n1")
    assert isinstance(memory, MemoryStorage) and not isinstance(memory, SqliteStorage)
    config = local_cluster(2, storage=StorageConfig(engine="sqlite", data_dir=str(tmp_path), fsync="never"))
    durable = open_storage(config, "n2")
    assert isinstance(durable, SqliteStorage)
    assert durable.path == tmp_path / "n2" / "kv.sqlite3"
    durable.close()
    with pytest.raises(ValueError, match="n9"):
        open_storage(config, "n9")


def test_a_config_naming_compact_after_writes_still_loads_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    data = local_cluster(1).to_dict()
    data["storage"]["compact_after_writes"] = 10_000
    with caplog.at_level(logging.WARNING, logger="kvstore.config"):
        config = ClusterConfig.from_dict(data)
    assert config.storage == StorageConfig()
    assert [r.getMessage() for r in caplog.records] == [
        "storage.compact_after_writes is no longer used and is ignored: the SQLite engine has kept no event log"
        " to fold since schema version 3"
    ]


# ------------------------------------------------------------ kill -9


_WRITER = """
import sys
from kvstore.storage.base import Record
from kvstore.storage.sqlite import SqliteStorage

s = SqliteStorage(sys.argv[1], fsync="always")
for i in range(1, 100_000):  # bounded: the test kills it long before
    s.write(i % 8, f"key{i}", Record(b"v%d" % i, i))
    s.set_applied_index(i % 8, i)
    s.sync()
    print(f"key{i}", flush=True)  # acknowledged only once synced
"""


@pytest.fixture
def writer(db: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_acknowledged_writes_survive_sigkill(db: Path, writer: subprocess.Popen[str]) -> None:
    assert writer.stdout is not None
    acknowledged: list[str] = []
    while len(acknowledged) < 300:
        line = writer.stdout.readline()
        assert line, "the writer exited early"
        acknowledged.append(line.strip())
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    acknowledged += [line.strip() for line in writer.stdout.read().splitlines()]  # acked before the kill

    s = SqliteStorage(db)
    for key in acknowledged:
        i = int(key[3:])
        assert s.get(i % 8, key, 0) == Record(b"v%d" % i, i)
        assert s.log(i % 8).applied_index() >= i
