"""The per-partition log store of MemoryStorage (and so of every engine built on it): append, bounded
reads, terms, truncation, compaction, synced_through, hard state, applied index, and every refusal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kvstore.storage.base import Record, SyncJob
from kvstore.storage.memory import MemoryStorage, PartitionLogState
from kvstore.storage.simulated import SimDisk, SimStorage
from replication.replica import LogBounds, LogEntry, PartitionLog


def entries(first: int, last: int, term: int = 1, size: int = 1) -> list[LogEntry]:
    return [LogEntry(i, term, bytes([i % 256]) * size) for i in range(first, last + 1)]


def durable() -> SimStorage:
    """A storage with a journal, so that written and synced differ."""
    return SimStorage(SimDisk())


def test_is_a_partition_log_and_one_view_per_partition() -> None:
    s = MemoryStorage()
    log: PartitionLog = s.log(3)
    assert s.log(3) is log
    assert s.log(4) is not log
    assert log.bounds() == LogBounds(0, 0, 0)
    assert log.bounds().first_index == 1
    assert (log.hard_state(), log.applied_index(), log.synced_through()) == (None, 0, 0)
    assert s.partitions() == []  # a log alone holds no record
    with pytest.raises(TypeError, match="partition"):
        s.log("3")  # type: ignore[arg-type]
    s.log(1).set_hard_state(b"one")
    with pytest.raises(TypeError, match="partition"):
        s.log(True)
    with pytest.raises(TypeError, match="partition"):
        s.set_applied_index(True, 1)


def test_append_and_read_back() -> None:
    log = MemoryStorage().log(0)
    log.append(entries(1, 3, term=1))
    log.append([LogEntry(4, 2, b"four")])
    log.append([])  # nothing to append: nothing changes
    assert log.bounds() == LogBounds(0, 0, 4)
    assert log.entries(1, 5, 1000) == [*entries(1, 3, term=1), LogEntry(4, 2, b"four")]
    assert log.entries(2, 4, 1000) == entries(2, 3)
    assert log.entries(3, 100, 1000) == [LogEntry(3, 1, b"\x03"), LogEntry(4, 2, b"four")]  # hi past the end
    assert log.entries(5, 9, 1000) == []  # past the end
    assert log.entries(3, 3, 1000) == []  # empty range
    assert log.entries(4, 2, 1000) == []


def test_entries_are_bounded_by_bytes_but_always_give_the_first() -> None:
    log = MemoryStorage().log(0)
    log.append(entries(1, 5, size=10))
    assert [e.index for e in log.entries(1, 6, 30)] == [1, 2, 3]  # exactly fits
    assert [e.index for e in log.entries(1, 6, 29)] == [1, 2]
    assert [e.index for e in log.entries(2, 6, 0)] == [2]  # the first even past the budget
    assert [e.index for e in log.entries(2, 6, 5)] == [2]
    assert [e.index for e in log.entries(1, 6, 10**9)] == [1, 2, 3, 4, 5]
    log.append([LogEntry(6, 1, b"")])
    assert [e.index for e in log.entries(5, 7, 10)] == [5, 6]  # an empty entry costs nothing


def test_term_at() -> None:
    s = MemoryStorage()
    log = s.log(0)
    assert log.term_at(0) == 0
    assert log.term_at(1) is None
    log.append([LogEntry(1, 1, b"a"), LogEntry(2, 3, b"b"), LogEntry(3, 3, b"c")])
    assert [log.term_at(i) for i in range(5)] == [0, 1, 3, 3, None]
    s.set_applied_index(0, 2)
    log.compact_prefix(2)
    assert [log.term_at(i) for i in range(5)] == [None, None, 3, 3, None]
    assert log.term_at(-1) is None


def test_truncate_suffix() -> None:
    log = MemoryStorage().log(0)
    log.append(entries(1, 5))
    log.truncate_suffix(4)
    assert log.bounds() == LogBounds(0, 0, 3)
    assert log.term_at(4) is None
    log.truncate_suffix(9)  # past the end: nothing to drop
    assert log.bounds().last_index == 3
    log.append([LogEntry(4, 2, b"new")])  # a conflicting suffix replaced
    assert log.entries(3, 5, 100) == [LogEntry(3, 1, b"\x03"), LogEntry(4, 2, b"new")]
    log.truncate_suffix(1)
    assert log.bounds() == LogBounds(0, 0, 0)
    assert log.entries(1, 9, 100) == []


def test_compact_prefix_records_the_snapshot_term() -> None:
    s = MemoryStorage()
    log = s.log(0)
    log.append([*entries(1, 3, term=1), *entries(4, 6, term=2)])
    s.set_applied_index(0, 5)
    log.compact_prefix(4)
    assert log.bounds() == LogBounds(4, 2, 6)
    assert log.bounds().first_index == 5
    assert log.entries(5, 7, 100) == entries(5, 6, term=2)
    log.compact_prefix(4)  # the snapshot point already: nothing changes
    log.compact_prefix(5)
    assert log.bounds() == LogBounds(5, 2, 6)
    log.append([LogEntry(7, 3, b"x")])
    assert log.bounds() == LogBounds(5, 2, 7)
    s.set_applied_index(0, 7)
    log.compact_prefix(7)  # everything: an empty log at the snapshot point
    assert log.bounds() == LogBounds(7, 3, 7)
    assert log.entries(8, 9, 10) == []
    log.append([LogEntry(8, 3, b"y")])
    assert log.term_at(8) == 3


def test_hard_state_and_applied_index() -> None:
    s = MemoryStorage()
    log = s.log(2)
    log.set_hard_state(b"term=1,vote=n1")
    log.set_hard_state(b"term=2,vote=")
    s.set_applied_index(2, 4)  # may run ahead of the log: a protocol without one (single copy)
    s.set_applied_index(2, 9)
    assert (log.hard_state(), log.applied_index()) == (b"term=2,vote=", 9)
    assert (s.log(1).hard_state(), s.log(1).applied_index()) == (None, 0)
    assert s.written_lsn == 4


def _refused_log() -> tuple[MemoryStorage, PartitionLogState]:
    s = MemoryStorage()
    log = s.log(0)
    log.append([*entries(1, 4, term=1)])
    s.set_applied_index(0, 3)
    log.compact_prefix(2)
    log.set_hard_state(b"hs")
    return s, log


# The calls are typed Any: they pass what the annotations forbid, as an untyped caller could.
REFUSALS: list[tuple[type[Exception], str, Callable[[Any, Any], object]]] = [
    (ValueError, "continue the log at index 5", lambda s, log: log.append([LogEntry(6, 1, b"")])),
    (ValueError, "continue the log at index 5", lambda s, log: log.append([LogEntry(4, 1, b"")])),
    (ValueError, "continue the log at index 6", lambda s, log: log.append([LogEntry(5, 1, b""), LogEntry(7, 1, b"")])),
    (ValueError, "term must not be negative", lambda s, log: log.append([LogEntry(5, -1, b"")])),
    (TypeError, "must be LogEntry", lambda s, log: log.append([(5, 1, b"")])),
    (TypeError, "must be LogEntry", lambda s, log: log.append([LogEntry(5, 1, b""), "x"])),
    (TypeError, "fields", lambda s, log: log.append([LogEntry(5, 1, "text")])),  # type: ignore[arg-type]
    (TypeError, "fields", lambda s, log: log.append([LogEntry(5, 1.0, b"")])),  # type: ignore[arg-type]
    (TypeError, "fields", lambda s, log: log.append([LogEntry(True, 1, b"")])),
    (ValueError, "entry 2 is not in the log, which starts at 3", lambda s, log: log.entries(2, 5, 100)),
    (ValueError, "entry 0 is not in the log, which starts at 3", lambda s, log: log.entries(0, 5, 100)),
    (ValueError, "max_bytes", lambda s, log: log.entries(3, 5, -1)),
    (TypeError, "lo", lambda s, log: log.entries("3", 5, 1)),
    (TypeError, "hi", lambda s, log: log.entries(3, None, 1)),
    (TypeError, "max_bytes", lambda s, log: log.entries(3, 5, 1.5)),
    (TypeError, "index", lambda s, log: log.term_at("3")),
    (ValueError, "at or below the snapshot index 2", lambda s, log: log.truncate_suffix(2)),
    (ValueError, "at or below the snapshot index 2", lambda s, log: log.truncate_suffix(0)),
    (TypeError, "from_index", lambda s, log: log.truncate_suffix(3.0)),
    (ValueError, "past the applied index 3", lambda s, log: log.compact_prefix(4)),
    (ValueError, "not in the log", lambda s, log: log.compact_prefix(5)),
    (ValueError, "not in the log", lambda s, log: log.compact_prefix(1)),
    (TypeError, "through_index", lambda s, log: log.compact_prefix(None)),
    (TypeError, "hard state must be bytes", lambda s, log: log.set_hard_state("text")),
    (TypeError, "hard state must be bytes", lambda s, log: log.set_hard_state(None)),
    (ValueError, "cannot go back from 3 to 2", lambda s, log: s.set_applied_index(0, 2)),
    (TypeError, "applied index", lambda s, log: s.set_applied_index(0, 4.0)),
    (TypeError, "applied index", lambda s, log: s.set_applied_index(0, True)),
]


@pytest.mark.parametrize(("error", "message", "call"), REFUSALS)
def test_refusals_change_nothing(
    error: type[Exception], message: str, call: Callable[[MemoryStorage, PartitionLogState], object]
) -> None:
    s, log = _refused_log()

    def state() -> object:
        return (log.bounds(), log.entries(3, 10, 100), log.hard_state(), log.applied_index(), s.written_lsn)

    before = state()
    with pytest.raises(error, match=message):
        call(s, log)
    assert state() == before


def _synced(s: SimStorage) -> SyncJob:
    job = s.prepare_sync()
    assert job is not None
    job.run()
    s.complete_sync(job)
    return job


def test_synced_through_follows_appends_and_syncs() -> None:
    s = durable()
    log = s.log(0)
    log.append(entries(1, 3))
    assert log.synced_through() == 0
    job = s.prepare_sync()
    assert job is not None
    log.append(entries(4, 5))  # written while the job runs: not covered by it
    job.run()
    assert log.synced_through() == 0  # run, but not completed yet
    s.complete_sync(job)
    assert log.synced_through() == 3
    _synced(s)
    assert log.synced_through() == 5


def test_synced_through_drops_to_below_an_unsynced_truncation() -> None:
    s = durable()
    log = s.log(0)
    log.append(entries(1, 5, term=1))
    _synced(s)
    log.truncate_suffix(4)
    assert log.synced_through() == 3  # the durable log still holds 4 and 5: they equal nothing here
    log.append(entries(4, 6, term=2))
    assert log.synced_through() == 3  # the durable 4 and 5 are of term 1, these of term 2
    _synced(s)
    assert log.synced_through() == 6
    log.truncate_suffix(2)
    log.append(entries(2, 2, term=3))
    log.truncate_suffix(2)
    assert log.synced_through() == 1
    log.append(entries(2, 8, term=4))
    assert log.synced_through() == 1
    _synced(s)
    assert log.synced_through() == 8


def test_synced_through_takes_the_lowest_unsynced_append_not_the_oldest() -> None:
    s = durable()
    log = s.log(0)
    log.append(entries(1, 4, term=1))
    _synced(s)
    log.append(entries(5, 5, term=1))
    log.truncate_suffix(3)
    log.append(entries(3, 3, term=2))
    assert log.synced_through() == 2  # the durable 3 is of term 1
    _synced(s)
    assert log.synced_through() == 3


def test_synced_through_is_not_lowered_by_compaction_or_other_partitions() -> None:
    s = durable()
    log, other = s.log(0), s.log(1)
    log.append(entries(1, 4))
    _synced(s)
    s.set_applied_index(0, 3)
    log.compact_prefix(3)
    other.append(entries(1, 2))
    log.set_hard_state(b"hs")
    s.write(0, "k", Record(b"v", 1))
    assert log.synced_through() == 4  # compaction drops nothing above its snapshot point
    assert other.synced_through() == 0


def test_synced_through_of_a_log_never_synced_may_sit_below_its_snapshot() -> None:
    s = durable()
    log = s.log(0)
    log.append(entries(1, 3))
    s.set_applied_index(0, 3)
    log.compact_prefix(3)
    assert log.bounds() == LogBounds(3, 1, 3)
    assert log.synced_through() == 0  # nothing of it is durable yet
    _synced(s)
    assert log.synced_through() == 3


def test_synced_through_without_a_journal_is_the_last_index() -> None:
    s = MemoryStorage()
    log = s.log(0)
    log.append(entries(1, 3))
    assert log.synced_through() == 3
    log.truncate_suffix(2)
    assert log.synced_through() == 1
