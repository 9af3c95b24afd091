"""The change feed's Python consumer: follow ``GET /changes`` from a cursor, across disconnects and nodes.

``ChangeFeed(urls, prefix=...)`` reads the stream of every partition (or one, ``partition=``) as msgpack frames on a
background thread and hands them over as ``Changes`` (a page of one partition) and ``CaughtUp`` (every partition
had nothing more when read). Iterate it (``for frame in feed``; frames wait in a bounded queue, and a full queue
stops the reader, which stops the server: backpressure end to end), or give ``on_frame`` to handle frames on the
reader thread itself. When a stream ends or breaks, the reader connects again (to the next node after a failure,
with capped back-off) from the cursor of the last frame it queued: at-least-once. ``cursor`` is the cursor of the
last frame the consumer took (returned by ``next``, or passed to ``on_frame``), to keep and pass to a later feed:
frames still queued when the feed closes are read again by that feed rather than lost.

With ``partition=`` the reader resumes from its position in that partition (``position``); in leaderless mode a
position is one replica's numbering, so after a failure it reads the partition again from the start at the next
node (only a cursor names its replica; the server restarts it from 0 itself).

A refusal (HTTP 400: a bad cursor, prefix or partition) is not retried, since no node would answer otherwise: the
feed stops and ``next`` raises it (``failure`` holds it for an ``on_frame`` feed). Other failures are retried.
"""

from __future__ import annotations

import http.client
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import msgpack

from kvstore.errors import ErrorCode, KvError

MSGPACK_TYPE = "application/msgpack"
# How long a stream stays open on the server before the reader reconnects (the server's ``wait_ms``).
STREAM_WAIT_MS = 60_000
# A stream silent this long is dead (an idle one sends a caught-up frame at least every 50 ms).
READ_TIMEOUT_S = 10.0
READ_BYTES = 256 * 1024
MAX_FRAME_BYTES = 256 * 1024 * 1024
MAX_BACKOFF_S = 2.0


@dataclass(frozen=True)
class Change:
    partition: int
    key: str
    # None: a tombstone.
    value: bytes | None
    version: int
    expires_at_ms: int | None


@dataclass(frozen=True)
class Changes:
    partition: int
    changes: tuple[Change, ...]
    cursor: str


@dataclass(frozen=True)
class CaughtUp:
    # When the round that found everything read began, by this process's monotonic clock (``time.monotonic``).
    as_of_s: float
    cursor: str


Frame = Changes | CaughtUp


def _as_of_s(doc: dict[str, Any]) -> float:
    """When a caught-up round began, on this process's monotonic clock: the older of two readings. Arrival time
    minus the round's length is too new when the frame waited in buffers; the node's wall-clock stamp is off by the
    clocks' difference. The older one never makes a reader fresher than it is on the same machine, and bounds how
    much a skewed clock can."""
    now_s = time.monotonic()
    by_arrival_s: float = now_s - doc["round_ms"] / 1000
    stamp_ms = doc.get("as_of_ms")
    if type(stamp_ms) is not int:
        return by_arrival_s
    by_stamp_s = now_s - max(0.0, time.time() - stamp_ms / 1000)
    return min(by_arrival_s, by_stamp_s)


