"""Range partitioning of the key space, as CockroachDB and TiKV do it (sans-IO, stdlib only).

Keys are ``str`` ordered as Python orders them, by code point. For valid UTF-8 (kvstore refuses keys
with lone surrogates) that is also the order of the keys' UTF-8 bytes, so a storage engine that sorts
bytes agrees with this map.

The map
    The key space is cut at ``split_points`` (sorted, strictly increasing) into ``len(split_points) + 1``
    half-open ranges ``[start, end)``; the first starts at ``""``, the last has ``end=None``
    (unbounded). ``partitions[i]`` is the id of range ``i``. A key equal to a split point belongs to
    the range on its right. Ids are distinct, below ``next_id``, and never reused: a split takes
    ``next_id`` and increments it, a merge retires the right-hand id for good. A ``RangeMap`` is an
    immutable value; ``split``/``merge`` return a new one.

    ``partition_for_key`` is one ``bisect_right`` over the split points plus a tuple index
    (O(log n); at 10k ranges about 14 string comparisons). ``range_of`` uses a position index built
    lazily once per map value.

Splits and merges
    ``RangeStats(keys, bytes, median_key)`` is what the holder of a partition's data reports.
    ``SplitPolicy.decide(map, stats)`` turns reports into ``Split``/``Merge`` actions, pure and
    deterministic (key order); ``RangeMap.apply(actions)`` applies them in order. The policy:

    - split a range whose keys exceed ``split_keys`` or whose bytes exceed ``split_bytes``, at its
      median key, when the median lies strictly inside the range (not for one huge key, nor for a
      stale report whose median the range no longer holds);
    - merge two adjacent ranges whose combined keys are below ``merge_keys`` and combined bytes below
      ``merge_bytes``, pairing greedily from the left;
    - hysteresis: ``merge_* <= split_* // 2`` is enforced, so a merged range holds less than half
      what it takes to split it, and the two halves of a split hold together more than twice what
      it takes to merge them: neither action undoes the other until the data changes a lot;
    - a range is in at most one action per decision; a range with no report is left alone (its size
      is unknown), reports for ids not in the map (retired, stale) are ignored; splits stop once
      the map would reach ``MAX_RANGES``.

Scans across ranges
    ``scan_plan(start, end)`` lists the ranges overlapping ``[start, end)``, clipped to it, in key
    order. ``ScanCursor(start, end, limit)`` is a client's position in a scan, and the pager:

    .. code-block:: python

        cursor: ScanCursor | None = ScanCursor("a", "m", limit=100)
        while cursor is not None:
            pages = (fetch(span, cursor.limit) for span in cursor.plan(current_map))  # lazy
            items, cursor = cursor.collect(pages)

    ``fetch`` asks the owner of ``span.partition`` for at most ``limit`` items with keys in
    ``[span.start, span.end)`` and wraps them in a ``RangePage(span, items, truncated)``: ``items`` are
    tuples whose first element is the key, in key order; ``truncated`` says the range holds more
    items in the span after the last one returned (a server may return fewer than asked, e.g. under
    its own byte limit, as long as it says so). ``collect`` concatenates pages in order, stops at the
    limit (consuming no page past the one that fills it, so with a generator the later ranges are
    never queried), and returns the next cursor, or ``None`` when the scan is complete. The resume
    point is a *key*, not a range id, so the map may split or merge between pages: the next page
    re-plans with whatever map the client then holds (CockroachDB's resume span). The resume key is
    the next item's key when a page held more than was taken; the end of the page's span when the
    range was exhausted; ``last_key + "\\x00"`` (the smallest string after ``last_key``) when a
    truncated page was taken whole. A prefix of the plan may be passed; the scan then resumes
    after the last page given. ``collect`` raises ``ValueError`` for pages that do not tile the
    scan in order (a hole, an overlap) or hold keys out of order or outside their span, rather
    than silently skip or duplicate keys. A truncated page with no items makes no progress; the
    same cursor comes back.

Serialization
    ``to_json()`` returns a JSON document (a dict for ``json.dumps``); ``RangeMap.from_json(doc)``
    takes the parsed document and refuses hostile input with a ``ValueError`` naming the problem:
    wrong types (``bool`` is not an int), unknown or missing fields, an unknown version, more than
    ``MAX_RANGES`` ranges (checked before any element is looked at), split points that are not
    strictly increasing, longer than ``MAX_KEY_BYTES`` UTF-8 bytes or not valid UTF-8, ids that are
    negative, repeated, or not below ``next_id``, ``next_id`` above ``MAX_ID``. The constructor
    enforces the same invariants, so every ``RangeMap`` value serializes and reads back.

Departures from the brief, and why
    - Split points are bounded in UTF-8 bytes (``MAX_KEY_BYTES = 1024``, kvstore's default
      ``Limits.max_key_bytes``, which this package may not import) rather than characters, and lone
      surrogates are refused, because kvstore measures and validates keys that way; a median key
      kvstore accepted is always a valid split point.
    - ``scan_plan``/``ranges_overlapping`` refuse ``end < start`` as kvstore's scan validation does;
      ``end == start`` is an empty scan.
    - The pager validates the pages it gets (tiling, order, bounds): a missing range would
      otherwise lose keys silently.
    - ``SplitPolicy`` compares strictly ("past" a split threshold, "under" a merge threshold), which
      with ``merge <= split // 2`` makes the hysteresis exact; it validates that bound itself.
    - Added ``RangeMap.apply(actions)``, ``range_count``, ``Range.contains`` and
      ``SplitPolicy.wants_split``/``wants_merge``: the policy's pieces, usable on their own.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

# Bounds on a map and on what a document may make us allocate.
MAX_RANGES = 100_000
# kvstore's default Limits.max_key_bytes: a split point is at most as long as a key may be.
MAX_KEY_BYTES = 1024
# Ids fit a signed 64-bit integer, so every encoding (msgpack, SQL) can carry them.
MAX_ID = 2**63 - 1
JSON_VERSION = 1
_JSON_FIELDS = frozenset({"version", "split_points", "partitions", "next_id"})

_bisect_right = bisect_right


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _split_point_problem(key: object) -> str | None:
    """Why ``key`` cannot be a split point, or None if it can."""
    if not isinstance(key, str):
        return f"must be a string, got {type(key).__name__}"
    if len(key) > MAX_KEY_BYTES:  # a char is at least one byte: refuse without encoding a huge string
        return f"is longer than {MAX_KEY_BYTES} bytes"
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8 (it holds a lone surrogate)"
    if size > MAX_KEY_BYTES:
        return f"is {size} UTF-8 bytes; the limit is {MAX_KEY_BYTES}"
    return None


def _check_bound(name: str, key: object) -> None:
    if not isinstance(key, str):
        raise ValueError(f"{name} must be a string, got {type(key).__name__}")


@dataclass(frozen=True, slots=True)
class Range:
    """Keys ``start <= k < end`` (``end=None``: no upper bound), held by partition ``partition``."""

    partition: int
    start: str
    end: str | None

    def contains(self, key: str) -> bool:
        return self.start <= key and (self.end is None or key < self.end)


@dataclass(frozen=True, slots=True)
class RangeMap:
    """An immutable partition of the key space into ranges (see the module docstring)."""

    split_points: tuple[str, ...]
    partitions: tuple[int, ...]
    next_id: int
    # partition id -> position in key order; built on first use (not part of the value).
    _positions: dict[int, int] | None = field(default=None, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        sp, parts, next_id = self.split_points, self.partitions, self.next_id
        if not isinstance(sp, tuple) or not isinstance(parts, tuple):
            raise ValueError("split_points and partitions must be tuples")
        if not _is_int(next_id) or not 0 <= next_id <= MAX_ID:
            raise ValueError(f"next_id must be an int in 0..{MAX_ID}, got {next_id!r:.40}")
        if len(parts) > MAX_RANGES:
            raise ValueError(f"a range map holds at most {MAX_RANGES} ranges, got {len(parts)}")
        if len(parts) != len(sp) + 1:
            raise ValueError(
                f"{len(sp)} split points make {len(sp) + 1} ranges, but {len(parts)} partition ids are given"
            )
        for i, key in enumerate(sp):
            problem = _split_point_problem(key)
            if problem is not None:
                raise ValueError(f"split point {i} {problem}")
            if i and not sp[i - 1] < key:
                raise ValueError(f"split points must be strictly increasing: {sp[i - 1]!r:.60} then {key!r:.60}")
        seen: set[int] = set()
        for i, pid in enumerate(parts):
            if not _is_int(pid):
                raise ValueError(f"partition id {i} must be an int, got {type(pid).__name__}")
            if not 0 <= pid < next_id:
                raise ValueError(f"partition id {pid!r:.40} is not in 0..next_id-1 (next_id={next_id})")
            if pid in seen:
                raise ValueError(f"partition id {pid} appears twice")
            seen.add(pid)

    @staticmethod
    def _trusted(split_points: tuple[str, ...], partitions: tuple[int, ...], next_id: int) -> RangeMap:
        # For split/merge, which keep every invariant by construction: skips the O(n) validation.
        m = object.__new__(RangeMap)
        object.__setattr__(m, "split_points", split_points)
        object.__setattr__(m, "partitions", partitions)
        object.__setattr__(m, "next_id", next_id)
        object.__setattr__(m, "_positions", None)
        return m

    @staticmethod
    def initial(first_id: int = 0) -> RangeMap:
        """One range, id ``first_id``, covering every key."""
        if not _is_int(first_id) or not 0 <= first_id < MAX_ID:
            raise ValueError(f"first_id must be an int in 0..{MAX_ID - 1}")
        return RangeMap((), (first_id,), first_id + 1)

    # -- lookups -------------------------------------------------------------------------------------

    @property
    def range_count(self) -> int:
        return len(self.partitions)

    def partition_for_key(self, key: str) -> int:
        return self.partitions[_bisect_right(self.split_points, key)]

    def _position(self, partition: int) -> int:
        positions = self._positions
        if positions is None:
            positions = dict(zip(self.partitions, range(len(self.partitions)), strict=True))
            object.__setattr__(self, "_positions", positions)
        try:
            return positions[partition]
        except (KeyError, TypeError):
            raise ValueError(f"no range has partition id {partition!r:.40}") from None

    def _range_at(self, i: int) -> Range:
        sp = self.split_points
        return Range(self.partitions[i], sp[i - 1] if i else "", sp[i] if i < len(sp) else None)

    def range_of(self, partition: int) -> Range:
        return self._range_at(self._position(partition))

    def ranges(self) -> tuple[Range, ...]:
        return tuple(self._range_at(i) for i in range(len(self.partitions)))

    def _overlap_positions(self, start: str, end: str | None) -> range:
        _check_bound("start", start)
        if end is not None:
            _check_bound("end", end)
            if end < start:
                raise ValueError(f"scan end {end!r:.60} is before start {start!r:.60}")
            if end == start:
                return range(0)
        first = bisect_right(self.split_points, start)
        # Range i = [sp[i-1], sp[i]) overlaps [start, end) iff sp[i-1] < end, i.e. i <= bisect_left(sp, end).
        last = len(self.split_points) if end is None else bisect_left(self.split_points, end)
        return range(first, last + 1)

    def ranges_overlapping(self, start: str, end: str | None) -> tuple[Range, ...]:
        """The ranges holding some key of ``[start, end)``, unclipped, in key order."""
        return tuple(self._range_at(i) for i in self._overlap_positions(start, end))

    def scan_plan(self, start: str, end: str | None) -> tuple[Range, ...]:
        """The ranges overlapping ``[start, end)``, each clipped to it, in key order."""
        plan = []
        for i in self._overlap_positions(start, end):
            r = self._range_at(i)
            lo = max(r.start, start)
            hi = end if r.end is None else (r.end if end is None else min(r.end, end))
            plan.append(Range(r.partition, lo, hi))
        return tuple(plan)

    # -- changes -------------------------------------------------------------------------------------

    def split(self, partition: int, at_key: str) -> tuple[RangeMap, int]:
        """``[start, end)`` -> ``[start, at_key)`` keeping the id, ``[at_key, end)`` with a new id.

        Returns the new map and the new id (``next_id`` of this map).
        """
        i = self._position(partition)
        problem = _split_point_problem(at_key)
        if problem is not None:
            raise ValueError(f"split key {problem}")
        r = self._range_at(i)
        if not (r.start < at_key and (r.end is None or at_key < r.end)):
            raise ValueError(
                f"split key {at_key!r:.60} is not strictly inside partition {partition}'s range "
                f"[{r.start!r:.60}, {r.end!r:.60})"
            )
        if len(self.partitions) >= MAX_RANGES:
            raise ValueError(f"a range map holds at most {MAX_RANGES} ranges")
        if self.next_id >= MAX_ID:
            raise ValueError("partition ids are exhausted")
        new_id = self.next_id
        sp, parts = self.split_points, self.partitions
        return RangeMap._trusted(
            (*sp[:i], at_key, *sp[i:]), (*parts[: i + 1], new_id, *parts[i + 1 :]), new_id + 1
        ), new_id

    def merge(self, left: int, right: int) -> RangeMap:
        """Join adjacent ranges (``left`` immediately before ``right``); the result keeps ``left``'s id."""
        i, j = self._position(left), self._position(right)
        if j != i + 1:
            raise ValueError(f"partition {left} is not immediately before partition {right}")
        sp, parts = self.split_points, self.partitions
        return RangeMap._trusted(sp[:i] + sp[i + 1 :], parts[:j] + parts[j + 1 :], self.next_id)

    def apply(self, actions: Iterable[Split | Merge]) -> RangeMap:
        """The map after ``actions`` (e.g. ``SplitPolicy.decide``'s), applied in order."""
        m = self
        for action in actions:
            if isinstance(action, Split):
                m, _ = m.split(action.partition, action.at_key)
            elif isinstance(action, Merge):
                m = m.merge(action.left, action.right)
            else:
                raise ValueError(f"not a Split or Merge: {action!r:.80}")
        return m

    # -- serialization -------------------------------------------------------------------------------

    def to_json(self) -> dict[str, object]:
        """A JSON document (for ``json.dumps``); ``from_json`` reads it back."""
        return {
            "version": JSON_VERSION,
            "split_points": list(self.split_points),
            "partitions": list(self.partitions),
            "next_id": self.next_id,
        }

    @staticmethod
    def from_json(doc: object) -> RangeMap:
        """The map of a parsed JSON document (what ``json.loads`` returns); ``ValueError`` if invalid."""
        if not isinstance(doc, dict):
            hint = " (parse it with json.loads first)" if isinstance(doc, str | bytes) else ""
            raise ValueError(f"a range map document must be a JSON object, got {type(doc).__name__}{hint}")
        keys = set(doc)
        if keys != _JSON_FIELDS:
            missing = sorted(_JSON_FIELDS - keys)
            unknown = sorted(repr(k)[:40] for k in keys - _JSON_FIELDS)
            raise ValueError(f"range map document: missing fields {missing}, unknown fields {unknown}")
        version = doc["version"]
        if not _is_int(version) or version != JSON_VERSION:
            raise ValueError(f"range map document: unsupported version {version!r:.40} (expected {JSON_VERSION})")
        sp, parts, next_id = doc["split_points"], doc["partitions"], doc["next_id"]
        if not isinstance(sp, list) or not isinstance(parts, list):
            raise ValueError("range map document: split_points and partitions must be arrays")
        if len(parts) > MAX_RANGES or len(sp) > MAX_RANGES - 1:
            raise ValueError(f"range map document: more than {MAX_RANGES} ranges")
        if not _is_int(next_id):
            raise ValueError(f"range map document: next_id must be an int, got {type(next_id).__name__}")
        return RangeMap(tuple(sp), tuple(parts), next_id)


