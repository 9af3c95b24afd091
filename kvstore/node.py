"""Node.step: the sans-IO core that routes every input to the right partition's protocol instance.

A client request names keys; the node maps each key to its partition and the partition to its owner.
Ops for partitions it owns go to the local replica; the rest are forwarded to the owner, answered by
``ForwardReply``, and time out (an indefinite ``timeout``) if no answer comes. Scans and batches fan
out to every owner involved and are gathered back into one result.

Everything waiting for an answer is one entry in ``_waiting``, keyed by a token the node allocates:
a client request, a forwarded request to answer, a part of a gather. Its size is bounded by
``limits.max_inflight``; past that, new requests are refused as ``overloaded`` (definite).

A peer may deliver the same ``Forward`` twice (a duplicating network). Executing it twice could undo
a later write, so the owner remembers the results of recent forwards per sender incarnation and
answers a duplicate from that memory; a forward too old to be remembered is not executed at all
(the sender sees a timeout, which is indefinite, so nothing false is reported). That memory dies with
the owner, so every forward also names the owner incarnation it is meant for and an owner executes
only forwards meant for its current life. A sender learns an owner's incarnation from its answers; a
first forward (incarnation unknown) is refused with the owner's incarnation and sent again, which is
safe because the refused copy ran nowhere. A forward refused because the owner restarted since is sent
again only if it is read-only; otherwise the old life may have run it, so its outcome is indefinite.

Peer messages arrive type-checked by the codec but are otherwise untrusted: one not addressed to this
node by another member is ignored, a forwarded op is checked like a client's, and an answer that does
not fit the op it answers fails that op. Nothing a peer sends may raise out of ``step``: for a node
process that is fatal.
"""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict
from dataclasses import dataclass

from kvstore.codec import INT64_MAX
from kvstore.config import ClusterConfig
from kvstore.effects import CancelTimer, Effect, Reply, Send, SetTimer
from kvstore.errors import ErrorCode, KvError
from kvstore.messages import (
    NODE_PARTITION,
    BatchGetOp,
    BatchPutOp,
    BatchResults,
    CasOp,
    ClientOp,
    ClientRequest,
    Deleted,
    DeleteOp,
    Failure,
    Forward,
    ForwardRefused,
    ForwardReply,
    Found,
    GetOp,
    Input,
    KeyOp,
    Message,
    PutOp,
    Result,
    ScanItem,
    ScanOp,
    ScanPage,
    ScanPartitionsOp,
    SendFailed,
    Started,
    TimerFired,
    Written,
)
from kvstore.replica import PartitionReplica, ReplicaOp, SingleCopyReplica
from kvstore.storage.base import Storage
from kvstore.validation import check_op
from partitioning.partition_map import PartitionMap

TTL_SWEEP_TIMER = "ttl-sweep"
TTL_SWEEP_MAX_KEYS = 1000
_FORWARD_TIMER_PREFIX = "fwd/"
_REPLICA_TIMER_PREFIX = "p/"


# ---------------------------------------------------------------- who is waiting for a token


@dataclass
class _ToClient:
    request_id: int


@dataclass
class _ToPeer:
    src: str
    incarnation: int
    forward_id: int
    partition: int
    # Whether the duplicate filter keeps this forward's result (writes only).
    remember: bool = True


@dataclass
class _ToGather:
    gather: _Gather
    # Positions in the gathered result this part fills (batch) or () for a scan part.
    indices: tuple[int, ...]


_Waiter = _ToClient | _ToPeer | _ToGather


@dataclass
class _Gather:
    target: _ToClient | _ToPeer
    remaining: int
    # A batch gathers one result per entry; a scan gathers pages and merges them.
    slots: list[Found | Written | Deleted | Failure | None]
    pages: list[ScanPage]
    scan_limit: int | None
    failure: Failure | None = None


