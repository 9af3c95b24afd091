"""A node's messages to itself: delivered locally by the peer transport, as the simulator delivers them,
through the fault policy's drops, delays and duplicates and a codec round trip, never inside the step."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import replace

from kvstore.config import Limits, local_cluster
from kvstore.effects import Effect, Reply, Send
from kvstore.messages import ClientRequest, GetOp, Input, Message, PutOp, Written
from kvstore.server.clock import NodeClock
from kvstore.server.faults import FaultSwitch
from kvstore.server.peer import PeerTransport
from kvstore.server.pump import Pump
from kvstore.storage.memory import MemoryStorage

HANG_S = 10.0
MSG = Message("n1", "n1", 3, GetOp("k"))


class Delays:
    """Every message gets these delays (ms): () drops it, two entries duplicate it."""

    def __init__(self, *delays_ms: int) -> None:
        self.delays_ms = delays_ms

    def on_send(self, now_ms: int, msg: Message) -> Sequence[int]:
        return self.delays_ms

    def clock_offset_ms(self, node_id: str, now_ms: int) -> int:
        return 0


async def wait_until(condition: Callable[[], object]) -> None:
    async with asyncio.timeout(HANG_S):
        while not condition():
            await asyncio.sleep(0.001)


def transport(
    delivered: list[Message], failed: list[Message], *delays_ms: int, max_peer_queue: int = 100
) -> PeerTransport:
    config = local_cluster(2, partitions=4, limits=replace(Limits(), max_peer_queue=max_peer_queue))
    return PeerTransport("n1", config, FaultSwitch(Delays(*delays_ms)), failed.append, deliver_local=delivered.append,
        address_of=config.address_text,
    )


async def test_a_message_to_oneself_is_delivered_after_a_codec_round_trip_not_inside_the_send() -> None:
    delivered: list[Message] = []
    failed: list[Message] = []
    transport(delivered, failed, 0).send(MSG)
    assert delivered == []  # never inside the step that sent it
    await wait_until(lambda: delivered)
    [copy] = delivered
    assert copy == MSG and copy is not MSG
    assert failed == []


async def test_the_fault_policy_duplicates_delays_and_drops_messages_to_oneself() -> None:
    delivered: list[Message] = []
    failed: list[Message] = []
    transport(delivered, failed, 0, 30).send(MSG)
    await wait_until(lambda: len(delivered) == 1)
    await asyncio.sleep(0.005)
    assert len(delivered) == 1  # the second copy waits out its delay
    await wait_until(lambda: len(delivered) == 2)
    dropped: list[Message] = []
    transport(dropped, failed, *()).send(MSG)
    await asyncio.sleep(0.02)
    assert dropped == [] and failed == []  # a drop is silent, as on the network


async def test_past_the_queue_bound_a_message_to_oneself_fails_definitely() -> None:
    delivered: list[Message] = []
    failed: list[Message] = []
    peer = transport(delivered, failed, 0, max_peer_queue=1)
    other = replace(MSG, partition=4)
    peer.send(MSG)
    peer.send(other)
    await wait_until(lambda: failed)
    await asyncio.sleep(0.005)
    assert delivered == [MSG] and failed == [other]


class SelfSender:
    """A node that, asked to write ``k``, sends itself a message and answers at once."""

    node_id = "n1"

    def __init__(self) -> None:
        self.received: list[Message] = []

    def step(self, now_ms: int, inp: Input) -> list[Effect]:
        if isinstance(inp, Message):
            self.received.append(inp)
        if isinstance(inp, ClientRequest) and isinstance(inp.op, PutOp):
            return [Send(MSG), Reply(inp.request_id, Written(inp.op.key, 1))]
        return []


async def test_a_node_receives_what_it_sends_itself_through_the_pump() -> None:
    node = SelfSender()
    pumps: list[Pump] = []

    def deliver_local(msg: Message) -> None:
        pumps[0].deliver(msg)

    failed: list[Message] = []
    config = local_cluster(2, partitions=4)
    peer = PeerTransport("n1", config, FaultSwitch(), failed.append, deliver_local=deliver_local,
        address_of=config.address_text,
    )
    pump = Pump(node, MemoryStorage(), NodeClock("n1", FaultSwitch()), peer.send, fsync="always",
                batch_interval_ms=10, max_inflight=10, request_timeout_ms=1000)
    pumps.append(pump)
    pump.start()
    try:
        assert pump.submit(PutOp("k", b"v")) == Reply(1, Written("k", 1))
        await wait_until(lambda: node.received)
        assert node.received == [MSG] and failed == []
    finally:
        await pump.close()
