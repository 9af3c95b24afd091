"""How a node's partition map reaches the other nodes: announcements, answers to stale peers, anti-entropy.

Every map that leaves a node is a durable ``Send`` of a ``MapUpdate``: others act on a map (a move's source
drops its copy on learning that the target installed it), so a map leaves only once the node that sends it
cannot forget it in a crash. Four ways a map leaves (``MapGossip`` holds what each needs to remember):

- *announce*: a node that changed its map itself (a membership order, a move's install or hand-over, a split or
  merge) sends it at once to every member and every node still holding a replica;
- *answer a stale peer*: a peer whose message names an older map epoch, or that a wrong_epoch refusal is about
  to reach (two maps that each know a change the other lacks can name one epoch), is sent this node's map,
  once per peer and map, again after ``MAP_RESEND_MS`` if it still lags (the last copy may be lost);
- *answer a map*: a ``MapUpdate`` that lacks something this node knows is answered with this node's map (the
  merge the sender makes then equals it, unless it learnt more meanwhile, so this does not ping-pong);
- *anti-entropy*: after every change of its map, and at start, the node sends its map to each peer in turn,
  one per ``GOSSIP_INTERVAL_MS`` tick, for as many ticks as it has peers. With the answers above, a change
  that no announcement carried somewhere (lost, or forgotten in a crash before its sync) still reaches every
  node, and a quiet cluster sends nothing.
"""

from __future__ import annotations

from collections.abc import Collection

from kvstore.effects import Effect, Send, SetTimer
from kvstore.messages import NODE_PARTITION, MapUpdate, Message
from partitioning.partition_map import PartitionMap

GOSSIP_TIMER = "gossip"
# One map sent to one peer per tick, while a round of anti-entropy lasts.
GOSSIP_INTERVAL_MS = 200
# A peer that goes on naming an older map epoch is sent the map again after this long (the last copy may be lost).
MAP_RESEND_MS = 1000


class MapGossip:
    """One node's side of spreading its map (see the module docstring); every method returns the effects."""

    def __init__(self, node_id: str) -> None:
        self._node_id = node_id
        # Per peer, the map it was last sent as an answer, and when (the map, not its epoch: a merge of two roster
        # changes of one version changes a map but not its epoch).
        self._answered: dict[str, tuple[PartitionMap, int]] = {}
        # Anti-entropy: ticks left in this round, where the rotation over the peers stands, whether a tick is set.
        self._ticks_left = 0
        self._cursor = 0
        self._armed = False

    def announce(self, partition_map: PartitionMap) -> list[Effect]:
        update = MapUpdate.of(partition_map)
        return [
            self._send(peer, update)
            for peer in sorted({*partition_map.members, *partition_map.draining()})
            if peer != self._node_id
        ]

    def heard_epoch(self, now_ms: int, partition_map: PartitionMap, peer: str, epoch: int) -> list[Effect]:
        """A peer named the epoch of its map: one behind this node's is answered with the map."""
        return self.answer(now_ms, partition_map, peer) if epoch < partition_map.epoch else []

    def answer(self, now_ms: int, partition_map: PartitionMap, peer: str) -> list[Effect]:
        """This node's map for ``peer``, unless it was sent the same map less than ``MAP_RESEND_MS`` ago."""
        sent = self._answered.get(peer)
        if sent is not None and sent[0] == partition_map and now_ms - sent[1] < MAP_RESEND_MS:
            return []
        self._answered[peer] = (partition_map, now_ms)
        return [self._send(peer, MapUpdate.of(partition_map))]

    def received(self, now_ms: int, partition_map: PartitionMap, incoming: PartitionMap, src: str) -> list[Effect]:
        """After ``incoming`` from ``src`` was merged into ``partition_map``: answer if ``src`` lacks something."""
        same_shape = (incoming.partition_count, incoming.partitioner) == (
            partition_map.partition_count,
            partition_map.partitioner,
        )
        return self.answer(now_ms, partition_map, src) if same_shape and incoming != partition_map else []

    def start_round(self, now_ms: int, peers: Collection[str]) -> list[Effect]:
        """Begin (or go on with) a round of anti-entropy over ``peers``."""
        self._ticks_left = len(peers)
        if self._armed or not self._ticks_left:
            return []
        self._armed = True
        return [SetTimer(GOSSIP_TIMER, now_ms + GOSSIP_INTERVAL_MS)]

    def tick(self, now_ms: int, partition_map: PartitionMap, peers: Collection[str]) -> list[Effect]:
        """The gossip timer fired: the map to the next peer in turn, and the next tick if the round goes on."""
        self._armed = False
        ordered = sorted(peers)
        if self._ticks_left <= 0 or not ordered:
            return []
        self._ticks_left -= 1
        peer = ordered[self._cursor % len(ordered)]
        self._cursor += 1
        effects: list[Effect] = [self._send(peer, MapUpdate.of(partition_map))]
        if self._ticks_left:
            self._armed = True
            effects.append(SetTimer(GOSSIP_TIMER, now_ms + GOSSIP_INTERVAL_MS))
        return effects

    def _send(self, peer: str, update: MapUpdate) -> Send:
        return Send(Message(self._node_id, peer, NODE_PARTITION, update), True)
