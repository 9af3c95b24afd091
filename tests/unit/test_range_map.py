"""Range partitioning (partitioning/range_map.py): lookups, split/merge, policy, scans, JSON, a state machine."""

from __future__ import annotations

import itertools
import json

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from partitioning.range_map import (
    MAX_ID,
    MAX_KEY_BYTES,
    MAX_RANGES,
    Merge,
    Range,
    RangeMap,
    RangePage,
    RangeStats,
    ScanCursor,
    Split,
    SplitPolicy,
)


def four_ranges() -> RangeMap:
    """Four ranges built by splits, as a cluster would build them (ids in key order: 0, 2, 1, 3)."""
    m = RangeMap.initial()
    m, a = m.split(0, "m")
    m, b = m.split(0, "d")
    m, c = m.split(a, "t")
    assert (a, b, c) == (1, 2, 3)
    return m


# ids in key order: ["", d) -> 0, [d, m) -> 2, [m, t) -> 1, [t, None) -> 3
FOUR = (Range(0, "", "d"), Range(2, "d", "m"), Range(1, "m", "t"), Range(3, "t", None))


def assert_tiles(ranges: tuple[Range, ...]) -> None:
    """The ranges cover the whole key space in key order, without gaps or overlaps."""
    assert ranges[0].start == ""
    assert ranges[-1].end is None
    for a, b in itertools.pairwise(ranges):
        assert a.end == b.start
        assert a.end is not None and a.start < a.end


# -- lookups -----------------------------------------------------------------------------------------


def test_initial_map_is_one_range_over_everything() -> None:
    m = RangeMap.initial(first_id=7)
    assert m.ranges() == (Range(7, "", None),)
    assert m.next_id == 8
    assert m.partition_for_key("") == 7
    assert m.partition_for_key("\U0010ffff" * 3) == 7


def test_lookups_at_boundaries() -> None:
    m = four_ranges()
    assert m.split_points == ("d", "m", "t")
    assert m.partitions == (0, 2, 1, 3)
    assert m.ranges() == FOUR
    expected = {
        "": 0,
        "a": 0,
        "c\U0010ffff": 0,
        "d": 2,  # a split point belongs to the range on its right
        "d\x00": 2,
        "lzzz": 2,
        "m": 1,
        "s": 1,
        "t": 3,
        "zzzz": 3,
        "é": 3,  # U+00E9 > "z": code point order
    }
    assert {k: m.partition_for_key(k) for k in expected} == expected
    assert_tiles(m.ranges())


def test_range_of_and_unknown_ids() -> None:
    m = four_ranges()
    assert m.range_of(1) == Range(1, "m", "t")
    assert m.range_of(3) == Range(3, "t", None)
    for bad in (4, -1, 99):
        with pytest.raises(ValueError, match="no range has partition id"):
            m.range_of(bad)


def test_ranges_overlapping() -> None:
    m = four_ranges()
    assert m.ranges_overlapping("", None) == FOUR
    assert m.ranges_overlapping("e", "n") == FOUR[1:3]
    assert m.ranges_overlapping("d", "m") == (FOUR[1],)  # end is exclusive: "m" is not scanned
    assert m.ranges_overlapping("c", "d\x00") == FOUR[0:2]
    assert m.ranges_overlapping("u", None) == (FOUR[3],)
    assert m.ranges_overlapping("e", "e") == ()
    with pytest.raises(ValueError, match="before start"):
        m.ranges_overlapping("f", "e")


# -- split / merge -----------------------------------------------------------------------------------


def test_split_keeps_left_id_and_gives_right_the_next_id() -> None:
    m = four_ranges()
    m2, new = m.split(2, "g")
    assert new == 4 and m2.next_id == 5
    assert m2.range_of(2) == Range(2, "d", "g")
    assert m2.range_of(4) == Range(4, "g", "m")
    assert m2.partition_for_key("g") == 4 and m2.partition_for_key("f") == 2
    assert_tiles(m2.ranges())
    assert m.ranges() == FOUR  # the old value is untouched


