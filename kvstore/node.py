"""Node.step: the sans-IO core that routes every input to the right partition's protocol instance.

A client request names keys; the node maps each key to its partition and the partition to its owner.
Ops for partitions it owns go to the local replica; the rest are forwarded to the owner
(``kvstore/forwarding.py``: the incarnation handshake, the duplicate memory, the forward timers).
Scans and batches fan out to every owner involved and are gathered back into one result
(``kvstore/gather.py``). The node routes each input to the one that handles it and composes their
effects.

Everything waiting for an answer is one entry in ``_waiting``, keyed by a token the node allocates:
a client request, a forwarded request to answer, a part of a gather. Its size is bounded by
``limits.max_inflight``; past that, new requests are refused as ``overloaded`` (definite).

Peer messages arrive type-checked by the codec but are otherwise untrusted: one not addressed to this
node by another member is ignored, a forwarded op is checked like a client's, and an answer that does
not fit the op it answers fails that op. Nothing a peer sends may raise out of ``step``: for a node
process that is fatal.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from kvstore.codec import INT64_MAX
from kvstore.config import ClusterConfig
from kvstore.effects import CancelTimer, Effect, Reply, SetTimer
from kvstore.errors import ErrorCode, KvError
from kvstore.forwarding import FORWARD_TIMER_PREFIX, Forwarder, PeerWaiter
from kvstore.gather import GatherPart, batch_parts, merge_pages, scan_parts
from kvstore.messages import (
    NODE_PARTITION,
    BatchGetOp,
    BatchPutOp,
    CasOp,
    ClientOp,
    ClientRequest,
    DeleteOp,
    Failure,
    Forward,
    ForwardRefused,
    ForwardReply,
    GetOp,
    Input,
    KeyOp,
    Message,
    PutOp,
    Result,
    ScanOp,
    ScanPartitionsOp,
    SendFailed,
    Started,
    TimerFired,
)
from kvstore.replica import PartitionReplica, ReplicaOp, SingleCopyReplica
from kvstore.storage.base import Storage
from kvstore.validation import check_op
from partitioning.partition_map import PartitionMap

TTL_SWEEP_TIMER = "ttl-sweep"
TTL_SWEEP_MAX_KEYS = 1000
_REPLICA_TIMER_PREFIX = "p/"


# ---------------------------------------------------------------- who is waiting for a token


@dataclass
class _ToClient:
    request_id: int


_Target = _ToClient | PeerWaiter
_Waiter = _ToClient | PeerWaiter | GatherPart[_Target]


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
        self._forwarder = Forwarder(
            node_id, self.incarnation, config.timeouts.request_timeout_ms, memory_capacity=4 * self._limits.max_inflight
        )
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
            self._absorb(self._forwarder.on_send_failed(inp.msg))
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
            self._absorb(self._forwarder.on_answer(msg.src, body))
        elif msg.partition in self.replicas:
            self._run_replica(msg.partition, msg)

    def _on_forward(self, src: str, partition: int, fwd: Forward) -> None:
        received = self._forwarder.receive(src, partition, fwd)
        if not isinstance(received, PeerWaiter):
            if received is not None:
                self._effects.append(received)
            return
        if len(self._waiting) >= self._limits.max_inflight:
            self._deliver(received, Failure.of(ErrorCode.OVERLOADED, f"{self.node_id} has too many requests in flight"))
            return
        self._start(fwd.op, received)

    def _on_timer(self, key: str) -> None:
        if key == TTL_SWEEP_TIMER:
            self.storage.purge_expired(self._expiry_clock_ms, TTL_SWEEP_MAX_KEYS)
            self._effects.append(SetTimer(TTL_SWEEP_TIMER, self._now_ms + self.config.timeouts.ttl_sweep_interval_ms))
        elif key.startswith(FORWARD_TIMER_PREFIX):
            self._absorb(self._forwarder.on_timer(key))
        elif key.startswith(_REPLICA_TIMER_PREFIX):
            partition_text, _, replica_key = key[len(_REPLICA_TIMER_PREFIX) :].partition("/")
            partition = int(partition_text)
            if partition in self.replicas:
                self._run_replica(partition, TimerFired(replica_key))

    # ------------------------------------------------------------ starting operations

    def _start(self, op: ClientOp | ScanPartitionsOp, target: _Target) -> None:
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

    def _start_scan(self, op: ScanOp, target: _Target) -> None:
        by_owner = self._group_by_owner(range(self.partition_map.partition_count))
        for owner, part, waiter in scan_parts(op, by_owner, target):
            token = self._wait(waiter)
            if owner == self.node_id:
                self._complete(token, self._local_scan(part.partitions, op.start, op.end, op.limit))
            else:
                self._forward(token, owner, NODE_PARTITION, part)

    def _start_batch(self, op: BatchGetOp | BatchPutOp, target: _Target) -> None:
        remote, local = batch_parts(op, self._owner_of_key, self.node_id, target)
        for owner, part, waiter in remote:
            self._forward(self._wait(waiter), owner, NODE_PARTITION, part)
        for key_op, waiter in local:
            self._start_key_op(key_op, waiter)

    # ------------------------------------------------------------ helpers

    def _wait(self, waiter: _Waiter) -> int:
        token = self._next_token
        self._next_token += 1
        self._waiting[token] = waiter
        return token

    def _forward(self, token: int, dst: str, partition: int, op: ClientOp | ScanPartitionsOp) -> None:
        assert token in self._waiting, "a forward is tracked with nobody waiting on it"
        self._effects.extend(self._forwarder.forward(self._now_ms, token, dst, partition, op))

    def _owner_of_key(self, key: str) -> str:
        return self.partition_map.owner(self.partition_map.partition_for_key(key))

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
        return merge_pages(pages, limit)

    def _run_replica(self, partition: int, inp: ReplicaOp | Message | TimerFired) -> None:
        for effect in self.replicas[partition].step(self._expiry_clock_ms, inp):
            if isinstance(effect, Reply):
                self._complete(effect.request_id, effect.result)
            elif isinstance(effect, (SetTimer, CancelTimer)):
                key = f"{_REPLICA_TIMER_PREFIX}{partition}/{effect.key}"
                self._effects.append(SetTimer(key, effect.at_ms) if isinstance(effect, SetTimer) else CancelTimer(key))
            else:
                self._effects.append(effect)

    def _absorb(self, effects: list[Effect]) -> None:
        """Take the forwarder's effects: its ``Reply(token, result)`` completes a token."""
        for effect in effects:
            if isinstance(effect, Reply):
                self._complete(effect.request_id, effect.result)
            else:
                self._effects.append(effect)

    def _complete(self, token: int, result: Result) -> None:
        waiter = self._waiting.pop(token, None)
        if waiter is None:
            return
        if isinstance(waiter, GatherPart):
            final = waiter.add(result)
            if final is not None:
                self._deliver(waiter.gather.target, final)
        else:
            self._deliver(waiter, result)

    def _deliver(self, target: _Target, result: Result) -> None:
        if isinstance(target, _ToClient):
            self._effects.append(Reply(target.request_id, result))
        else:
            self._effects.append(self._forwarder.answer(target, result))
