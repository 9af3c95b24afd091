"""Forwarding: every transition of an op sent to the node that owns its partition, on both ends.

A node forwards an op for a partition it does not hold to the partition's owner. The owner answers
with a ``ForwardReply``; with no answer in time, the op fails with an (indefinite) ``timeout``.

A peer may deliver the same ``Forward`` twice (a duplicating network). Executing it twice could undo
a later write, so the owner remembers the results of recent forwards per sender incarnation and
answers a duplicate from that memory; a forward too old to be remembered is not executed at all
(the sender sees a timeout, which is indefinite, so nothing false is reported). That memory dies with
the owner, so every forward also names the owner incarnation it is meant for and an owner executes
only forwards meant for its current life. A sender learns an owner's incarnation from its answers; a
first forward (incarnation unknown) is refused with the owner's incarnation and sent again, which is
safe because the refused copy ran nowhere. A forward refused because the owner restarted since is sent
again only if it is read-only; otherwise the old life may have run it, so its outcome is indefinite.

An answer that does not fit the op it answers fails that op. ``Forwarder`` holds all of this state
and returns effects; it reports that a forward is done with ``Done(token, result)``, which the node
hands to whoever waits on the token.

Durability: with ``always_durable`` (``fsync = "always"``) every ``Send`` it makes is marked durable. An
answer whose result had to wait for a sync is sent durable, and so is a duplicate answered from memory
with that result: the first answer may still be waiting for the sync.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from kvstore.effects import CancelTimer, Effect, Send, SetTimer
from kvstore.errors import ErrorCode
from kvstore.messages import (
    BatchGetOp,
    BatchPutOp,
    BatchResults,
    CasOp,
    ChangesOp,
    ChangesPage,
    ClientOp,
    Deleted,
    DeleteOp,
    Failure,
    Forward,
    ForwardRefused,
    ForwardReply,
    Found,
    FoundSiblings,
    GetOp,
    Message,
    PutOp,
    Result,
    ScanOp,
    ScanPage,
    ScanPartitionsOp,
    Stored,
    Written,
)

FORWARD_TIMER_PREFIX = "fwd/"


@dataclass(slots=True)
class PeerWaiter:
    """A forward this node received and must answer."""

    src: str
    incarnation: int
    forward_id: int
    partition: int
    # Whether the duplicate filter keeps this forward's result (writes only).
    remember: bool = True


@dataclass(slots=True)
class Done:
    """A forward this node sent is over: whoever waits on ``token`` gets ``result``. Not an ``Effect`` (it
    never reaches a driver), and cheaper to build than a frozen ``Reply``: every forwarded op ends with one."""

    token: int
    result: Result
    # The partition log position the result reflects (``ForwardReply.position``).
    position: int = 0


@dataclass(slots=True)
class _Outgoing:
    """A forward this node sent and is waiting on (its token is the forward id)."""

    dst: str
    partition: int
    op: ClientOp | ScanPartitionsOp
    target_incarnation: int


class _DuplicateFilter:
    """Remembers the results of recent forwards per (sender, incarnation), within a fixed capacity."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        # The result, whether it had to wait for a sync and its log position; None while the forward still runs.
        self._results: OrderedDict[tuple[str, int, int], tuple[Result, bool, int] | None] = OrderedDict()
        # Per sender incarnation, the highest forward id forgotten: anything at or below it is too old.
        self._floor: OrderedDict[tuple[str, int], int] = OrderedDict()

    def admit(self, src: str, incarnation: int, forward_id: int) -> tuple[bool, tuple[Result, bool, int] | None]:
        """(True, (result, durable, position) or None while still running) if already received or too old to tell;
        else (False, None), and the forward is remembered as running from now on."""
        key = (src, incarnation, forward_id)
        results = self._results
        if key in results:
            return True, results[key]
        floor = self._floor.get((src, incarnation))
        if floor is not None and forward_id <= floor:
            return True, None
        results[key] = None
        if len(results) > self._capacity:
            self._forget_oldest()
        return False, None

    def _forget_oldest(self) -> None:
        # Once full, every forward admitted forgets one: this runs once per remembered forward.
        results, floors, capacity = self._results, self._floor, self._capacity
        while len(results) > capacity:
            (old_src, old_inc, old_id), _ = results.popitem(last=False)
            floor_key = (old_src, old_inc)
            floor = floors.get(floor_key, 0)
            floors[floor_key] = old_id if old_id > floor else floor
            floors.move_to_end(floor_key)
            if len(floors) > capacity:
                floors.popitem(last=False)

    def finish(self, src: str, incarnation: int, forward_id: int, result: Result, durable: bool, position: int) -> None:
        key = (src, incarnation, forward_id)
        if key in self._results:
            self._results[key] = (result, durable, position)


