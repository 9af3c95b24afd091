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

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from kvstore.messages import Message

DelayKind = Literal["none", "fixed", "uniform", "exponential"]
# An exponential delay is capped so that one unlucky draw cannot hold a message for ever.
MAX_DELAY_MS = 60_000


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
    def from_json(data: dict[str, Any]) -> Delay:
        kind = data.get("kind", "none")
        if kind not in ("none", "fixed", "uniform", "exponential"):
            raise ValueError(f"delay kind must be none, fixed, uniform or exponential, got {kind!r}")
        ms, min_ms = int(data.get("ms", 0)), int(data.get("min_ms", 0))
        if ms < 0 or min_ms < 0 or (kind == "uniform" and min_ms > ms):
            raise ValueError("delay bounds must be non-negative with min_ms <= ms")
        return Delay(kind, ms, min_ms)


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
        link = (msg.src, msg.dst)
        if link in self.cut_links:
            return ()
        if self.drop_probability and self.rng.random() < self.drop_probability:
            return ()
        copies = 2 if self.duplicate_probability and self.rng.random() < self.duplicate_probability else 1
        return tuple(self._delay_for(link) for _ in range(copies))

    def clock_offset_ms(self, node_id: str, now_ms: int) -> int:
        clock = self.clocks.get(node_id)
        return 0 if clock is None else clock.offset_at(now_ms)

    def _delay_for(self, link: tuple[str, str]) -> int:
        delay = self.link_delays.get(link, self.delay).sample(self.rng)
        if self.reorder_probability and self.rng.random() < self.reorder_probability:
            delay += self.rng.randint(0, self.reorder_ms)
        return delay

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
    def from_json(data: Any, rng: random.Random) -> ChaosPolicy:
        """Build a policy from ``to_json`` output; raises ValueError naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError("a fault policy must be a JSON object")
        unknown = set(data) - set(ChaosPolicy(rng).to_json())
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(sorted(unknown))}")
        policy = ChaosPolicy(rng)
        try:
            policy.cut_links = {(str(src), str(dst)) for src, dst in data.get("cut_links", [])}
            policy.delay = Delay.from_json(data.get("delay", {}))
            policy.link_delays = {(str(s), str(d)): Delay.from_json(j) for s, d, j in data.get("link_delays", [])}
            for name in ("drop_probability", "duplicate_probability", "reorder_probability"):
                value = float(data.get(name, 0.0))
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"{name} must be between 0 and 1")
                setattr(policy, name, value)
            policy.reorder_ms = int(data.get("reorder_ms", 0))
            if policy.reorder_ms < 0:
                raise ValueError("reorder_ms must not be negative")
            policy.clocks = {
                str(n): ClockFault(int(c.get("offset_ms", 0)), int(c.get("drift_ppm", 0)), int(c.get("since_ms", 0)))
                for n, c in dict(data.get("clocks", {})).items()
            }
        except (TypeError, AttributeError) as exc:
            raise ValueError(f"malformed fault policy: {exc}") from exc
        return policy

