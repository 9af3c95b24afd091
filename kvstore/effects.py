"""What ``Node.step`` asks its driver to do, and the fault policy both drivers accept.

Durability contract (as etcd-io/raft's ``Ready`` separates what to persist from what to send): a
``Send`` or ``Reply`` marked ``durable`` leaves only once storage is synced up to the ``written_lsn``
the step that made it left behind, whatever the fsync policy; one sync covers every step before it
(group commit), and the driver starts one at once when a durable effect waits. Unmarked effects leave at
once. The node marks every ``Send`` and ``Reply`` under ``fsync = "always"`` (so a client is told only
what survives a crash) and whatever its protocols mark under every policy (a vote, an append
acknowledgement). After each sync the driver steps ``Synced(lsn)``.

Effects are plain slots dataclasses, not frozen: a step builds one or more per input, and a frozen
dataclass's ``__init__`` (``object.__setattr__`` per field) cost three times as much. Nothing hashes or
changes an effect once made; they compare by value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from kvstore.messages import Message, Result


@dataclass(slots=True)
class Send:
    msg: Message
    durable: bool = False

    @property
    def to(self) -> str:
        return self.msg.dst


@dataclass(slots=True)
class Reply:
    request_id: int
    result: Result
    durable: bool = False
    # The partition log position the result reflects (``replication.replica.Answer.position``; 0: none), which
    # the HTTP layer adds to the client's session token.
    position: int = 0


@dataclass(slots=True)
class SetTimer:
    """Fire ``TimerFired(key)`` at ``at_ms`` (node clock). Setting an existing key moves it."""

    key: str
    at_ms: int


@dataclass(slots=True)
class CancelTimer:
    key: str


Effect = Send | Reply | SetTimer | CancelTimer


class FaultPolicy(Protocol):
    """Decides the fate of every peer message and the skew of every node's clock.

    ``chaos/faults.py`` implements it; kvstore only defines the shape, so kvstore never imports chaos.
    """

    def on_send(self, now_ms: int, msg: Message) -> Sequence[int]:
        """Delays in ms, one per copy to deliver: ``[]`` drops the message, two entries duplicate it."""
        ...

    def clock_offset_ms(self, node_id: str, now_ms: int) -> int:
        """How far ``node_id``'s clock is ahead of true time (negative: behind) at true time ``now_ms``."""
        ...


class NoFaults:
    """The default policy: deliver every message once, with no added delay; clocks are true."""

    def on_send(self, now_ms: int, msg: Message) -> Sequence[int]:
        return (0,)

    def clock_offset_ms(self, node_id: str, now_ms: int) -> int:
        return 0
