"""Damaged storage files: SqliteStorage refuses to open, naming the file and what is wrong, or it recovers
the state some prefix of the acknowledged writes produced and logs a warning. Never a value nobody wrote.

The damage is done to real files: a database built through SqliteStorage and copied while open, so that
its WAL holds several commits of the current generation with stale frames of an older one behind them
(record changes both folded into the records table and still in the journal), and the same database after
a clean close (no WAL, every page in the main file, the journal folded) and after a crash (no WAL, the
journal not folded).
"""

from __future__ import annotations

import itertools
import logging
import random
import shutil
import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore.storage.base import Record
from kvstore.storage.memory import MemoryStorage
from kvstore.storage.sqlite import SqliteStorage, StorageError
from kvstore.storage.wal_scan import FRAME_HEADER_BYTES, HEADER_BYTES, scan_wal, scan_wal_bytes, wal_checksum
from replication.replica import LogEntry

# Records, meta, and per partition: log bounds, entries, hard state, applied index.
Contents = tuple[list[tuple[int, str, Record]], list[tuple[str, bytes]], list[tuple[Any, ...]]]

DB, WAL = "kv.sqlite3", "kv.sqlite3-wal"
PAGE = 4096  # SQLite's default page size, which the storage keeps
FRAME = FRAME_HEADER_BYTES + PAGE
AUTOCHECKPOINT_PAGES = 20
DAMAGED = "The stored data is damaged and this node holds no other copy"


PARTITIONS = range(3)


def contents(s: MemoryStorage) -> Contents:
    logs = []
    for p in PARTITIONS:
        log = s.log(p)
        bounds = log.bounds()
        entries = log.entries(bounds.first_index, bounds.last_index + 1, 1 << 30)
        logs.append((bounds, entries, log.hard_state(), log.applied_index()))
    return s.items(), s.meta_items(), logs


def query(db: bytes, directory: Path, sql: str) -> list[Any]:
    """Run ``sql`` with plain sqlite3 on a copy of the database file ``db``."""
    copy = directory / "query" / DB
    copy.parent.mkdir(exist_ok=True)
    copy.write_bytes(db)
    conn = sqlite3.connect(copy)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()
        shutil.rmtree(copy.parent)


@dataclass(frozen=True, repr=False)  # megabytes of file contents: a failing example prints without them
class Golden:
    db: bytes  # kv.sqlite3, copied while the storage was open
    wal: bytes  # kv.sqlite3-wal beside it: current commits, then stale frames of an older generation
    closed_db: bytes  # the same data after close(): every page in the main file, no WAL, the journal folded
    unfolded_db: bytes  # the same data after a process crash: every page in the main file, the journal not folded
    states: list[Contents]  # the state after each commit, oldest first: the acknowledged prefixes
    commit_frames: list[int]  # 1-based numbers of the WAL's commit frames in the current generation

    def state_after(self, commits: int) -> int:
        """Index in ``states`` of the state once the first ``commits`` commit frames of the WAL are applied
        (0: only what the last checkpoint wrote into the database file)."""
        return len(self.states) - 1 - len(self.commit_frames) + commits


def frame_start(n: int) -> int:
    return HEADER_BYTES + (n - 1) * FRAME


def _op(s: SqliteStorage, rng: random.Random, n: int, key: str) -> None:
    """One change of any kind. Every value written is unique (it starts with the change's number), so a value
    in the wrong place shows."""
    partition = rng.randrange(3)
    log = s.log(partition)
    draw = rng.random()
    if draw < 0.06:
        s.remove(partition, key)
    elif draw < 0.09:
        s.put_meta(f"m{rng.randrange(3)}", b"meta-%05d-" % n)
    elif draw < 0.12:
        log.set_hard_state(b"hard-%05d-" % n + rng.randbytes(rng.randint(0, 20)))
    elif draw < 0.22:
        bounds = log.bounds()
        if draw < 0.2 or bounds.last_index == bounds.snapshot_index:
            term = (log.term_at(bounds.last_index) or 0) + (draw < 0.13)
            log.append(
                [
                    LogEntry(i, term, b"entry-%05d-" % n + rng.randbytes(rng.randint(0, 100)))
                    for i in range(bounds.last_index + 1, bounds.last_index + 1 + rng.randint(1, 4))
                ]
            )
        elif draw < 0.21:
            log.truncate_suffix(rng.randint(bounds.first_index, bounds.last_index))
        else:
            through = min(bounds.last_index, log.applied_index())
            if through > bounds.snapshot_index:
                log.compact_prefix(rng.randint(bounds.snapshot_index + 1, through))
    else:
        # As single mode writes: the version is the partition's next applied index.
        version = log.applied_index() + 1
        value = b"value-%05d-" % n + rng.randbytes(rng.randint(0, 150))
        context = b"" if draw < 0.8 else b"ctx-%05d" % n
        s.write(
            partition, key, Record(value if draw < 0.95 else None, version, None if draw < 0.9 else 10**12 + n, context)
        )
        s.set_applied_index(partition, version)


