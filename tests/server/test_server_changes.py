"""``GET /changes`` against real in-process nodes: order, cursors, prefixes, frames, encodings, modes, refusals,
and backpressure (a reader that stops reading stops the node reading pages for it)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import socket
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgpack
import pytest
from server_support import HANG_GUARD_S, error_of, port_of, wait_for_connections

from kvstore.changes import MAX_PAGE_BYTES, Cursor, changes_page
from kvstore.config import LeaderlessConfig, Timeouts
from kvstore.messages import ChangesOp
from kvstore.server.inprocess import InProcessCluster, loopback_config
from kvstore.server.routes_changes import MAX_OPEN_STREAMS
from kvstore.storage.base import Record

Frame = dict[str, Any]
PARTITIONS = 4


@pytest.fixture
async def single() -> AsyncIterator[InProcessCluster]:
    async with InProcessCluster(loopback_config(1, partitions=PARTITIONS)) as running:
        yield running



def partition_of(cluster: InProcessCluster, key: str) -> int:
    partition_map = next(iter(cluster.servers.values())).node.partition_map
    partition: int = partition_map.partition_for_key(key)
    return partition


def keys_in(cluster: InProcessCluster, partition: int, stem: str, count: int) -> list[str]:
    """``count`` keys ``<stem>-<i>`` of ``partition``."""
    keys = [f"{stem}-{i}" for i in range(50 * count * PARTITIONS)]
    return [k for k in keys if partition_of(cluster, k) == partition][:count]


async def put(http: aiohttp.ClientSession, base: str, key: str, value: bytes) -> None:
    async with http.put(f"{base}/kv/{key}", data=value) as response:
        assert response.status == 200, await response.text()


async def frames_of(
    http: aiohttp.ClientSession, base: str, query: dict[str, str], as_msgpack: bool = False
) -> list[Frame]:
    """Every frame of a stream that ends by itself (``wait_ms=0`` unless the query says otherwise)."""
    headers = {"Accept": "application/msgpack"} if as_msgpack else {}
    params = {"wait_ms": "0", **query}
    async with http.get(f"{base}/changes", params=params, headers=headers) as response:
        assert response.status == 200, await response.text()
        body = await asyncio.wait_for(response.read(), HANG_GUARD_S)
        if as_msgpack:
            assert response.headers["Content-Type"] == "application/msgpack"
            return _unpacked(body)
        assert response.headers["Content-Type"] == "application/x-ndjson"
        assert body.endswith(b"\n")
        return [json.loads(line) for line in body.split(b"\n") if line]


def _unpacked(body: bytes) -> list[Frame]:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(body)
    return list(unpacker)


def changes(frames: list[Frame]) -> list[Frame]:
    return [change for frame in frames if "changes" in frame for change in frame["changes"]]


def last_cursor(frames: list[Frame]) -> str:
    cursor: str = frames[-1]["cursor"]
    return cursor


async def test_a_partition_streams_its_changes_in_position_order_compacted(
    single: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    base = single.url("n1")
    a, b, c = keys_in(single, 1, "order", 3)
    for key, value in ((a, b"1"), (b, b"2"), (a, b"3"), (c, b"\xff\x00")):
        await put(http, base, key, value)
    frames = await frames_of(http, base, {"partition": "1"})
    seen = changes(frames)
    # a was rewritten: it shows once, at its newest version, after b.
    assert [(ch["key"], ch.get("value"), ch.get("value_b64")) for ch in seen] == [
        (b, "2", None),
        (a, "3", None),
        (c, None, base64.b64encode(b"\xff\x00").decode()),
    ]
    versions = [ch["version"] for ch in seen]
    assert versions == sorted(versions) and len(set(versions)) == 3
    assert all(ch["expires_at_ms"] is None for ch in seen)
    page, caught_up, end = frames
    assert page["partition"] == 1 and page["position"] == versions[-1] and page["more"] is False
    assert page["source"] == ""
    assert caught_up["caught_up"] is True and caught_up["round_ms"] >= 0 and "cursor" in caught_up
    assert end == {"end": True, "cursor": caught_up["cursor"]}
    # after= a position: only what came later.
    later = await frames_of(http, base, {"partition": "1", "after": str(versions[0])})
    assert [ch["key"] for ch in changes(later)] == [a, c]
    # An empty partition: caught up at once, then the end.
    empty = await frames_of(http, base, {"partition": "3"})
    assert [set(f) for f in empty] == [{"caught_up", "round_ms", "as_of_ms", "cursor"}, {"end", "cursor"}]


async def test_a_ttl_shows_as_its_expiry(single: InProcessCluster, http: aiohttp.ClientSession) -> None:
    base = single.url("n1")
    async with http.put(f"{base}/kv/ttl-key", data=b"v", params={"ttl_ms": "600000"}) as response:
        assert response.status == 200
    (change,) = changes(await frames_of(http, base, {"partition": str(partition_of(single, "ttl-key"))}))
    assert change["key"] == "ttl-key" and isinstance(change["expires_at_ms"], int)


async def test_msgpack_frames_carry_raw_bytes(single: InProcessCluster, http: aiohttp.ClientSession) -> None:
    base = single.url("n1")
    (key,) = keys_in(single, 2, "packed", 1)
    await put(http, base, key, b"\x00\xffbytes")
    frames = await frames_of(http, base, {"partition": "2"}, as_msgpack=True)
    (change,) = changes(frames)
    assert change["key"] == key and change["value"] == b"\x00\xffbytes"
    assert frames[-2]["caught_up"] is True and frames[-1]["end"] is True


async def test_every_partition_and_a_cursor_resume_after_a_disconnect_missing_nothing(
    single: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    base = single.url("n1")
    written = {f"resume-{i}": f"v{i}".encode() for i in range(40)}
    for key, value in written.items():
        await put(http, base, key, value)
    # A reader takes a few frames (one change each), then its connection drops.
    processed: list[str] = []
    cursor = ""
    async with http.get(f"{base}/changes", params={"limit": "1", "wait_ms": "0"}) as response:
        for _ in range(7):
            frame = json.loads(await asyncio.wait_for(response.content.readline(), HANG_GUARD_S))
            if "changes" in frame:
                processed.extend(ch["key"] for ch in frame["changes"])
                cursor = frame["cursor"]
    assert processed and len(processed) < len(written)
    # More writes while it was away, then it resumes from the last cursor it processed.
    for i in range(40, 45):
        written[f"resume-{i}"] = b"late"
        await put(http, base, f"resume-{i}", b"late")
    rest = await frames_of(http, base, {"cursor": cursor})
    resumed = [ch["key"] for ch in changes(rest)]
    # At-least-once, and here exactly once: single-mode positions hold at every replica.
    assert sorted(processed + resumed) == sorted(written)
    # A cursor from the end of a stream: nothing more until something is written.
    assert changes(await frames_of(http, base, {"cursor": last_cursor(rest)})) == []
    await put(http, base, "resume-0", b"again")
    again = changes(await frames_of(http, base, {"cursor": last_cursor(rest)}))
    assert [(ch["key"], ch["value"]) for ch in again] == [("resume-0", "again")]


async def test_prefix_keeps_only_matching_keys(single: InProcessCluster, http: aiohttp.ClientSession) -> None:
    base = single.url("n1")
    for key in ("user/1", "user/2", "order/1", "user-x", "us"):
        await put(http, base, key, b"v")
    frames = await frames_of(http, base, {"prefix": "user/"})
    assert sorted(ch["key"] for ch in changes(frames)) == ["user/1", "user/2"]
    assert frames[-2]["caught_up"] is True


async def test_a_waiting_stream_delivers_a_later_write(single: InProcessCluster, http: aiohttp.ClientSession) -> None:
    base = single.url("n1")
    params = {"partition": str(partition_of(single, "later")), "wait_ms": "60000"}
    async with http.get(f"{base}/changes", params=params) as response:
        first = json.loads(await asyncio.wait_for(response.content.readline(), HANG_GUARD_S))
        assert first["caught_up"] is True
        await put(http, base, "later", b"news")
        while True:
            frame = json.loads(await asyncio.wait_for(response.content.readline(), HANG_GUARD_S))
            if "changes" in frame:
                break
            assert frame["caught_up"] is True
        assert [(ch["key"], ch["value"]) for ch in frame["changes"]] == [("later", "news")]


async def test_a_partition_held_by_another_node_is_forwarded(http: aiohttp.ClientSession) -> None:
    async with InProcessCluster(loopback_config(3, partitions=6)) as cluster:
        key = cluster.key_on("n2", "far")
        partition = partition_of(cluster, key)
        # Values that make pages far larger than one peer message may be: pages are cut by bytes.
        big = [f"{key}-big-{i}" for i in range(200) if partition_of(cluster, f"{key}-big-{i}") == partition][:6]
        value = b"x" * (MAX_PAGE_BYTES // 2 + 1)
        for name in [key, *big]:
            await put(http, cluster.url("n2"), name, value if name != key else b"far")
        frames = await frames_of(http, cluster.url("n1"), {"partition": str(partition)})
        seen = changes(frames)
        assert [ch["key"] for ch in seen] == [key, *big]
        assert seen[0]["value"] == "far" and all(len(ch["value"]) == len(value) for ch in seen[1:])
        pages = [f for f in frames if "changes" in f]
        assert len(pages) >= 3 and all(len(p["changes"]) <= 2 for p in pages)
        assert not [f for f in frames if "error" in f]


async def test_leaderless_streams_tombstones_from_one_replica(http: aiohttp.ClientSession) -> None:
    config = loopback_config(3, partitions=PARTITIONS, mode="leaderless", leaderless=LeaderlessConfig())
    async with InProcessCluster(config) as cluster:
        base = cluster.url("n1")
        await put(http, base, "gone", b"soon")
        async with http.get(f"{base}/kv/gone") as response:
            context = response.headers["X-Kv-Context"]
        async with http.delete(f"{base}/kv/gone", headers={"X-Kv-Context": context}) as response:
            assert response.status == 200
        await put(http, base, "kept", b"here")
        frames = await frames_of(http, base, {})
        latest = {ch["key"]: ch for ch in changes(frames)}
        assert latest["gone"]["value"] is None and latest["kept"]["value"] == "here"
        sources = {f["source"] for f in frames if "changes" in f}
        assert len(sources) == 1 and sources != {""}
        # The cursor resumes at the replica that numbered it: nothing new, nothing again.
        assert changes(await frames_of(http, base, {"cursor": last_cursor(frames)})) == []


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ({"cursor": "not a cursor!"}, "not a change-feed cursor"),
        ({"cursor": base64.urlsafe_b64encode(zlib.compress(msgpack.packb([[0, 1]]))).decode()}, "not a change-feed"),
        ({"cursor": Cursor({99: (1, "")}).encode()}, "partition 99"),
        ({"cursor": base64.urlsafe_b64encode(zlib.compress(b"\x00" * 2_000_000, 9)).decode()}, "too long"),
        ({"cursor": "A" * 5000}, "not a change-feed cursor"),
        ({"partition": "4"}, "partition must be 0 to 3"),
        ({"partition": "-1"}, "partition"),
        ({"partition": "1", "cursor": ""}, "not both"),
        ({"after": "5"}, "after goes with partition"),
        ({"partition": "0", "after": "x"}, "after"),
        ({"partition": "0", "after": str(1 << 64)}, "after"),
        ({"partition": "0", "after": str(1 << 63)}, "after must be 0 to 9223372036854775807"),
        ({"limit": "0"}, "limit must be 1 to 10000"),
        ({"limit": "10001"}, "limit"),
        ({"limit": "1e3"}, "limit"),
        ({"wait_ms": "600001"}, "wait_ms"),
        ({"wait_ms": "\u0663"}, "wait_ms"),
        ({"prefix": "p" * 2000}, "prefix"),
        ({"since": "1"}, "unknown query parameter"),
    ],
)
async def test_bad_parameters_are_a_400_with_the_json_error(
    single: InProcessCluster, http: aiohttp.ClientSession, query: dict[str, str], words: str
) -> None:
    async with http.get(f"{single.url('n1')}/changes", params=query) as response:
        assert response.status == 400
        error = await error_of(response)
        assert error["code"] == "bad_request" and words in str(error["message"])


async def test_a_reader_that_stops_reading_stops_the_pages(
    single: InProcessCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = single.servers["n1"]
    base = single.url("n1")
    # 16 MiB in pages of 64 KiB: far more than the kernel buffers a connection (tcp_wmem's maximum, 4 MiB here;
    # the client's receive buffer is made small).
    keys = keys_in(single, 0, "slow", 256)
    value = b"v" * 64 * 1024
    async with aiohttp.ClientSession() as http:
        for key in keys:
            await put(http, base, key, value)
    pages: list[ChangesOp] = []
    submit = server.pump.submit

    def counting(op: Any) -> Any:
        if isinstance(op, ChangesOp):
            pages.append(op)
        return submit(op)

    monkeypatch.setattr(server.pump, "submit", counting)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port_of(single)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
    try:
        writer.write(b"GET /changes?partition=0&limit=1&wait_ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n")
        # Read nothing until the node waits for this client to read on, and has stopped reading pages: the kernel
        # keeps taking bytes for a while as its buffers grow, so the count settles in steps.
        settled, seen = 0, -1
        for _ in range(int(HANG_GUARD_S / 0.05)):
            await asyncio.sleep(0.05)
            waiting = any(c._writable is not None for c in server._edge.connections)
            settled = settled + 1 if waiting and len(pages) == seen else 0
            seen = len(pages)
            if settled == 5:
                break
        else:
            pytest.fail("the node never stopped reading pages for a reader that reads nothing")
        # A page of 64 KiB each: what the socket buffers (<= 4 MiB + 4 KiB), the transport's high-water mark
        # (64 KiB) and the stream (one page) hold is at most ~70 pages, a fraction of them all.
        assert seen < len(keys) // 2
        # Reading on delivers every change, none lost to the pause.
        body = bytearray()
        while b'"caught_up":true' not in body[-4096:]:
            body += await asyncio.wait_for(reader.read(1 << 20), HANG_GUARD_S)
        delivered = {m.group(1).decode() for m in re.finditer(rb'"key":"([^"]+)"', body)}
        assert delivered == set(keys)
    finally:
        writer.close()


async def test_many_streams_never_read_and_a_slow_head_do_not_wedge_the_node() -> None:
    config = loopback_config(1, partitions=PARTITIONS, timeouts=Timeouts(header_timeout_ms=300))
    async with InProcessCluster(config) as cluster, aiohttp.ClientSession() as http:
        base, port = cluster.url("n1"), port_of(cluster)
        await put(http, base, "before", b"v")
        streams = []
        for _ in range(30):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /changes?wait_ms=600000 HTTP/1.1\r\nHost: x\r\n\r\n")
            streams.append((reader, writer))
        # A head sent in part and never finished (slowloris): answered 408 and closed once the head timeout passes.
        slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", port)
        slow_writer.write(b"GET /changes?wait_ms=600000 HTTP/1.1\r\nHo")
        try:
            await wait_for_connections(cluster, "client", 31)
            # The node goes on serving others while they hold their streams.
            await put(http, base, "during", b"w")
            frames = await frames_of(http, base, {"prefix": "during"})
            assert [ch["key"] for ch in changes(frames)] == ["during"]
            answer = await asyncio.wait_for(slow_reader.read(), HANG_GUARD_S)
            assert answer.startswith(b"HTTP/1.1 408 ")
            # Each unread stream holds frames for its reader, and only a few small ones.
            head = await asyncio.wait_for(streams[0][0].readuntil(b"\r\n\r\n"), HANG_GUARD_S)
            assert b"Transfer-Encoding: chunked" in head
        finally:
            slow_writer.close()
            for _, writer in streams:
                writer.close()
        # Their readers gone, the streams end and the node holds no connection for them.
        await wait_for_connections(cluster, "client", 0)
        async with http.get(f"{base}/kv/before") as response:
            assert response.status == 200 and await response.read() == b"v"


async def test_a_forwarded_change_read_past_int64_is_refused_as_a_bad_request() -> None:
    async with InProcessCluster(loopback_config(3, partitions=6)) as cluster:
        partition = partition_of(cluster, cluster.key_on("n2", "far"))
        reply = cluster.servers["n1"].pump.submit(ChangesOp(partition, 1 << 63, 10))
        if isinstance(reply, asyncio.Future):
            reply = await asyncio.wait_for(reply, HANG_GUARD_S)
        result = reply.result
        assert getattr(result, "code", None) == "bad_request", result


async def test_a_leaderless_cursor_taken_to_another_replica_starts_it_again(http: aiohttp.ClientSession) -> None:
    config = loopback_config(3, partitions=PARTITIONS, mode="leaderless", leaderless=LeaderlessConfig())
    async with InProcessCluster(config) as cluster:
        written = {f"moved-{i}" for i in range(12)}
        for key in sorted(written):
            # w=all: every replica holds every key before the reads.
            async with http.put(f"{cluster.url('n1')}/kv/{key}", data=b"v", params={"w": "all"}) as response:
                assert response.status == 200
        at_n1 = await frames_of(http, cluster.url("n1"), {})
        assert {ch["key"] for ch in changes(at_n1)} == written
        # n2 numbers its own positions: n1's cursor means nothing there, so n2 streams everything again.
        at_n2 = await frames_of(http, cluster.url("n2"), {"cursor": last_cursor(at_n1)})
        assert {ch["key"] for ch in changes(at_n2)} == written
        assert {f["source"] for f in at_n2 if "changes" in f} == {"n2"}
        # And n2's own cursor resumes at n2 with nothing again.
        assert changes(await frames_of(http, cluster.url("n2"), {"cursor": last_cursor(at_n2)})) == []


async def test_open_streams_are_bounded_and_each_one_ended_frees_its_place(
    single: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    base, port = single.url("n1"), port_of(single)
    # Streams that end, normally or by a reader gone at once, free their places: many more than the bound, in turn.
    for i in range(MAX_OPEN_STREAMS + 10):
        if i % 2:
            assert (await frames_of(http, base, {"partition": "0"}))[-1]["end"] is True
        else:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /changes?wait_ms=0 HTTP/1.1\r\nHost: x\r\n\r\n")
            writer.close()
    held = []
    try:
        for _ in range(MAX_OPEN_STREAMS):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /changes?wait_ms=600000 HTTP/1.1\r\nHost: x\r\n\r\n")
            held.append(writer)
            assert (await asyncio.wait_for(reader.readline(), HANG_GUARD_S)).startswith(b"HTTP/1.1 200 ")
        async with http.get(f"{base}/changes", params={"wait_ms": "0"}) as response:
            assert response.status == 503
            assert (await error_of(response))["code"] == "overloaded"
    finally:
        for writer in held:
            writer.close()
    # Their readers gone, the places are free again.
    for _ in range(int(HANG_GUARD_S / 0.05)):
        async with http.get(f"{base}/changes", params={"wait_ms": "0"}) as response:
            await response.read()
            if response.status == 200:
                break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the streams' places were never freed")


async def test_leader_mode_any_replica_serves_the_feed_and_a_cursor_holds_at_each(
    http: aiohttp.ClientSession,
) -> None:
    async with InProcessCluster(loopback_config(3, partitions=2, mode="leader")) as cluster:
        base = cluster.url("n1")
        written = [f"led-{i}" for i in range(6)]
        for key in written:
            for _ in range(int(HANG_GUARD_S / 0.05)):
                # replication=sync: committed on a quorum; the feed serves committed (applied) writes only.
                async with http.put(f"{base}/kv/{key}", data=key.encode(), params={"replication": "sync"}) as response:
                    if response.status == 200:
                        break
                await asyncio.sleep(0.05)
            else:
                pytest.fail(f"no leader took {key}")
        # n1 may be a follower that has not applied every committed write yet: a bounded wait.
        for _ in range(int(HANG_GUARD_S / 0.05)):
            first = await frames_of(http, base, {"prefix": "led-"})
            if len(changes(first)) == len(written):
                break
            await asyncio.sleep(0.05)
        assert sorted(ch["key"] for ch in changes(first)) == written
        assert {f["source"] for f in first if "changes" in f} == {""}
        # Positions are log indexes, the same at every replica: the cursor resumes at another node with nothing
        # missed once that node has applied the writes (bounded wait), and nothing again.
        await put(http, base, "led-late", b"late")
        for _ in range(int(HANG_GUARD_S / 0.05)):
            rest = changes(await frames_of(http, cluster.url("n3"), {"cursor": last_cursor(first)}))
            if rest:
                break
            await asyncio.sleep(0.05)
        assert [(ch["key"], ch["value"]) for ch in rest] == [("led-late", "late")]


async def test_pages_cut_by_bytes_end_between_versions_only(
    single: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    base = single.url("n1")
    keys = keys_in(single, 3, "tied", 5)
    big = "x" * (MAX_PAGE_BYTES // 3)
    # One batch: its keys may share one version, which a page must not split.
    body = {"put": [{"key": key, "value": big} for key in keys]}
    async with http.post(f"{base}/batch", json=body) as response:
        assert response.status == 200, await response.text()
    frames = await frames_of(http, base, {"partition": "3"})
    pages = [f for f in frames if "changes" in f]
    assert sorted(ch["key"] for page in pages for ch in page["changes"]) == sorted(keys)
    for page, following in itertools.pairwise(pages):
        assert page["changes"][-1]["version"] < following["changes"][0]["version"]
        assert page["position"] == page["changes"][-1]["version"] and page["more"] is True
    # Several pages, or one holding every key if the batch wrote them all at one version.
    versions = {ch["version"] for page in pages for ch in page["changes"]}
    assert len(pages) >= 2 or len(versions) == 1


class TiedRows:
    """A storage whose change index holds several keys at one version (as one command writing several keys)."""

    def __init__(self, versions: list[int], value_bytes: int) -> None:
        self.rows = [(f"k{i}", Record(b"v" * value_bytes, version)) for i, version in enumerate(versions)]

    def changes_after(
        self, partition: int, after: int, limit: int, prefix: str, max_examined: int
    ) -> tuple[list[tuple[str, Record]], int, bool]:
        rows = [(key, record) for key, record in self.rows if record.version > after][:limit]
        return rows, rows[-1][1].version if rows else after, False


@pytest.mark.parametrize(
    ("versions", "pages"),
    [
        # Over the budget at the third change: cut before the second, which shares its version.
        ([1, 2, 2, 3], [[1], [2, 2], [3]]),
        # The first version alone is over the budget: the page holds all of it, and no more.
        ([1, 1, 1, 2], [[1, 1, 1], [2]]),
        ([1, 2, 3], [[1, 2], [3]]),
    ],
)
def test_a_page_cut_by_bytes_never_splits_a_version(versions: list[int], pages: list[list[int]]) -> None:
    storage = TiedRows(versions, MAX_PAGE_BYTES // 2 - 10)
    after, got = 0, []
    while True:
        page = changes_page(storage, ChangesOp(0, after, 100), "")  # type: ignore[arg-type]
        got.append([item.version for item in page.changes])
        after = page.position
        if not page.more:
            break
    assert got == pages
