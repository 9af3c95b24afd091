from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from kvstore.codec import decode, register
from kvstore.effects import NoFaults
from kvstore.messages import Forward, GetOp, Message, PutOp
from kvstore.sim.events import SimulationError
from kvstore.sim.network import FixedLatency, SimNetwork, UniformLatency


@register
@dataclass(frozen=True)
class SimTestListBody:
    """Registered, but holds a list: it decodes as a tuple, so it does not survive the round trip."""

    items: list[int]


@dataclass(frozen=True)
class SimTestUnregistered:
    x: int


class Fixed:
    """A fault policy that returns the same delays for every message."""

    def __init__(self, delays: Sequence[int]) -> None:
        self.delays = delays

    def on_send(self, now_ms: int, msg: Message) -> Sequence[int]:
        return self.delays

    def clock_offset_ms(self, node_id: str, now_ms: int) -> int:
        return 0


def msg(body: object = None, src: str = "n1", dst: str = "n2") -> Message:
    return Message(src, dst, 3, Forward(7, 1, 0, PutOp("k", b"v")) if body is None else body)


def test_a_message_is_delivered_as_an_equal_decoded_copy() -> None:
    net = SimNetwork(random.Random(1), NoFaults(), FixedLatency(4))
    original = msg()
    sent = net.transmit(100, original)
    assert sent.msg == original and sent.msg is not original
    assert decode(sent.wire) == original
    assert sent.arrivals_ms == (104,)
    assert (net.sent, net.copies_scheduled, net.bytes_sent) == (1, 1, len(sent.wire))


@pytest.mark.parametrize(
    ("body", "error"),
    [(SimTestUnregistered(1), "cannot cross the codec"), (SimTestListBody([1, 2]), "changed crossing the codec")],
)
def test_messages_that_do_not_round_trip_fail_the_simulation(body: object, error: str) -> None:
    net = SimNetwork(random.Random(1), NoFaults())
    with pytest.raises(SimulationError, match=error):
        net.transmit(0, msg(body))


def test_uniform_latency_stays_in_range_and_is_seeded() -> None:
    def arrivals(seed: int) -> list[int]:
        net = SimNetwork(random.Random(seed), NoFaults(), UniformLatency(2, 6))
        return [net.transmit(0, msg(GetOp(f"k{i}"))).arrivals_ms[0] for i in range(200)]

    first = arrivals(5)
    assert set(first) == {2, 3, 4, 5, 6}
    assert arrivals(5) == first
    assert arrivals(6) != first


def test_per_link_latency_overrides_the_default() -> None:
    net = SimNetwork(random.Random(1), NoFaults(), FixedLatency(1), link_latency={("n1", "n3"): FixedLatency(50)})
    net.set_link_latency("n3", "n1", FixedLatency(70))
    assert net.transmit(0, msg(dst="n2")).arrivals_ms == (1,)
    assert net.transmit(0, msg(dst="n3")).arrivals_ms == (50,)
    assert net.transmit(0, msg(src="n3", dst="n1")).arrivals_ms == (70,)


def test_fault_policy_drops_duplicates_and_delays() -> None:
    assert SimNetwork(random.Random(1), Fixed([]), FixedLatency(2)).transmit(10, msg()).arrivals_ms == ()
    assert SimNetwork(random.Random(1), Fixed([0, 30]), FixedLatency(2)).transmit(10, msg()).arrivals_ms == (12, 42)
    with pytest.raises(SimulationError, match="negative delay"):
        SimNetwork(random.Random(1), Fixed([-1]), FixedLatency(2)).transmit(10, msg())


def test_latency_validation() -> None:
    with pytest.raises(ValueError, match="low <= high"):
        UniformLatency(5, 2)
    with pytest.raises(ValueError, match="negative"):
        FixedLatency(-1)
