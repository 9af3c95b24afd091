"""A deterministic harness for ``LeaderlessReplica``: dict-backed storage, a network of a few replicas that
delivers messages one at a time (drop, duplicate, reorder, cut links, refuse a down node), timers on one clock,
and a minimal hint store standing in for the node's (a fallback keeps what it received ``hint_for`` another
node, acknowledges it, and hands it over when asked)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from replication.conflict import ConflictPolicy, LastWriterWins, Siblings
from replication.dvv import Versions
from replication.leaderless import KeyRead, KeyWrite, LeaderlessReplica, LeaderlessSettings
from replication.leaderless_messages import HandoffAck, HandoffRequest, KeyWriteAck, KeyWriteRequest
from replication.replica import (
    Answer,
    ClientCall,
    LogBounds,
    LogEntry,
    PeerMessage,
    PeerUnreachable,
    Recovered,
    ReplicaEffect,
    ReplicaInput,
    ReplicaStarted,
    SendTo,
    StartTimer,
    StopTimer,
    TimerFired,
)
from replication.vclock import VectorClock


class FakeStore:
    """``VersionStore`` over a dict."""

    def __init__(self) -> None:
        self.states: dict[str, Versions] = {}

    def get(self, key: str) -> Versions | None:
        return self.states.get(key)

    def put(self, key: str, state: Versions) -> None:
        self.states[key] = state

    def remove(self, key: str) -> None:
        self.states.pop(key, None)

    def keys_from(self, start: str, limit: int) -> list[str]:
        return sorted(k for k in self.states if k >= start)[:limit]


class FakeLog:
    """The hard-state part of ``PartitionLog``; leaderless mode uses nothing else."""

    def __init__(self) -> None:
        self.hard: bytes | None = None

    def hard_state(self) -> bytes | None:
        return self.hard

    def set_hard_state(self, value: bytes) -> None:
        self.hard = value

    def bounds(self) -> LogBounds:
        return LogBounds(0, 0, 0)

    def append(self, entries: Sequence[LogEntry]) -> None:
        raise AssertionError("leaderless mode appends no log entries")

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[LogEntry]:
        raise AssertionError("leaderless mode reads no log entries")

    def term_at(self, index: int) -> int | None:
        return 0 if index == 0 else None

    def truncate_suffix(self, from_index: int) -> None:
        raise AssertionError("leaderless mode truncates no log")

    def compact_prefix(self, through_index: int) -> None:
        raise AssertionError("leaderless mode compacts no log")

    def install_snapshot(self, index: int, term: int) -> None:
        raise AssertionError("leaderless mode installs no snapshot")

    def synced_through(self) -> int:
        return 0

    def applied_index(self) -> int:
        return 0


@dataclass
class Envelope:
    src: str
    dst: str
    body: object


@dataclass
class Hint:
    key: str
    state: bytes
    hint_for: str


@dataclass
class Cluster:
    """``nodes`` replicas of one partition; the first ``settings.replicas`` are its preference list."""

    nodes: tuple[str, ...]
    settings: LeaderlessSettings
    policy: Siblings | LastWriterWins = field(default_factory=lambda: Siblings(max_siblings=64))
    now_ms: int = 1_000
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    replicas: dict[str, LeaderlessReplica] = field(default_factory=dict)
    stores: dict[str, FakeStore] = field(default_factory=dict)
    logs: dict[str, FakeLog] = field(default_factory=dict)
    inflight: list[Envelope] = field(default_factory=list)
    timers: dict[str, dict[str, int]] = field(default_factory=dict)
    answers: dict[tuple[str, int], object] = field(default_factory=dict)
    durable_answers: set[tuple[str, int]] = field(default_factory=set)
    hints: dict[str, dict[int, Hint]] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)  # refused at once: the sender sees PeerUnreachable
    cut: set[frozenset[str]] = field(default_factory=set)  # links that lose every message silently
    sent: list[Envelope] = field(default_factory=list)  # every message ever sent, for assertions
    next_token: int = 1
    next_hint: int = 1

    def __post_init__(self) -> None:
        for node in self.nodes:
            self.stores[node] = FakeStore()
            self.logs[node] = FakeLog()
            self.hints[node] = {}
            self.start(node)

    @property
    def preference(self) -> tuple[str, ...]:
        return self.nodes[: self.settings.replicas]

    def start(self, node: str) -> None:
        """Boot (or reboot) ``node``: a new incarnation over the same storage; its pending requests are lost."""
        replica = LeaderlessReplica(0, node, self.stores[node], self.logs[node], self.settings,
                                    self.policy_for, self.rng.getrandbits(64))
        replica.set_placement(self.preference, tuple(n for n in self.nodes if n not in self.preference))
        self.replicas[node] = replica
        self.timers[node] = {}
        self.step(node, ReplicaStarted(Recovered(0, self.logs[node].hard, LogBounds(0, 0, 0))))

    def policy_for(self, key: str) -> ConflictPolicy:
        # ConflictPolicy declares ``name`` a settable attribute and the shipped policies are frozen dataclasses,
        # which mypy will not match to it without a cast.
        return cast(ConflictPolicy, self.policy)

    # ---------------------------------------------------------------- driving

    def step(self, node: str, inp: ReplicaInput) -> list[ReplicaEffect]:
        effects = self.replicas[node].step(self.now_ms, inp)
        for effect in effects:
            if isinstance(effect, SendTo):
                envelope = Envelope(node, effect.dst, effect.body)
                self.sent.append(envelope)
                if effect.dst in self.down:
                    self.step(node, PeerUnreachable(effect.dst, effect.body))
                else:
                    self.inflight.append(envelope)
            elif isinstance(effect, Answer):
                self.answers[(node, effect.token)] = effect.result
                if effect.durable:
                    self.durable_answers.add((node, effect.token))
            elif isinstance(effect, StartTimer):
                self.timers[node][effect.key] = effect.at_ms
            elif isinstance(effect, StopTimer):
                self.timers[node].pop(effect.key, None)
        return effects

    def call(self, node: str, op: KeyRead | KeyWrite) -> int:
        token = self.next_token
        self.next_token += 1
        self.step(node, ClientCall(token, op))
        return token

    def write(self, node: str, key: str, value: bytes | None, w: int = 2,
              context: VectorClock | None = None, linearizable: bool = False) -> int:
        return self.call(node, KeyWrite(key, value, context or VectorClock(), w, linearizable))

    def read(self, node: str, key: str, r: int = 2, repair: str = "async", linearizable: bool = False) -> int:
        return self.call(node, KeyRead(key, r, linearizable, repair))

    def result(self, node: str, token: int) -> object:
        return self.answers.get((node, token))

    def deliver(self, index: int = 0) -> None:
        envelope = self.inflight.pop(index)
        if frozenset((envelope.src, envelope.dst)) in self.cut or envelope.dst in self.down:
            return
        body = envelope.body
        if isinstance(body, KeyWriteRequest) and body.hint_for not in ("", envelope.dst):
            self._keep_hint(envelope.dst, envelope.src, body)
        elif isinstance(body, HandoffAck):
            self.hints[envelope.dst].pop(body.hint, None)
        else:
            self.step(envelope.dst, PeerMessage(envelope.src, body))

    def _keep_hint(self, holder: str, src: str, body: KeyWriteRequest) -> None:
        hint_id = self.next_hint
        self.next_hint += 1
        self.hints[holder][hint_id] = Hint(body.key, body.state, body.hint_for)
        self.inflight.append(Envelope(holder, src, KeyWriteAck(body.req, body.key)))

    def hand_off(self) -> None:
        """Every fallback sends its hints to the replicas they are for."""
        for holder, hints in self.hints.items():
            for hint_id, hint in hints.items():
                self.inflight.append(Envelope(holder, hint.hint_for, HandoffRequest(hint_id, hint.key, hint.state)))

    def deliver_all(self, max_messages: int = 10_000) -> None:
        for _ in range(max_messages):
            if not self.inflight:
                return
            self.deliver(0)
        raise AssertionError("the network did not go quiet")

    def drop(self, index: int = 0) -> Envelope:
        return self.inflight.pop(index)

    def duplicate(self, index: int = 0) -> None:
        self.inflight.append(self.inflight[index])

    def advance(self, ms: int) -> None:
        """Move the clock by ``ms``, firing every timer due on the way in time order."""
        target = self.now_ms + ms
        while True:
            due = [(at, node, key) for node, timers in self.timers.items() for key, at in timers.items()
                   if at <= target and node not in self.down]
            if not due:
                break
            at, node, key = min(due)
            self.now_ms = max(self.now_ms, at)
            del self.timers[node][key]
            self.step(node, TimerFired(key))
        self.now_ms = target

    def messages(self, kind: type, dst: str | None = None) -> list[Envelope]:
        return [e for e in self.inflight if isinstance(e.body, kind) and (dst is None or e.dst == dst)]
