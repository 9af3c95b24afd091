"""Message and clock faults: the policy both drivers consult for every peer message.

``ChaosPolicy`` implements ``kvstore.effects.FaultPolicy``. The simulator calls it inside its event
loop; a real node's peer transport calls it before sending, and its admin route replaces it from JSON
(``to_json`` / ``from_json``). It lives in kvstore, not chaos, because a node process must be able to
build one from what the admin route receives, and kvstore never imports chaos. ``chaos`` decides *which*
faults to inject and when (``chaos/faults.py`` draws partitions, ``chaos/nemesis.py`` schedules them).

Delays it returns are *added* to the carrier's own latency. Every random choice comes from the rng it
was given, so in the simulator the same seed makes the same choices.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from kvstore.messages import Message
from kvstore.validation import show_int

DelayKind = Literal["none", "fixed", "uniform", "exponential"]
DELAY_KINDS: tuple[str, ...] = ("none", "fixed", "uniform", "exponential")
# The longest delay a policy may ask for; an exponential delay is capped at it too, so that one
# unlucky draw cannot hold a message for ever.
MAX_DELAY_MS = 60_000
# Bounds on clock faults a policy from JSON may set. Ten years of skew is far beyond any real fault
# and keeps the node clock, and every TTL deadline on it, well inside signed 64 bits.
MAX_CLOCK_OFFSET_MS = 10 * 365 * 24 * 3600 * 1000
# A clock from standing still (-1_000_000) to running twice as fast (+1_000_000).
MAX_DRIFT_PPM = 1_000_000
# ``since_ms`` is a wall-clock instant (or virtual ms in the simulator): any one a JSON number holds
# exactly.
MAX_SINCE_MS = 2**53
# What on_send returns for one copy, or two, with no delay.
_NO_DELAY = (0,)
_NO_DELAY_TWICE = (0, 0)


@dataclass(frozen=True)
class Delay:
    kind: DelayKind = "none"
    ms: int = 0  # fixed: the delay; uniform: the upper bound; exponential: the mean
    min_ms: int = 0  # uniform: the lower bound

    def sample(self, rng: random.Random) -> int:
        if self.kind == "none":
            return 0
        if self.kind == "fixed":
            return self.ms
        if self.kind == "uniform":
            return rng.randint(self.min_ms, self.ms)
        if self.kind == "exponential":
            return min(MAX_DELAY_MS, int(rng.expovariate(1.0 / self.ms))) if self.ms > 0 else 0
        raise ValueError(f"unknown delay kind {self.kind!r}")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "ms": self.ms, "min_ms": self.min_ms}

    @staticmethod
    def from_json(data: object, where: str = "delay") -> Delay:
        """A delay from ``to_json`` output; ValueError naming the field (``where``) if it is not one."""
        fields = _object(data, where, ("kind", "ms", "min_ms"))
        kind = fields.get("kind", "none")
        if not isinstance(kind, str) or kind not in DELAY_KINDS:
            raise ValueError(f"{where} kind must be one of {', '.join(DELAY_KINDS)}, got {_show(kind)}")
        ms = _whole(fields, "ms", where, 0, MAX_DELAY_MS)
        min_ms = _whole(fields, "min_ms", where, 0, MAX_DELAY_MS)
        if kind == "uniform" and min_ms > ms:
            raise ValueError(f"{where}.min_ms must not exceed {where}.ms, got {min_ms} > {ms}")
        return Delay(cast(DelayKind, kind), ms, min_ms)


@dataclass
class ClockFault:
    offset_ms: int = 0
    drift_ppm: int = 0  # parts per million: 1000 = the clock gains 1 ms every second
    since_ms: int = 0

    def offset_at(self, now_ms: int) -> int:
        return self.offset_ms + (now_ms - self.since_ms) * self.drift_ppm // 1_000_000


@dataclass
class ChaosPolicy:
    rng: random.Random
    cut_links: set[tuple[str, str]] = field(default_factory=set)
    delay: Delay = field(default_factory=Delay)
    link_delays: dict[tuple[str, str], Delay] = field(default_factory=dict)
    drop_probability: float = 0.0
    duplicate_probability: float = 0.0
    # Reordering: this fraction of messages gets an extra uniform delay up to reorder_ms.
    reorder_probability: float = 0.0
    reorder_ms: int = 0
    clocks: dict[str, ClockFault] = field(default_factory=dict)

    # ------------------------------------------------------------ FaultPolicy

    def on_send(self, now_ms: int, msg: Message) -> Sequence[int]:
        # Called for every peer message: no generator, and no draw or tuple where a fault is off. The draws
        # are made in a fixed order (drop, duplicate, then each copy's delay and reorder), so a seed makes
        # the same choices whatever the shortcuts take.
        link = (msg.src, msg.dst)
        if link in self.cut_links:
            return ()
        rng = self.rng
        if self.drop_probability and rng.random() < self.drop_probability:
            return ()
        duplicate = bool(self.duplicate_probability) and rng.random() < self.duplicate_probability
        delay = self.link_delays.get(link, self.delay) if self.link_delays else self.delay
        if delay.kind == "none" and not self.reorder_probability:
            return _NO_DELAY_TWICE if duplicate else _NO_DELAY
        first = self._delay_for(delay)
        return (first, self._delay_for(delay)) if duplicate else (first,)

    def clock_offset_ms(self, node_id: str, now_ms: int) -> int:
        clock = self.clocks.get(node_id)
        return 0 if clock is None else clock.offset_at(now_ms)

    def _delay_for(self, delay: Delay) -> int:
        ms = delay.sample(self.rng)
        if self.reorder_probability and self.rng.random() < self.reorder_probability:
            ms += self.rng.randint(0, self.reorder_ms)
        return ms

    # ------------------------------------------------------------ changes the nemesis makes

    def cut(self, grudge: dict[str, set[str]]) -> None:
        """Cut every link ``src -> dst`` where ``src`` is in ``grudge[dst]`` (dst drops traffic from src)."""
        self.cut_links = {(src, dst) for dst, sources in grudge.items() for src in sources}

    def heal(self) -> None:
        self.cut_links = set()

    def set_clock(self, node_id: str, now_ms: int, offset_ms: int = 0, drift_ppm: int = 0) -> None:
        self.clocks[node_id] = ClockFault(offset_ms, drift_ppm, now_ms)

    def reset_clocks(self) -> None:
        self.clocks = {}

    def calm(self) -> None:
        """No message faults at all (partitions and clocks are separate: heal() / reset_clocks())."""
        self.delay = Delay()
        self.link_delays = {}
        self.drop_probability = self.duplicate_probability = self.reorder_probability = 0.0
        self.reorder_ms = 0

    # ------------------------------------------------------------ JSON, for the admin route

    def to_json(self) -> dict[str, Any]:
        return {
            "cut_links": sorted([src, dst] for src, dst in self.cut_links),
            "delay": self.delay.to_json(),
            "link_delays": [[src, dst, d.to_json()] for (src, dst), d in sorted(self.link_delays.items())],
            "drop_probability": self.drop_probability,
            "duplicate_probability": self.duplicate_probability,
            "reorder_probability": self.reorder_probability,
            "reorder_ms": self.reorder_ms,
            "clocks": {
                n: {"offset_ms": c.offset_ms, "drift_ppm": c.drift_ppm, "since_ms": c.since_ms}
                for n, c in sorted(self.clocks.items())
            },
        }

    @staticmethod
    def from_json(data: object, rng: random.Random, members: Collection[str] | None = None) -> ChaosPolicy:
        """Build a policy from ``to_json`` output; raises ValueError naming the bad field.

        Every number must be of its type (no strings, no floats for integers, no booleans) and within
        its bound; node ids must be strings, and members of the cluster when ``members`` is given.
        """
        policy = ChaosPolicy(rng)
        data = _object(data, "fault policy", tuple(policy.to_json()))
        policy.cut_links = {
            _link(pair, f"cut_links[{i}]", 2, members) for i, pair in enumerate(_list(data, "cut_links"))
        }
        policy.delay = Delay.from_json(data.get("delay", {}))
        for i, entry in enumerate(_list(data, "link_delays")):
            where = f"link_delays[{i}]"
            link = _link(entry, where, 3, members)
            policy.link_delays[link] = Delay.from_json(entry[2], f"{where}[2]")
        policy.drop_probability = _probability(data, "drop_probability")
        policy.duplicate_probability = _probability(data, "duplicate_probability")
        policy.reorder_probability = _probability(data, "reorder_probability")
        policy.reorder_ms = _whole(data, "reorder_ms", "", 0, MAX_DELAY_MS)
        for node_id, value in _object(data.get("clocks", {}), "clocks", None).items():
            where = f"clocks.{_node_id(node_id, 'clocks', members)}"
            clock = _object(value, where, ("offset_ms", "drift_ppm", "since_ms"))
            policy.clocks[node_id] = ClockFault(
                _whole(clock, "offset_ms", where, -MAX_CLOCK_OFFSET_MS, MAX_CLOCK_OFFSET_MS),
                _whole(clock, "drift_ppm", where, -MAX_DRIFT_PPM, MAX_DRIFT_PPM),
                _whole(clock, "since_ms", where, 0, MAX_SINCE_MS),
            )
        return policy


# ---------------------------------------------------------------- checking policy JSON


def _object(data: object, where: str, known: tuple[str, ...] | None) -> dict[Any, Any]:
    """``data`` if it is a JSON object holding only ``known`` keys (any keys when None)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, got {_show(data)}")
    if known is not None:
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ValueError(f"unknown {where} setting(s): {', '.join(unknown)} (known: {', '.join(known)})")
    return data


