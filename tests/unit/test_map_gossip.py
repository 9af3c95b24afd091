"""MapGossip: how a node's map leaves it: announcements, answers to stale peers and maps, anti-entropy rounds."""

from __future__ import annotations

from kvstore.effects import Effect, Send, SetTimer
from kvstore.map_gossip import GOSSIP_INTERVAL_MS, GOSSIP_TIMER, MAP_RESEND_MS, MapGossip
from kvstore.messages import NODE_PARTITION, MapUpdate, Message
from partitioning.partition_map import ACTIVE, LEAVING, PartitionMap

BASE = PartitionMap.round_robin(("n1", "n2", "n3"), 6)


def sends(effects: list[Effect]) -> list[tuple[str, PartitionMap, bool]]:
    out = []
    for e in effects:
        assert isinstance(e, Send) and isinstance(e.msg.body, MapUpdate) and e.msg.partition == NODE_PARTITION
        out.append((e.msg.dst, e.msg.body.to_map(), e.durable))
    return out


def test_an_announcement_goes_durably_to_every_member_and_every_holder_but_this_node() -> None:
    leaving = BASE.with_member("n2", LEAVING).with_member("n4", ACTIVE, "127.0.0.1:7004")
    assert sends(MapGossip("n1").announce(leaving)) == [(n, leaving, True) for n in ("n2", "n3", "n4")]


def test_a_stale_peer_is_answered_once_per_epoch_and_again_after_the_resend_time() -> None:
    gossip, newer = MapGossip("n1"), BASE.with_replicas(0, ("n2",))
    assert gossip.heard_epoch(0, newer, "n2", newer.epoch) == []  # not behind
    assert sends(gossip.heard_epoch(0, newer, "n2", 1)) == [("n2", newer, True)]
    assert gossip.heard_epoch(MAP_RESEND_MS - 1, newer, "n2", 1) == []
    assert sends(gossip.heard_epoch(MAP_RESEND_MS, newer, "n2", 1)) == [("n2", newer, True)]
    assert sends(gossip.heard_epoch(MAP_RESEND_MS, newer, "n3", 1)) == [("n3", newer, True)], "per peer"
    newest = newer.with_replicas(1, ("n3",))
    assert sends(gossip.answer(MAP_RESEND_MS + 1, newest, "n2")) == [("n2", newest, True)], "a new epoch at once"


def test_a_map_is_answered_only_when_it_lacks_something_and_could_be_merged() -> None:
    gossip, mine = MapGossip("n1"), BASE.with_replicas(0, ("n2",))
    assert gossip.received(0, mine, mine, "n2") == []
    # Same epoch, different content: the sender lacks partition 0's change.
    theirs = BASE.with_replicas(1, ("n3",))
    merged = mine.merge(theirs)
    assert sends(gossip.received(0, merged, theirs, "n2")) == [("n2", merged, True)]
    assert gossip.received(0, merged, PartitionMap.round_robin(("n1", "n2"), 8), "n3") == [], "another shape"


def test_an_anti_entropy_round_sends_to_each_peer_in_turn_then_stops() -> None:
    gossip, peers = MapGossip("n1"), {"n3", "n2", "n5"}
    assert gossip.start_round(0, peers) == [SetTimer(GOSSIP_TIMER, GOSSIP_INTERVAL_MS)]
    assert gossip.start_round(5, peers) == [], "one tick timer at a time"
    got = []
    now = 0
    for _ in range(3):
        now += GOSSIP_INTERVAL_MS
        effects = gossip.tick(now, BASE, peers)
        got += sends([e for e in effects if isinstance(e, Send)])
        timers = [e for e in effects if isinstance(e, SetTimer)]
        assert timers == ([SetTimer(GOSSIP_TIMER, now + GOSSIP_INTERVAL_MS)] if len(got) < 3 else [])
    assert got == [(n, BASE, True) for n in ("n2", "n3", "n5")]
    assert gossip.tick(now + GOSSIP_INTERVAL_MS, BASE, peers) == [], "a quiet node sends nothing"
    # A new round goes on with the rotation where it stood.
    gossip.start_round(now, peers)
    assert sends([e for e in gossip.tick(now + GOSSIP_INTERVAL_MS, BASE, peers) if isinstance(e, Send)]) == [
        ("n2", BASE, True)
    ]


def test_messages_are_from_this_node() -> None:
    [effect] = MapGossip("n7").answer(0, BASE, "n1")
    assert isinstance(effect, Send) and effect.msg == Message("n7", "n1", NODE_PARTITION, MapUpdate.of(BASE))