@dataclass
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
        self._results: OrderedDict[tuple[str, int, int], Result | None] = OrderedDict()
        # Per sender incarnation, the highest forward id forgotten: anything at or below it is too old.
        self._floor: OrderedDict[tuple[str, int], int] = OrderedDict()

    def seen(self, src: str, incarnation: int, forward_id: int) -> tuple[bool, Result | None]:
        """(True, result or None while still running) if already received or too old to tell."""
        key = (src, incarnation, forward_id)
        if key in self._results:
            return True, self._results[key]
        floor = self._floor.get((src, incarnation))
        if floor is not None and forward_id <= floor:
            return True, None
        return False, None

    def start(self, src: str, incarnation: int, forward_id: int) -> None:
        self._results[(src, incarnation, forward_id)] = None
        while len(self._results) > self._capacity:
            (old_src, old_inc, old_id), _ = self._results.popitem(last=False)
            floor_key = (old_src, old_inc)
            self._floor[floor_key] = max(self._floor.get(floor_key, 0), old_id)
            self._floor.move_to_end(floor_key)
            if len(self._floor) > self._capacity:
                self._floor.popitem(last=False)

    def finish(self, src: str, incarnation: int, forward_id: int, result: Result) -> None:
        key = (src, incarnation, forward_id)
        if key in self._results:
            self._results[key] = result


