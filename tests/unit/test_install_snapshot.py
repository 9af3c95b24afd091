"""``PartitionLog.install_snapshot`` on every engine: the log becomes empty at the snapshot point, the applied
index moves there, and a sync makes it durable in the same job as the records written in that step, so a crash
leaves either the old state or the new one, never a mix."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvstore.storage.base import Record
from kvstore.storage.memory import MemoryStorage
from kvstore.storage.simulated import SimDisk, SimStorage
from kvstore.storage.sqlite import SqliteStorage
from replication.replica import LogBounds, LogEntry

P = 2


def old_state(s: MemoryStorage) -> None:
    """A follower's partition before the snapshot: records of its own, a log 1..5 compacted through 2."""
    s.write(P, "a", Record(b"old-a", 1))
    s.write(P, "gone", Record(b"old", 2))
    log = s.log(P)
    log.append([LogEntry(i, 1, b"\x01e%d" % i) for i in range(1, 6)])
    s.set_applied_index(P, 3)
    log.compact_prefix(2)
    log.set_hard_state(b"hs")


def install(s: MemoryStorage) -> None:
    """What a follower's node does in one step: replace the records, then the log."""
    s.write(P, "a", Record(b"new-a", 40))
    s.remove(P, "gone")
    s.write(P, "b", Record(b"new-b", 41))
    s.log(P).install_snapshot(42, 7)


def view(s: MemoryStorage) -> tuple[object, ...]:
    log = s.log(P)
    return (s.copy_of(P), log.bounds(), log.applied_index(), log.hard_state())


OLD = (
    [("a", Record(b"old-a", 1)), ("gone", Record(b"old", 2))],
    LogBounds(2, 1, 5),
    3,
    b"hs",
)
NEW = ([("a", Record(b"new-a", 40)), ("b", Record(b"new-b", 41))], LogBounds(42, 7, 42), 42, b"hs")


def test_the_log_is_empty_at_the_snapshot_point_and_continues_after_it() -> None:
    s = MemoryStorage()
    old_state(s)
    install(s)
    log = s.log(P)
    assert view(s) == NEW
    assert (log.term_at(42), log.term_at(41), log.term_at(43)) == (7, None, None)
    log.append([LogEntry(43, 7, b"\x01next")])
    assert log.entries(43, 44, 100) == [LogEntry(43, 7, b"\x01next")]


@pytest.mark.parametrize(
    ("index", "term"),
    [(2, 1), (1, 5), (50, -1)],
    ids=["below-the-applied-index", "below-the-snapshot", "negative-term"],
)
def test_a_snapshot_that_would_take_the_replica_back_is_refused(index: int, term: int) -> None:
    s = MemoryStorage()
    old_state(s)
    with pytest.raises(ValueError, match="cannot install snapshot"):
        s.log(P).install_snapshot(index, term)
    assert view(s) == OLD


def test_a_snapshot_at_the_applied_index_empties_the_log() -> None:
    s = MemoryStorage()
    old_state(s)
    s.log(P).install_snapshot(3, 1)
    assert view(s) == (OLD[0], LogBounds(3, 1, 3), 3, b"hs")


def test_a_type_error_changes_nothing() -> None:
    s = MemoryStorage()
    old_state(s)
    with pytest.raises(TypeError, match="index"):
        s.log(P).install_snapshot("42", 7)  # type: ignore[arg-type]
    assert view(s) == OLD


@pytest.mark.parametrize("kind", ["process", "power"])
def test_simulated_crash_keeps_the_old_state_or_the_new_never_a_mix(kind: str) -> None:
    disk = SimDisk()
    s = SimStorage(disk)
    old_state(s)
    s.sync()
    install(s)
    disk.crash(kind)  # type: ignore[arg-type]
    assert view(SimStorage(disk)) == OLD  # the install was never handed to a sync job

    s = SimStorage(disk)
    install(s)
    job = s.prepare_sync(fsync=False)  # written to the OS image only: a process crash keeps it, power loses it
    assert job is not None
    job.run()
    s.complete_sync(job)
    disk.crash(kind)  # type: ignore[arg-type]
    assert view(SimStorage(disk)) == (NEW if kind == "process" else OLD)

    s = SimStorage(disk)
    install(s)
    s.sync()
    disk.crash(kind)  # type: ignore[arg-type]
    assert view(SimStorage(disk)) == NEW


def test_sqlite_installs_in_the_jobs_transaction_and_recovers_it(tmp_path: Path) -> None:
    db = tmp_path / "kv.db"
    s = SqliteStorage(db)
    old_state(s)
    s.sync()
    install(s)
    s.journal.close(fold=False)  # a crash before the sync: the install is lost whole
    s = SqliteStorage(db)
    assert view(s) == OLD
    install(s)
    s.sync()
    s.journal.close(fold=False)
    s = SqliteStorage(db)
    assert view(s) == NEW
    s.log(P).append([LogEntry(43, 7, b"\x01next")])
    s.close()
    s = SqliteStorage(db)
    assert s.log(P).bounds() == LogBounds(42, 7, 43)
    s.close()