class Forwarder:
    """Both ends of forwarding for one node incarnation: the forwards it sent and the ones it answers."""

    def __init__(
        self, node_id: str, incarnation: int, request_timeout_ms: int, memory_capacity: int, always_durable: bool
    ) -> None:
        self._node_id = node_id
        self._always_durable = always_durable
        self._incarnation = incarnation
        self._request_timeout_ms = request_timeout_ms
        self._outgoing: dict[int, _Outgoing] = {}
        # Each peer's incarnation as last heard from it; absent: not known yet.
        self._peer_incarnations: dict[str, int] = {}
        self._duplicates = _DuplicateFilter(memory_capacity)
        # The epoch of the node's partition map, named in every forward and answer (the node keeps it current).
        self.map_epoch = 1

    # ------------------------------------------------------------ sending end

    def forward(
        self, now_ms: int, token: int, dst: str, partition: int, op: ClientOp | ScanPartitionsOp
    ) -> list[Effect]:
        """Send ``op`` to its owner ``dst``; ``token`` is what waits for it, and the forward id."""
        send = self._send(token, _Outgoing(dst, partition, op, 0))
        return [send, SetTimer(FORWARD_TIMER_PREFIX + str(token), now_ms + self._request_timeout_ms)]

    def on_answer(self, src: str, answer: ForwardReply | ForwardRefused) -> list[Effect | Done]:
        out = self._outgoing.get(answer.forward_id)
        if answer.incarnation != self._incarnation or out is None or out.dst != src:
            return []  # late, duplicated, or meant for an earlier life of this node: ignore it
        if isinstance(answer, ForwardRefused) and answer.target_incarnation != out.target_incarnation:
            return []  # a late refusal of a copy already sent again: the current copy decides
        # Learn the owner's incarnation from a refusal (it says who the owner is now), or from a reply
        # when none is known: a late reply from the owner's previous life must not roll it back.
        if isinstance(answer, ForwardRefused) or src not in self._peer_incarnations:
            self._peer_incarnations[src] = answer.owner_incarnation
        if isinstance(answer, ForwardReply):
            checked = _checked_answer(src, out.op, answer.result)
            return self._end(answer.forward_id, checked, answer.position if checked is answer.result else 0)
        if out.target_incarnation == 0 or _read_only(out.op):
            return [self._send(answer.forward_id, out)]
        return self._end(
            answer.forward_id,
            Failure.of(ErrorCode.TIMEOUT, f"{src} restarted; the op may have happened before it did"),
        )

    def on_timer(self, key: str) -> list[Effect | Done]:
        """A forward timer (``key`` starts with ``FORWARD_TIMER_PREFIX``) fired."""
        token = int(key[len(FORWARD_TIMER_PREFIX) :])
        out = self._outgoing.pop(token, None)
        if out is None:
            return []
        message = f"no answer from {out.dst} in time; the op may have happened"
        return [Done(token, Failure.of(ErrorCode.TIMEOUT, message))]

    def on_send_failed(self, msg: Message) -> list[Effect | Done]:
        body = msg.body
        if isinstance(body, Forward) and body.incarnation == self._incarnation and body.forward_id in self._outgoing:
            return self._end(body.forward_id, Failure.of(ErrorCode.UNAVAILABLE, f"owner {msg.dst} is unreachable"))
        # Replies and replica traffic that cannot be delivered are covered by the sender's timeouts.
        return []

    def _send(self, token: int, out: _Outgoing) -> Send:
        out.target_incarnation = self._peer_incarnations.get(out.dst, 0)
        self._outgoing[token] = out
        forward = Forward(self._incarnation, token, out.target_incarnation, out.op, self.map_epoch)
        return Send(Message(self._node_id, out.dst, out.partition, forward), self._always_durable)

    def _end(self, token: int, result: Result, position: int = 0) -> list[Effect | Done]:
        del self._outgoing[token]
        return [CancelTimer(FORWARD_TIMER_PREFIX + str(token)), Done(token, result, position)]

    # ------------------------------------------------------------ answering end

    def receive(self, src: str, partition: int, fwd: Forward) -> Send | PeerWaiter | None:
        """A ``Send`` answering ``fwd`` at once (a refusal, a remembered result); a ``PeerWaiter`` if
        ``fwd.op`` is to run and be answered through ``answer``; ``None`` if it is to be dropped."""
        if fwd.target_incarnation != self._incarnation:
            refused = ForwardRefused(
                fwd.incarnation, fwd.forward_id, fwd.target_incarnation, self._incarnation, self.map_epoch
            )
            return Send(Message(self._node_id, src, partition, refused), self._always_durable)
        target = PeerWaiter(src, fwd.incarnation, fwd.forward_id, partition, remember=not _read_only(fwd.op))
        # A read is not remembered: running a duplicate again changes nothing, and its answer lands
        # inside the still-open op or is ignored. Remembering would pin whole values and scan pages.
        if target.remember:
            seen, remembered = self._duplicates.admit(src, fwd.incarnation, fwd.forward_id)
            if seen:
                return None if remembered is None else self.answer(target, *remembered)
        return target

    def answer(self, target: PeerWaiter, result: Result, durable: bool = False, position: int = 0) -> Send:
        """The answer to a forward this node ran; ``durable``: the result may leave only once synced;
        ``position``: the partition log position it reflects."""
        if target.remember:
            self._duplicates.finish(target.src, target.incarnation, target.forward_id, result, durable, position)
        reply = ForwardReply(
            target.incarnation, target.forward_id, self._incarnation, result, self.map_epoch, position
        )
        return Send(Message(self._node_id, target.src, target.partition, reply), durable or self._always_durable)


