"""SimNetwork: decides when (and how many times) each peer message arrives.

Every message is encoded and decoded with the codec on the way, exactly as the real transport would,
and the decoded copy must equal the original: a message class that is not registered, or that does
not survive the round trip (a list where a tuple belongs, say), fails the simulation at its first send.

Delivery time = a latency drawn for the link (seeded) + each delay the fault policy returns. Messages
on a link are not FIFO unless the link's latency makes them so (a fixed latency does).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from kvstore.codec import CodecError, decode, encode
from kvstore.effects import FaultPolicy
from kvstore.messages import Message
from kvstore.sim.draws import between
from kvstore.sim.events import SimulationError


class Latency(Protocol):
    def sample_ms(self, rng: random.Random) -> int:
        ...


@dataclass(frozen=True)
class UniformLatency:
    low_ms: int = 1
    high_ms: int = 5

    def __post_init__(self) -> None:
        if not 0 <= self.low_ms <= self.high_ms:
            raise ValueError(f"latency needs 0 <= low <= high, got {self.low_ms}..{self.high_ms} ms")

    def sample_ms(self, rng: random.Random) -> int:
        return between(rng, self.low_ms, self.high_ms)


@dataclass(frozen=True)
class FixedLatency:
    ms: int

    def __post_init__(self) -> None:
        if self.ms < 0:
            raise ValueError(f"latency must not be negative, got {self.ms} ms")

    def sample_ms(self, rng: random.Random) -> int:
        return self.ms


class Transmission(NamedTuple):
    """One send: the decoded copy to deliver, its wire bytes, and the true times its copies arrive.

    A named tuple: built once per message, where a frozen dataclass's ``__init__`` cost a microsecond.
    """

    msg: Message
    wire: bytes
    arrivals_ms: tuple[int, ...]


class SimNetwork:
    def __init__(
        self,
        rng: random.Random,
        fault_policy: FaultPolicy,
        latency: Latency | None = None,
        link_latency: Mapping[tuple[str, str], Latency] | None = None,
    ) -> None:
        self._rng = rng
        self._faults = fault_policy
        self._latency: Latency = latency if latency is not None else UniformLatency()
        self._link_latency = dict(link_latency or {})
        self.sent = 0
        self.copies_scheduled = 0
        self.bytes_sent = 0

    def set_link_latency(self, src: str, dst: str, latency: Latency) -> None:
        self._link_latency[(src, dst)] = latency

    def transmit(self, now_ms: int, msg: Message) -> Transmission:
        wire, copy = _round_trip(msg)
        delays = self._faults.on_send(now_ms, msg)
        self.sent += 1
        self.bytes_sent += len(wire)
        if not delays:
            return Transmission(copy, wire, ())
        link_latency = self._link_latency
        latency = link_latency.get((msg.src, msg.dst), self._latency) if link_latency else self._latency
        rng = self._rng
        arrivals = []
        for delay_ms in delays:
            if delay_ms < 0:
                raise SimulationError(f"fault policy returned a negative delay {delay_ms} ms for {msg!r}")
            arrivals.append(now_ms + latency.sample_ms(rng) + delay_ms)
        self.copies_scheduled += len(arrivals)
        return Transmission(copy, wire, tuple(arrivals))


def _round_trip(msg: Message) -> tuple[bytes, Message]:
    try:
        wire = encode(msg)
        copy: Message = decode(wire)
    except (TypeError, CodecError) as exc:
        raise SimulationError(f"message cannot cross the codec: {exc}: {msg!r}") from exc
    if copy != msg:
        raise SimulationError(f"message changed crossing the codec: sent {msg!r}, decoded {copy!r}")
    return wire, copy