class Node:
    def __init__(self, node_id: str, config: ClusterConfig, storage: Storage, rng: random.Random) -> None:
        if node_id not in config.node_ids:
            raise ValueError(f"{node_id!r} is not a member of the cluster {config.node_ids}")
        self.node_id = node_id
        self.config = config
        self.storage = storage
        self._rng = rng
        self._limits = config.limits
        self.partition_map = PartitionMap.round_robin(config.node_ids, config.partitions)
        self._peers = frozenset(config.node_ids) - {node_id}
        self.replicas: dict[int, PartitionReplica] = {
            p: SingleCopyReplica(p, storage) for p in self.partition_map.partitions_of(node_id)
        }
        # Scopes this run's forward ids, so a restarted node's ids never collide with its old ones.
        # Never 0, which in a Forward means "the owner's incarnation is not known yet".
        self.incarnation = rng.randrange(1, 1 << 63)
        self._next_token = 1
        self._waiting: dict[int, _Waiter] = {}
        self._outgoing: dict[int, _Outgoing] = {}
        # Each peer's incarnation as last heard from it; absent: not known yet.
        self._peer_incarnations: dict[str, int] = {}
        self._duplicates = _DuplicateFilter(capacity=4 * config.limits.max_inflight)
        self._effects: list[Effect] = []
        self._now_ms = 0
        # The latest time this node has seen. TTL expiry is judged on it, so a clock that steps back
        # (a skew fault ending, NTP) cannot bring an expired key back.
        self._expiry_clock_ms = 0
        self.started = False

    # ------------------------------------------------------------ public

    @property
    def inflight(self) -> int:
        return len(self._waiting)

    def step(self, now_ms: int, inp: Input) -> list[Effect]:
        self._now_ms = now_ms
        self._expiry_clock_ms = max(self._expiry_clock_ms, now_ms)
        self._effects = []
        if isinstance(inp, ClientRequest):
            self._on_client_request(inp)
        elif isinstance(inp, Message):
            self._on_message(inp)
        elif isinstance(inp, TimerFired):
            self._on_timer(inp.key)
        elif isinstance(inp, SendFailed):
            self._on_send_failed(inp.msg)
        elif isinstance(inp, Started):
            self.started = True
            self._effects.append(SetTimer(TTL_SWEEP_TIMER, now_ms + self.config.timeouts.ttl_sweep_interval_ms))
        else:
            raise TypeError(f"not a node input: {inp!r}")
        assert len(self._waiting) <= self._limits.max_inflight + self._limits.max_batch_keys + len(
            self.partition_map.replicas
        ), "in-flight table exceeded its bound"
        effects, self._effects = self._effects, []
        return effects

    # ------------------------------------------------------------ inputs

    def _on_client_request(self, req: ClientRequest) -> None:
        target = _ToClient(req.request_id)
        if len(self._waiting) >= self._limits.max_inflight:
            self._deliver(target, Failure.of(ErrorCode.OVERLOADED, "too many requests in flight; retry later"))
            return
        self._start(req.op, target)

    def _on_message(self, msg: Message) -> None:
        if msg.dst != self.node_id or msg.src not in self._peers:
            return  # misrouted, or from outside the cluster: there is nobody to answer
        body = msg.body
        if isinstance(body, Forward):
            self._on_forward(msg.src, msg.partition, body)
        elif isinstance(body, (ForwardReply, ForwardRefused)):
            out = self._outgoing.get(body.forward_id)
            if body.incarnation != self.incarnation or out is None or out.dst != msg.src:
                return  # late, duplicated, or meant for an earlier life of this node: ignore it
            if isinstance(body, ForwardRefused) and body.target_incarnation != out.target_incarnation:
                return  # a late refusal of a copy already sent again: the current copy decides
            # Learn the owner's incarnation from a refusal (it says who the owner is now), or from a reply
            # when none is known: a late reply from the owner's previous life must not roll it back.
            if isinstance(body, ForwardRefused) or msg.src not in self._peer_incarnations:
                self._peer_incarnations[msg.src] = body.owner_incarnation
            if isinstance(body, ForwardReply):
                self._end_forward(body.forward_id, _checked_answer(msg.src, out.op, body.result))
            elif out.target_incarnation == 0 or _read_only(out.op):
                self._send_forward(body.forward_id, out)
            else:
                self._end_forward(body.forward_id, Failure.of(
                    ErrorCode.TIMEOUT, f"{msg.src} restarted; the op may have happened before it did"))
        elif msg.partition in self.replicas:
            self._run_replica(msg.partition, msg)

    def _on_forward(self, src: str, partition: int, fwd: Forward) -> None:
        if fwd.target_incarnation != self.incarnation:
            refused = ForwardRefused(fwd.incarnation, fwd.forward_id, fwd.target_incarnation, self.incarnation)
            self._effects.append(Send(Message(self.node_id, src, partition, refused)))
            return
        target = _ToPeer(src, fwd.incarnation, fwd.forward_id, partition, remember=not _read_only(fwd.op))
        if target.remember:
            seen, result = self._duplicates.seen(src, fwd.incarnation, fwd.forward_id)
            if seen:
                if result is not None:
                    self._deliver(target, result)
                return
            self._duplicates.start(src, fwd.incarnation, fwd.forward_id)
        # A read is not remembered: running a duplicate again changes nothing, and its answer lands
        # inside the still-open op or is ignored. Remembering would pin whole values and scan pages.
        if len(self._waiting) >= self._limits.max_inflight:
            self._deliver(target, Failure.of(ErrorCode.OVERLOADED, f"{self.node_id} has too many requests in flight"))
            return
        self._start(fwd.op, target)

    def _on_timer(self, key: str) -> None:
        if key == TTL_SWEEP_TIMER:
            self.storage.purge_expired(self._expiry_clock_ms, TTL_SWEEP_MAX_KEYS)
            self._effects.append(SetTimer(TTL_SWEEP_TIMER, self._now_ms + self.config.timeouts.ttl_sweep_interval_ms))
        elif key.startswith(_FORWARD_TIMER_PREFIX):
            token = int(key[len(_FORWARD_TIMER_PREFIX) :])
            out = self._outgoing.pop(token, None)
            if out is not None:
                self._complete(
                    token, Failure.of(ErrorCode.TIMEOUT, f"no answer from {out.dst} in time; the op may have happened")
                )
        elif key.startswith(_REPLICA_TIMER_PREFIX):
            partition_text, _, replica_key = key[len(_REPLICA_TIMER_PREFIX) :].partition("/")
            partition = int(partition_text)
            if partition in self.replicas:
                self._run_replica(partition, TimerFired(replica_key))

    def _on_send_failed(self, msg: Message) -> None:
        body = msg.body
        if isinstance(body, Forward) and body.incarnation == self.incarnation and body.forward_id in self._outgoing:
            self._end_forward(body.forward_id, Failure.of(ErrorCode.UNAVAILABLE, f"owner {msg.dst} is unreachable"))
        # Replies and replica traffic that cannot be delivered are covered by the sender's timeouts.

    # ------------------------------------------------------------ starting operations

    def _start(self, op: ClientOp | ScanPartitionsOp, target: _ToClient | _ToPeer) -> None:
        try:
            check_op(op, self._limits)
        except KvError as exc:
            self._deliver(target, Failure.of(exc.code, exc.message))
            return
        if isinstance(op, (GetOp, PutOp, DeleteOp, CasOp)):
            self._start_key_op(op, target)
        elif isinstance(op, ScanOp):
            self._start_scan(op, target)
        elif isinstance(op, ScanPartitionsOp):
            self._deliver(target, self._local_scan(op.partitions, op.start, op.end, op.limit))
        elif isinstance(op, (BatchGetOp, BatchPutOp)):
            self._start_batch(op, target)
        else:
            self._deliver(target, Failure.of(ErrorCode.BAD_REQUEST, f"unknown operation {type(op).__name__}"))

    def _start_key_op(self, op: KeyOp, waiter: _Waiter) -> None:
        partition = self.partition_map.partition_for_key(op.key)
        token = self._wait(waiter)
        if partition in self.replicas:
            ttl_ms = op.ttl_ms if isinstance(op, (PutOp, CasOp)) else None
            if ttl_ms is not None and self._expiry_clock_ms + ttl_ms > INT64_MAX:
                # Storage and the wire hold deadlines as signed 64-bit ms; only an absurd clock gets here.
                message = f"{self.node_id}'s clock is too far ahead to hold a deadline {ttl_ms} ms from now"
                self._complete(token, Failure.of(ErrorCode.UNAVAILABLE, message + "; the op did not happen"))
                return
            self._run_replica(partition, ReplicaOp(token, op))
        else:
            self._forward(token, self.partition_map.owner(partition), partition, op)

    def _start_scan(self, op: ScanOp, target: _ToClient | _ToPeer) -> None:
        by_owner = self._group_by_owner(range(self.partition_map.partition_count))
        gather = _Gather(target, remaining=len(by_owner), slots=[], pages=[], scan_limit=op.limit)
        for owner, partitions in by_owner.items():
            part = ScanPartitionsOp(tuple(partitions), op.start, op.end, op.limit)
            token = self._wait(_ToGather(gather, ()))
            if owner == self.node_id:
                self._complete(token, self._local_scan(part.partitions, op.start, op.end, op.limit))
            else:
                self._forward(token, owner, NODE_PARTITION, part)

    def _start_batch(self, op: BatchGetOp | BatchPutOp, target: _ToClient | _ToPeer) -> None:
        key_ops: list[KeyOp] = [GetOp(k) for k in op.keys] if isinstance(op, BatchGetOp) else list(op.items)
        partitions = [self.partition_map.partition_for_key(o.key) for o in key_ops]
        remote: dict[str, list[int]] = {}
        local: list[int] = []
        for index, partition in enumerate(partitions):
            owner = self.partition_map.owner(partition)
            if owner == self.node_id:
                local.append(index)
            else:
                remote.setdefault(owner, []).append(index)
        gather = _Gather(
            target, remaining=len(local) + len(remote), slots=[None] * len(key_ops), pages=[], scan_limit=None
        )
        for owner, indices in sorted(remote.items()):
            part: BatchGetOp | BatchPutOp
            if isinstance(op, BatchGetOp):
                part = BatchGetOp(tuple(op.keys[i] for i in indices))
            else:
                part = BatchPutOp(tuple(op.items[i] for i in indices))
            token = self._wait(_ToGather(gather, tuple(indices)))
            self._forward(token, owner, NODE_PARTITION, part)
        for index in local:
            self._start_key_op(key_ops[index], _ToGather(gather, (index,)))

    # ------------------------------------------------------------ helpers

    def _wait(self, waiter: _Waiter) -> int:
        token = self._next_token
        self._next_token += 1
        self._waiting[token] = waiter
        return token

    def _forward(self, token: int, dst: str, partition: int, op: ClientOp | ScanPartitionsOp) -> None:
        self._send_forward(token, _Outgoing(dst, partition, op, 0))
        deadline_ms = self._now_ms + self.config.timeouts.request_timeout_ms
        self._effects.append(SetTimer(_FORWARD_TIMER_PREFIX + str(token), deadline_ms))

    def _send_forward(self, token: int, out: _Outgoing) -> None:
        assert token in self._waiting, "a forward is tracked with nobody waiting on it"
        out.target_incarnation = self._peer_incarnations.get(out.dst, 0)
        self._outgoing[token] = out
        forward = Forward(self.incarnation, token, out.target_incarnation, out.op)
        self._effects.append(Send(Message(self.node_id, out.dst, out.partition, forward)))

    def _end_forward(self, token: int, result: Result) -> None:
        del self._outgoing[token]
        self._effects.append(CancelTimer(_FORWARD_TIMER_PREFIX + str(token)))
        self._complete(token, result)

    def _group_by_owner(self, partitions: range) -> dict[str, list[int]]:
        by_owner: dict[str, list[int]] = {}
        for p in partitions:
            by_owner.setdefault(self.partition_map.owner(p), []).append(p)
        # Insertion order follows the partition numbers, so the grouping is the same on every run.
        return by_owner

    def _local_scan(self, partitions: tuple[int, ...], start: str, end: str | None, limit: int) -> Result:
        pages = []
        for p in partitions:
            replica = self.replicas.get(p)
            if replica is None:
                return Failure.of(ErrorCode.UNAVAILABLE, f"{self.node_id} does not hold partition {p}")
            pages.append(replica.scan(self._expiry_clock_ms, start, end, limit))
        return _merge_pages(pages, limit)

    def _run_replica(self, partition: int, inp: ReplicaOp | Message | TimerFired) -> None:
        for effect in self.replicas[partition].step(self._expiry_clock_ms, inp):
            if isinstance(effect, Reply):
                self._complete(effect.request_id, effect.result)
            elif isinstance(effect, (SetTimer, CancelTimer)):
                key = f"{_REPLICA_TIMER_PREFIX}{partition}/{effect.key}"
                self._effects.append(SetTimer(key, effect.at_ms) if isinstance(effect, SetTimer) else CancelTimer(key))
            else:
                self._effects.append(effect)

    def _complete(self, token: int, result: Result) -> None:
        waiter = self._waiting.pop(token, None)
        if waiter is None:
            return
        if isinstance(waiter, _ToGather):
            self._complete_part(waiter, result)
        else:
            self._deliver(waiter, result)

    def _complete_part(self, part: _ToGather, result: Result) -> None:
        gather = part.gather
        if gather.scan_limit is not None:
            if isinstance(result, ScanPage):
                gather.pages.append(result)
            elif isinstance(result, Failure) and gather.failure is None:
                gather.failure = result
        elif isinstance(result, BatchResults):
            for index, entry in zip(part.indices, result.results, strict=True):
                gather.slots[index] = entry
        elif isinstance(result, (Found, Written, Deleted, Failure)):
            for index in part.indices:
                gather.slots[index] = result
        gather.remaining -= 1
        if gather.remaining > 0:
            return
        final: Result
        if gather.scan_limit is not None:
            final = gather.failure or _merge_pages(gather.pages, gather.scan_limit)
        else:
            assert all(slot is not None for slot in gather.slots), "batch gathered with an empty slot"
            final = BatchResults(tuple(s for s in gather.slots if s is not None))
        self._deliver(gather.target, final)

    def _deliver(self, target: _ToClient | _ToPeer, result: Result) -> None:
        if isinstance(target, _ToClient):
            self._effects.append(Reply(target.request_id, result))
        else:
            if target.remember:
                self._duplicates.finish(target.src, target.incarnation, target.forward_id, result)
            reply = ForwardReply(target.incarnation, target.forward_id, self.incarnation, result)
            self._effects.append(Send(Message(self.node_id, target.src, target.partition, reply)))


