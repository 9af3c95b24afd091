from __future__ import annotations

import gc
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kvstore.config import StorageConfig, local_cluster
from kvstore.storage import sqlite as sqlite_engine
from kvstore.storage.base import Record, Storage
from kvstore.storage.factory import open_storage
from kvstore.storage.memory import MemoryStorage
from kvstore.storage.sqlite import SqliteStorage, StorageError

Contents = tuple[list[tuple[int, str, Record]], list[tuple[str, bytes]], int]


def contents(s: MemoryStorage) -> Contents:
    return s.items(), s.meta_items(), s.written_lsn


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "node" / "kv.sqlite3"


def test_conforms_to_protocol_and_creates_missing_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "kv.sqlite3"
    storage: Storage = SqliteStorage(path)
    storage.close()
    assert path.exists()


def test_reopen_recovers_everything_synced(db: Path) -> None:
    s = SqliteStorage(db)
    s.put(0, "a", b"1")
    s.put(3, "b", b"2", expires_at_ms=500)
    s.put(0, "a", b"3")
    s.put(0, "gone", b"x")
    s.delete(0, "gone")
    s.put_meta("term", b"4")
    assert (s.written_lsn, s.synced_lsn) == (6, 0)
    s.sync()
    assert s.synced_lsn == 6
    before = contents(s)
    s.close()

    again = SqliteStorage(db)
    assert contents(again) == before
    assert before[0] == [(0, "a", Record(b"3", 3)), (3, "b", Record(b"2", 2, 500))]
    assert again.synced_lsn == 6
    assert again.put(0, "c", b"5").version == 7
    assert again.purge_expired(now_ms=500, max_keys=10) == 1
    again.close()
    assert SqliteStorage(db).get(3, "b", now_ms=0) is None


def test_close_syncs_pending_events(db: Path) -> None:
    s = SqliteStorage(db, fsync="batch")
    s.put(1, "k", b"v")
    s.close()
    s.close()  # closing twice is harmless
    assert SqliteStorage(db).get(1, "k", 0) == Record(b"v", 1)


def test_unsynced_writes_are_absent_after_a_crash(db: Path) -> None:
    s = SqliteStorage(db, fsync="never")
    s.put(0, "synced", b"1")
    s.put_meta("vote", b"n1")
    s.sync()
    s.put(0, "unsynced", b"2")
    s.put_meta("vote", b"n2")
    s.delete(0, "synced")
    del s  # the crash: no close(), so nothing unsynced is written; the connection closes on collection
    gc.collect()
    again = SqliteStorage(db, fsync="never")
    assert again.items() == [(0, "synced", Record(b"1", 1))]
    assert again.get_meta("vote") == b"n1"
    assert again.written_lsn == 2


def _churn(s: MemoryStorage, steps: int) -> None:
    """Many overwrites and deletes over a few keys, with TTLs and meta, syncing now and then."""
    for i in range(steps):
        key = f"k{(i * 7) % 23}"
        if i % 5 == 3:
            s.delete(i % 3, key)
        else:
            s.put(i % 3, key, f"v{i}".encode(), expires_at_ms=i if i % 4 == 0 else None)
        if i % 11 == 0:
            s.put_meta(f"m{i % 2}", str(i).encode())
        if i % 9 == 0:
            s.sync()


def test_compaction_keeps_state_identical(db: Path) -> None:
    s = SqliteStorage(db, compact_after_writes=17)
    reference = MemoryStorage()
    _churn(s, 400)
    _churn(reference, 400)
    s.sync()
    assert contents(s) == contents(reference)
    s.close()

    with sqlite3.connect(db) as conn:
        log_rows = conn.execute("SELECT count(*) FROM log").fetchone()[0]
        snapshot_lsn = conn.execute("SELECT value FROM state WHERE name = 'snapshot_lsn'").fetchone()[0]
    conn.close()
    assert log_rows < 17 + 9 * 2  # folded regularly: never more than a threshold plus one job
    assert snapshot_lsn > 0

    again = SqliteStorage(db, compact_after_writes=17)
    assert contents(again) == contents(reference)
    _churn(again, 100)  # keeps working on top of a recovered snapshot
    _churn(reference, 100)
    again.close()
    assert contents(SqliteStorage(db)) == contents(reference)