def build_golden(directory: Path) -> Golden:
    path = directory / DB
    # fsync=never writes the same files as always: synchronous only decides whether SQLite calls fsync.
    # Folds every 150 record changes: the file holds records and journal rows, and the WAL has folds in it.
    s = SqliteStorage(path, fsync="never", fold_rows=150)
    # SQLite's own checkpoints every 20 pages, which leave the WAL's frames in place and restart it from
    # the top on the next write: stale frames then lie behind the current ones, as a WAL written by an
    # older build (or any SQLite with default settings) holds them.
    s.journal._conn.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
    rng = random.Random(8)
    states = [contents(s)]

    def commit() -> None:
        if s.written_lsn != s.synced_lsn:  # a sync with nothing to write commits nothing
            s.sync()
            states.append(contents(s))
            # Every change _op makes changes the stored state, so each commit adds a distinct state.
            assert states[-1] != states[-2]

    for n in range(900):  # ~600 keys, logs appended, truncated and compacted
        _op(s, rng, n, f"k{rng.randrange(700):03d}")
        if n % 10 == 9:
            commit()
    for n in range(900, 2100):  # small commits on a few keys until the WAL has the shape the tests need
        _op(s, rng, n, f"late{rng.randrange(50):02d}")
        if n % 3 == 2:
            commit()
            scan = scan_wal(Path(f"{path}-wal"))
            # Several commits since the WAL restarted, but no checkpoint yet: the database file must not hold
            # them already. Stale frames behind them.
            shaped = scan.kept_commits >= 6 and scan.kept_frames < AUTOCHECKPOINT_PAGES
            if shaped and scan.size > scan.kept_end + 2 * FRAME:
                break
    db, wal = path.read_bytes(), Path(f"{path}-wal").read_bytes()
    assert s.journal._folded_seq > 0 and s.journal._next_seq > s.journal._folded_seq + 20, "no fold, or no journal"
    s.journal.close(fold=False)
    unfolded_db = path.read_bytes()
    SqliteStorage(path, fsync="never").close()
    # The commit frames, read straight from the frame headers: those with the header's salts, up to the first other.
    frames = [
        struct.unpack_from(">II8s", wal, frame_start(n)) for n in range(1, (len(wal) - HEADER_BYTES) // FRAME + 1)
    ]
    current = itertools.takewhile(lambda frame: frame[2] == wal[16:24], frames)
    commit_frames = [n for n, (_, commit_size, _) in enumerate(current, start=1) if commit_size]
    assert len(commit_frames) >= 6 and len(frames) > commit_frames[-1] + 2, "the golden WAL lost its shape"
    return Golden(db, wal, path.read_bytes(), unfolded_db, states, commit_frames)


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Golden:
    return build_golden(tmp_path_factory.mktemp("golden"))


# ------------------------------------------------------------ damage and outcomes


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :]


def zero(data: bytes, offset: int, length: int) -> bytes:
    end = min(len(data), offset + length)
    return data[:offset] + bytes(end - offset) + data[end:]


@dataclass(frozen=True)
class Outcome:
    error: str | None  # the StorageError's message, with the directory left out
    state: int | None  # index in golden.states of the recovered state; None when no prefix produced it
    warnings: list[str]


_attempts = itertools.count()


def reopen(
    directory: Path, golden: Golden, db: bytes | None, wal: bytes | None, caplog: pytest.LogCaptureFixture
) -> Outcome:
    """Write the (damaged) files into a fresh directory and open them as a node would."""
    target = directory / f"attempt{next(_attempts)}"
    target.mkdir()
    if db is not None:
        (target / DB).write_bytes(db)
    if wal is not None:
        (target / WAL).write_bytes(wal)
    caplog.clear()
    try:
        with caplog.at_level(logging.WARNING, logger="kvstore.storage.sqlite"):
            storage = SqliteStorage(target / DB, fsync="never")
    except StorageError as exc:
        shutil.rmtree(target)
        return Outcome(str(exc).replace(f"{target}/", ""), None, [])
    warnings = [r.getMessage().replace(f"{target}/", "") for r in caplog.records if r.levelno >= logging.WARNING]
    state = contents(storage)
    storage.close()
    shutil.rmtree(target)
    return Outcome(None, golden.states.index(state) if state in golden.states else None, warnings)


