"""The in-process replica of online rows: the hot path of ``FeatureClient.get_online_features``.

It follows the cluster's change feed (``kvstore/change_feed.py``) of the online rows of the views it serves
(prefix ``__fs/on/<view>/``, one feed per view) and keeps each entity's row decoded in a dict, merging every change
in with ``merge_rows``: the feed is at-least-once and may deliver an older row again after a reconnect, and the
merge (newest event time per feature) makes that harmless. A second feed follows the registry key, so a change of
the definitions reaches the replica like any other change, and the registry is then read again from the cluster
(in leaderless mode the feed shows one sibling; the route resolves them). It follows it with a cursor rather than
a position in the registry's partition: in leaderless mode a position is one replica's numbering, meaningless at
the node a reconnect reaches, while a cursor names its replica (the server starts again from 0 at another).

Staleness: every feed reports ``CaughtUp`` when a round found nothing more in any partition, with the moment that
round began. The replica holds everything the feed's pages had shown before the oldest such moment of its feeds;
``staleness_ms`` is how long ago that was (infinite before every feed caught up once). In leader mode the pages come
from each partition's leader as the feed's node knows it (``Node._start_changes``), so that covers every write
acknowledged before it (with ``replication = sync``), but for the moments after a leader change before that node
hears of it. In leaderless mode a page is one replica's, which a quorum write may not have reached yet:
the bound is that replica's, and read repair, hinted handoff and anti-entropy bound how far it trails.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from kvstore.change_feed import CaughtUp, ChangeFeed, Changes, Frame
from kvstore.features.keys import REGISTRY_KEY, online_prefix, parse_online_key
from kvstore.features.registry import Registry
from replication.event_time import Row, decode_row, merge_rows


class LocalReplica:
    def __init__(
        self,
        urls: Sequence[str],
        views: Sequence[str],
        read_registry: Callable[[], Registry],
    ) -> None:
        self.views = frozenset(views)
        self.rows: dict[str, dict[str, Row]] = {view: {} for view in self.views}
        self._read_registry = read_registry
        self.registry: Registry = read_registry()
        self.changes_applied = 0
        self.undecodable = 0
        # Per feed, when it last caught up (monotonic seconds; None: not yet).
        self._as_of: dict[str, float | None] = {}
        self._caught_up = threading.Condition()
        self._feeds: list[ChangeFeed] = []
        for view in sorted(self.views):
            self._as_of[view] = None
            self._feeds.append(ChangeFeed(urls, prefix=online_prefix(view), on_frame=self._taker(view)))
        self._as_of[REGISTRY_KEY] = None
        self._feeds.append(
            ChangeFeed(urls, prefix=REGISTRY_KEY, on_frame=self._taker(REGISTRY_KEY))
        )

    def _taker(self, name: str) -> Callable[[Frame], None]:
        def take(frame: Frame) -> None:
            if isinstance(frame, Changes):
                if name == REGISTRY_KEY:
                    if any(change.key == REGISTRY_KEY for change in frame.changes):
                        self.registry = self._read_registry()
                else:
                    self._apply(frame)
            elif isinstance(frame, CaughtUp):
                with self._caught_up:
                    self._as_of[name] = frame.as_of_s
                    self._caught_up.notify_all()

        return take

    def _apply(self, frame: Changes) -> None:
        for change in frame.changes:
            if change.value is None:
                continue  # rows are never deleted; a leaderless tombstone here is not a row
            try:
                view, entity = parse_online_key(change.key)
                row = decode_row(change.value, merged=True)
            except ValueError:
                self.undecodable += 1
                continue
            rows = self.rows.get(view)
            if rows is None:
                continue
            held = rows.get(entity)
            # A new dict replaces the old in one store, so a reader on another thread sees one or the other.
            rows[entity] = row if held is None else merge_rows(held, row)
            self.changes_applied += 1

    def staleness_ms(self) -> float:
        oldest = None
        for as_of in self._as_of.values():
            if as_of is None:
                return float("inf")
            oldest = as_of if oldest is None else min(oldest, as_of)
        assert oldest is not None
        return max(0.0, (time.monotonic() - oldest) * 1000)

    def wait_caught_up(self, timeout_s: float) -> bool:
        """Whether every feed caught up at least once within ``timeout_s``."""
        return self.wait_fresher_than(float("-inf"), timeout_s)

    def wait_fresher_than(self, moment_s: float, timeout_s: float) -> bool:
        """Whether every feed caught up in a round that began after ``moment_s`` (monotonic) within ``timeout_s``:
        then the replica holds every write the feed's node had applied before ``moment_s`` (see the module's
        docstring: not always every write the cluster acknowledged by then)."""
        deadline = time.monotonic() + timeout_s
        with self._caught_up:
            while any(as_of is None or as_of < moment_s for as_of in self._as_of.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._caught_up.wait(left)
        return True

    def errors(self) -> list[str]:
        return [error for feed in self._feeds for error in feed.errors]

    def close(self) -> None:
        for feed in self._feeds:
            feed.close()

