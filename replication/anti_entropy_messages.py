"""The peer messages of Merkle-tree anti-entropy (``replication/anti_entropy.py``), one round between two replicas.

A round is a strict ping-pong: every message answers the other side's previous one, so one message per round
is in flight at a time and nothing queues up on either side. ``session`` names the round (the initiator's id)
and ``step`` counts its messages from 0: the initiator sends the even steps, the peer the odd ones, so a
replica tells a message of a round it started from one of a round it answers by the parity, and a duplicate
or reordered message (a step it does not expect) is ignored.

Hashes and digests are 16 bytes. A key state is the owner's encoded state (``replication.dvv.encode`` bytes),
opaque here; the owner decodes it as the untrusted input it is.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AeStart:
    """Initiator -> peer, step 0: my tree's shape and root. The peer answers ``AeDone`` if its root is equal."""

    session: int
    step: int
    leaves: int
    fanout: int
    root: bytes


@dataclass(frozen=True, slots=True)
class AeHashes:
    """The sender's hashes at ``level`` (0: the root) of the children of the nodes it found differing one level
    up, which the receiver had sent."""

    session: int
    step: int
    level: int
    indices: tuple[int, ...]
    hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class AeKeys:
    """The side that found the differing leaves -> the other: my ``(key, digest)`` of every key I hold in this
    chunk of them, in (leaf, key) order. The chunk runs from key ``key_from`` (inclusive) of ``leaves[0]`` to
    key ``key_to`` (exclusive) of ``leaves[-1]``, or to that leaf's end when ``key_to`` is None."""

    session: int
    step: int
    leaves: tuple[int, ...]
    key_from: str
    key_to: str | None
    items: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class AeDiff:
    """The answer to ``AeKeys``: compared up to ``until`` (exclusive ``(leaf, key)``; None: the whole chunk),
    the keys whose states I ``want``, and the first of my states you lack or hold differently (``more``: I
    have further ones)."""

    session: int
    step: int
    until: tuple[int, str] | None
    want: tuple[str, ...]
    states: tuple[tuple[str, bytes], ...]
    more: bool


@dataclass(frozen=True, slots=True)
class AeStates:
    """Further states of the current chunk, either way (``more``: the sender has further ones)."""

    session: int
    step: int
    states: tuple[tuple[str, bytes], ...]
    more: bool


@dataclass(frozen=True, slots=True)
class AeDone:
    """The round is over: the trees were equal, or every differing key was exchanged."""

    session: int
    step: int


@dataclass(frozen=True, slots=True)
class AeAbort:
    """The sender gave the round up (no answer in time): the receiver may forget it at once."""

    session: int
    by_initiator: bool


ANTI_ENTROPY_MESSAGES: tuple[type, ...] = (AeStart, AeHashes, AeKeys, AeDiff, AeStates, AeDone, AeAbort)