def assert_honest(outcome: Outcome, golden: Golden, silent_loss: bool = False) -> None:
    """The contract: refused, naming the file; or an acknowledged prefix, and a shorter one only with a
    warning, unless the damage cannot be told from a crash (``silent_loss``)."""
    if outcome.error is not None:
        assert outcome.error.startswith((f"{DB}: ", f"{WAL}: ")), outcome.error
        return
    assert outcome.state is not None, "opened a state that no prefix of the acknowledged writes produced"
    if outcome.state < len(golden.states) - 1 and not silent_loss:
        assert outcome.warnings, f"recovered prefix {outcome.state} of {len(golden.states) - 1} without a warning"


def test_undamaged_files_open_to_the_last_state(
    tmp_path: Path, golden: Golden, caplog: pytest.LogCaptureFixture
) -> None:
    last = len(golden.states) - 1
    assert reopen(tmp_path, golden, golden.db, golden.wal, caplog) == Outcome(None, last, [])
    assert reopen(tmp_path, golden, golden.closed_db, None, caplog) == Outcome(None, last, [])
    assert reopen(tmp_path, golden, golden.unfolded_db, None, caplog) == Outcome(None, last, [])


# ------------------------------------------------------------ the WAL header


@pytest.mark.parametrize(
    ("offset", "problem"),
    [
        (0, "not a WAL header (magic 0xc87f0682, page size 4096)"),
        (6, "header checksum mismatch"),  # version
        (10, "not a WAL header (magic 0x377f0682, page size 61184)"),
        (13, "header checksum mismatch"),  # checkpoint sequence
        (17, "header checksum mismatch"),  # salt-1
        (22, "header checksum mismatch"),  # salt-2
        (25, "header checksum mismatch"),  # checksum-1
        (31, "header checksum mismatch"),  # checksum-2
    ],
)
def test_a_damaged_wal_header_is_refused(
    tmp_path: Path, golden: Golden, caplog: pytest.LogCaptureFixture, offset: int, problem: str
) -> None:
    outcome = reopen(tmp_path, golden, golden.db, flip(golden.wal, offset), caplog)
    assert outcome.error == (
        f"{WAL}: the WAL header is damaged ({problem}); SQLite would silently ignore the {len(golden.wal) - 32} bytes"
        " of log after it, committed transactions included. To start anyway, accepting that loss, keep a copy of"
        f" both files and run: truncate -s 0 {WAL}"
    )


def test_a_zeroed_wal_header_is_refused(tmp_path: Path, golden: Golden, caplog: pytest.LogCaptureFixture) -> None:
    outcome = reopen(tmp_path, golden, golden.db, zero(golden.wal, 0, HEADER_BYTES), caplog)
    assert outcome.error is not None
    assert outcome.error.startswith(f"{WAL}: the WAL header is damaged (not a WAL header (magic 0x00000000")


def test_a_wal_cut_inside_its_header_recovers_the_checkpointed_state_and_warns(
    tmp_path: Path, golden: Golden, caplog: pytest.LogCaptureFixture
) -> None:
    outcome = reopen(tmp_path, golden, golden.db, golden.wal[:20], caplog)
    assert outcome == Outcome(
        None,
        golden.state_after(0),
        [
            f"{WAL}: recovered up to the last intact commit (byte 0) and dropped the 20 bytes after it, so any"
            " writes they held are lost: its header is unusable (only 20 bytes, shorter than the 32-byte header)"
        ],
    )


# ------------------------------------------------------------ frames of earlier transactions: refused


@pytest.mark.parametrize(
    ("offset", "reason"),
    [
        (0, "checksum mismatch"),  # page number
        (5, "checksum mismatch"),  # database size after commit
        (9, "salt mismatch"),  # salt-1
        (14, "salt mismatch"),  # salt-2
        (17, "checksum mismatch"),  # checksum-1
        (23, "checksum mismatch"),  # checksum-2
        (FRAME_HEADER_BYTES, "checksum mismatch"),  # the page: its first byte,
        (FRAME_HEADER_BYTES + 1000, "checksum mismatch"),  # one in the middle,
        (FRAME - 1, "checksum mismatch"),  # and its last
    ],
)
def test_a_damaged_frame_with_commits_after_it_is_refused(
    tmp_path: Path, golden: Golden, caplog: pytest.LogCaptureFixture, offset: int, reason: str
) -> None:
    first_commit = golden.commit_frames[0]
    outcome = reopen(tmp_path, golden, golden.db, flip(golden.wal, frame_start(first_commit) + offset), caplog)
    # A flipped salt leaves the frame's checksum chain whole: its own transaction is lost with the later ones.
    lost = len(golden.commit_frames) - (reason == "checksum mismatch")
    assert outcome.error == (
        f"{WAL}: frame {first_commit} is damaged ({reason}); SQLite would silently drop it and everything after"
        f" it, including {lost} committed transaction(s). The intact log ends at byte 32. To start anyway,"
        f" accepting that loss, keep a copy of both files and run: truncate -s 32 {WAL}"
    )


