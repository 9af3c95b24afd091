"""The change feed's page: a partition's records written after a position, read from this node's replica.

Positions are record versions. In single and leader mode a record's version is the log index of the command
that wrote it, the same on every replica, and only committed commands are applied: any replica serves the feed,
and a reader may resume at another replica from the same position. In leaderless mode each replica numbers its
own stores (``kvstore/version_store.py``): positions hold at one replica only, which the page names
(``ChangesPage.source``); a reader that changes replica starts again from 0. In range mode the source is the
range's epoch, since a merge brings records in at their old versions. Pages of single and leaderless mode leave
only once what they show is durable, so no position they hand out can be taken back by a power loss.

The feed is *compacted*, as a Kafka compacted topic is: a key written several times since a position shows once,
at its newest version, and a key removed since (a single- or leader-mode delete, a purge) not at all. Every write
is delivered at least once to a reader that keeps up (its newest version is above every position read before
it), and a reader that resumes from the last position it processed misses nothing: at-least-once. That is what
a consumer of event-time rows needs (the newest row holds every older one), and it keeps the feed free: it
reads the records the store keeps anyway, through an index of versions (``Storage.changes_after``).
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import msgpack

from kvstore.messages import ChangeItem, ChangesOp, ChangesPage
from kvstore.storage.base import Record, Storage
from partitioning.partition_map import MAX_PARTITIONS

# Records a page examines at most (matching its prefix or not), so one read stays short.
MAX_EXAMINED_PER_PAGE = 50_000
# Bytes of keys and values a page holds at most (but at least one change): a page is held in memory whole, by the
# node that reads it and the one it is forwarded to, and must fit one peer message.
MAX_PAGE_BYTES = 1 << 20


def changes_page(
    storage: Storage, op: ChangesOp, source: str, value_of: Callable[[str, Record], bytes | None] | None = None
) -> ChangesPage:
    """Partition ``op.partition``'s page after ``op.after``. ``value_of`` turns a stored record into the value a
    reader sees (leaderless mode: a CRDT's rendering, the first live sibling); by default the record's value."""
    rows, position, more = storage.changes_after(
        op.partition, op.after, op.limit, op.prefix, max(op.limit, MAX_EXAMINED_PER_PAGE)
    )
    if value_of is None:
        items = [ChangeItem(key, r.value, r.version, r.expires_at_ms) for key, r in rows]
    else:
        items = [ChangeItem(key, value_of(key, r), r.version, r.expires_at_ms) for key, r in rows]
    cut = _within_bytes(items)
    if cut < len(items):
        # The rest is read by the next page, which starts after the last change kept.
        items, position, more = items[:cut], items[cut - 1].version, True
    return ChangesPage(op.partition, tuple(items), position, more, source)


def _within_bytes(items: list[ChangeItem]) -> int:
    """How many of ``items`` a page keeps: as many as fit ``MAX_PAGE_BYTES`` (at least one), ending between two
    versions only, as a page must (a batch writes several keys at one version)."""
    total = 0
    for index, item in enumerate(items):
        total += len(item.key.encode()) + (0 if item.value is None else len(item.value))
        if total > MAX_PAGE_BYTES and index > 0:
            cut = index
            while cut > 0 and items[cut - 1].version == items[cut].version:
                cut -= 1
            if cut == 0:
                # The first version alone is over the budget: the page holds all of it, and no more.
                cut = index
                while cut < len(items) and items[cut - 1].version == items[cut].version:
                    cut += 1
            return cut
    return len(items)


# ---------------------------------------------------------------- cursors: where a reader of every partition is

# A cursor is at most this long as text; decoding never inflates past MAX_CURSOR_RAW_BYTES. A GET's request line
# holds one of about 1,500 partitions (a cluster of more streams each partition on its own: ``partition=``).
MAX_CURSOR_CHARS = 64 * 1024
MAX_CURSOR_RAW_BYTES = 1024 * 1024
MAX_CURSOR_PARTITIONS = MAX_PARTITIONS
# A source is a node id (leaderless mode) or a range's epoch.
MAX_SOURCE_CHARS = 256
_INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class Cursor:
    """Per partition, the position a reader has processed and who numbered it (``ChangesPage.source``)."""

    positions: Mapping[int, tuple[int, str]] = field(default_factory=dict)

    def at(self, partition: int, source: str) -> int:
        """Where to read ``partition`` from at ``source``: a position another source numbered means nothing
        there, so the reader starts again from 0 (at-least-once: it sees changes twice, never misses one)."""
        held = self.positions.get(partition)
        if held is None or held[1] != source:
            return 0
        return held[0]

    def after_page(self, page: ChangesPage) -> Cursor:
        positions = dict(self.positions)
        positions[page.partition] = (page.position, page.source)
        return Cursor(positions)

    def encode(self) -> str:
        """Compact: partitions as gaps (mostly 1), positions, and each source named once, then deflated, so a
        cursor of 1,024 partitions fits a request line."""
        partitions = sorted(self.positions)
        sources = sorted({self.positions[p][1] for p in partitions})
        index = {source: i for i, source in enumerate(sources)}
        gaps = [p - q for p, q in zip(partitions, [-1, *partitions], strict=False)]
        positions = [self.positions[p][0] for p in partitions]
        doc = [sources, gaps, positions, [index[self.positions[p][1]] for p in partitions]]
        raw = msgpack.packb(doc, use_bin_type=True)
        return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode("ascii").rstrip("=")

    @staticmethod
    def decode(text: str) -> Cursor:
        """The cursor ``text`` encodes; ValueError (with a message for the client) if it is not one."""
        if not text:
            return Cursor()
        if len(text) > MAX_CURSOR_CHARS:
            raise ValueError(f"a cursor is at most {MAX_CURSOR_CHARS} characters")
        try:
            packed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            inflater = zlib.decompressobj()
            raw = inflater.decompress(packed, MAX_CURSOR_RAW_BYTES)
            if inflater.unconsumed_tail or not inflater.eof:
                raise ValueError("too long or cut short")
            doc = msgpack.unpackb(raw, raw=False, use_list=True, max_array_len=MAX_CURSOR_PARTITIONS)
        except (ValueError, zlib.error, msgpack.UnpackException) as exc:
            raise ValueError(f"not a change-feed cursor: {exc}") from None
        if not isinstance(doc, list) or len(doc) != 4 or not all(isinstance(part, list) for part in doc):
            raise ValueError("not a change-feed cursor: expected [sources, gaps, positions, source indexes]")
        sources, gaps, positions_list, indexes = doc
        if not len(gaps) == len(positions_list) == len(indexes) or not all(
            isinstance(s, str) and len(s) <= MAX_SOURCE_CHARS for s in sources
        ):
            raise ValueError("not a change-feed cursor: its lists do not match")
        positions: dict[int, tuple[int, str]] = {}
        partition = -1
        for gap, position, source in zip(gaps, positions_list, indexes, strict=True):
            if (
                type(gap) is not int
                or type(position) is not int
                or type(source) is not int
                or gap < 1
                or not 0 <= position <= _INT64_MAX
                or not 0 <= source < len(sources)
            ):
                raise ValueError("not a change-feed cursor: an entry is not a partition, a position and a source")
            partition += gap
            if partition >= MAX_CURSOR_PARTITIONS:
                raise ValueError("not a change-feed cursor: a partition past the most a cluster may have")
            positions[partition] = (position, sources[source])
        return Cursor(positions)
