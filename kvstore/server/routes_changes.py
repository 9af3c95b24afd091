"""``GET /changes``: the change feed (``kvstore/changes.py``), streamed.

``GET /changes?partition=P&after=N`` streams partition P's changes after position N; ``GET /changes?cursor=C``
streams every partition's, from a cursor a previous stream handed out (none: from the start). ``prefix=`` keeps
only keys that start with it, ``limit=`` bounds a page (default 1000, at most 10,000), and ``wait_ms=`` is how long
the stream stays open waiting for new changes once caught up (default 30 s, at most 10 min; 0: end once caught
up). A reader resumes after a disconnect from the last cursor it processed: at-least-once.

The body is a sequence of frames: newline-delimited JSON (values as UTF-8 text or ``value_b64``), or with
``Accept: application/msgpack`` concatenated msgpack maps (values as bytes). Each frame is one of:

- ``{"partition", "changes": [{"key", "value"|"value_b64"|null, "version", "expires_at_ms"}], "position",
  "source", "more", "cursor"}``: a page of changes (``value`` null: a tombstone);
- ``{"caught_up": true, "round_ms", "as_of_ms", "cursor"}``: every partition streamed had nothing more when read,
  in a round that took ``round_ms`` and began at ``as_of_ms`` (this node's wall clock): a reader is as fresh as the
  moment the round began;
- ``{"partition", "error": {"code", "message"}}``: a partition could not be read this round (retried next round);
- ``{"end": true, "cursor"}``: the stream ends (``wait_ms`` passed, and no partition had more to read at once).

The first round of reads is made before the answer starts, so that a read the node refuses (a prefix longer than a
key may be) is a 400 with the JSON error, as a bad parameter is.

Backpressure: a page is read only once the previous frames were handed to the transport and the client has read
enough of them (``StreamResponse``), so a slow reader holds at most one round of pages (``limit`` per partition)
in this node's memory, and one that stops reading is cut off by the idle timeout. An idle stream polls its
partitions every 2 ms at first, backing off to every 50 ms; a partition that fails is retried at the same pace.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import msgpack

from kvstore.changes import Cursor
from kvstore.errors import ErrorCode, KvError
from kvstore.messages import ChangesOp, ChangesPage, Failure
from kvstore.server.http_codec import MSGPACK_TYPE, query_params, value_fields, wants_msgpack
from kvstore.server.http_message import Request, Response, StreamResponse
from kvstore.server.pump import Pump
from kvstore.server.router import Router
from kvstore.session import MAX_POSITION
from kvstore.validation import MAX_CHANGES_PAGE, parse_whole_number

NDJSON_TYPE = "application/x-ndjson"
DEFAULT_PAGE_LIMIT = 1000
DEFAULT_WAIT_MS = 30_000
MAX_WAIT_MS = 600_000
# Streams a node serves at once (every client's); past it: 503 overloaded.
MAX_OPEN_STREAMS = 64
MIN_POLL_S = 0.002
MAX_POLL_S = 0.05
# The source of a position a reader gave itself (``after=``): taken to be the first answering replica's.
ANY_SOURCE = "*"


class ChangesRoutes:
    def __init__(self, pump: Pump, partition_count: Callable[[], int]) -> None:
        self._pump = pump
        self._open_streams = 0
        # Looked up per round: the node's map may change while a stream is open.
        self._partition_count = partition_count

    def register(self, router: Router) -> None:
        router.add("GET", "/changes", self.changes)

    async def changes(self, request: Request, _: str) -> Response:
        allowed = ("partition", "after", "cursor", "prefix", "limit", "wait_ms")
        params = query_params(request, allowed) if request.query_string else {}
        limit = _number(params, "limit", DEFAULT_PAGE_LIMIT, 1, MAX_CHANGES_PAGE)
        wait_ms = _number(params, "wait_ms", DEFAULT_WAIT_MS, 0, MAX_WAIT_MS)
        prefix = params.get("prefix", "")
        count = self._partition_count()
        if "partition" in params:
            if "cursor" in params:
                raise KvError(ErrorCode.BAD_REQUEST, "give partition (with after) or cursor, not both")
            partition = _number(params, "partition", 0, 0, count - 1)
            # At most int64's maximum: a larger position cannot be sent to a peer (a forwarded read of it made the
            # peer refuse the whole batch it came in, and this node took the peer for unreachable).
            after = _number(params, "after", 0, 0, MAX_POSITION)
            partitions: tuple[int, ...] | None = (partition,)
            # Positions from ``after`` hold at whichever replica answers first: the reader chose them.
            cursor = Cursor({partition: (after, ANY_SOURCE)}) if after else Cursor()
        else:
            if "after" in params:
                message = "after goes with partition; a stream of every partition takes cursor"
                raise KvError(ErrorCode.BAD_REQUEST, message)
            try:
                cursor = Cursor.decode(params.get("cursor", ""))
            except ValueError as exc:
                raise KvError(ErrorCode.BAD_REQUEST, str(exc)) from None
            beyond = [p for p in cursor.positions if p >= count]
            if beyond:
                # Carried along unread, they would only make every frame's cursor longer.
                raise KvError(ErrorCode.BAD_REQUEST, f"the cursor names partition {beyond[0]}; there are {count}")
            partitions = None
        as_msgpack = wants_msgpack(request)
        if self._open_streams >= MAX_OPEN_STREAMS:
            # Each open stream reads every partition it follows every 50 ms at least, and holds a round of pages for
            # a slow reader: their number is bounded, as the node's memory and its ops in flight are.
            raise KvError(ErrorCode.OVERLOADED, f"{MAX_OPEN_STREAMS} change-feed streams are open here; retry later")
        self._open_streams += 1
        try:
            # The first round is read before the answer starts, so that a request its reads refuse (a prefix longer
            # than a key) is a 400, not a stream of the same error frame until wait_ms ends.
            first = await self._round(partitions, cursor, prefix, limit)
            for result in first[1]:
                if isinstance(result, Failure) and result.code == ErrorCode.BAD_REQUEST.value:
                    raise KvError(ErrorCode.BAD_REQUEST, result.message)
        except BaseException:
            self._open_streams -= 1
            raise
        frames = _Counted(self._frames(partitions, cursor, prefix, limit, wait_ms, as_msgpack, first), self._closed)
        return StreamResponse(frames, headers={"Content-Type": MSGPACK_TYPE if as_msgpack else NDJSON_TYPE})

    def _closed(self) -> None:
        self._open_streams -= 1

    async def _round(
        self, only: tuple[int, ...] | None, cursor: Cursor, prefix: str, limit: int
    ) -> tuple[tuple[int, ...], list[ChangesPage | Failure], float]:
        """A page of each partition streamed: the partitions, their answers, and when the round began."""
        started_s = time.monotonic()
        partitions = only if only is not None else tuple(range(self._partition_count()))
        answers = await asyncio.gather(*(self._page(p, cursor, prefix, limit) for p in partitions))
        return partitions, answers, started_s

    async def _frames(
        self,
        only: tuple[int, ...] | None,
        cursor: Cursor,
        prefix: str,
        limit: int,
        wait_ms: int,
        as_msgpack: bool,
        first: tuple[tuple[int, ...], list[ChangesPage | Failure], float],
    ) -> AsyncGenerator[bytes, None]:
        encode = _msgpack_frame if as_msgpack else _json_frame
        deadline_s = time.monotonic() + wait_ms / 1000
        poll_s = MIN_POLL_S
        read: tuple[tuple[int, ...], list[ChangesPage | Failure], float] | None = first
        while True:
            partitions, answers, started_s = read or await self._round(only, cursor, prefix, limit)
            read = None
            # Failed: a partition could not be read (an error frame); pending: one had more to read at once.
            failed = pending = False
            out: list[bytes] = []
            delivered = False
            for partition, result in zip(partitions, answers, strict=True):
                if isinstance(result, Failure):
                    failed = True
                    error = {"code": result.code, "message": result.message}
                    out.append(encode({"partition": partition, "error": error}))
                    continue
                cursor = cursor.after_page(result)
                pending = pending or result.more
                if result.changes:
                    delivered = True
                    out.append(encode(_page_frame(result, cursor, as_msgpack)))
            if not failed and not pending:
                round_ms = round((time.monotonic() - started_s) * 1000, 3)
                # The round's start by the wall clock too: a reader that got the frame late (it waited in buffers)
                # must not take it for fresher than it is.
                as_of_ms = time.time_ns() // 1_000_000 - round(round_ms)
                frame = {"caught_up": True, "round_ms": round_ms, "as_of_ms": as_of_ms, "cursor": cursor.encode()}
                out.append(encode(frame))
            if out:
                yield b"".join(out)
            now_s = time.monotonic()
            # A partition failing throughout does not hold the stream open past wait_ms: the reader resumes later
            # from the cursor, which holds that partition's place. Nor does one that always has more, for long.
            if (now_s >= deadline_s and not pending) or now_s >= deadline_s + MAX_WAIT_MS / 1000:
                yield encode({"end": True, "cursor": cursor.encode()})
                return
            if pending:
                poll_s = MIN_POLL_S
            else:
                # Failed partitions are retried after the same pause as an idle poll: an error answered at once
                # would otherwise make this a busy loop of error frames.
                await asyncio.sleep(poll_s)
                # Back off only while nothing changes: a round that found changes keeps the next one close, so
                # a steady trickle of writes is read within MIN_POLL_S rather than at the idle pace.
                poll_s = MIN_POLL_S if delivered else min(poll_s * 2, MAX_POLL_S)

    async def _page(self, partition: int, cursor: Cursor, prefix: str, limit: int) -> ChangesPage | Failure:
        held = cursor.positions.get(partition)
        after = 0 if held is None else held[0]
        result = await self._pump.execute(ChangesOp(partition, after, limit, prefix))
        if (
            isinstance(result, ChangesPage)
            and held is not None
            and after
            and held[1] not in (result.source, ANY_SOURCE)
        ):
            # Positions another replica numbered mean nothing here: read this one from the start.
            result = await self._pump.execute(ChangesOp(partition, 0, limit, prefix))
        if isinstance(result, ChangesPage | Failure):
            return result
        return Failure.of(ErrorCode.INTERNAL, f"a change-feed read answered {type(result).__name__}")


class _Counted:
    """``frames``, calling ``on_close`` once when closed, or when dropped unclosed (a connection lost before its
    answer was written never starts writing it). An async generator never started runs no ``finally``: hence this."""

    def __init__(self, frames: AsyncGenerator[bytes, None], on_close: Callable[[], None]) -> None:
        self._frames = frames
        self._on_close: Callable[[], None] | None = on_close

    def __aiter__(self) -> _Counted:
        return self

    async def __anext__(self) -> bytes:
        return await self._frames.__anext__()

    async def aclose(self) -> None:
        self._close()
        await self._frames.aclose()

    def _close(self) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    def __del__(self) -> None:
        self._close()


def _page_frame(page: ChangesPage, cursor: Cursor, as_msgpack: bool) -> dict[str, Any]:
    changes = []
    for item in page.changes:
        change: dict[str, Any] = {"key": item.key, "version": item.version, "expires_at_ms": item.expires_at_ms}
        change.update({"value": None} if item.value is None else value_fields(item.value, as_msgpack))
        changes.append(change)
    return {
        "partition": page.partition,
        "changes": changes,
        "position": page.position,
        "source": page.source,
        "more": page.more,
        "cursor": cursor.encode(),
    }


def _json_frame(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _msgpack_frame(doc: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(doc, use_bin_type=True)
    return data


def _number(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    if name not in params:
        return default
    value = parse_whole_number(params[name], name)
    if not low <= value <= high:
        raise KvError(ErrorCode.BAD_REQUEST, f"{name} must be {low} to {high}, got {value}")
    return value