@pytest.mark.parametrize("length", [1, 8, 24, FRAME, 3 * FRAME])
def test_a_zeroed_range_with_commits_after_it_is_refused(
    tmp_path: Path, golden: Golden, caplog: pytest.LogCaptureFixture, length: int
) -> None:
    # From the low byte of the page number of the frame after the first commit: across its header, and
    # for the longer ranges beyond (commits remain after all of them).
    damaged = zero(golden.wal, frame_start(golden.commit_frames[0] + 1) + 3, length)
    outcome = reopen(tmp_path, golden, golden.db, damaged, caplog)
    assert outcome.error is not None
    assert outcome.error.startswith(f"{WAL}: frame {golden.commit_frames[0] + 1} is damaged"), outcome.error
    assert outcome.error.endswith(f"truncate -s {frame_start(golden.commit_frames[0] + 1)} {WAL}")


def test_following_the_advice_recovers_the_intact_prefix(
    tmp_path: Path, golden: Golden, caplog: pytest.LogCaptureFixture
) -> None:
    damaged = flip(golden.wal, frame_start(golden.commit_frames[1]) + 2000)
    refused = reopen(tmp_path, golden, golden.db, damaged, caplog)
    assert refused.error is not None
    size = int(refused.error.rsplit("truncate -s ", 1)[1].split()[0])
    assert reopen(tmp_path, golden, golden.db, damaged[:size], caplog) == Outcome(None, golden.state_after(1), [])


# ------------------------------------------------------------ the end of the log: recovered, with a warning


def test_a_damaged_last_transaction_is_dropped_with_a_warning(
    tmp_path: Path, golden: Golden, caplog: pytest.LogCaptureFixture
) -> None:
    *_, before_last, last = golden.commit_frames
    outcome = reopen(tmp_path, golden, golden.db, flip(golden.wal, frame_start(last) + 3000), caplog)
    assert outcome == Outcome(
        None,
        golden.state_after(len(golden.commit_frames) - 1),
        [
            f"{WAL}: recovered up to the last intact commit (byte {frame_start(before_last + 1)}) and dropped the"
            f" {(last - before_last) * FRAME} bytes after it, so any writes they held are lost: frame {last} is"
            " damaged (checksum mismatch) and no intact commit follows it"
        ],
    )


@pytest.mark.parametrize("commits", [0, 1, 3])
def test_a_wal_cut_inside_a_frame_recovers_the_commits_before_it_and_warns(
    tmp_path: Path, golden: Golden, caplog: pytest.LogCaptureFixture, commits: int
) -> None:
    kept_end = frame_start(golden.commit_frames[commits - 1] + 1) if commits else HEADER_BYTES
    cut = frame_start(golden.commit_frames[commits]) + 100
    outcome = reopen(tmp_path, golden, golden.db, golden.wal[:cut], caplog)
    assert outcome == Outcome(
        None,
        golden.state_after(commits),
        [
            f"{WAL}: recovered up to the last intact commit (byte {kept_end}) and dropped the {cut - kept_end}"
            " bytes after it, so any writes they held are lost: it ends in a torn or cut write"
        ],
    )


@pytest.mark.parametrize("length", [FRAME_HEADER_BYTES, 512])
def test_a_lost_frame_header_before_the_last_commit_is_refused(
    tmp_path: Path, golden: Golden, caplog: pytest.LogCaptureFixture, length: int
) -> None:
    # The frame before the last commit frame loses its header (a zeroed sector): nothing is left to check
    # the last commit's chain against, yet that commit is intact, and SQLite would drop it in silence.
    last = golden.commit_frames[-1]
    outcome = reopen(tmp_path, golden, golden.db, zero(golden.wal, frame_start(last - 1), length), caplog)
    assert outcome.error is not None
    assert outcome.error.startswith(f"{WAL}: frame {last - 1} is damaged (salt mismatch)"), outcome.error


