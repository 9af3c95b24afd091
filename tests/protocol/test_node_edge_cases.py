"""Node and transport edge cases found in review: duplicated copies, huge TTLs, clocks that step back."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from kvstore.config import ClusterConfig, Limits, local_cluster
from kvstore.effects import Effect, Reply, Send
from kvstore.messages import ClientOp, ClientRequest, Failure, GetOp, Message, PutOp, Started, Written
from kvstore.node import Node
from kvstore.server.faults import FaultSwitch
from kvstore.server.peer import PeerTransport
from kvstore.storage.memory import MemoryStorage
from kvstore.storage.sqlite import SqliteStorage
from kvstore.validation import MAX_TTL_MS


def _node(node_id: str, config: ClusterConfig, seed: int, storage: MemoryStorage | None = None) -> Node:
    node = Node(node_id, config, storage if storage is not None else MemoryStorage(), random.Random(seed))
    node.step(0, Started())
    return node


def _key_of(node: Node, owner: str) -> str:
    pmap = node.partition_map
    return next(k for k in (f"k{i}" for i in range(1000)) if pmap.owner(pmap.partition_for_key(k)) == owner)


def _request(node: Node, now_ms: int, request_id: int, op: ClientOp) -> list[Effect]:
    return node.step(now_ms, ClientRequest(request_id, op))


def _sends(effects: list[Effect]) -> list[Message]:
    return [e.msg for e in effects if isinstance(e, Send)]


def _replies(effects: list[Effect]) -> list[Reply]:
    return [e for e in effects if isinstance(e, Reply)]


class _Duplicate:
    """A fault policy that delivers every message twice, at once."""

    def on_send(self, now_ms: int, msg: Message) -> Sequence[int]:
        return (0, 0)

    def clock_offset_ms(self, node_id: str, now_ms: int) -> int:
        return 0


async def test_send_failed_only_when_no_copy_of_a_duplicated_message_can_arrive() -> None:
    config = local_cluster(2, partitions=4, limits=replace(Limits(), max_peer_queue=1))
    n1 = _node("n1", config, 1)
    [first] = _sends(_request(n1, 2, 2, PutOp(_key_of(n1, "n2"), b"v")))
    [second] = _sends(_request(n1, 3, 3, PutOp(_key_of(n1, "n2") + "x", b"w")))
    # The real transport, under a duplicating policy, with room for one queued message.
    failed: list[Message] = []
    transport = PeerTransport("n1", config, FaultSwitch(_Duplicate()), failed.append, deliver_local=failed.append,
        address_of=config.address_text,
    )
    transport.send(first)
    await asyncio.sleep(0)
    # One copy is queued and may be delivered (and run): the other's failure must not make the op
    # definite, so nothing is reported.
    assert transport.queue_depths() == {"n2": 1}
    assert failed == []
    transport.send(second)
    await asyncio.sleep(0)
    # Both copies of the second were refused: it certainly did not arrive, reported once.
    assert failed == [second]


def test_a_ttl_beyond_what_storage_holds_is_refused_not_fatal(tmp_path: Path) -> None:
    config = local_cluster(1, partitions=2)
    storage = SqliteStorage(tmp_path / "kv.sqlite3")
    try:
        node = _node("n1", config, 1, storage)
        [reply] = _replies(_request(node, 1000, 1, PutOp("k", b"v", ttl_ms=2**63)))
        # Refused before anything is written, so there is nothing the sync could fail on.
        storage.sync()
        assert isinstance(reply.result, Failure) and reply.result.code == "bad_request"
        # The largest TTL allowed, on a clock far in the future, still fits what storage holds.
        [ok] = _replies(_request(node, 4_000_000_000_000, 2, PutOp("k", b"v", ttl_ms=MAX_TTL_MS)))
        storage.sync()
        assert isinstance(ok.result, Written)
    finally:
        storage.close()


def test_an_expired_key_stays_gone_when_the_node_clock_steps_back() -> None:
    node = _node("n1", local_cluster(1, partitions=2), 1)
    _request(node, 1000, 1, PutOp("k", b"v", ttl_ms=100))
    [gone] = _replies(_request(node, 1200, 2, GetOp("k")))
    assert isinstance(gone.result, Failure) and gone.result.code == "not_found"
    # A clock-skew fault ends (or NTP steps the wall clock back): the node's clock reads 1050 now.
    [again] = _replies(_request(node, 1050, 3, GetOp("k")))
    assert isinstance(again.result, Failure) and again.result.code == "not_found", again.result