def test_split_refuses_keys_not_strictly_inside() -> None:
    m = four_ranges()
    for pid, key in ((2, "d"), (2, "m"), (2, "a"), (2, "z"), (0, ""), (3, "t"), (3, "a")):
        with pytest.raises(ValueError, match="not strictly inside"):
            m.split(pid, key)
    with pytest.raises(ValueError, match="no range has partition id"):
        m.split(42, "x")
    with pytest.raises(ValueError, match="lone surrogate"):
        m.split(3, "u\ud800")
    with pytest.raises(ValueError, match="bytes"):
        m.split(3, "u" * (MAX_KEY_BYTES + 1))
    with pytest.raises(ValueError, match="bytes"):
        m.split(3, "é" * (MAX_KEY_BYTES // 2 + 1))  # short in chars, too long in UTF-8
    m.split(3, "u" * MAX_KEY_BYTES)  # exactly at the bound is fine


def test_merge_keeps_left_id_and_retires_right() -> None:
    m = four_ranges()
    m2 = m.merge(2, 1)
    assert m2.ranges() == (Range(0, "", "d"), Range(2, "d", "t"), Range(3, "t", None))
    assert m2.next_id == m.next_id
    with pytest.raises(ValueError, match="no range has partition id"):
        m2.range_of(1)
    # A later split never brings the retired id back.
    m3, new = m2.split(2, "k")
    assert new == 4 and 1 not in m3.partitions


def test_merge_refuses_non_adjacent_and_unknown() -> None:
    m = four_ranges()
    for left, right in ((1, 2), (0, 1), (3, 0), (0, 0), (2, 3)):
        with pytest.raises(ValueError, match="not immediately before"):
            m.merge(left, right)
    with pytest.raises(ValueError, match="no range has partition id"):
        m.merge(0, 9)


def test_split_then_merge_round_trips() -> None:
    m = four_ranges()
    m2, new = m.split(1, "p")
    back = m2.merge(1, new)
    assert back.ranges() == m.ranges()
    assert back.split_points == m.split_points and back.partitions == m.partitions
    assert back.next_id == m.next_id + 1  # the id spent on the split stays spent
    assert back != m


def test_constructor_enforces_invariants() -> None:
    RangeMap(("a", "b"), (0, 1, 2), 3)
    cases = [
        ((("b", "a"), (0, 1, 2), 3), "strictly increasing"),
        ((("a", "a"), (0, 1, 2), 3), "strictly increasing"),
        ((("a",), (0, 0), 3), "appears twice"),
        ((("a",), (0, 3), 3), "not in 0..next_id-1"),
        ((("a",), (0,), 3), "make 2 ranges"),
        ((("a",), (-1, 0), 3), "not in 0..next_id-1"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            RangeMap(*args)


# -- policy ------------------------------------------------------------------------------------------

POLICY = SplitPolicy(split_keys=100, split_bytes=10_000, merge_keys=50, merge_bytes=5_000)


def test_policy_validates_thresholds() -> None:
    SplitPolicy(split_keys=100, split_bytes=1000, merge_keys=50, merge_bytes=500)
    for kwargs in (
        {"split_keys": 100, "split_bytes": 1000, "merge_keys": 51, "merge_bytes": 10},
        {"split_keys": 100, "split_bytes": 1000, "merge_keys": 10, "merge_bytes": 501},
        {"split_keys": 0, "split_bytes": 1000, "merge_keys": 0, "merge_bytes": 10},
        {"split_keys": 100, "split_bytes": 1000, "merge_keys": -1, "merge_bytes": 10},
        {"split_keys": True, "split_bytes": 1000, "merge_keys": 0, "merge_bytes": 10},
    ):
        with pytest.raises(ValueError, match="split policy"):
            SplitPolicy(**kwargs)


def test_policy_splits_past_either_threshold_at_the_median() -> None:
    m = four_ranges()
    stats = {
        0: RangeStats(keys=101, bytes=10, median_key="b"),  # past split_keys
        2: RangeStats(keys=10, bytes=10_001, median_key="h"),  # past split_bytes
        1: RangeStats(keys=100, bytes=10_000, median_key="p"),  # at the thresholds: not past
        3: RangeStats(keys=60, bytes=6_000, median_key="w"),
    }
    actions = POLICY.decide(m, stats)
    assert actions == (Split(0, "b"), Split(2, "h"))
    after = m.apply(actions)
    assert after.ranges() == (
        Range(0, "", "b"),
        Range(4, "b", "d"),
        Range(2, "d", "h"),
        Range(5, "h", "m"),
        Range(1, "m", "t"),
        Range(3, "t", None),
    )


def test_policy_skips_a_median_not_strictly_inside() -> None:
    m = four_ranges()
    stats = {
        2: RangeStats(keys=500, bytes=1, median_key="d"),  # one huge key at the start: cannot split
        1: RangeStats(keys=500, bytes=1, median_key="x"),  # stale report: outside the range
        3: RangeStats(keys=500, bytes=1, median_key=None),
        0: RangeStats(keys=500, bytes=1, median_key="\ud800"),  # not a valid key
    }
    assert POLICY.decide(m, stats) == ()


def test_policy_merges_small_neighbours() -> None:
    m = four_ranges()
    stats = {
        0: RangeStats(keys=10, bytes=100, median_key="b"),
        2: RangeStats(keys=39, bytes=100, median_key="f"),  # 0+2: 49 keys < 50, 200 bytes: merge
        1: RangeStats(keys=20, bytes=4_000, median_key="p"),
        3: RangeStats(keys=20, bytes=1_000, median_key="w"),  # 1+3: 5000 bytes, not < 5000: stay
    }
    assert POLICY.decide(m, stats) == (Merge(0, 2),)
    stats[2] = RangeStats(keys=40, bytes=100, median_key="f")  # 50 keys, not < 50: stay
    assert POLICY.decide(m, stats) == ()
    stats[2] = RangeStats(keys=39, bytes=100, median_key="f")
    stats[3] = RangeStats(keys=20, bytes=999, median_key="w")
    actions = POLICY.decide(m, stats)
    assert actions == (Merge(0, 2), Merge(1, 3))
    assert m.apply(actions).ranges() == (Range(0, "", "m"), Range(1, "m", None))


def test_policy_leaves_unreported_ranges_alone_and_ignores_unknown_ids() -> None:
    m = four_ranges()
    small = RangeStats(keys=1, bytes=1, median_key=None)
    assert POLICY.decide(m, {0: small, 1: small, 99: small}) == ()  # 0 and 1 are not neighbours
    assert POLICY.decide(m, {2: small, 1: small}) == (Merge(2, 1),)


def test_policy_a_range_is_in_at_most_one_action() -> None:
    # Six tiny ranges: pairs merge greedily from the left, nobody twice; the odd one out stays.
    m = RangeMap.initial()
    for key in ("b", "c", "d", "e", "f"):
        m, _ = m.split(m.partition_for_key(key), key)
    tiny = {pid: RangeStats(keys=1, bytes=1, median_key=None) for pid in m.partitions}
    actions = POLICY.decide(m, tiny)
    assert actions == (Merge(0, 1), Merge(2, 3), Merge(4, 5))
    m7, _ = m.split(5, "g")
    tiny[6] = RangeStats(keys=1, bytes=1, median_key=None)
    assert POLICY.decide(m7, tiny) == actions
    # A big range between small ones splits; its neighbours pair with someone else or stay.
    stats = dict(tiny)
    stats[2] = RangeStats(keys=1_000, bytes=1, median_key="c\x01")
    actions = POLICY.decide(m7, stats)
    assert actions == (Merge(0, 1), Split(2, "c\x01"), Merge(3, 4), Merge(5, 6))
    used = [pid for a in actions for pid in ((a.partition,) if isinstance(a, Split) else (a.left, a.right))]
    assert len(used) == len(set(used))
    m7.apply(actions)  # every action applies


def test_policy_is_deterministic() -> None:
    m = four_ranges()
    stats = {
        0: RangeStats(keys=1, bytes=1, median_key=None),
        2: RangeStats(keys=1, bytes=1, median_key=None),
        1: RangeStats(keys=1_000, bytes=1, median_key="q"),
        3: RangeStats(keys=1, bytes=1, median_key=None),
    }
    reversed_stats = dict(reversed(list(stats.items())))
    first = POLICY.decide(m, stats)
    assert first == (Merge(0, 2), Split(1, "q"))
    assert all(POLICY.decide(m, s) == first for s in (stats, reversed_stats, dict(sorted(stats.items()))))


def test_hysteresis_merged_range_does_not_split_and_split_halves_do_not_merge() -> None:
    m = four_ranges()
    # The largest pair the policy merges: one key and one byte under the merge thresholds.
    left = RangeStats(keys=POLICY.merge_keys - 2, bytes=POLICY.merge_bytes - 2, median_key="b")
    right = RangeStats(keys=1, bytes=1, median_key="f")
    actions = POLICY.decide(m, {0: left, 2: right})
    assert actions == (Merge(0, 2),)
    merged = m.apply(actions)
    summed = RangeStats(keys=left.keys + right.keys, bytes=left.bytes + right.bytes, median_key="c")
    assert POLICY.decide(merged, {0: summed}) == ()
    # The other way: the smallest range that splits, split in two halves, does not merge back.
    big = RangeStats(keys=POLICY.split_keys + 1, bytes=1, median_key="p")
    (split,) = POLICY.decide(m, {1: big})
    after = m.apply([split])
    half_a = RangeStats(keys=big.keys // 2, bytes=0, median_key=None)
    half_b = RangeStats(keys=big.keys - big.keys // 2, bytes=1, median_key=None)
    assert POLICY.decide(after, {1: half_a, 4: half_b}) == ()


def test_range_stats_validated() -> None:
    for kwargs in ({"keys": -1, "bytes": 0}, {"keys": 0, "bytes": 1.5}, {"keys": False, "bytes": 0}):
        with pytest.raises(ValueError, match="range stats"):
            RangeStats(median_key=None, **kwargs)


# -- scans -------------------------------------------------------------------------------------------


def test_scan_plan_clips_to_the_scan() -> None:
    m = four_ranges()
    assert m.scan_plan("", None) == FOUR
    assert m.scan_plan("b", "p") == (Range(0, "b", "d"), Range(2, "d", "m"), Range(1, "m", "p"))
    assert m.scan_plan("e", "f") == (Range(2, "e", "f"),)
    assert m.scan_plan("d", "m") == (Range(2, "d", "m"),)
    assert m.scan_plan("u", None) == (Range(3, "u", None),)
    assert m.scan_plan("s", "u") == (Range(1, "s", "t"), Range(3, "t", "u"))
    assert m.scan_plan("k", "k") == ()


def page_of(
    data: dict[str, bytes], span: Range, limit: int, calls: list[int] | None = None
) -> RangePage[tuple[str, bytes]]:
    """What the owner of ``span.partition`` answers: at most ``limit`` items of the span, in key order."""
    if calls is not None:
        calls.append(span.partition)
    inside = sorted(k for k in data if span.contains(k))
    return RangePage(span, tuple((k, data[k]) for k in inside[:limit]), truncated=len(inside) > limit)


def scan_all(m: RangeMap, data: dict[str, bytes], start: str, end: str | None, limit: int) -> list[str]:
    keys: list[str] = []
    cursor: ScanCursor | None = ScanCursor(start, end, limit)
    pages_seen = 0
    while cursor is not None:
        c = cursor
        items, cursor = c.collect(page_of(data, span, c.limit) for span in c.plan(m))
        assert len(items) <= limit
        keys.extend(k for k, _ in items)
        pages_seen += 1
        assert pages_seen <= len(data) + m.range_count + 1, "the scan does not make progress"
    return keys


def test_paging_across_ranges_returns_every_key_once_in_order() -> None:
    m = four_ranges()
    m, _ = m.split(3, "w")
    data = {k: k.encode() for k in ("", "a", "b", "c", "d", "d\x00", "e", "m", "n", "o", "s", "t", "w", "x", "y")}
    for limit in (1, 2, 3, 5, 100):
        assert scan_all(m, data, "", None, limit) == sorted(data)
        assert scan_all(m, data, "b", "x", limit) == sorted(k for k in data if "b" <= k < "x")
        assert scan_all(m, data, "f", "l", limit) == []


def test_collect_stops_at_the_limit_without_querying_further_ranges() -> None:
    m = four_ranges()
    data = {"a": b"1", "b": b"2", "c": b"3", "e": b"4", "p": b"5"}
    calls: list[int] = []
    cursor = ScanCursor("", None, 2)
    items, nxt = cursor.collect(page_of(data, span, 2, calls) for span in cursor.plan(m))
    assert items == (("a", b"1"), ("b", b"2"))
    assert calls == [0]
    # The page was truncated after "b": resume right after it.
    assert nxt == ScanCursor("b\x00", None, 2)
    # A page holding more than the limit resumes at the exact next key.
    page = RangePage(Range(0, "", "d"), (("a", b""), ("b", b""), ("c", b"")), truncated=False)
    assert cursor.collect([page])[1] == ScanCursor("c", None, 2)
    # Exactly filled by an exhausted range: resume at the next range.
    cursor3 = ScanCursor("", None, 3)
    items, nxt = cursor3.collect(page_of(data, span, 3) for span in cursor3.plan(m))
    assert [k for k, _ in items] == ["a", "b", "c"] and nxt == ScanCursor("d", None, 3)
    # The last range filling the page exactly ends the scan.
    items, nxt = ScanCursor("m", "t", 1).collect([page_of(data, Range(1, "m", "t"), 1)])
    assert items == (("p", b"5"),) and nxt is None


def test_collect_with_a_prefix_of_the_plan_and_short_pages() -> None:
    cursor = ScanCursor("a", "z", 10)
    first = RangePage(Range(0, "a", "d"), (("b", 1),), truncated=False)
    assert cursor.collect([first]) == ((("b", 1),), ScanCursor("d", "z", 10))
    assert cursor.collect([]) == ((), cursor)
    # A server answering fewer than asked but saying so: resume after its last key.
    short = RangePage(Range(0, "a", "d"), (("b", 1),), truncated=True)
    assert cursor.collect([short]) == ((("b", 1),), ScanCursor("b\x00", "z", 10))


def test_collect_refuses_pages_that_do_not_tile_the_scan() -> None:
    cursor = ScanCursor("a", "z", 10)
    ok: RangePage[tuple[object, int]] = RangePage(Range(0, "a", "d"), (("b", 1),), truncated=False)
    cases: list[tuple[list[RangePage[tuple[object, int]]], str]] = [
        ([RangePage(Range(0, "b", "d"), (), truncated=False)], "do not tile"),
        ([ok, RangePage(Range(1, "e", "z"), (), truncated=False)], "do not tile"),  # a hole
        ([ok, RangePage(Range(1, "c", "z"), (), truncated=False)], "do not tile"),  # an overlap
        ([RangePage(Range(0, "a", "d"), (("e", 1),), truncated=False)], "outside"),
        ([RangePage(Range(0, "a", "d"), (("c", 1), ("b", 1)), truncated=False)], "out of order"),
        ([RangePage(Range(0, "a", "d"), (("b", 1), ("b", 1)), truncated=False)], "out of order"),
        ([RangePage(Range(0, "a", None), (), truncated=False)], "unbounded"),
        ([RangePage(Range(0, "a", "zz"), (), truncated=False)], "out of the scan"),
        ([RangePage(Range(0, "a", "d"), ((1, 1),), truncated=False)], "must be a string"),
    ]
    for pages, message in cases:
        with pytest.raises(ValueError, match=message):
            cursor.collect(pages)


def test_scan_cursor_validated() -> None:
    for args in (("b", "a", 1), ("a", None, 0), ("a", None, True), (1, None, 1)):
        with pytest.raises(ValueError):
            ScanCursor(*args)


# -- JSON --------------------------------------------------------------------------------------------


def test_json_round_trip() -> None:
    m = four_ranges().merge(0, 2)
    doc = m.to_json()
    assert doc == {"version": 1, "split_points": ["m", "t"], "partitions": [0, 1, 3], "next_id": 4}
    assert RangeMap.from_json(json.loads(json.dumps(doc))) == m
    odd = RangeMap.initial().split(0, "é\U0001f600\n\"'")[0]
    assert RangeMap.from_json(json.loads(json.dumps(odd.to_json()))) == odd


def good_doc() -> dict[str, object]:
    return {"version": 1, "split_points": ["d", "m"], "partitions": [0, 2, 1], "next_id": 3}


def hostile_docs() -> list[tuple[object, str]]:
    def with_(**changes: object) -> dict[str, object]:
        doc = good_doc()
        doc.update(changes)
        return doc

    missing = good_doc()
    del missing["next_id"]
    return [
        ("[]", "parse it with json.loads"),
        ([], "must be a JSON object"),
        (None, "must be a JSON object"),
        (missing, "missing fields \\['next_id'\\]"),
        (with_(extra=1), "unknown fields"),
        (with_(version=2), "unsupported version"),
        (with_(version=True), "unsupported version"),
        (with_(version="1"), "unsupported version"),
        (with_(split_points="dm"), "must be arrays"),
        (with_(partitions={"0": 1}), "must be arrays"),
        (with_(split_points=["m", "d"]), "strictly increasing"),
        (with_(split_points=["d", "d"]), "strictly increasing"),
        (with_(split_points=["d", 5]), "must be a string"),
        (with_(split_points=["d", None]), "must be a string"),
        (with_(split_points=["d", "x" * (MAX_KEY_BYTES + 1)]), "longer than"),
        (with_(split_points=["d", "\udfff"]), "lone surrogate"),
        (with_(partitions=[0, 1]), "make 3 ranges"),
        (with_(partitions=[0, 1, 1]), "appears twice"),
        (with_(partitions=[0, -1, 1]), "not in 0..next_id-1"),
        (with_(partitions=[0, 1, 3]), "not in 0..next_id-1"),
        (with_(partitions=[0, 1, True]), "must be an int"),
        (with_(partitions=[0, 1, 2.0]), "must be an int"),
        (with_(partitions=[0, 1, "2"]), "must be an int"),
        (with_(next_id=-1), "next_id"),
        (with_(next_id=MAX_ID + 1), "next_id"),
        (with_(next_id=3.0), "next_id"),
        (with_(next_id=None), "next_id"),
        (with_(partitions=list(range(MAX_RANGES + 1))), f"more than {MAX_RANGES} ranges"),
        (with_(split_points=[""] * MAX_RANGES), f"more than {MAX_RANGES} ranges"),
    ]


@pytest.mark.parametrize("doc,message", hostile_docs())
def test_from_json_refuses_hostile_input(doc: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RangeMap.from_json(doc)


def test_from_json_accepts_the_largest_map() -> None:
    n = MAX_RANGES
    doc = {
        "version": 1,
        "split_points": [f"k{i:06d}" for i in range(1, n)],
        "partitions": list(range(n)),
        "next_id": n,
    }
    m = RangeMap.from_json(doc)
    assert m.range_count == n
    assert m.partition_for_key("k050000") == 50_000 and m.partition_for_key("k049999x") == 49_999
    with pytest.raises(ValueError, match=f"at most {MAX_RANGES} ranges"):
        m.split(n - 1, "x")


# -- a state machine ---------------------------------------------------------------------------------

KEYS = st.text(alphabet="abcé\x00", max_size=4)


class RangeMapMachine(RuleBasedStateMachine):
    """Random splits, merges and puts; the map must always tile the key space and agree with a model."""

    def __init__(self) -> None:
        super().__init__()
        self.map = RangeMap.initial()
        self.model: dict[str, bytes] = {}
        self.ever: set[int] = {0}  # every id ever handed out
        self.retired: set[int] = set()

    @rule(key=KEYS, value=st.binary(max_size=3))
    def put(self, key: str, value: bytes) -> None:
        self.model[key] = value

    @rule(key=KEYS)
    def split(self, key: str) -> None:
        pid = self.map.partition_for_key(key)
        r = self.map.range_of(pid)
        if key == r.start:
            with pytest.raises(ValueError, match="not strictly inside"):
                self.map.split(pid, key)
            return
        before = self.map
        self.map, new = before.split(pid, key)
        assert new == before.next_id and new not in self.ever
        self.ever.add(new)
        assert self.map.range_of(pid) == Range(pid, r.start, key)
        assert self.map.range_of(new) == Range(new, key, r.end)

    @precondition(lambda self: self.map.range_count > 1)
    @rule(index=st.integers(min_value=0, max_value=1_000))
    def merge(self, index: int) -> None:
        ranges = self.map.ranges()
        i = index % (len(ranges) - 1)
        left, right = ranges[i], ranges[i + 1]
        self.map = self.map.merge(left.partition, right.partition)
        self.retired.add(right.partition)
        assert self.map.range_of(left.partition) == Range(left.partition, left.start, right.end)

    @precondition(lambda self: self.map.range_count > 2)
    @rule(index=st.integers(min_value=0, max_value=1_000))
    def merge_non_adjacent_refused(self, index: int) -> None:
        ranges = self.map.ranges()
        i = index % (len(ranges) - 2)
        with pytest.raises(ValueError, match="not immediately before"):
            self.map.merge(ranges[i].partition, ranges[i + 2].partition)

    @rule(start=KEYS, end=st.none() | KEYS, limit=st.integers(min_value=1, max_value=4))
    def scan(self, start: str, end: str | None, limit: int) -> None:
        if end is not None and end < start:
            start, end = end, start
        expected = sorted(k for k in self.model if start <= k and (end is None or k < end))
        assert scan_all(self.map, self.model, start, end, limit) == expected

    @invariant()
    def every_key_maps_to_the_one_range_holding_it(self) -> None:
        ranges = self.map.ranges()
        for key in self.model:
            holders = [r.partition for r in ranges if r.contains(key)]
            assert holders == [self.map.partition_for_key(key)]

    @invariant()
    def ids_unique_and_never_reused(self) -> None:
        ids = self.map.partitions
        assert len(set(ids)) == len(ids)
        assert set(ids) <= self.ever
        assert not set(ids) & self.retired
        assert max(self.ever) == self.map.next_id - 1

    @invariant()
    def json_round_trip(self) -> None:
        assert RangeMap.from_json(json.loads(json.dumps(self.map.to_json()))) == self.map

    @invariant()
    def overlapping_everything_covers_everything_in_order(self) -> None:
        everything = self.map.ranges_overlapping("", None)
        assert everything == self.map.ranges() == self.map.scan_plan("", None)
        assert_tiles(everything)


RangeMapMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=30,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRangeMapMachine = RangeMapMachine.TestCase
