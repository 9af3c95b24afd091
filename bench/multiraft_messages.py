"""Multi-Raft peer traffic in the simulator: messages per second at rest and per committed write, 1 against 64
partitions (leader mode, 3 nodes, 3 replicas per partition, ``fsync = "batch"``, 1-5 ms links).

Counts, not time: the simulator's virtual clock and a fault policy that delivers every message once and counts
what crosses the network. Beside each count of messages (``RaftBatch`` envelopes and everything else a node
sends) stands the count of Raft messages they carried (each envelope item, plus any other message): what the
same traffic costs when every group speaks for itself, as before kvstore/raft_batching.py.

- at rest: ``--rest-ms`` of virtual time after ``--settle-ms`` for the elections; messages per second, and the
  ratio 64 partitions / 1 partition (the issue: a small constant, not 64);
- under load: ``--clients`` closed-loop clients (each waits for its answer, then writes again), spread over the
  three nodes, each writing a fresh key (so over every partition), for ``--load-ms``; messages per committed
  write (forwards to the leader and their answers included).

    python bench/multiraft_messages.py [--rest-ms 10000] [--load-ms 5000] [--clients 30] [--seed 1] [--json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from kvstore.config import StorageConfig, local_cluster
from kvstore.messages import Message, PutOp, RaftBatch, Result, Written
from kvstore.sim.cluster import SimCluster

SETTLE_MS = 3000


class CountingDelivery:
    """A fault policy that delivers every message once, on time, and counts messages and the Raft messages
    inside envelopes."""

    def __init__(self) -> None:
        self.messages = 0
        self.carried = 0

    def on_send(self, now_ms: int, msg: Message) -> Sequence[int]:
        self.messages += 1
        self.carried += len(msg.body.items) if isinstance(msg.body, RaftBatch) else 1
        return (0,)

    def clock_offset_ms(self, node_id: str, now_ms: int) -> int:
        return 0


@dataclass(frozen=True)
class Traffic:
    partitions: int
    rest_messages_per_s: float
    rest_carried_per_s: float
    writes: int
    messages_per_write: float
    carried_per_write: float


def measure(partitions: int, seed: int, rest_ms: int, load_ms: int, clients: int) -> Traffic:
    config = local_cluster(3, partitions=partitions, mode="leader", replicas=3, storage=StorageConfig(fsync="batch"))
    counter = CountingDelivery()
    cluster = SimCluster(seed, config, counter)
    cluster.run_for(SETTLE_MS)
    messages, carried = counter.messages, counter.carried
    cluster.run_for(rest_ms)
    rest_messages, rest_carried = counter.messages - messages, counter.carried - carried

    written = 0
    next_key = 0
    stop_at_ms = cluster.now_ms + load_ms

    def write(node_id: str) -> None:
        nonlocal next_key
        next_key += 1
        cluster.submit(node_id, PutOp(f"key{next_key}", b"v" * 100), lambda _request_id, result: done(node_id, result))

    def done(node_id: str, result: Result) -> None:
        nonlocal written
        written += isinstance(result, Written)
        if cluster.now_ms < stop_at_ms:
            write(node_id)

    messages, carried = counter.messages, counter.carried
    for client in range(clients):
        write(cluster.node_ids()[client % 3])
    cluster.run_until_idle()
    per_write = max(written, 1)
    return Traffic(
        partitions,
        rest_messages * 1000 / rest_ms,
        rest_carried * 1000 / rest_ms,
        written,
        (counter.messages - messages) / per_write,
        (counter.carried - carried) / per_write,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rest-ms", type=int, default=10_000)
    parser.add_argument("--load-ms", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    one, many = (measure(p, args.seed, args.rest_ms, args.load_ms, args.clients) for p in (1, 64))
    ratio = many.rest_messages_per_s / one.rest_messages_per_s
    if args.json:
        print(json.dumps({"one": asdict(one), "many": asdict(many), "rest_ratio": ratio}))
        return 0
    print("| partitions | at rest: messages/s | Raft messages carried/s | committed writes | messages/write "
          "| Raft messages carried/write |")
    print("|---|---|---|---|---|---|")
    for t in (one, many):
        print(f"| {t.partitions} | {t.rest_messages_per_s:.1f} | {t.rest_carried_per_s:.1f} | {t.writes} "
              f"| {t.messages_per_write:.2f} | {t.carried_per_write:.2f} |")
    print(f"at rest, 64 partitions / 1 partition: {ratio:.2f}x the messages "
          f"({many.rest_carried_per_s / one.rest_carried_per_s:.2f}x without envelopes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