def test_sync_job_runs_in_a_thread_while_writes_arrive(db: Path) -> None:
    s = SqliteStorage(db)
    for i in range(500):
        s.put(0, f"a{i:03}", b"first")
    job = s.prepare_sync()
    assert job is not None and job.up_to_lsn == 500
    worker = threading.Thread(target=job.run)
    worker.start()
    for i in range(500):
        s.put(1, f"b{i:03}", b"during")
        if i % 2:
            s.delete(0, f"a{i:03}")
    worker.join()
    s.complete_sync(job)
    assert s.synced_lsn == 500
    s.sync()
    expected = contents(s)
    s.close()
    assert contents(SqliteStorage(db)) == expected
    assert len(expected[0]) == 750


def test_jobs_must_run_in_order(db: Path) -> None:
    s = SqliteStorage(db)
    s.put(0, "a", b"1")
    first = s.prepare_sync()
    s.put(0, "b", b"2")
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


def test_torn_last_transaction_is_discarded_with_a_warning(
    tmp_path: Path, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = SqliteStorage(db)
    states = []
    for batch in range(4):
        for i in range(20):
            s.put(batch, f"k{i}", os.urandom(50))
        s.sync()
        states.append(contents(s))
    copy = tmp_path / "copy" / "kv.sqlite3"
    copy.parent.mkdir()
    shutil.copy(db, copy)
    wal = Path(f"{db}-wal")
    torn = wal.read_bytes()
    Path(f"{copy}-wal").write_bytes(torn[:-100])  # the last commit frame is cut short
    s.close()
    with caplog.at_level(logging.WARNING, logger="kvstore.storage.sqlite"):
        assert contents(SqliteStorage(copy)) == states[-2]
    [warning] = caplog.records
    assert warning.getMessage().startswith(f"{copy}-wal: recovered up to the last intact commit")
    assert warning.getMessage().endswith("it ends in a torn or cut write")


def test_the_wal_is_checkpointed_just_before_a_commit(
    tmp_path: Path, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_engine, "CHECKPOINT_WAL_BYTES", 32 << 10)
    s = SqliteStorage(db)
    wal = Path(f"{db}-wal")
    states, generations = [contents(s)], set()
    for i in range(120):
        s.put(i % 4, f"k{i:03}", bytes([i % 256]) * 1000)
        s.sync()
        states.append(contents(s))
        generations.add(wal.read_bytes()[16:24])  # the salts: new ones each time the WAL restarts
        # The database file alone never holds the last commit: a checkpoint is always followed by a commit
        # that restarts the WAL, so the WAL never holds only frames the database file has already.
        alone = tmp_path / f"alone{i}" / "kv.sqlite3"
        alone.parent.mkdir()
        shutil.copy(db, alone)
        opened = SqliteStorage(alone)
        assert contents(opened) in states[:-1]
        opened.close()
    assert len(generations) >= 5
    assert wal.stat().st_size < 4 * (32 << 10)


# The first schema, as version 1 of this module created it.
_V1_SCHEMA = (
    "CREATE TABLE log (lsn INTEGER PRIMARY KEY, kind INTEGER NOT NULL, partition INTEGER, key TEXT NOT NULL,"
    " value BLOB, expires_at_ms INTEGER)",
    "CREATE TABLE snapshot (partition INTEGER NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,"
    " version INTEGER NOT NULL, expires_at_ms INTEGER, PRIMARY KEY (partition, key)) WITHOUT ROWID",
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL, lsn INTEGER NOT NULL)",
    "CREATE TABLE state (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


def test_a_version_1_file_is_migrated_and_then_checksummed(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("PRAGMA journal_mode=WAL")
        for statement in _V1_SCHEMA:
            conn.execute(statement)
        conn.execute("INSERT INTO state VALUES ('schema_version', 1), ('snapshot_lsn', 4)")
        conn.executemany(
            "INSERT INTO snapshot VALUES (?, ?, ?, ?, ?)",
            [(0, "a", b"old-a", 1, None), (2, "b", b"bee", 3, 900)],
        )
        conn.execute("INSERT INTO meta VALUES ('term', X'37', 4)")  # b"7"
        conn.executemany(
            "INSERT INTO log VALUES (?, ?, ?, ?, ?, ?)",
            [
                (5, 0, 0, "a", b"new-a", None),  # put
                (6, 1, 2, "b", None, None),  # delete
                (7, 2, None, "vote", b"n2", None),  # meta
                (8, 0, 1, "c", b"", 1234),
            ],
        )
    conn.close()

    with caplog.at_level(logging.INFO, logger="kvstore.storage.sqlite"):
        s = SqliteStorage(db)
    assert [r.getMessage() for r in caplog.records] == [
        f"{db}: migrated from schema version 1 to 2 (row checksums added)"
    ]
    expected: Contents = (
        [(0, "a", Record(b"new-a", 5)), (1, "c", Record(b"", 8, 1234))],
        [("term", b"7"), ("vote", b"n2")],
        8,
    )
    assert contents(s) == expected
    s.put(0, "d", b"after")
    s.close()

    conn = sqlite3.connect(db)
    with conn:
        assert conn.execute("SELECT value FROM state WHERE name = 'schema_version'").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM log WHERE crc = 0").fetchone() == (0,)
        # The migrated rows have checksums: a value changed behind the storage's back is caught.
        conn.execute("UPDATE snapshot SET value = X'00' WHERE key = 'a'")
    conn.close()
    with pytest.raises(StorageError, match=r"table snapshot: key 'a' in partition 0: checksum mismatch"):
        SqliteStorage(db)


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


def test_second_opener_is_refused_while_the_first_holds_the_file(db: Path) -> None:
    s = SqliteStorage(db)
    with pytest.raises(StorageError, match="locked"):
        SqliteStorage(db)
    s.close()
    SqliteStorage(db).close()


def test_bad_settings_are_refused(db: Path) -> None:
    with pytest.raises(ValueError, match="fsync"):
        SqliteStorage(db, fsync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compact_after_writes"):
        SqliteStorage(db, compact_after_writes=0)


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


# ------------------------------------------------------------ kill -9


_WRITER = """
import sys
from kvstore.storage.sqlite import SqliteStorage

s = SqliteStorage(sys.argv[1], fsync="always")
for i in range(100_000):  # bounded: the test kills it long before
    s.put(i % 8, f"key{i}", b"v%d" % i)
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
        assert s.get(i % 8, key, 0) == Record(b"v%d" % i, i + 1)
    assert s.written_lsn >= len(acknowledged)


# ------------------------------------------------------------ model-based


class SyncedStateMatchesModel(RuleBasedStateMachine):
    """Random puts, deletes, syncs and crashes: after a crash the storage holds exactly what was synced."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.path = Path(self.dir) / "kv.sqlite3"
        self.storage = SqliteStorage(self.path, fsync="never", compact_after_writes=5)
        self.written: dict[tuple[int, str], bytes] = {}
        self.synced: dict[tuple[int, str], bytes] = {}

    @rule(partition=st.integers(0, 2), key=st.sampled_from("abcde"), value=st.binary(max_size=8))
    def put(self, partition: int, key: str, value: bytes) -> None:
        self.storage.put(partition, key, value)
        self.written[(partition, key)] = value

    @rule(partition=st.integers(0, 2), key=st.sampled_from("abcde"))
    def delete(self, partition: int, key: str) -> None:
        assert self.storage.delete(partition, key) == ((partition, key) in self.written)
        self.written.pop((partition, key), None)

    @rule()
    def sync(self) -> None:
        self.storage.sync()
        self.synced = dict(self.written)

    @rule()
    def crash_and_reopen(self) -> None:
        del self.storage  # dropped without close(), as in test_unsynced_writes_are_absent_after_a_crash
        gc.collect()
        self.storage = SqliteStorage(self.path, fsync="never", compact_after_writes=5)
        self.written = dict(self.synced)

    @invariant()
    def memory_matches_written(self) -> None:
        assert {(p, k): r.value for p, k, r in self.storage.items()} == self.written

    def teardown(self) -> None:
        self.storage.close()
        shutil.rmtree(self.dir)


TestSyncedStateMatchesModel = SyncedStateMatchesModel.TestCase
TestSyncedStateMatchesModel.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