# -- split/merge policy ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RangeStats:
    """What the holder of a partition reports: key count, bytes, and the median key (None if empty)."""

    keys: int
    bytes: int
    median_key: str | None

    def __post_init__(self) -> None:
        if not _is_int(self.keys) or self.keys < 0 or not _is_int(self.bytes) or self.bytes < 0:
            raise ValueError("range stats: keys and bytes must be non-negative ints")
        if self.median_key is not None and not isinstance(self.median_key, str):
            raise ValueError("range stats: median_key must be a string or None")


@dataclass(frozen=True, slots=True)
class Split:
    partition: int
    at_key: str


@dataclass(frozen=True, slots=True)
class Merge:
    left: int
    right: int


@dataclass(frozen=True, slots=True)
class SplitPolicy:
    """Split past ``split_keys`` keys or ``split_bytes`` bytes; merge neighbours below both merge bounds."""

    split_keys: int
    split_bytes: int
    merge_keys: int
    merge_bytes: int

    def __post_init__(self) -> None:
        for name in ("split_keys", "split_bytes", "merge_keys", "merge_bytes"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"split policy: {name} must be a non-negative int, got {value!r:.40}")
        if self.split_keys < 1 or self.split_bytes < 1:
            raise ValueError("split policy: split thresholds must be at least 1")
        if self.merge_keys > self.split_keys // 2 or self.merge_bytes > self.split_bytes // 2:
            raise ValueError(
                "split policy: merge thresholds must be at most half the split thresholds (hysteresis: "
                "a merged range must not split again at once)"
            )

    def wants_split(self, stats: RangeStats) -> bool:
        return stats.keys > self.split_keys or stats.bytes > self.split_bytes

    def wants_merge(self, left: RangeStats, right: RangeStats) -> bool:
        return left.keys + right.keys < self.merge_keys and left.bytes + right.bytes < self.merge_bytes

    def decide(self, range_map: RangeMap, stats: Mapping[int, RangeStats]) -> tuple[Split | Merge, ...]:
        """The splits and merges due, in key order, each range in at most one action."""
        actions: list[Split | Merge] = []
        room = MAX_RANGES - range_map.range_count
        ranges = range_map.ranges()
        i = 0
        while i < len(ranges):
            r = ranges[i]
            s = stats.get(r.partition)
            if s is None:
                i += 1
                continue
            if self.wants_split(s):
                median = s.median_key
                if (
                    room > 0
                    and median is not None
                    and r.contains(median)
                    and median != r.start
                    and _split_point_problem(median) is None
                ):
                    actions.append(Split(r.partition, median))
                    room -= 1
                i += 1
                continue
            if i + 1 < len(ranges):
                nxt = ranges[i + 1]
                t = stats.get(nxt.partition)
                if t is not None and self.wants_merge(s, t):
                    actions.append(Merge(r.partition, nxt.partition))
                    i += 2
                    continue
            i += 1
        return tuple(actions)


