"""The peer messages of leaderless mode (``replication/leaderless.py``, the hinted handoff it relies on).

Every message travels as the body of a node message for one partition. Key states travel as
``replication.dvv.encode`` bytes (b"": the replica holds nothing for the key), which the receiver decodes
with ``dvv.decode``: bounded and checked, since a peer's bytes are untrusted input like a client's.

Requests carry a ``req`` id the coordinator chose; the answer names it. A coordinator's ids start at a random
64-bit point at every boot, so an answer to a request it made before a restart cannot count for a new one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KeyReadRequest:
    """Coordinator -> replica: send me your state of ``key``."""

    req: int
    key: str


@dataclass(frozen=True, slots=True)
class KeyReadReply:
    req: int
    key: str
    state: bytes


@dataclass(frozen=True, slots=True)
class KeyWriteRequest:
    """Coordinator -> replica (a write, a read repair, an ABD write-back): merge ``state`` into yours, durably.
    With ``hint_for`` set, the receiver is a fallback standing in for that unreachable replica (sloppy
    quorum): it keeps the state as a hint and hands it to ``hint_for`` when it can."""

    req: int
    key: str
    state: bytes
    hint_for: str = ""


@dataclass(frozen=True, slots=True)
class KeyWriteAck:
    """The state of request ``req`` is merged (or kept as a hint) and on disk; ``ok`` False: refused, with
    ``reason`` (a full hint store, a state that does not decode)."""

    req: int
    key: str
    ok: bool = True
    reason: str = ""


@dataclass(frozen=True, slots=True)
class HandoffRequest:
    """Fallback -> the replica a hint is for: merge ``state`` of ``key`` (hint ``hint`` of the sender's store)."""

    hint: int
    key: str
    state: bytes


@dataclass(frozen=True, slots=True)
class HandoffAck:
    """The hint is merged and on disk at the replica: the fallback may drop it."""

    hint: int


@dataclass(frozen=True, slots=True)
class PurgeCheck:
    """Coordinator of a tombstone's purge -> replica: do you hold ``key`` deleted, as of ``context`` exactly?"""

    req: int
    key: str
    context: bytes


@dataclass(frozen=True, slots=True)
class PurgeVote:
    req: int
    key: str
    holds: bool


@dataclass(frozen=True, slots=True)
class PurgeKey:
    """Every replica holds the tombstone: drop ``key`` if its state is still that tombstone (``context``)."""

    key: str
    context: bytes


LEADERLESS_MESSAGES: tuple[type, ...] = (
    KeyReadRequest,
    KeyReadReply,
    KeyWriteRequest,
    KeyWriteAck,
    HandoffRequest,
    HandoffAck,
    PurgeCheck,
    PurgeVote,
    PurgeKey,
)
