"""The change feed's read (``Storage.changes_after``) on every engine, and its cursor (``kvstore/changes.py``).

Every engine serves reads from MemoryStorage's ``_Records`` (an append-only (version, key) index, sorted lazily,
compacted past twice the records), so the same behaviour is checked on each: memory, sqlite (also across a
reopen and a crash) and the simulated disk (also across a power loss).
"""

from __future__ import annotations

import base64
import random
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore.changes import MAX_CURSOR_CHARS, MAX_CURSOR_RAW_BYTES, Cursor, changes_page
from kvstore.config import Limits
from kvstore.messages import ChangeItem, ChangesOp, ChangesPage
from kvstore.storage.base import Record, Storage
from kvstore.storage.memory import MemoryStorage
from kvstore.storage.simulated import SimDisk, SimStorage
from kvstore.storage.sqlite import SqliteStorage
from partitioning.partition_map import MAX_PARTITIONS

P = 2
RELAXED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

Page = tuple[list[tuple[str, Record]], int, bool]


@pytest.fixture(params=["memory", "sqlite", "simulated"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], MemoryStorage]]:
    """A factory of fresh, empty storages of one engine (each closed at the end)."""
    made: list[MemoryStorage] = []
    count = iter(range(1_000_000))

    def new() -> MemoryStorage:
        storage: MemoryStorage
        if request.param == "memory":
            storage = MemoryStorage()
        elif request.param == "sqlite":
            storage = SqliteStorage(tmp_path / f"db{next(count)}" / "kv.sqlite3")
        else:
            storage = SimStorage(SimDisk())
        made.append(storage)
        return storage

    yield new
    for storage in made:
        storage.close()


def rec(value: bytes, version: int) -> Record:
    return Record(value, version)


def keys_of(page: Page) -> list[tuple[str, int]]:
    return [(key, record.version) for key, record in page[0]]


def read_all(
    storage: Storage, after: int = 0, limit: int = 1, prefix: str = "", max_examined: int = 100_000
) -> list[tuple[str, int]]:
    """Every change after ``after``, page by page; positions never go back and a page never repeats one."""
    out: list[tuple[str, int]] = []
    position = after
    for _ in range(10_000):
        page = storage.changes_after(P, position, limit, prefix, max_examined)
        assert page[1] >= position
        out.extend(keys_of(page))
        if not page[2]:
            return out
        position = page[1]
    raise AssertionError("the feed never ended")


# ---------------------------------------------------------------- what a page holds


def test_changes_come_in_version_order_with_their_records(make: Callable[[], MemoryStorage]) -> None:
    s = make()
    s.write(P, "b", rec(b"2", 2))
    s.write(P, "a", rec(b"3", 3))
    s.write(P, "c", rec(b"1", 1))
    s.write(P + 1, "other", rec(b"x", 4))  # another partition's changes are not this one's
    rows, position, more = s.changes_after(P, 0, 10)
    assert rows == [("c", rec(b"1", 1)), ("b", rec(b"2", 2)), ("a", rec(b"3", 3))]
    assert (position, more) == (3, False)
    assert s.changes_after(P, 1, 10) == ([("b", rec(b"2", 2)), ("a", rec(b"3", 3))], 3, False)
    assert s.changes_after(P, 3, 10) == ([], 3, False)
    assert s.changes_after(P, 99, 10) == ([], 99, False)


def test_an_unknown_partition_or_a_zero_limit_reads_nothing(make: Callable[[], MemoryStorage]) -> None:
    s = make()
    s.write(P, "a", rec(b"1", 1))
    assert s.changes_after(7, 4, 10) == ([], 4, False)
    assert s.changes_after(P, 0, 0) == ([], 0, False)


def test_a_rewritten_key_shows_once_at_its_newest_version(make: Callable[[], MemoryStorage]) -> None:
    s = make()
    s.write(P, "a", rec(b"1", 1))
    s.write(P, "b", rec(b"1", 2))
    s.write(P, "a", rec(b"2", 3))
    s.write(P, "a", rec(b"3", 4))
    assert s.changes_after(P, 0, 10) == ([("b", rec(b"1", 2)), ("a", rec(b"3", 4))], 4, False)
    # A reader that had read "a" at 1 sees it again at its newest version: at-least-once.
    assert keys_of(s.changes_after(P, 1, 10)) == [("b", 2), ("a", 4)]