def test_a_recovered_tail_is_reported_once_not_at_every_start(
    tmp_path: Path, golden: Golden, caplog: pytest.LogCaptureFixture
) -> None:
    # A torn tail is dropped, with a warning. The node then writes once and
    # is killed (its files copied while open). The next start must find nothing more to report: the frames
    # the recovery dropped must not still be lying behind the new commit.
    *_, before_last, _ = golden.commit_frames
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / DB).write_bytes(golden.db)
    # A long torn tail: five copies of a frame, carrying the current salts, that do not continue the chain.
    intact = golden.wal[: frame_start(before_last + 1)]
    (first / WAL).write_bytes(intact + 5 * golden.wal[frame_start(before_last) : frame_start(before_last + 1)])
    with caplog.at_level(logging.WARNING, logger="kvstore.storage.sqlite"):
        storage = SqliteStorage(first / DB, fsync="never")
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
    storage.write(0, "after", Record(b"v", 10**6))
    storage.sync()
    (second / DB).write_bytes((first / DB).read_bytes())
    (second / WAL).write_bytes((first / WAL).read_bytes())
    expected = contents(storage)
    storage.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kvstore.storage.sqlite"):
        restarted = SqliteStorage(second / DB, fsync="never")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert contents(restarted) == expected
    restarted.close()


def test_a_wal_cut_right_after_a_commit_frame_cannot_be_told_from_a_crash(
    tmp_path: Path, golden: Golden, caplog: pytest.LogCaptureFixture
) -> None:
    # The documented blind spot of single mode: the log looks as if the node had stopped there.
    for commits in range(len(golden.commit_frames)):
        cut = frame_start(golden.commit_frames[commits - 1] + 1) if commits else HEADER_BYTES
        assert reopen(tmp_path, golden, golden.db, golden.wal[:cut], caplog) == Outcome(
            None, golden.state_after(commits), []
        )
    assert reopen(tmp_path, golden, golden.db, b"", caplog) == Outcome(None, golden.state_after(0), [])


def test_stale_frames_are_not_damage(tmp_path: Path, golden: Golden, caplog: pytest.LogCaptureFixture) -> None:
    last = len(golden.states) - 1
    stale = golden.commit_frames[-1] + 1
    for damaged in (
        golden.wal[: frame_start(stale)],  # cut where the current generation ends
        golden.wal[: frame_start(stale) + 500],  # cut inside the first stale frame
        flip(golden.wal, frame_start(stale) + 2),  # a stale frame's page number
        flip(golden.wal, frame_start(stale + 1) + 1000),  # a stale frame's page
    ):
        assert reopen(tmp_path, golden, golden.db, damaged, caplog) == Outcome(None, last, [])


def test_a_refusal_over_the_wal_leaves_both_files_as_they_were(tmp_path: Path, golden: Golden) -> None:
    # It comes before SQLite opens them: closing SQLite would checkpoint the WAL and delete it.
    path = tmp_path / DB
    for db, wal in (
        (golden.db, flip(golden.wal, 3)),  # the header
        (golden.db, flip(golden.wal, frame_start(golden.commit_frames[0]) + 2000)),  # a frame
        (b"", golden.wal),  # the database file emptied
    ):
        path.write_bytes(db)
        Path(f"{path}-wal").write_bytes(wal)
        with pytest.raises(StorageError):
            SqliteStorage(path)
        assert (path.read_bytes(), Path(f"{path}-wal").read_bytes()) == (db, wal)


# ------------------------------------------------------------ the database file


def test_a_database_file_emptied_beside_its_wal_is_refused(
    tmp_path: Path, golden: Golden, caplog: pytest.LogCaptureFixture
) -> None:
    # SQLite would delete the WAL of an empty database file and start afresh.
    for db, state in ((b"", "empty"), (None, "missing")):
        assert reopen(tmp_path, golden, db, golden.wal, caplog).error == (
            f"{DB}: the database file is {state} but its WAL {WAL} holds {len(golden.wal)} bytes (the file was"
            " truncated or removed); SQLite would delete the WAL. Restore the database file, or remove both"
            " files to start empty"
        )
    # SQLite takes a 1-byte file for an empty one too.
    cut_short = f"{DB}: the database file is 1 byte long: it was cut short"
    assert reopen(tmp_path, golden, golden.db[:1], golden.wal, caplog).error == cut_short


def test_a_database_file_cut_to_nothing_without_a_wal_looks_like_a_new_node(
    tmp_path: Path, golden: Golden, caplog: pytest.LogCaptureFixture
) -> None:
    # The other documented blind spot: an empty file is what a node that never wrote anything leaves.
    assert reopen(tmp_path, golden, b"", None, caplog) == Outcome(None, 0, [])


