"""Leaderless quorum replication, Dynamo style: one partition's replica on one node (``mode = "leaderless"``).

(The protocol itself is being written; this module holds the calls and results a node hands it and gets back,
which the node's side is written against.)
"""

from __future__ import annotations

from dataclasses import dataclass

from replication.dvv import Versions
from replication.vclock import VectorClock

# How a read repairs the stale replicas it saw: "async" sends the merged state and answers at once; "sync"
# answers once every stale replica that replied has acknowledged it (or the request's time runs out).
REPAIR_MODES = ("async", "sync")


@dataclass(frozen=True, slots=True)
class KeyRead:
    """Read ``key``: the merged state of the first ``r`` replicas that answer. ``linearizable``: ABD, a read
    from a strict majority of the preference list, then the newest value written back to a majority, before
    the answer."""

    key: str
    r: int
    linearizable: bool = False
    repair: str = "async"


@dataclass(frozen=True, slots=True)
class KeyWrite:
    """Write ``value`` (None: delete) of ``key`` by a client that read ``context`` (empty: a blind write, which
    adds a sibling); answered once ``w`` replicas hold it durably. ``linearizable``: ABD over strict majorities,
    the newest value as the register's value."""

    key: str
    value: bytes | None
    context: VectorClock
    w: int
    linearizable: bool = False


@dataclass(frozen=True, slots=True)
class KeyValues:
    """A read's answer: the merged state (None: no replica that answered holds the key) and how many replied."""

    key: str
    state: Versions | None
    replies: int


@dataclass(frozen=True, slots=True)
class KeyStored:
    """A write's answer: the coordinator's state of the key after the write (its context is the one to send with
    the next write) and how many replicas acknowledged it, the coordinator included."""

    key: str
    state: Versions
    acks: int


@dataclass(frozen=True, slots=True)
class QuorumFailed:
    """A read or write that did not reach its quorum. ``definite``: it did not happen anywhere (refused before
    any replica stored it); else it may have reached some replicas (a write that timed out short of ``w``)."""

    reason: str  # "timeout" | "unavailable" | "refused"
    definite: bool
    message: str