def _list(data: dict[str, Any], name: str) -> list[Any]:
    value = data.get(name, [])
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a JSON array, got {_show(value)}")
    return value


def _whole(data: dict[str, Any], name: str, where: str, low: int, high: int) -> int:
    value = data.get(name, 0)
    # bool is an int subclass, and a float such as 1e30 would pass int() and overflow a clock.
    if type(value) is not int or not low <= value <= high:
        field_name = f"{where}.{name}" if where else name
        raise ValueError(f"{field_name} must be a whole number in [{low}, {high}], got {_show(value)}")
    return value


def _probability(data: dict[str, Any], name: str) -> float:
    value = data.get(name, 0.0)
    if type(value) not in (int, float) or not math.isfinite(value) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {_show(value)}")
    return float(value)


def _node_id(value: object, where: str, members: Collection[str] | None) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: a node id must be a non-empty string, got {_show(value)}")
    if members is not None and value not in members:
        raise ValueError(f"{where}: {value!r} is not a member of the cluster ({', '.join(members)})")
    return value


def _link(entry: object, where: str, size: int, members: Collection[str] | None) -> tuple[str, str]:
    shape = "[src, dst]" if size == 2 else "[src, dst, delay]"
    if not isinstance(entry, list) or len(entry) != size:
        raise ValueError(f"{where} must be {shape}, got {_show(entry)}")
    src, dst = _node_id(entry[0], where, members), _node_id(entry[1], where, members)
    if src == dst:
        raise ValueError(f"{where} links {src!r} to itself")
    return src, dst


def _show(value: object) -> str:
    """A bad value for an error message, short whatever it is."""
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    if type(value) is int:
        return show_int(value)
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."