@pytest.mark.parametrize(
    ("table", "sql", "message"),
    [
        (
            "records",
            "SELECT partition, key, value FROM records WHERE value IS NOT NULL ORDER BY key LIMIT 1 OFFSET 100",
            "key {1!r} in partition {0}",
        ),
        (
            "records",
            "SELECT partition, key, context FROM records WHERE context != X'' ORDER BY key LIMIT 1",
            "key {1!r} in partition {0}",
        ),
        (
            "log_entries",
            "SELECT partition, idx, data FROM log_entries ORDER BY partition, idx LIMIT 1 OFFSET 10",
            "partition {0} index {1}",
        ),
        (
            "partition_state",
            "SELECT partition, partition, hard_state FROM partition_state WHERE hard_state IS NOT NULL LIMIT 1",
            "partition {0}",
        ),
        ("meta", "SELECT name, name, value FROM meta ORDER BY name LIMIT 1", "name {0!r}"),
    ],
)
def test_a_flipped_byte_in_a_stored_value_is_refused_naming_the_row(
    tmp_path: Path, golden: Golden, caplog: pytest.LogCaptureFixture, table: str, sql: str, message: str
) -> None:
    [(first, second, value)] = query(golden.closed_db, tmp_path, sql)
    where = message.format(first, second)
    offsets = [i for i in range(len(golden.closed_db)) if golden.closed_db.startswith(value, i)]
    assert offsets
    refused = 0
    for offset in offsets:  # the live row, and any copy left in free space (harmless)
        outcome = reopen(tmp_path, golden, flip(golden.closed_db, offset + len(value) // 2), None, caplog)
        if outcome.error is None:
            assert outcome == Outcome(None, len(golden.states) - 1, [])
        else:
            assert outcome.error == f"{DB}: table {table}: {where}: checksum mismatch. {DAMAGED}"
            refused += 1
    assert refused == 1


@pytest.mark.parametrize(
    "sql",
    [
        # A write: a byte of its value.
        "SELECT seq, partition, key, value FROM journal WHERE version IS NOT NULL ORDER BY seq LIMIT 1 OFFSET 5",
        # A removal: a byte of its key (one bit, so that it stays text).
        "SELECT seq, partition, key, key FROM journal WHERE version IS NULL ORDER BY seq LIMIT 1",
    ],
)
def test_a_changed_byte_in_a_journal_row_is_refused_naming_the_row(
    tmp_path: Path, golden: Golden, caplog: pytest.LogCaptureFixture, sql: str
) -> None:
    [(seq, partition, key, value)] = query(golden.unfolded_db, tmp_path, sql)
    value = value.encode() if isinstance(value, str) else value
    offsets = [i for i in range(len(golden.unfolded_db)) if golden.unfolded_db.startswith(value, i)]
    assert offsets
    if value == key.encode():  # the row is read back with the damaged key
        key = key[:-1] + chr(ord(key[-1]) ^ 0x01)
    expected = f"{DB}: table journal: row {seq} (key {key!r} in partition {partition}): checksum mismatch. {DAMAGED}"
    named = 0
    # The live row, and any copy elsewhere (free space; for a key, the rows of other changes to it).
    for offset in offsets:
        at = offset + len(value) - 1
        damaged = golden.unfolded_db[:at] + bytes([golden.unfolded_db[at] ^ 0x01]) + golden.unfolded_db[at + 1 :]
        outcome = reopen(tmp_path, golden, damaged, None, caplog)
        if outcome.error is None:
            assert outcome == Outcome(None, len(golden.states) - 1, [])
        else:
            assert outcome.error.startswith(f"{DB}: table ") and outcome.error.endswith(DAMAGED)
            named += outcome.error == expected
    assert named == 1


def test_a_journal_row_missing_or_misplaced_is_refused(
    tmp_path: Path, golden: Golden, caplog: pytest.LogCaptureFixture
) -> None:
    [(first, last, folded)] = query(
        golden.unfolded_db,
        tmp_path,
        "SELECT min(seq), max(seq), (SELECT value FROM state WHERE name = 'folded_seq') FROM journal",
    )
    assert first == folded + 1 and last > first + 2
    for change, message in [
        (f"DELETE FROM journal WHERE seq = {first + 1}", f"row {first + 2} follows {first}"),
        (f"DELETE FROM journal WHERE seq = {first}", f"row {first + 1} follows {folded}"),
        (f"UPDATE journal SET seq = {last + 5} WHERE seq = {last}", f"row {last + 5} follows {last - 1}"),
    ]:
        damaged = _changed(golden.unfolded_db, tmp_path, change)
        outcome = reopen(tmp_path, golden, damaged, None, caplog)
        assert outcome.error == (
            f"{DB}: table journal: {message}: rows are missing or misplaced (folded to {folded}). {DAMAGED}"
        )


def _changed(db: bytes, directory: Path, sql: str) -> bytes:
    """The database file ``db`` after ``sql``, run with plain sqlite3 on a copy."""
    copy = directory / "change" / DB
    copy.parent.mkdir(exist_ok=True)
    copy.write_bytes(db)
    conn = sqlite3.connect(copy)
    try:
        with conn:
            conn.execute(sql)
    finally:
        conn.close()
    changed = copy.read_bytes()
    shutil.rmtree(copy.parent)
    return changed


def _page(golden: Golden, tmp_path: Path, name: str) -> int:
    [(root,)] = query(golden.closed_db, tmp_path, f"SELECT rootpage FROM sqlite_schema WHERE name = '{name}'")
    return int(root)


def test_damaged_btree_pages_are_refused(tmp_path: Path, golden: Golden, caplog: pytest.LogCaptureFixture) -> None:
    db = golden.closed_db
    interior = _page(golden, tmp_path, "records")  # the records' root: an interior page of an index b-tree
    assert db[(interior - 1) * PAGE] == 0x02
    # The interior page's right-most child pointer (header bytes 8..12): a leaf page.
    leaf = struct.unpack_from(">I", db, (interior - 1) * PAGE + 8)[0]
    assert db[(leaf - 1) * PAGE] == 0x0A
    log_root = _page(golden, tmp_path, "log_entries")
    damage = {
        "interior page type": flip(db, (interior - 1) * PAGE),
        "interior cell count": flip(db, (interior - 1) * PAGE + 4),
        "interior right-most child": flip(db, (interior - 1) * PAGE + 11),
        "interior first cell pointer": flip(db, (interior - 1) * PAGE + 13),
        "interior page zeroed": zero(db, (interior - 1) * PAGE, PAGE),
        "leaf page type": flip(db, (leaf - 1) * PAGE),
        "leaf cell count": flip(db, (leaf - 1) * PAGE + 4),
        "leaf cell pointer": flip(db, (leaf - 1) * PAGE + 9),
        "leaf page zeroed": zero(db, (leaf - 1) * PAGE, PAGE),
        "leaf cell zeroed": zero(db, (leaf - 1) * PAGE + struct.unpack_from(">H", db, (leaf - 1) * PAGE + 8)[0], 16),
        "log page zeroed": zero(db, (log_root - 1) * PAGE, PAGE),
    }
    for what, damaged in damage.items():
        outcome = reopen(tmp_path, golden, damaged, None, caplog)
        assert outcome.error is not None and outcome.error.startswith(f"{DB}: "), what
        assert "damaged" in outcome.error, (what, outcome.error)


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (0, "not a kvstore database, or a damaged one: file is not a database"),  # the magic string
        (16, "not a kvstore database, or a damaged one: file is not a database"),  # page size
        (18, "cannot open the database: attempt to write a readonly database"),  # write version
        (21, "not a kvstore database, or a damaged one: file is not a database"),  # payload fractions
        (31, "not a kvstore database, or a damaged one: database disk image is malformed"),  # size in pages
        (35, "the database file is damaged: quick_check found Main freelist: "),  # first free-list page
        (59, "not a kvstore database, or a damaged one: malformed database schema"),  # text encoding
    ],
)
def test_a_damaged_database_header_is_refused(
    tmp_path: Path, golden: Golden, caplog: pytest.LogCaptureFixture, offset: int, message: str
) -> None:
    outcome = reopen(tmp_path, golden, flip(golden.closed_db, offset), None, caplog)
    assert outcome.error is not None and outcome.error.startswith(f"{DB}: {message}"), outcome.error


