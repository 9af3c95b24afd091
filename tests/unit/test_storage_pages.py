"""Reading a partition page by page, and the per-partition record counts and sizes, on every engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.storage.base import Record, Sibling, Storage, record_size
from kvstore.storage.memory import MemoryStorage
from kvstore.storage.simulated import SimDisk, SimStorage
from kvstore.storage.sqlite import SqliteStorage


@pytest.fixture(params=["memory", "sqlite", "simulated"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "memory":
        yield MemoryStorage()
    elif request.param == "sqlite":
        engine = SqliteStorage(tmp_path / "kv.sqlite3", "batch")
        yield engine
        engine.close()
    else:
        yield SimStorage(SimDisk())


def fill(storage: Storage) -> None:
    for i in range(10):
        storage.write(1, f"k{i:02d}", Record(b"v" * i, i + 1))
    storage.write(1, "k05", Record(None, 20, expires_at_ms=5))  # a tombstone is a record too
    storage.write(2, "other", Record(b"x", 1, context=b"ctx", siblings=(Sibling(b"yy", 2, b"c"),)))


def test_a_partition_reads_page_by_page_in_key_order(storage: Storage) -> None:
    fill(storage)
    pages, after = [], None
    while True:
        page = storage.records_after(1, after, 3)
        if not page:
            break
        pages.append([key for key, _ in page])
        after = page[-1][0]
    assert pages == [["k00", "k01", "k02"], ["k03", "k04", "k05"], ["k06", "k07", "k08"], ["k09"]]
    assert storage.records_after(1, "k04", 1) == [("k05", Record(None, 20, expires_at_ms=5))]
    assert storage.records_after(1, "k09", 5) == []
    assert storage.records_after(1, "a", 1)[0][0] == "k00", "after a key that is not stored"
    assert storage.records_after(3, None, 5) == []
    assert storage.records_after(1, None, 0) == []


def test_partition_stats_count_records_and_their_bytes(storage: Storage) -> None:
    fill(storage)
    ones = sum(record_size(f"k{i:02d}", Record(b"v" * i, i + 1)) for i in range(10) if i != 5)
    tombstone = record_size("k05", Record(None, 20))
    assert storage.partition_stats() == {1: (10, ones + tombstone), 2: (1, len("other") + 1 + 3 + 2 + 1)}
    storage.remove(1, "k05")
    storage.write(1, "k00", Record(b"longer", 30))
    assert storage.partition_stats()[1] == (9, ones + len("longer"))  # k00 held b"", now "longer"
    for i in range(10):
        storage.remove(1, f"k{i:02d}")
    assert storage.partition_stats() == {2: (1, 12)}


def test_the_sizes_survive_a_reopen(tmp_path: Path) -> None:
    engine = SqliteStorage(tmp_path / "kv.sqlite3", "batch")
    fill(engine)
    expected = engine.partition_stats()
    engine.close()
    reopened = SqliteStorage(tmp_path / "kv.sqlite3", "batch")
    try:
        assert reopened.partition_stats() == expected
    finally:
        reopened.close()