def test_a_removed_key_shows_not_at_all_and_a_tombstone_does(make: Callable[[], MemoryStorage]) -> None:
    s = make()
    s.write(P, "gone", rec(b"1", 1))
    s.write(P, "kept", rec(b"1", 2))
    s.write(P, "dead", Record(None, 3, None, b"\x01"))  # a leaderless tombstone is a record
    assert s.remove(P, "gone")
    rows, position, more = s.changes_after(P, 0, 10)
    assert [(k, r.value) for k, r in rows] == [("kept", b"1"), ("dead", None)]
    assert (position, more) == (3, False)
    # Removed and written again: shows once, at the new version.
    s.write(P, "gone", rec(b"2", 4))
    assert keys_of(s.changes_after(P, 0, 10)) == [("kept", 2), ("dead", 3), ("gone", 4)]


def test_a_prefix_filters_keys_and_the_position_passes_every_record_examined(make: Callable[[], MemoryStorage]) -> None:
    s = make()
    for i, key in enumerate(["__fs/on/v/1", "user/1", "__fs/on/v/2", "user/2", "__fs/ev/v/1"], start=1):
        s.write(P, key, rec(b"x", i))
    assert s.changes_after(P, 0, 10, "__fs/on/") == (
        [("__fs/on/v/1", rec(b"x", 1)), ("__fs/on/v/2", rec(b"x", 3))],
        5,
        False,
    )
    assert keys_of(s.changes_after(P, 0, 10, "__fs/")) == [("__fs/on/v/1", 1), ("__fs/on/v/2", 3), ("__fs/ev/v/1", 5)]
    assert s.changes_after(P, 0, 10, "nothing/") == ([], 5, False)


def test_limit_ends_a_page_and_the_next_page_goes_on_from_its_position(make: Callable[[], MemoryStorage]) -> None:
    s = make()
    for v in range(1, 8):
        s.write(P, f"k{v}", rec(b"x", v))
    assert keys_of(s.changes_after(P, 0, 3)) == [("k1", 1), ("k2", 2), ("k3", 3)]
    assert s.changes_after(P, 0, 3)[1:] == (3, True)
    assert keys_of(s.changes_after(P, 3, 3)) == [("k4", 4), ("k5", 5), ("k6", 6)]
    assert s.changes_after(P, 6, 3) == ([("k7", rec(b"x", 7))], 7, False)
    assert read_all(s, limit=2) == [(f"k{v}", v) for v in range(1, 8)]


def test_max_examined_bounds_a_page_that_finds_nothing_matching(make: Callable[[], MemoryStorage]) -> None:
    s = make()
    for v in range(1, 11):
        s.write(P, f"other/{v}", rec(b"x", v))
    s.write(P, "want/1", rec(b"x", 11))
    assert s.changes_after(P, 0, 5, "want/", 4) == ([], 4, True)
    assert s.changes_after(P, 4, 5, "want/", 4) == ([], 8, True)
    assert s.changes_after(P, 8, 5, "want/", 4) == ([("want/1", rec(b"x", 11))], 11, False)
    assert read_all(s, limit=5, prefix="want/", max_examined=3) == [("want/1", 11)]


def test_a_page_never_splits_records_of_one_version(make: Callable[[], MemoryStorage]) -> None:
    # A move or a batch may store several keys at one version: a page that ended inside them would make the
    # next page (after = that version) skip the rest.
    s = make()
    s.write(P, "a", rec(b"x", 1))
    for key in ["t1", "t2", "t3", "t4"]:
        s.write(P, key, rec(b"x", 2))
    s.write(P, "z", rec(b"x", 3))
    rows, position, more = s.changes_after(P, 0, 2)
    assert [k for k, _ in rows] == ["a", "t1", "t2", "t3", "t4"]
    assert (position, more) == (2, True)
    rows, position, more = s.changes_after(P, 0, 5, "", 2)
    assert [k for k, _ in rows] == ["a", "t1", "t2", "t3", "t4"]
    assert read_all(s, limit=1) == [("a", 1), ("t1", 2), ("t2", 2), ("t3", 2), ("t4", 2), ("z", 3)]