# What each op may be answered with besides a Failure; a batch is answered entry by entry.
_ANSWERS: dict[type, tuple[type, ...]] = {
    GetOp: (Found, FoundSiblings),
    PutOp: (Written, Stored),
    DeleteOp: (Deleted, Stored),
    CasOp: (Written, Deleted),
    ScanOp: (ScanPage,),
    ScanPartitionsOp: (ScanPage,),
    BatchGetOp: (BatchResults,),
    BatchPutOp: (BatchResults,),
    ChangesOp: (ChangesPage,),
}
_BATCH_ENTRIES: dict[type, tuple[type, ...]] = {
    BatchGetOp: (Found, FoundSiblings, Failure),
    BatchPutOp: (Written, Stored, Failure),
}
# With Failure: the tuple isinstance takes, built once rather than per answer.
_FITTING: dict[type, tuple[type, ...]] = {op_type: (Failure, *answers) for op_type, answers in _ANSWERS.items()}


def _checked_answer(src: str, op: ClientOp | ScanPartitionsOp, result: Result) -> Result:
    """``result`` if it can answer ``op``, else a failure: a wrong answer from a peer (a bug, another
    version) would otherwise break a gather (a batch of the wrong length) or pass as a result."""
    fits = isinstance(result, _FITTING[type(op)])
    if fits and isinstance(result, BatchResults) and isinstance(op, (BatchGetOp, BatchPutOp)):
        size = len(op.keys) if isinstance(op, BatchGetOp) else len(op.items)
        entries = _BATCH_ENTRIES[type(op)]
        fits = len(result.results) == size and all(isinstance(entry, entries) for entry in result.results)
    if fits:
        return result
    message = f"{src} answered a {type(op).__name__} with a {type(result).__name__}; the op may have happened"
    return Failure.of(ErrorCode.INTERNAL, message)


def _read_only(op: ClientOp | ScanPartitionsOp) -> bool:
    return isinstance(op, (GetOp, ScanOp, ScanPartitionsOp, BatchGetOp, ChangesOp))