@pytest.mark.parametrize("keep", [1, 50, PAGE, 10 * PAGE + 7, -PAGE, -100])
def test_a_cut_database_file_is_refused(
    tmp_path: Path, golden: Golden, caplog: pytest.LogCaptureFixture, keep: int
) -> None:
    outcome = reopen(tmp_path, golden, golden.closed_db[:keep], None, caplog)
    assert outcome.error is not None and outcome.error.startswith(f"{DB}: "), outcome.error
    assert "damaged" in outcome.error or "cut short" in outcome.error


# ------------------------------------------------------------ any damage


_FILES = st.sampled_from([DB, WAL])
_DAMAGE = st.one_of(
    st.tuples(st.just("flip"), _FILES, st.floats(0, 1, exclude_max=True), st.just(1)),
    st.tuples(st.just("zero"), _FILES, st.floats(0, 1, exclude_max=True), st.sampled_from([1, 3, 8, 64, FRAME, 10**9])),
    st.tuples(st.just("cut"), _FILES, st.floats(0, 1), st.just(0)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damages=st.lists(_DAMAGE, min_size=1, max_size=3))
def test_any_damage_is_refused_or_recovers_an_acknowledged_prefix(
    tmp_path: Path, golden: Golden, caplog: pytest.LogCaptureFixture, damages: list[tuple[str, str, float, int]]
) -> None:
    files = {DB: golden.db, WAL: golden.wal}
    silent_loss = False
    for way, name, where, length in damages:
        data = files[name]
        if not data:
            continue
        offset = min(int(where * len(data)), len(data) - (way != "cut"))
        if way == "flip":
            files[name] = flip(data, offset)
        elif way == "zero":
            files[name] = zero(data, offset, length)
        else:
            files[name] = data[:offset]
            # Cutting the WAL where a frame ends (or the whole of it) looks like a crash before the writes after.
            silent_loss |= name == WAL and (offset == 0 or (offset - HEADER_BYTES) % FRAME == 0)
    # An empty database file and no WAL is what a node that never wrote anything leaves.
    silent_loss |= not files[DB] and not files[WAL]
    assert_honest(reopen(tmp_path, golden, files[DB], files[WAL], caplog), golden, silent_loss)


# ------------------------------------------------------------ the scanner against SQLite's own WAL files


def _sqlite_wal_history(directory: Path) -> list[tuple[int, int, bytes, bytes]]:
    """(rows committed, commits since the WAL last restarted, database file, WAL) after each commit of a
    plain SQLite database that checkpoints and restarts its WAL every few pages."""
    path = directory / "plain.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    conn.execute("CREATE TABLE t (i INTEGER PRIMARY KEY, v BLOB)")  # before WAL mode: every WAL commit is a row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=10")
    rng = random.Random(3)
    history = []
    generation, commits = b"", 0
    for i in range(40):
        conn.execute("INSERT INTO t VALUES (?, ?)", (i, rng.randbytes(300 + 40 * i)))
        wal = Path(f"{path}-wal").read_bytes()
        # A restart writes a new header (new salts) with the first commit after it.
        generation, commits = wal[16:24], (commits + 1 if wal[16:24] == generation else 1)
        history.append((i + 1, commits, path.read_bytes(), wal))
    conn.close()
    return history