def test_records_stored_at_older_versions_are_read_in_version_order(make: Callable[[], MemoryStorage]) -> None:
    # A move, a snapshot install or a range merge stores records with the versions they had elsewhere.
    s = make()
    s.write(P, "new", rec(b"x", 10))
    s.write(P, "moved/b", rec(b"x", 4))
    s.write(P, "moved/a", rec(b"x", 2))
    assert keys_of(s.changes_after(P, 0, 10)) == [("moved/a", 2), ("moved/b", 4), ("new", 10)]
    assert keys_of(s.changes_after(P, 3, 10)) == [("moved/b", 4), ("new", 10)]
    s.write(P, "later", rec(b"x", 11))  # appended after the index was sorted: still in order
    s.write(P, "moved/c", rec(b"x", 3))
    assert read_all(s, limit=2) == [("moved/a", 2), ("moved/c", 3), ("moved/b", 4), ("new", 10), ("later", 11)]


def test_the_index_is_compacted_and_stays_bounded_by_the_records(make: Callable[[], MemoryStorage]) -> None:
    s = make()
    version = 0
    for _ in range(400):
        for key in ["a", "b", "c", "d", "e"]:
            version += 1
            s.write(P, key, rec(b"x", version))
    part = s._parts[P]
    assert len(part.change_versions) == len(part.change_keys) <= 2 * len(part.records) + 1024
    assert keys_of(s.changes_after(P, 0, 10)) == [(k, version - 4 + i) for i, k in enumerate("abcde")]
    assert keys_of(s.changes_after(P, version - 2, 10)) == [("d", version - 1), ("e", version)]


def test_a_copy_of_the_storage_has_its_own_index(make: Callable[[], MemoryStorage]) -> None:
    s = make()
    s.write(P, "a", rec(b"x", 1))
    copy = MemoryStorage()
    copy.load_copy(s)
    s.write(P, "b", rec(b"x", 2))
    copy.write(P, "c", rec(b"x", 3))
    assert keys_of(s.changes_after(P, 0, 10)) == [("a", 1), ("b", 2)]
    assert keys_of(copy.changes_after(P, 0, 10)) == [("a", 1), ("c", 3)]


def test_a_key_stored_again_at_the_same_version_shows_once(make: Callable[[], MemoryStorage]) -> None:
    s = make()
    s.write(P, "a", rec(b"x", 5))
    s.remove(P, "a")  # a move's stream restarts: the partial copy is cleared ...
    s.write(P, "a", rec(b"x", 5))  # ... and copied again
    s.write(P, "b", rec(b"y", 5))
    s.write(P, "b", rec(b"y", 5))
    assert keys_of(s.changes_after(P, 0, 10)) == [("a", 5), ("b", 5)]


# ---------------------------------------------------------------- durability


def test_sqlite_serves_the_same_feed_after_a_reopen_and_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "kv.sqlite3"
    s = SqliteStorage(path)
    s.write(P, "a", rec(b"1", 1))
    s.write(P, "b", rec(b"1", 2))
    s.write(P, "a", rec(b"2", 3))
    s.write(P, "moved", rec(b"1", 1))
    s.set_applied_index(P, 3)
    s.close()
    reopened = SqliteStorage(path)
    expected = [("moved", 1), ("b", 2), ("a", 3)]
    assert read_all(reopened, limit=1) == expected
    reopened.write(P, "c", rec(b"1", 4))
    reopened.remove(P, "b")
    reopened.sync()
    reopened.write(P, "lost", rec(b"1", 5))  # never synced: a crash forgets it
    reopened.journal.close(fold=False)
    recovered = SqliteStorage(path)
    try:
        assert read_all(recovered, limit=2) == [("moved", 1), ("a", 3), ("c", 4)]
    finally:
        recovered.close()


