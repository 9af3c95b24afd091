"""A hand-cranked network of leaderless ``Node``s for the node-level tests (``test_node_leaderless*.py``).

It extends ``test_node_moves.Net`` (SimDisk storage, the codec on every message, a sync before every durable
effect leaves) with what leaderless mode needs: replica timers (``p/...``: request timeouts, the tombstone
sweep, anti-entropy rounds) fire too, up to a time horizon (they re-arm for ever, so "until quiet" means
nothing); nodes can be down (crashed and not restarted: a message to one is refused with ``SendFailed``, or
lost when ``refuse_down`` is off); links can be cut (messages across are lost).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from kvstore.config import ClusterConfig, LeaderlessConfig, StorageConfig, local_cluster
from kvstore.hint_store import PREFIX as HINT_PREFIX
from kvstore.messages import ClientOp, ClientRequest, FoundSiblings, Result, SendFailed, Stored, TimerFired
from kvstore.version_store import KvVersionStore
from replication.dvv import Versions
from tests.protocol.test_node_moves import Net


def leaderless_config(
    nodes: int = 4, partitions: int = 4, fsync: str = "batch", request_timeout_ms: int = 2000, **leaderless: object
) -> ClusterConfig:
    cfg = local_cluster(
        nodes,
        mode="leaderless",
        partitions=partitions,
        storage=StorageConfig(fsync=fsync),
        leaderless=LeaderlessConfig(**leaderless),  # type: ignore[arg-type]
    )
    return replace(cfg, timeouts=replace(cfg.timeouts, request_timeout_ms=request_timeout_ms))


@dataclass
class LeaderlessNet(Net):
    cfg: ClusterConfig = field(default_factory=leaderless_config)
    down: set[str] = field(default_factory=set)
    cuts: set[frozenset[str]] = field(default_factory=set)
    refuse_down: bool = True  # a message to a down node: SendFailed to its sender (else silently lost)

    # ------------------------------------------------------------ faults

    def stop(self, node_id: str, kind: str = "power") -> None:
        """``node_id`` crashes (``kind``: "power" keeps only what was synced, "process" keeps the OS image) and
        stays down until ``restart``."""
        self.disks[node_id].crash(kind)  # type: ignore[arg-type]
        self.down.add(node_id)
        self.timers[node_id] = {}

    def restart(self, node_id: str) -> None:
        self.down.discard(node_id)
        self.boot(node_id)

    def power_loss(self, node_id: str) -> None:
        """Power loss and an immediate restart from the durable image."""
        self.stop(node_id, "power")
        self.restart(node_id)

    def cut(self, a: str, b: str) -> None:
        self.cuts.add(frozenset((a, b)))

    def isolate(self, node_id: str) -> None:
        for other in self.cfg.node_ids:
            if other != node_id:
                self.cut(node_id, other)

    def heal(self) -> None:
        self.cuts.clear()

    # ------------------------------------------------------------ the network and the clock

    def deliver_one(self) -> bool:
        if not self.queue:
            return False
        index = self.rng.randrange(len(self.queue)) if self.reorder else 0
        msg = self.queue.pop(index)
        if msg.src in self.down:
            return True  # sent by a node that crashed since: it never left
        if msg.dst in self.down:
            if self.refuse_down:
                self.step(msg.src, SendFailed(msg))
            return True
        if frozenset((msg.src, msg.dst)) in self.cuts or self.rng.random() < self.drop:
            return True
        if self.rng.random() < self.duplicate:
            self.queue.append(msg)
        self.step(msg.dst, msg)
        return True

    def fire_next_timer(self, horizon_ms: int | None = None) -> bool:
        """The earliest timer of a running node (replica timers included), if due by ``horizon_ms``."""
        pending = [
            (at, node_id, key)
            for node_id, timers in self.timers.items()
            if node_id not in self.down
            for key, at in timers.items()
        ]
        if not pending:
            return False
        at, node_id, key = min(pending)
        if horizon_ms is not None and at > horizon_ms:
            return False
        del self.timers[node_id][key]
        self.now = max(self.now, at)
        self.step(node_id, TimerFired(key))
        return True

    def run_for(self, duration_ms: int, max_steps: int = 200_000) -> None:
        """Deliver every message and fire every timer due in the next ``duration_ms``; the clock ends there."""
        horizon = self.now + duration_ms
        for _ in range(max_steps):
            if not self.deliver_one() and not self.fire_next_timer(horizon):
                self.now = max(self.now, horizon)
                return
        raise AssertionError("the network did not go quiet before the horizon")

    def submit(self, node_id: str, op: ClientOp) -> int:
        """A client's op at ``node_id``, not run: its result lands in ``replies`` under the returned id."""
        request_id = self.next_request
        self.next_request += 1
        self.step(node_id, ClientRequest(request_id, op))
        return request_id

    def request(self, node_id: str, op: ClientOp) -> Result:
        request_id = self.submit(node_id, op)
        self.run_until(lambda: request_id in self.replies)
        return self.replies.pop(request_id)

    # ------------------------------------------------------------ what nodes hold

    def placement(self, key: str) -> tuple[int, tuple[str, ...]]:
        """``key``'s partition and preference list."""
        m = self.nodes[self.cfg.node_ids[0]].partition_map
        partition = m.partition_for_key(key)
        return partition, m.replicas[partition]

    def state(self, node_id: str, key: str) -> Versions | None:
        """``key``'s state in ``node_id``'s storage (None: absent)."""
        partition, _ = self.placement(key)
        return KvVersionStore(self.nodes[node_id].storage, partition).get(key)

    def durable_state(self, node_id: str, key: str) -> Versions | None:
        """``key``'s state as a power loss of ``node_id`` would leave it."""
        partition, _ = self.placement(key)
        return KvVersionStore(self.disks[node_id].durable_image, partition).get(key)

    def values_on(self, node_id: str, key: str) -> set[bytes]:
        state = self.state(node_id, key)
        return set() if state is None else {v for v in state.values}

    def hints(self, node_id: str) -> list[str]:
        """The names of the hints in ``node_id``'s storage metadata."""
        return list(self.nodes[node_id].storage.meta_names(HINT_PREFIX))


def keys_with(net: LeaderlessNet, accept: Callable[[int, tuple[str, ...]], bool], count: int = 1) -> list[str]:
    """``count`` keys whose (partition, preference list) ``accept`` takes."""
    found = [k for k in (f"k{i:04}" for i in range(2000)) if accept(*net.placement(k))]
    assert len(found) >= count, "no such keys"
    return found[:count]



def outsider_key(net: LeaderlessNet) -> tuple[str, tuple[str, ...], str]:
    """A key, its preference list, and the one node of four that holds no replica of it (its fallback)."""
    key = keys_with(net, lambda _p, pref: "n1" in pref)[0]
    _, pref = net.placement(key)
    (outsider,) = set(net.cfg.node_ids) - set(pref)
    return key, pref, outsider


def stored(result: object) -> Stored:
    assert isinstance(result, Stored), result
    return result


def found(result: object) -> FoundSiblings:
    assert isinstance(result, FoundSiblings), result
    return result