def _rows_sqlite_recovers(directory: Path, db: bytes, wal: bytes) -> int:
    copy = directory / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir()
    (copy / "plain.db").write_bytes(db)
    (copy / "plain.db-wal").write_bytes(wal)
    conn = sqlite3.connect(copy / "plain.db")
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    try:
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        conn.close()


def test_the_scanner_reads_sqlites_wal_files_as_sqlite_does(tmp_path: Path) -> None:
    history = _sqlite_wal_history(tmp_path)
    assert history[-1][1] < 40 // 3  # the WAL restarted more than twice: stale frames follow the current ones
    for rows, commits, db, wal in history:
        scan = scan_wal_bytes(wal)
        assert (scan.header_problem, scan.bad_frame, scan.lost_commits, scan.dropped_bytes) == (None, None, 0, 0)
        assert scan.kept_commits == commits
        assert _rows_sqlite_recovers(tmp_path, db, wal) == rows


def test_big_endian_checksums_are_read_like_little_endian_ones(
    tmp_path: Path, golden: Golden, caplog: pytest.LogCaptureFixture
) -> None:
    # SQLite writes the byte order of its machine and reads both: rewrite the golden WAL big-endian.
    wal = bytearray(golden.wal)
    wal[0:4] = struct.pack(">I", 0x377F0683)
    running = wal_checksum(bytes(wal[:24]), 0, 0, big_endian=True)
    wal[24:32] = struct.pack(">2I", *running)
    for n in range(1, golden.commit_frames[-1] + 1):
        start = frame_start(n)
        covered = bytes(wal[start : start + 8] + wal[start + FRAME_HEADER_BYTES : start + FRAME])
        running = wal_checksum(covered, *running, big_endian=True)
        wal[start + 16 : start + 24] = struct.pack(">2I", *running)
    scan = scan_wal_bytes(bytes(wal))
    assert (scan.kept_commits, scan.dropped_bytes) == (len(golden.commit_frames), 0)
    # SQLite itself accepts every frame, so the recovered state is the last one.
    assert reopen(tmp_path, golden, golden.db, bytes(wal), caplog) == Outcome(None, len(golden.states) - 1, [])
    damaged = flip(bytes(wal), frame_start(golden.commit_frames[0]) + 100)
    assert reopen(tmp_path, golden, golden.db, damaged, caplog).error is not None