def test_the_simulated_disk_serves_what_survives_a_power_loss() -> None:
    disk = SimDisk()
    s = SimStorage(disk)
    s.write(P, "a", rec(b"1", 1))
    s.write(P, "b", rec(b"1", 2))
    s.sync()
    s.write(P, "a", rec(b"2", 3))  # not synced
    s.write(P, "c", rec(b"1", 4))
    assert read_all(s) == [("b", 2), ("a", 3), ("c", 4)]
    disk.crash("power")
    assert read_all(SimStorage(disk)) == [("a", 1), ("b", 2)]


# ---------------------------------------------------------------- a model


ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.sampled_from("abcdef"), st.booleans()),
        st.tuples(st.just("remove"), st.sampled_from("abcdef"), st.just(False)),
        st.tuples(st.just("read"), st.just(""), st.just(False)),
    ),
    max_size=60,
)


@RELAXED
@given(ops, st.integers(min_value=1, max_value=4), st.sampled_from(["", "a", "x"]))
def test_a_reader_that_keeps_up_sees_every_write_at_least_once(
    make: Callable[[], MemoryStorage], script: list[tuple[str, str, bool]], limit: int, prefix: str
) -> None:
    """Writes at growing versions (or, for a move, at an old one) interleaved with a reader's pages: the reader
    ends with every key's current version, has never seen a version that was not written, and its position
    never goes back."""
    s = make()
    current: dict[str, int] = {}
    written: set[tuple[str, int]] = set()
    seen: dict[str, int] = {}
    version, position = 0, 0

    def read_page() -> bool:
        nonlocal position
        rows, next_position, more = s.changes_after(P, position, limit, prefix, 3)
        assert next_position >= position
        for key, record in rows:
            assert key.startswith(prefix) and (key, record.version) in written
            seen[key] = max(seen.get(key, 0), record.version)
        position = next_position
        return more

    for op, key, old in script:
        if op == "write":
            version += 1
            # A copied record keeps an old version, yet one above every position read: positions are versions
            # of the source's log, so a reader has not gone past what it has not been shown.
            at = version if not old else max(position + 1, version - 3)
            if (key, at) in written:
                at = version
            s.write(P, key, rec(b"v", at))
            current[key], version = at, max(version, at)
            written.add((key, at))
        elif op == "remove":
            if s.remove(P, key):
                del current[key]
        else:
            read_page()
    while read_page():
        pass
    for key, at in current.items():
        if key.startswith(prefix):
            assert seen.get(key, 0) >= at


@RELAXED
@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(min_value=1, max_value=30)), max_size=60))
def test_paging_through_the_feed_yields_each_record_once_in_version_order(
    make: Callable[[], MemoryStorage], writes: list[tuple[str, int]]
) -> None:
    s = make()
    current: dict[str, int] = {}
    for key, at in writes:
        if current.get(key) == at:
            continue  # the same record again
        s.write(P, key, rec(b"v", at))
        current[key] = at
    expected = sorted(current.items(), key=lambda item: item[1])
    got = read_all(s, limit=2)
    assert sorted(got) == sorted(expected)
    assert [v for _, v in got] == sorted(v for _, v in got)


# ---------------------------------------------------------------- changes_page


def test_changes_page_names_its_source_and_renders_values() -> None:
    s = MemoryStorage()
    s.write(P, "a", rec(b"1", 1))
    s.write(P, "b", Record(b"2", 2, 99))
    page = changes_page(s, ChangesOp(P, 0, 10), "")
    assert page == ChangesPage(P, (ChangeItem("a", b"1", 1, None), ChangeItem("b", b"2", 2, 99)), 2, False, "")
    shown = changes_page(s, ChangesOp(P, 1, 10, "b"), "n2", lambda key, r: key.encode() + (r.value or b""))
    assert shown == ChangesPage(P, (ChangeItem("b", b"b2", 2, 99),), 2, False, "n2")


# ---------------------------------------------------------------- cursors


