"""MemoryStorage records: values, tombstones, siblings, expiry, LSNs, events, recovery and copies."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

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
    Storage,
)
from kvstore.storage.memory import MemoryStorage
from replication.replica import LogBounds, LogEntry


@dataclass
class RecordingJob:
    events: list[Event]
    up_to_lsn: int
    runs: list[int] = field(default_factory=list)

    def run(self) -> None:
        self.runs.append(self.up_to_lsn)


@dataclass
class RecordingJournal:
    jobs: list[RecordingJob] = field(default_factory=list)
    closed: bool = False

    def job(self, events: list[Event], up_to_lsn: int) -> RecordingJob:
        job = RecordingJob(events, up_to_lsn)
        self.jobs.append(job)
        return job

    def close(self) -> None:
        self.closed = True


def _filled() -> MemoryStorage:
    s = MemoryStorage()
    for version, key in enumerate(["b", "a", "c", "ab", "d"], start=1):
        s.write(1, key, Record(key.encode(), version))
    s.write(2, "a", Record(b"other partition", 1))
    return s


def keys(rows: list[tuple[str, Record]]) -> list[str]:
    return [k for k, _ in rows]


def test_conforms_to_protocol() -> None:
    storage: Storage = MemoryStorage()
    assert storage.key_count() == 0
    assert storage.partitions() == []


def test_write_get_remove_keep_the_protocols_versions() -> None:
    s = MemoryStorage()
    assert s.get(0, "k", now_ms=0) is None
    s.write(0, "k", Record(b"v1", 7))
    s.write(0, "k", Record(b"v2", 3))  # storage does not judge versions: the protocol owns them
    assert s.get(0, "k", now_ms=0) == Record(b"v2", 3)
    assert s.get_stored(0, "k") == Record(b"v2", 3)
    assert s.remove(0, "k") is True
    assert s.get(0, "k", now_ms=0) is None
    assert s.get_stored(0, "k") is None
    assert s.remove(0, "k") is False
    assert s.remove(9, "never") is False
    assert s.written_lsn == 3  # the removes of absent keys wrote nothing


def test_lsn_is_shared_by_every_kind_of_change() -> None:
    s = MemoryStorage()
    s.write(3, "k", Record(b"v", 1))
    s.write(1, "k", Record(b"v", 1))
    s.put_meta("epoch", b"7")
    s.log(1).append([LogEntry(1, 1, b"c")])
    s.log(2).set_hard_state(b"term=1")
    s.set_applied_index(1, 1)
    s.remove(3, "k")
    assert s.written_lsn == s.synced_lsn == 7  # no journal: written is synced
    assert s.prepare_sync() is None


def test_tombstones_are_stored_but_never_served() -> None:
    s = MemoryStorage()
    s.write(0, "live", Record(b"v", 1))
    s.write(0, "dead", Record(None, 2, expires_at_ms=500))
    assert s.get(0, "dead", 0) is None
    assert s.get_stored(0, "dead") == Record(None, 2, 500)
    assert keys(s.scan(0, "", None, 10, 0)) == ["live"]
    assert s.copy_of(0) == [("dead", Record(None, 2, 500)), ("live", Record(b"v", 1))]
    assert s.key_count() == 2
    assert s.partitions() == [0]
    assert s.expired_keys(0, 499, 10) == []
    assert s.expired_keys(0, 500, 10) == ["dead"]  # purgeable from its purge time
    # A tombstone without a purge time is kept for good (until the protocol removes it).
    s.write(0, "forever-dead", Record(None, 3))
    assert s.expired_keys(0, 10**12, 10) == ["dead"]


def test_siblings_and_context_round_trip() -> None:
    s = MemoryStorage()
    record = Record(
        b"a",
        5,
        expires_at_ms=None,
        context=b"\x01dvv",
        siblings=(Sibling(b"b", 4, b"ctx-b"), Sibling(None, 3)),
    )
    s.write(0, "k", record)
    assert s.get(0, "k", 0) == record
    assert s.get(0, "k", 0).siblings[1] == Sibling(None, 3, b"")  # type: ignore[union-attr]
    assert s.scan(0, "", None, 1, 0) == [("k", record)]


def test_partitions_are_isolated() -> None:
    s = _filled()
    assert s.get(2, "a", 0) == Record(b"other partition", 1)
    assert s.get(2, "b", 0) is None
    assert s.partitions() == [1, 2]
    assert s.key_count() == 6
    s.remove(2, "a")
    assert s.partitions() == [1]
    assert s.scan(2, "", None, 10, 0) == []
    assert s.copy_of(2) == []
    assert s.expired_keys(2, 0, 10) == []


def test_scan_ranges_and_limits() -> None:
    s = _filled()
    assert keys(s.scan(1, "", None, 100, 0)) == ["a", "ab", "b", "c", "d"]
    assert keys(s.scan(1, "a", "b", 100, 0)) == ["a", "ab"]  # a prefix scan for "a"
    assert keys(s.scan(1, "ab", "d", 100, 0)) == ["ab", "b", "c"]  # end is exclusive
    assert keys(s.scan(1, "b", None, 2, 0)) == ["b", "c"]
    assert keys(s.scan(1, "z", None, 5, 0)) == []
    assert keys(s.scan(1, "c", "a", 5, 0)) == []
    assert s.scan(1, "", None, 0, 0) == []
    assert s.scan(1, "a", "ab", 1, 0) == [("a", Record(b"a", 2))]
    with pytest.raises(ValueError, match="limit"):
        s.scan(1, "", None, -1, 0)


def test_ttl_hides_expired_records_and_copy_of_keeps_them() -> None:
    s = MemoryStorage()
    s.write(0, "short", Record(b"s", 1, 100))
    s.write(0, "long", Record(b"l", 2, 200))
    s.write(0, "forever", Record(b"f", 3))
    assert s.get(0, "short", 99) == Record(b"s", 1, 100)
    assert s.get(0, "short", 100) is None
    assert s.get_stored(0, "short") == Record(b"s", 1, 100)
    assert keys(s.scan(0, "", None, 10, 150)) == ["forever", "long"]
    assert keys(s.scan(0, "", None, 1, 150)) == ["forever"]
    assert keys(s.copy_of(0)) == ["forever", "long", "short"]
    assert s.key_count() == 3  # hidden, not purged: purging is the protocol's


def test_expired_keys_earliest_deadline_first_and_removes_nothing() -> None:
    s = MemoryStorage()
    for i, deadline in enumerate([40, 10, 30, 20, 50]):
        s.write(0, f"k{i}", Record(b"v", i, deadline))
    s.write(0, "k0", Record(b"renewed", 9, 1000))  # its old heap entry (40) is stale now
    s.write(0, "k3", Record(b"no ttl", 9))  # and this one's (20)
    s.remove(0, "k2")  # and this one's (30)
    s.write(1, "other", Record(b"v", 1, 5))
    assert s.expired_keys(0, 9, 10) == []
    assert s.expired_keys(0, 100, 1) == ["k1"]
    assert s.expired_keys(0, 100, 10) == ["k1", "k4"]
    assert s.expired_keys(0, 100, 10) == ["k1", "k4"]  # asking again finds the same: nothing was removed
    assert s.expired_keys(0, 1000, 10) == ["k1", "k4", "k0"]
    assert s.expired_keys(0, 1000, 0) == []
    assert s.expired_keys(1, 1000, 10) == ["other"]
    assert s.key_count() == 5
    s.remove(0, "k1")
    assert s.expired_keys(0, 1000, 10) == ["k4", "k0"]
    with pytest.raises(ValueError, match="max_keys"):
        s.expired_keys(0, 0, -1)


def test_expired_keys_ties_break_by_key_and_a_same_deadline_rewrite_counts_once() -> None:
    s = MemoryStorage()
    s.write(0, "b", Record(b"1", 1, 5))
    s.write(0, "a", Record(b"1", 2, 5))
    s.write(0, "b", Record(b"2", 3, 5))
    s.write(0, "b", Record(b"3", 4, 7))
    s.write(0, "b", Record(b"4", 5, 5))  # back to 5: two entries (5, "b") are in the heap now
    assert s.expired_keys(0, 10, 10) == ["a", "b"]
    assert s.expired_keys(0, 10, 10) == ["a", "b"]


def test_expiry_heap_stays_bounded_under_rewrites() -> None:
    s = MemoryStorage()
    for i in range(10_000):
        s.write(0, "hot", Record(b"v", i, 1_000_000 + i))
    assert len(s._parts[0].heap) <= 2 + 1024
    assert s.expired_keys(0, 2_000_000, 10) == ["hot"]


def test_meta_values() -> None:
    s = MemoryStorage()
    assert s.get_meta("epoch") is None
    s.put_meta("epoch", b"1")
    s.put_meta("epoch", b"2")
    s.put_meta("a", b"x")
    assert s.get_meta("epoch") == b"2"
    assert s.meta_items() == [("a", b"x"), ("epoch", b"2")]


def test_meta_names_are_listed_by_prefix_and_removed_ones_are_gone() -> None:
    s = MemoryStorage()
    for name in ("hint/2", "hint/10", "epoch", "hints"):
        s.put_meta(name, b"v")
    lsn = s.written_lsn
    s.remove_meta("hint/2")
    s.remove_meta("hint/absent")  # writes nothing
    assert s.written_lsn == lsn + 1
    assert s.meta_names("hint/") == ["hint/10"]
    assert s.get_meta("hint/2") is None


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.write(1, 5, Record(b"v", 1)),
        lambda s: s.write("1", "k", Record(b"v", 1)),
        lambda s: s.write(True, "k", Record(b"v", 1)),
        lambda s: s.write(1, "k", b"v"),
        lambda s: s.write(1, "k", Record("text", 1)),  # type: ignore[arg-type]
        lambda s: s.write(1, "k", Record(b"v", 1.0)),  # type: ignore[arg-type]
        lambda s: s.write(1, "k", Record(b"v", True)),
        lambda s: s.write(1, "k", Record(b"v", 1, expires_at_ms=1.5)),  # type: ignore[arg-type]
        lambda s: s.write(1, "k", Record(b"v", 1, context="ctx")),  # type: ignore[arg-type]
        lambda s: s.write(1, "k", Record(b"v", 1, siblings=[Sibling(b"x", 1)])),  # type: ignore[arg-type]
        lambda s: s.write(1, "k", Record(b"v", 1, siblings=((b"x", 1),))),  # type: ignore[arg-type]
        lambda s: s.write(1, "k", Record(b"v", 1, siblings=(Sibling("x", 1),))),  # type: ignore[arg-type]
        lambda s: s.write(1, "k", Record(b"v", 1, siblings=(Sibling(b"x", 1, None),))),  # type: ignore[arg-type]
        lambda s: s.put_meta("m", "text"),
        lambda s: s.put_meta(3, b"v"),
    ],
)
def test_bad_input_is_refused_without_changing_state(call: object) -> None:
    s = _filled()
    before = (s.items(), s.meta_items(), s.written_lsn)
    with pytest.raises(TypeError):
        call(s)  # type: ignore[operator]
    assert (s.items(), s.meta_items(), s.written_lsn) == before


def test_a_journal_receives_every_change_as_its_event() -> None:
    journal = RecordingJournal()
    s = MemoryStorage(journal)
    record = Record(b"v", 1, 99)
    s.write(0, "k", record)
    s.remove(0, "absent")  # writes nothing
    s.remove(0, "k")
    s.put_meta("epoch", b"3")
    log = s.log(4)
    log.append([LogEntry(1, 2, b"a"), LogEntry(2, 2, b"b")])
    log.truncate_suffix(2)
    log.truncate_suffix(5)  # beyond the log: nothing changes
    log.set_hard_state(b"vote")
    s.set_applied_index(4, 1)
    s.set_applied_index(4, 1)  # unchanged: nothing written
    log.compact_prefix(1)
    log.compact_prefix(1)  # already the snapshot point
    assert (s.written_lsn, s.synced_lsn) == (8, 0)
    job = s.prepare_sync()
    assert job is not None and job.up_to_lsn == 8
    assert journal.jobs[0].events == [
        RecordWritten(1, 0, "k", record),
        RecordRemoved(2, 0, "k"),
        MetaWritten(3, "epoch", b"3"),
        LogAppended(4, 4, (LogEntry(1, 2, b"a"), LogEntry(2, 2, b"b"))),
        LogTruncated(5, 4, 2),
        HardStateWritten(6, 4, b"vote"),
        AppliedIndexWritten(7, 4, 1),
        LogCompacted(8, 4, 1, 2),
    ]
    assert s.prepare_sync() is None  # the job owns those events now
    s.write(0, "later", record)  # belongs to the next job
    job.run()
    s.complete_sync(job)
    assert (s.written_lsn, s.synced_lsn) == (9, 8)
    s.close()
    assert journal.closed
    assert [j.up_to_lsn for j in journal.jobs] == [8, 9]
    assert journal.jobs[1].events == [RecordWritten(9, 0, "later", record)]
    assert s.synced_lsn == 9


def test_restore_rebuilds_state_without_recording_or_moving_lsns() -> None:
    journal = RecordingJournal()
    s = MemoryStorage(journal)
    entries = (LogEntry(4, 2, b"d"), LogEntry(5, 3, b"e"), LogEntry(6, 3, b"f"))
    recovered: list[Event] = [
        RecordWritten(40, 0, "a", Record(b"x", 4)),
        RecordWritten(41, 0, "b", Record(None, 5, 50)),
        RecordRemoved(42, 0, "a"),
        RecordRemoved(43, 0, "absent"),
        MetaWritten(44, "epoch", b"3"),
        LogCompacted(45, 7, 3, 2),  # a snapshot point past an empty log: its entries were compacted away
        LogAppended(46, 7, entries),
        LogTruncated(47, 7, 6),
        HardStateWritten(48, 7, b"hs"),
        AppliedIndexWritten(49, 7, 4),
    ]
    for event in recovered:
        s.restore(event)
    assert s.items() == [(0, "b", Record(None, 5, 50))]
    assert s.get_meta("epoch") == b"3"
    log = s.log(7)
    assert log.bounds() == LogBounds(3, 2, 5)
    assert log.entries(4, 10, 100) == list(entries[:2])
    assert (log.hard_state(), log.applied_index(), log.synced_through()) == (b"hs", 4, 5)
    assert s.written_lsn == s.synced_lsn == 0
    assert s.prepare_sync() is None
    assert s.expired_keys(0, 50, 10) == ["b"]
    # Changes after recovery number from 1 and are recorded.
    s.write(0, "c", Record(b"z", 6))
    assert s.written_lsn == 1
    with pytest.raises(ValueError, match="start at 9"):
        s.restore(LogAppended(1, 7, (LogEntry(9, 3, b"gap"),)))


def test_load_copy_shares_nothing_mutable_with_the_image() -> None:
    image = _filled()
    image.put_meta("m", b"1")
    image.write(1, "ttl", Record(b"t", 9, 30))
    image.log(1).append([LogEntry(1, 1, b"a"), LogEntry(2, 1, b"b")])
    image.log(1).set_hard_state(b"hs")
    image.set_applied_index(1, 2)
    copy = MemoryStorage()
    copy.load_copy(image)
    assert copy.items() == image.items()
    assert copy.written_lsn == copy.synced_lsn == 0
    assert copy.log(1).bounds() == LogBounds(0, 0, 2)
    assert (copy.log(1).hard_state(), copy.log(1).applied_index()) == (b"hs", 2)
    copy.write(1, "zz", Record(b"new", 10, 20))
    copy.remove(1, "a")
    copy.put_meta("m", b"2")
    copy.log(1).truncate_suffix(2)
    copy.log(1).compact_prefix(1)
    assert copy.expired_keys(1, 100, 10) == ["zz", "ttl"]
    assert image.get(1, "a", 0) is not None
    assert image.get(1, "zz", 0) is None
    assert image.get_meta("m") == b"1"
    assert image.log(1).bounds() == LogBounds(0, 0, 2)
    assert image.expired_keys(1, 100, 10) == ["ttl"]
    assert copy.log(1).bounds() == LogBounds(1, 1, 1)
    with pytest.raises(ValueError, match="empty"):
        copy.load_copy(image)
