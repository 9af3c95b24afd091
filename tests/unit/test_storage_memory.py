from __future__ import annotations

import pytest

from kvstore.storage.base import Record, Storage
from kvstore.storage.memory import DeleteEvent, MemoryStorage, MetaEvent, PutEvent


def _filled() -> MemoryStorage:
    s = MemoryStorage()
    for key in ["b", "a", "c", "ab", "d"]:
        s.put(1, key, key.encode())
    s.put(2, "a", b"other partition")
    return s


def test_conforms_to_protocol() -> None:
    storage: Storage = MemoryStorage()
    assert storage.key_count() == 0


def test_put_get_delete() -> None:
    s = MemoryStorage()
    assert s.get(0, "k", now_ms=0) is None
    assert s.put(0, "k", b"v1") == Record(b"v1", 1)
    assert s.put(0, "k", b"v2") == Record(b"v2", 2)
    assert s.get(0, "k", now_ms=0) == Record(b"v2", 2)
    assert s.delete(0, "k") is True
    assert s.get(0, "k", now_ms=0) is None
    assert s.delete(0, "k") is False
    assert s.written_lsn == 3  # the second delete wrote nothing
    assert s.put(0, "k", b"v3").version == 4  # versions keep growing across delete and re-create


def test_lsn_is_shared_by_all_partitions_and_meta() -> None:
    s = MemoryStorage()
    versions = [s.put(p, "k", b"v").version for p in (3, 1, 2)]
    s.put_meta("term", b"7")
    assert versions == [1, 2, 3]
    assert s.put(1, "x", b"v").version == 5
    assert s.written_lsn == s.synced_lsn == 5
    assert s.prepare_sync() is None


def test_partitions_are_isolated() -> None:
    s = _filled()
    assert s.get(2, "a", 0) == Record(b"other partition", 6)
    assert s.get(2, "b", 0) is None
    assert s.partitions() == [1, 2]
    assert s.key_count() == 6
    s.delete(2, "a")
    assert s.partitions() == [1]
    assert s.scan(2, "", None, 10, 0) == []


def keys(rows: list[tuple[str, Record]]) -> list[str]:
    return [k for k, _ in rows]


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


def test_ttl_hides_expired_records() -> None:
    s = MemoryStorage()
    s.put(0, "short", b"s", expires_at_ms=100)
    s.put(0, "long", b"l", expires_at_ms=200)
    s.put(0, "forever", b"f")
    assert s.get(0, "short", 99) == Record(b"s", 1, 100)
    assert s.get(0, "short", 100) is None
    assert keys(s.scan(0, "", None, 10, 150)) == ["forever", "long"]
    assert keys(s.scan(0, "", None, 1, 150)) == ["forever"]
    assert s.key_count() == 3  # hidden, not yet purged


def test_purge_expired_deletes_up_to_max_and_skips_rewritten_keys() -> None:
    s = MemoryStorage()
    for i in range(5):
        s.put(0, f"k{i}", b"v", expires_at_ms=10 + i)
    s.put(0, "k0", b"renewed", expires_at_ms=1000)  # its old heap entry is stale now
    s.put(0, "k1", b"no ttl")
    s.delete(0, "k2")
    assert s.purge_expired(now_ms=100, max_keys=1) == 1
    assert s.get(0, "k3", 0) is None
    assert s.purge_expired(now_ms=100, max_keys=10) == 1
    assert keys(s.scan(0, "", None, 10, 0)) == ["k0", "k1"]
    assert s.purge_expired(now_ms=100, max_keys=10) == 0
    assert s.purge_expired(now_ms=1000, max_keys=10) == 1
    assert s.items() == [(0, "k1", Record(b"no ttl", 7))]


def test_purge_with_same_expiry_rewrite_deletes_once() -> None:
    s = MemoryStorage()
    s.put(0, "k", b"1", expires_at_ms=5)
    s.put(0, "k", b"2", expires_at_ms=5)
    assert s.purge_expired(10, 10) == 1
    assert s.written_lsn == 3


def test_expiry_heap_stays_bounded_under_rewrites() -> None:
    s = MemoryStorage()
    for i in range(10_000):
        s.put(0, "hot", b"v", expires_at_ms=1_000_000 + i)
    assert len(s._expiry_heap) <= 2 + 1024
    assert s.purge_expired(2_000_000, 10) == 1


def test_meta_values() -> None:
    s = MemoryStorage()
    assert s.get_meta("vote") is None
    s.put_meta("vote", b"n1")
    s.put_meta("vote", b"n2")
    assert s.get_meta("vote") == b"n2"
    assert s.meta_items() == [("vote", b"n2")]


def test_bad_input_is_refused_without_changing_state() -> None:
    s = _filled()
    before = (s.items(), s.written_lsn)
    with pytest.raises(TypeError):
        s.put(1, 5, b"v")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        s.put(1, "k", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        s.put(1, "k", b"v", expires_at_ms=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        s.put_meta("m", "text")  # type: ignore[arg-type]
    assert (s.items(), s.written_lsn) == before


def test_apply_replays_events_with_their_lsns() -> None:
    s = MemoryStorage()
    s.apply(PutEvent(4, 0, "a", b"x", None))
    s.apply(PutEvent(6, 0, "b", b"y", 50))
    s.apply(DeleteEvent(7, 0, "a"))
    s.apply(MetaEvent(9, "term", b"3"))
    s.mark_recovered(12)
    assert s.items() == [(0, "b", Record(b"y", 6, 50))]
    assert s.get_meta("term") == b"3"
    assert s.written_lsn == s.synced_lsn == 12
    assert s.put(0, "c", b"z").version == 13
    assert s.purge_expired(50, 10) == 1


def test_load_copy_is_independent_of_the_image() -> None:
    image = _filled()
    image.put_meta("m", b"1")
    copy = MemoryStorage()
    copy.load_copy(image)
    copy.put(1, "zz", b"new")
    copy.delete(1, "a")
    assert image.get(1, "a", 0) is not None
    assert image.get(1, "zz", 0) is None
    assert copy.written_lsn == image.written_lsn + 2
    with pytest.raises(ValueError, match="empty"):
        copy.load_copy(image)