def test_a_cursor_round_trips_and_starts_again_at_another_source() -> None:
    cursor = Cursor().after_page(ChangesPage(3, (), 17, False, "n2")).after_page(ChangesPage(0, (), 5, True, ""))
    text = cursor.encode()
    assert "=" not in text and Cursor.decode(text) == cursor
    assert cursor.at(3, "n2") == 17
    assert cursor.at(3, "n1") == 0  # another replica's positions mean nothing here
    assert cursor.at(0, "") == 5
    assert cursor.at(9, "") == 0
    assert Cursor.decode("") == Cursor()
    assert Cursor.decode(Cursor().encode()) == Cursor()
    moved = cursor.after_page(ChangesPage(3, (), 2, False, "n1"))
    assert moved.at(3, "n1") == 2 and cursor.at(3, "n2") == 17  # a cursor is a value


@RELAXED
@given(
    st.dictionaries(
        st.integers(0, MAX_PARTITIONS - 1), st.tuples(st.integers(0, 1 << 62), st.text(max_size=64)), max_size=50
    )
)
def test_every_cursor_round_trips(positions: dict[int, tuple[int, str]]) -> None:
    cursor = Cursor(positions)
    assert Cursor.decode(cursor.encode()) == cursor


def text_of(raw: bytes) -> str:
    return base64.urlsafe_b64encode(zlib.compress(raw)).decode("ascii").rstrip("=")


@pytest.mark.parametrize(
    "text",
    [
        "%%%not base64%%%",
        "abc",  # base64 of no zlib stream
        base64.urlsafe_b64encode(b"garbage, not zlib").decode(),
        text_of(msgpack.packb([[0, 1, "n1"]]))[:-4],  # cut short
        "A" * (MAX_CURSOR_CHARS + 1),
        text_of(b"\x00" * (MAX_CURSOR_RAW_BYTES + 1)),  # a zip bomb: small text, inflating past the bound
        text_of(msgpack.packb([[0, 1, "n1"]] * 50_000)),
        text_of(b"\xc1"),
        text_of(msgpack.packb({"0": [1, "n1"]})),
        text_of(msgpack.packb("cursor")),
        text_of(msgpack.packb([[0, 1]])),
        text_of(msgpack.packb([[0, 1, "n1", 4]])),
        text_of(msgpack.packb([[-1, 1, "n1"]])),
        text_of(msgpack.packb([[0, -1, "n1"]])),
        text_of(msgpack.packb([[True, 1, "n1"]])),
        text_of(msgpack.packb([[0, 1.5, "n1"]])),
        text_of(msgpack.packb([[0, 1, b"n1"]])),
        text_of(msgpack.packb([[0, 1, "n" * 65]])),
        text_of(b"\x91" * 10_000),  # nested far deeper than a cursor
        text_of(msgpack.packb([[0, 1, "n1"]]) + b"\x00"),  # trailing bytes
    ],
)
def test_a_bad_cursor_is_refused_with_a_value_error(text: str) -> None:
    assert len(text) <= MAX_CURSOR_CHARS + 1
    with pytest.raises(ValueError, match="cursor"):
        Cursor.decode(text)


@settings(RELAXED, max_examples=300)
@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=200))
def test_arbitrary_cursor_text_decodes_or_raises_value_error(text: str) -> None:
    try:
        cursor = Cursor.decode(text)
    except ValueError:
        return
    assert Cursor.decode(cursor.encode()) == cursor


def test_a_cursor_naming_a_node_with_the_longest_id_decodes() -> None:
    source = "n" * 256
    cursor = Cursor({0: (5, source)})
    assert Cursor.decode(cursor.encode()) == cursor


def test_a_cursor_of_a_cluster_of_1024_partitions_fits_a_request_line_and_decodes() -> None:
    rnd = random.Random(1)
    cursor = Cursor({p: (rnd.randrange(1, 10**7), f"127.0.0.1:70{p % 5:02}") for p in range(1024)})
    text = cursor.encode()
    assert len(f"GET /changes?cursor={text} HTTP/1.1") <= Limits().max_request_line_bytes
    assert Cursor.decode(text) == cursor