class ChangeFeed:
    def __init__(
        self,
        urls: Sequence[str] | str,
        *,
        prefix: str = "",
        partition: int | None = None,
        cursor: str = "",
        page_limit: int = 1000,
        max_queued_frames: int = 64,
        on_frame: Callable[[Frame], None] | None = None,
    ) -> None:
        self._urls = [u.rstrip("/") for u in ([urls] if isinstance(urls, str) else urls)]
        if not self._urls:
            raise ValueError("at least one node URL is needed")
        if max_queued_frames < 1:
            # queue.Queue takes 0 for "unbounded", which is what it must never be.
            raise ValueError(f"max_queued_frames must be at least 1, got {max_queued_frames}")
        self._prefix = prefix
        self._partition = partition
        self.cursor = cursor
        # Where the reader resumes: past every frame it queued (``cursor`` trails it by the frames still queued).
        self._read_cursor = cursor
        # For one partition, the position (the cursor is per stream of every partition), and the replica that
        # numbered it ("" in single and leader mode, where every replica numbers alike).
        self.position = 0
        self._position_source = ""
        self._page_limit = page_limit
        self._on_frame = on_frame
        self._queue: queue.Queue[Frame] = queue.Queue(maxsize=max_queued_frames)
        self._stop = threading.Event()
        self._connection: http.client.HTTPConnection | None = None
        # Errors met while reading, newest last (bounded): what a caller shows when the feed falls behind.
        self.errors: list[str] = []
        self.reconnects = 0
        # The refusal that stopped the feed, if one did.
        self.failure: KvError | None = None
        self._thread = threading.Thread(target=self._run, name="kvstore-change-feed", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ consuming

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        return self.next(timeout_s=None)

    def next(self, timeout_s: float | None) -> Frame:
        """The next frame, waiting for it (None: as long as it takes); ``queue.Empty`` after ``timeout_s`` without
        one, StopIteration once closed, the KvError that stopped the feed."""
        if self._on_frame is not None:
            raise TypeError("this feed hands its frames to on_frame")
        deadline_s = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if self._stop.is_set() and self._queue.empty():
                if self.failure is not None:
                    raise self.failure
                raise StopIteration
            # Short waits, so that a close (which queues nothing) is noticed.
            wait_s = 0.5 if deadline_s is None else min(0.5, max(0.0, deadline_s - time.monotonic()))
            try:
                item = self._queue.get(timeout=wait_s)
            except queue.Empty:
                if deadline_s is not None and time.monotonic() >= deadline_s:
                    raise
                continue
            self.cursor = item.cursor
            return item

    @property
    def queued_frames(self) -> int:
        """Frames read and waiting for the consumer: at ``max_queued_frames`` the reader (and the stream) waits."""
        return self._queue.qsize()

    def close(self) -> None:
        self._stop.set()
        connection = self._connection
        if connection is not None:
            connection.close()
        self._thread.join(timeout=READ_TIMEOUT_S + 1)

    def __enter__(self) -> ChangeFeed:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------ the reader thread

    def _run(self) -> None:
        backoff_s = 0.05
        node = 0
        while not self._stop.is_set():
            base = self._urls[node % len(self._urls)]
            try:
                self._follow(base)
                backoff_s = 0.05
            except _Refused as exc:
                self.failure = exc.error
                self._note(f"{base}: {exc.error.message}")
                self._stop.set()
                return
            except Exception as exc:
                if self._stop.is_set():
                    return
                self._note(f"{base}: {exc!r}")
                node += 1
                if self._position_source:
                    # Leaderless: the next node numbers its own stores, so this position means nothing there;
                    # reading its partition again from the start is what at-least-once asks.
                    self.position = 0
                    self._position_source = ""
                self.reconnects += 1
                self._stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)

    def _follow(self, base: str) -> None:
        """One stream from ``base``, until it ends (then the caller connects again) or breaks (raises)."""
        split = urlsplit(base)
        connection = http.client.HTTPConnection(split.hostname or "127.0.0.1", split.port or 80, timeout=READ_TIMEOUT_S)
        self._connection = connection
        try:
            connection.request("GET", self._target(), headers={"Accept": MSGPACK_TYPE})
            response = connection.getresponse()
            if response.status != 200:
                body = response.read(4096)
                if response.status == 400:
                    message = f"the change feed refused {self._target()}: {_error_message(body)}"
                    raise _Refused(KvError(ErrorCode.BAD_REQUEST, message))
                raise RuntimeError(f"HTTP {response.status}: {body[:300]!r}")
            unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_FRAME_BYTES)
            while not self._stop.is_set():
                data = response.read1(READ_BYTES)
                if not data:
                    return
                unpacker.feed(data)
                for doc in unpacker:
                    if self._take(doc):
                        return
        finally:
            connection.close()
            self._connection = None

    def _target(self) -> str:
        query: dict[str, Any] = {"wait_ms": STREAM_WAIT_MS, "limit": self._page_limit}
        if self._prefix:
            query["prefix"] = self._prefix
        if self._partition is not None:
            query["partition"] = self._partition
            query["after"] = self.position
        elif self._read_cursor:
            query["cursor"] = self._read_cursor
        return "/changes?" + urlencode(query)

    def _take(self, doc: Any) -> bool:
        """Hand over one frame; True once the stream says it ends."""
        if not isinstance(doc, dict):
            raise RuntimeError("the stream sent something other than a frame")
        if doc.get("end"):
            self._read_cursor = doc["cursor"]
            return True
        if "error" in doc:
            self._note(f"partition {doc.get('partition')}: {doc['error']}")
            return False
        if doc.get("caught_up"):
            frame: Frame = CaughtUp(_as_of_s(doc), doc["cursor"])
        else:
            partition = doc["partition"]
            changes = tuple(
                Change(partition, c["key"], c["value"], c["version"], c["expires_at_ms"]) for c in doc["changes"]
            )
            frame = Changes(partition, changes, doc["cursor"])
        self._hand_over(frame)
        # Past the frame only once it is handed over: a frame lost in a crash is read again.
        self._read_cursor = frame.cursor
        if isinstance(frame, Changes) and frame.changes:
            self.position = max(self.position, doc["position"])
            self._position_source = doc.get("source", "")
        return False

    def _hand_over(self, frame: Frame) -> None:
        if self._on_frame is not None:
            self._on_frame(frame)
            self.cursor = frame.cursor
            return
        while not self._stop.is_set():
            try:
                self._queue.put(frame, timeout=0.5)
                return
            except queue.Full:
                continue

    def _note(self, error: str) -> None:
        self.errors.append(error)
        del self.errors[:-20]


class _Refused(Exception):
    """A node refused the stream's request (HTTP 400): raised apart from ``on_frame``'s errors, which are retried."""

    def __init__(self, error: KvError) -> None:
        super().__init__(error.message)
        self.error = error


def _error_message(body: bytes) -> str:
    """The message of a JSON error answer (``{"error": {"message"}}``), else the body's first bytes."""
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return repr(body[:300])
