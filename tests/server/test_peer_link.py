"""The peer transport's connection (``kvstore.server.peer_link``) against a scripted peer on loopback: requests
are pipelined and answered in order, the pipeline is bounded, and hostile answers (garbage, oversized,
unsolicited, cut short, never sent) end the connection with every unanswered request handed back. Then the
transport over it: one request per loop turn and peer, and what it reports as certainly not delivered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from kvstore import codec
from kvstore.config import local_cluster
from kvstore.messages import GetOp, Message
from kvstore.server.faults import FaultSwitch
from kvstore.server.peer import PeerTransport, sign
from kvstore.server.peer_link import MAX_ANSWER_BYTES, MAX_PIPELINED, PeerLink, request_head

# Bounds on a hung test, never a measure of speed.
HANG_S = 10.0
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"


def answer(status: int, body: bytes = b"", close: bool = False) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n".encode()
    return head + connection + b"\r\n" + body


def content_length(head: bytes) -> int:
    return next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.startswith(b"Content-Length"))


@dataclass
class Peer:
    """A scripted peer: ``requests`` collects each request head it reads; the test writes answers."""

    requests: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    writer: asyncio.StreamWriter | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.connected.set()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(content_length(head))
                await self.requests.put(head)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)


@dataclass
class Link:
    link: PeerLink[int]
    answers: list[tuple[int, int]]
    closed: asyncio.Future[list[int]]
    ready_calls: list[int]


MakeLink = Callable[..., Awaitable[tuple[Peer, Link]]]


@pytest.fixture
async def make_link() -> AsyncIterator[MakeLink]:
    servers: list[asyncio.Server] = []
    links: list[PeerLink[int]] = []

    async def make(answer_timeout_s: float = HANG_S) -> tuple[Peer, Link]:
        peer = Peer()
        server = await asyncio.start_server(peer.serve, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        answers: list[tuple[int, int]] = []
        closed: asyncio.Future[list[int]] = loop.create_future()
        ready_calls: list[int] = []

        def on_closed(tags: list[int]) -> None:
            if not closed.done():
                closed.set_result(tags)

        _, link = await loop.create_connection(
            lambda: PeerLink[int](
                lambda tag, status: answers.append((tag, status)),
                on_closed,
                lambda: ready_calls.append(1),
                answer_timeout_s,
            ),
            "127.0.0.1",
            port,
        )
        links.append(link)
        await asyncio.wait_for(peer.connected.wait(), HANG_S)
        return peer, Link(link, answers, closed, ready_calls)

    yield make
    for link in links:
        link.close()
    for server in servers:
        server.close()
        await server.wait_closed()


def post(link: PeerLink[int], tag: int, body: bytes = b"\x90") -> None:
    link.post(request_head("127.0.0.1:1", "/peer", {"X-Kv-From": "n1"}, len(body)), body, tag)


async def until(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), HANG_S)


async def test_requests_are_pipelined_and_answered_in_order(make_link: MakeLink) -> None:
    peer, link = await make_link()
    for tag in (1, 2, 3):
        post(link.link, tag)
    # The peer reads all three before it answers any: nothing waited for an answer.
    heads = [await asyncio.wait_for(peer.requests.get(), HANG_S) for _ in range(3)]
    assert all(head.startswith(b"POST /peer HTTP/1.1\r\n") and b"X-Kv-From: n1\r\n" in head for head in heads)
    peer.send(NO_CONTENT + answer(400, b'{"error": "bad"}') + NO_CONTENT)
    await until(lambda: len(link.answers) == 3)
    assert link.answers == [(1, 204), (2, 400), (3, 204)]
    assert not link.closed.done() and link.link.ready


async def test_the_pipeline_is_bounded(make_link: MakeLink) -> None:
    peer, link = await make_link()
    for tag in range(MAX_PIPELINED):
        assert link.link.ready
        post(link.link, tag)
    assert not link.link.ready
    peer.send(NO_CONTENT)
    await until(lambda: link.answers == [(0, 204)])
    # An answer frees a place, and the link says so.
    assert link.link.ready and link.ready_calls


async def test_garbage_ends_the_connection_and_hands_back_what_waits(make_link: MakeLink) -> None:
    peer, link = await make_link()
    post(link.link, 1)
    post(link.link, 2)
    peer.send(b"\x00\xffnot http at all\r\n\r\n")
    assert await asyncio.wait_for(link.closed, HANG_S) == [1, 2]
    assert link.answers == [] and not link.link.ready


async def test_an_oversized_answer_ends_the_connection(make_link: MakeLink) -> None:
    peer, link = await make_link()
    post(link.link, 1)
    peer.send(answer(200, b"x" * (MAX_ANSWER_BYTES + 1)))
    assert await asyncio.wait_for(link.closed, HANG_S) == [1]
    assert link.answers == []


async def test_an_endless_head_ends_the_connection(make_link: MakeLink) -> None:
    peer, link = await make_link()
    post(link.link, 1)
    peer.send(b"HTTP/1.1 204 No Content\r\nX-Filler: " + b"a" * (MAX_ANSWER_BYTES + 1))
    assert await asyncio.wait_for(link.closed, HANG_S) == [1]


async def test_an_unsolicited_answer_ends_the_connection(make_link: MakeLink) -> None:
    peer, link = await make_link()
    peer.send(NO_CONTENT)
    assert await asyncio.wait_for(link.closed, HANG_S) == []
    assert link.answers == []


async def test_an_answer_cut_short_hands_its_request_back(make_link: MakeLink) -> None:
    peer, link = await make_link()
    post(link.link, 1)
    post(link.link, 2)
    peer.send(NO_CONTENT + b"HTTP/1.1 204 No Con")
    await until(lambda: link.answers == [(1, 204)])
    assert peer.writer is not None
    peer.writer.close()
    assert await asyncio.wait_for(link.closed, HANG_S) == [2]


async def test_a_peer_that_never_answers_loses_the_connection(make_link: MakeLink) -> None:
    _, link = await make_link(answer_timeout_s=0.05)
    post(link.link, 7)
    assert await asyncio.wait_for(link.closed, HANG_S) == [7]


async def test_a_closing_answer_settles_its_request_and_hands_back_the_rest(make_link: MakeLink) -> None:
    peer, link = await make_link()
    post(link.link, 1)
    post(link.link, 2)
    peer.send(answer(503, b"{}", close=True))
    assert await asyncio.wait_for(link.closed, HANG_S) == [2]
    assert link.answers == [(1, 503)]


def messages(count: int) -> list[Message]:
    return [Message("n1", "n2", 3, GetOp(f"k{i}")) for i in range(count)]


async def transport_to(port: int, failed: list[Message]) -> PeerTransport:
    config = local_cluster(2, partitions=4)
    address = f"127.0.0.1:{port}"
    transport = PeerTransport(
        "n1", config, FaultSwitch(), failed.append, deliver_local=failed.append, address_of=lambda _: address
    )
    await transport.start()
    return transport


async def test_the_transport_sends_one_turns_messages_as_one_request_and_reports_refused_ones() -> None:
    peer = Peer()
    server = await asyncio.start_server(peer.serve, "127.0.0.1", 0)
    failed: list[Message] = []
    transport = await transport_to(server.sockets[0].getsockname()[1], failed)
    try:
        sent = messages(3)
        for msg in sent:
            transport.send(msg)
        await asyncio.wait_for(peer.requests.get(), HANG_S)
        assert transport.batches_sent == 1
        peer.send(NO_CONTENT)
        await until(lambda: transport.health()["n2"].state == "up")
        # The inbox refused the next batch before delivering any of it: each message certainly did not arrive.
        refused = messages(2)
        for msg in refused:
            transport.send(msg)
        await asyncio.wait_for(peer.requests.get(), HANG_S)
        peer.send(answer(400, b"{}"))
        await until(lambda: len(failed) == 2)
        assert failed == refused and transport.batches_sent == 2
    finally:
        await transport.close()
        server.close()
        await server.wait_closed()


async def test_a_batch_body_is_the_signed_array_of_encoded_messages() -> None:
    bodies: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        await bodies.put((head, await reader.readexactly(content_length(head))))
        writer.write(NO_CONTENT)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    failed: list[Message] = []
    transport = await transport_to(server.sockets[0].getsockname()[1], failed)
    try:
        sent = messages(2)
        for msg in sent:
            transport.send(msg)
        head, body = await asyncio.wait_for(bodies.get(), HANG_S)
        assert codec.decode(body) == tuple(sent)
        assert f"X-Kv-Signature: {sign(local_cluster(2).secret, body)}\r\n".encode() in head
    finally:
        await transport.close()
        server.close()
        await server.wait_closed()


async def test_messages_for_a_peer_that_refuses_connections_are_reported_not_delivered() -> None:
    server = await asyncio.start_server(Peer().serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    failed: list[Message] = []
    transport = await transport_to(port, failed)
    try:
        sent = messages(2)
        for msg in sent:
            transport.send(msg)
        await until(lambda: len(failed) == 2)
        assert failed == sent and transport.health()["n2"].state == "down"
    finally:
        await transport.close()