# -- paging across ranges ----------------------------------------------------------------------------

Item = TypeVar("Item", bound=tuple[object, ...])


@dataclass(frozen=True, slots=True)
class RangePage(Generic[Item]):
    """One range's answer to a scan: ``items`` ``(key, ...)`` in key order, inside ``span``.

    ``span`` is the element of the scan plan it answers; ``truncated``: the range holds more items in
    ``span`` after the last one returned.
    """

    span: Range
    items: tuple[Item, ...]
    truncated: bool


def _key_after(key: str) -> str:
    # The smallest string greater than ``key`` in code point order.
    return key + "\x00"


@dataclass(frozen=True, slots=True)
class ScanCursor:
    """Where a scan of ``[start, end)`` stands, pages of at most ``limit`` items (see the module docstring)."""

    start: str
    end: str | None
    limit: int

    def __post_init__(self) -> None:
        _check_bound("start", self.start)
        if self.end is not None:
            _check_bound("end", self.end)
            if self.end < self.start:
                raise ValueError(f"scan end {self.end!r:.60} is before start {self.start!r:.60}")
        if not _is_int(self.limit) or self.limit < 1:
            raise ValueError(f"scan limit must be an int >= 1, got {self.limit!r:.40}")

    def plan(self, range_map: RangeMap) -> tuple[Range, ...]:
        return range_map.scan_plan(self.start, self.end)

    def _resume(self, key: str | None) -> ScanCursor | None:
        if key is None or (self.end is not None and key >= self.end):
            return None
        return ScanCursor(key, self.end, self.limit)

    def collect(self, pages: Iterable[RangePage[Item]]) -> tuple[tuple[Item, ...], ScanCursor | None]:
        """This page's items in key order (at most ``limit``) and the cursor of the next page, or None."""
        out: list[Item] = []
        remaining = self.limit
        expected_start = self.start  # where the next page's span must begin
        for page in pages:
            span = page.span
            if span.start != expected_start:
                raise ValueError(
                    f"scan pages do not tile the scan: a page starts at {span.start!r:.60}, "
                    f"expected {expected_start!r:.60}"
                )
            if span.end is not None and (span.end <= span.start or (self.end is not None and span.end > self.end)):
                raise ValueError(f"scan page span [{span.start!r:.60}, {span.end!r:.60}) is empty or out of the scan")
            if span.end is None and self.end is not None:
                raise ValueError("a scan page span is unbounded but the scan is not")
            previous: str | None = None
            for item in page.items:
                key = item[0]
                if not isinstance(key, str):
                    raise ValueError(f"a scan item's key must be a string, got {type(key).__name__}")
                if not span.contains(key):
                    raise ValueError(f"scan item {key!r:.60} lies outside its page's span")
                if previous is not None and not previous < key:
                    raise ValueError(f"scan items out of order: {previous!r:.60} then {key!r:.60}")
                previous = key
            items = page.items
            if len(items) > remaining:
                out.extend(items[:remaining])
                next_key = items[remaining][0]
                assert isinstance(next_key, str)
                return tuple(out), self._resume(next_key)
            out.extend(items)
            remaining -= len(items)
            if page.truncated:
                last = items[-1][0] if items else None
                assert last is None or isinstance(last, str)
                return tuple(out), self._resume(span.start if last is None else _key_after(last))
            if span.end is None or span.end == self.end:
                return tuple(out), None  # the whole scan is covered
            expected_start = span.end
            if remaining == 0:
                break
        return tuple(out), self._resume(expected_start)