# What each op may be answered with besides a Failure; a batch is answered entry by entry.
_ANSWERS: dict[type, tuple[type, ...]] = {
    GetOp: (Found,),
    PutOp: (Written,),
    DeleteOp: (Deleted,),
    CasOp: (Written, Deleted),
    ScanOp: (ScanPage,),
    ScanPartitionsOp: (ScanPage,),
    BatchGetOp: (BatchResults,),
    BatchPutOp: (BatchResults,),
}
_BATCH_ENTRIES: dict[type, tuple[type, ...]] = {BatchGetOp: (Found, Failure), BatchPutOp: (Written, Failure)}


def _checked_answer(src: str, op: ClientOp | ScanPartitionsOp, result: Result) -> Result:
    """``result`` if it can answer ``op``, else a failure: a wrong answer from a peer (a bug, another
    version) would otherwise break a gather (a batch of the wrong length) or pass as a result."""
    fits = isinstance(result, (Failure, *_ANSWERS[type(op)]))
    if fits and isinstance(result, BatchResults) and isinstance(op, (BatchGetOp, BatchPutOp)):
        size = len(op.keys) if isinstance(op, BatchGetOp) else len(op.items)
        entries = _BATCH_ENTRIES[type(op)]
        fits = len(result.results) == size and all(isinstance(entry, entries) for entry in result.results)
    if fits:
        return result
    message = f"{src} answered a {type(op).__name__} with a {type(result).__name__}; the op may have happened"
    return Failure.of(ErrorCode.INTERNAL, message)


def _read_only(op: ClientOp | ScanPartitionsOp) -> bool:
    return isinstance(op, (GetOp, ScanOp, ScanPartitionsOp, BatchGetOp))


def _merge_pages(pages: list[ScanPage], limit: int) -> ScanPage:
    merged: list[ScanItem] = list(heapq.merge(*(p.items for p in pages), key=lambda item: item.key))
    truncated = len(merged) > limit or any(p.truncated for p in pages)
    return ScanPage(tuple(merged[:limit]), truncated)
