"""The change feed through real nodes (``ChangesOp``, ``Node._start_changes``): served from the local replica in
single, leader and leaderless mode (a follower serves it with the leader's positions; a leaderless replica names
itself as the source of its own positions), forwarded by a node that holds no replica, refused by a node a
forward reached with a stale map; and a Hypothesis state machine over a leader cluster with crashes and cuts,
where a reader that pages from any node delivers every acknowledged merge at least once, positions never going
back.

Harnesses: ``test_node_moves.Net`` (single mode), ``test_node_leader.Net`` (leader), ``LeaderlessNet``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from kvstore.changes import Cursor
from kvstore.config import StorageConfig, local_cluster
from kvstore.effects import Send
from kvstore.errors import ErrorCode
from kvstore.messages import (
    BatchPutOp,
    BatchResults,
    ChangeItem,
    ChangesOp,
    ChangesPage,
    DeleteOp,
    Failure,
    Forward,
    ForwardReply,
    FoundSiblings,
    GetOp,
    Message,
    PutOp,
    Result,
    Written,
)
from replication.event_time import Row, decode_row, encode_row, merge_rows
from tests.protocol.leaderless_node_net import LeaderlessNet, found, leaderless_config, stored
from tests.protocol.test_node_leader import NO_SPREAD, leader_config
from tests.protocol.test_node_leader import Net as LeaderNet
from tests.protocol.test_node_moves import Net as SingleNet
from tests.protocol.test_node_ranges import KEYS as RANGE_KEYS
from tests.protocol.test_node_ranges import advance, range_config
from tests.protocol.test_node_ranges import written as written_keys

ONLINE = "__fs/on/v/"


def row(ts: int, value: object, name: str = "f") -> bytes:
    return encode_row({name: (ts, value)})


def merge(key: str, ts: int, value: object, name: str = "f", **options: str) -> PutOp:
    return PutOp(key, row(ts, value, name), merge=True, **options)  # type: ignore[arg-type]


def page(result: Result) -> ChangesPage:
    assert isinstance(result, ChangesPage), result
    return result


def written(result: Result) -> Written:
    assert isinstance(result, Written), result
    return result


def failure(result: Result) -> Failure:
    assert isinstance(result, Failure), result
    return result


# ---------------------------------------------------------------- single mode


def single_net() -> SingleNet:
    return SingleNet(cfg=local_cluster(2, partitions=4, storage=StorageConfig(fsync="batch")))


def owned_keys(net: SingleNet, owner: str, count: int) -> tuple[int, list[str]]:
    """``count`` online-row keys in one partition ``owner`` holds."""
    pmap = net.nodes[owner].partition_map
    by_partition: dict[int, list[str]] = {}
    for i in range(2000):
        key = f"{ONLINE}{i}"
        p = pmap.partition_for_key(key)
        if pmap.owner(p) == owner:
            by_partition.setdefault(p, []).append(key)
            if len(by_partition[p]) == count:
                return p, by_partition[p]
    raise AssertionError("no such keys")


def test_single_mode_serves_merges_in_log_order_at_the_owner_and_through_a_forward() -> None:
    net = single_net()
    p, (a, b) = owned_keys(net, "n1", 2)
    va = written(net.request("n1", merge(a, 10, 1))).version
    vb = written(net.request("n2", merge(b, 10, 2))).version  # forwarded to the owner
    va2 = written(net.request("n1", merge(a, 20, 3))).version
    assert va < vb < va2
    at_owner = page(net.request("n1", ChangesOp(p, 0, 10)))
    assert at_owner == ChangesPage(p, (ChangeItem(b, row(10, 2), vb), ChangeItem(a, row(20, 3), va2)), va2, False, "")
    assert page(net.request("n2", ChangesOp(p, 0, 10))) == at_owner  # n2 holds no replica: forwarded
    assert page(net.request("n2", ChangesOp(p, vb, 10))).changes == (ChangeItem(a, row(20, 3), va2),)
    assert page(net.request("n1", ChangesOp(p, 0, 10, ONLINE + "nothing"))) == ChangesPage(p, (), va2, False, "")


def test_a_merge_that_changes_nothing_takes_no_position() -> None:
    net = single_net()
    p, (a,) = owned_keys(net, "n1", 1)
    version = written(net.request("n1", merge(a, 10, 1))).version
    assert written(net.request("n1", merge(a, 10, 1))).version == version  # a duplicate
    assert written(net.request("n1", merge(a, 5, 9))).version == version  # older than the cell held
    assert page(net.request("n1", ChangesOp(p, 0, 10))).position == version
    assert page(net.request("n1", ChangesOp(p, version, 10))) == ChangesPage(p, (), version, False, "")


def test_a_batch_of_merges_applies_each_in_order_and_the_feed_shows_the_join() -> None:
    net = single_net()
    p, (a, b) = owned_keys(net, "n1", 2)
    result = net.request("n2", BatchPutOp((merge(a, 1, 1), merge(a, 2, 2, name="g"), merge(b, 1, 1))))
    assert isinstance(result, BatchResults)
    versions = [written(r).version for r in result.results]
    assert versions == sorted(versions) and len(set(versions)) == 3
    got = page(net.request("n1", ChangesOp(p, 0, 10)))
    assert [(c.key, c.version) for c in got.changes] == [(a, versions[1]), (b, versions[2])]
    assert decode_row(got.changes[0].value or b"") == {"f": (1, 1), "g": (2, 2)}


def test_a_changes_op_for_a_partition_that_does_not_exist_or_out_of_bounds_is_refused() -> None:
    net = single_net()
    assert failure(net.request("n1", ChangesOp(4, 0, 10))).code == ErrorCode.BAD_REQUEST.value
    for op in [ChangesOp(-1, 0, 10), ChangesOp(0, -1, 10), ChangesOp(0, 0, 0), ChangesOp(0, 0, 10_001)]:
        assert failure(net.request("n1", op)).code == ErrorCode.BAD_REQUEST.value, op
    assert failure(net.request("n1", ChangesOp(0, 0, 10, "k" * 100_000))).code == ErrorCode.BAD_REQUEST.value


def test_plain_writes_under_the_event_time_prefixes_are_refused_by_the_node() -> None:
    net = single_net()
    _, (a,) = owned_keys(net, "n1", 1)
    assert failure(net.request("n1", PutOp(a, row(1, 1)))).code == ErrorCode.BAD_REQUEST.value
    assert failure(net.request("n1", PutOp(a, b"not a row", merge=True))).code == ErrorCode.BAD_REQUEST.value
    assert failure(net.request("n1", PutOp("user/1", row(1, 1), merge=True))).code == ErrorCode.BAD_REQUEST.value
    assert net.nodes["n1"].storage.key_count() == 0


def test_a_forwarded_changes_op_at_a_node_that_does_not_hold_the_partition_is_refused_not_passed_on() -> None:
    net = single_net()
    node = net.nodes["n1"]
    p, _ = owned_keys(net, "n2", 1)
    forward = Forward(77, 5, node.incarnation, ChangesOp(p, 0, 10))
    effects = node.step(net.now, Message("n2", "n1", p, forward))
    replies = [e.msg.body for e in effects if isinstance(e, Send) and isinstance(e.msg.body, ForwardReply)]
    assert len(replies) == 1
    refused = failure(replies[0].result)
    assert refused.code == ErrorCode.WRONG_EPOCH.value and "does not hold partition" in refused.message
    assert not any(isinstance(e, Send) and isinstance(e.msg.body, Forward) for e in effects)


def test_a_forwarded_changes_op_at_the_owner_is_answered_with_its_page() -> None:
    net = single_net()
    p, (a,) = owned_keys(net, "n1", 1)
    version = written(net.request("n1", merge(a, 1, 1))).version
    node = net.nodes["n1"]
    effects = node.step(net.now, Message("n2", "n1", p, Forward(77, 6, node.incarnation, ChangesOp(p, 0, 10))))
    replies = [e.msg.body for e in effects if isinstance(e, Send) and isinstance(e.msg.body, ForwardReply)]
    assert [r.result for r in replies] == [ChangesPage(p, (ChangeItem(a, row(1, 1), version),), version, False, "")]


# ---------------------------------------------------------------- leader mode


def leader_net() -> LeaderNet:
    net = LeaderNet(cfg=leader_config(timeouts=NO_SPREAD))
    net.run_for(3000)
    assert net.leader() is not None
    return net


def test_a_follower_serves_the_feed_with_the_leaders_positions() -> None:
    net = leader_net()
    leader = net.leader()
    assert leader is not None
    followers = [n for n in net.cfg.node_ids if n != leader]
    keys = [f"{ONLINE}{i}" for i in range(3)]
    versions = [written(net.call(followers[0], merge(k, 10, i))).version for i, k in enumerate(keys)]
    last = written(net.call(leader, merge(keys[0], 20, "newer"))).version
    net.run_for(500)  # followers apply the commit
    at_leader = page(net.call(leader, ChangesOp(0, 0, 10)))
    assert at_leader.source == ""
    assert [(c.key, c.version) for c in at_leader.changes] == [
        (keys[1], versions[1]),
        (keys[2], versions[2]),
        (keys[0], last),
    ]
    assert decode_row(at_leader.changes[-1].value or b"") == {"f": (20, "newer")}
    for follower in followers:
        assert page(net.call(follower, ChangesOp(0, 0, 10))) == at_leader
        # A reader may switch replicas at a position: the next page is the same everywhere.
        assert page(net.call(follower, ChangesOp(0, versions[1], 1))) == page(
            net.call(leader, ChangesOp(0, versions[1], 1))
        )


def test_a_follower_passes_a_feed_read_to_the_leader_so_caught_up_means_caught_up_with_the_leader() -> None:
    net = leader_net()
    leader = net.leader()
    assert leader is not None
    lagging = next(n for n in net.cfg.node_ids if n != leader)
    first = written(net.call(leader, merge(ONLINE + "a", 1, 1))).version
    net.run_for(500)
    net.partition(lagging)
    second = written(net.call(leader, merge(ONLINE + "b", 1, 1))).version
    # Cut off, the follower cannot reach the leader: no page (its own would say "caught up" without "b").
    cut_off = net.call(lagging, ChangesOp(0, 0, 10))
    assert isinstance(cut_off, Failure) and cut_off.code == "timeout"
    net.heal()
    net.run_for(2000)
    caught_up = page(net.call(lagging, ChangesOp(0, 0, 10)))
    assert [(c.key, c.version) for c in caught_up.changes] == [(ONLINE + "a", first), (ONLINE + "b", second)]
    assert page(net.call(lagging, ChangesOp(0, second, 10))) == ChangesPage(0, (), second, False, "")


# ---------------------------------------------------------------- leaderless mode


def keys_with(net: LeaderlessNet, accept: Callable[[int, tuple[str, ...]], bool], count: int = 1) -> list[str]:
    """``count`` online-row keys whose (partition, preference list) ``accept`` takes."""
    found = [k for k in (f"{ONLINE}{i}" for i in range(2000)) if accept(*net.placement(k))]
    assert len(found) >= count, "no such keys"
    return found[:count]


def test_leaderless_replicas_number_their_own_changes_and_name_themselves() -> None:
    net = LeaderlessNet(cfg=leaderless_config(anti_entropy_interval_ms=100_000))
    key = keys_with(net, lambda _p, pref: "n1" in pref)[0]
    p, pref = net.placement(key)
    other = keys_with(net, lambda q, _pref: q == p, 2)[1]
    assert stored(net.request(pref[0], merge(key, 10, 1, w="all"))).acks == 3
    assert stored(net.request(pref[0], merge(other, 10, 2, w="all"))).acks == 3
    assert stored(net.request(pref[0], merge(key, 20, 3, w="all"))).acks == 3
    net.run_for(100)
    for node in pref:
        got = page(net.request(node, ChangesOp(p, 0, 10)))
        assert got.source == node
        assert [c.key for c in got.changes] == [other, key]
        assert [c.version for c in got.changes] == sorted(c.version for c in got.changes)
        assert decode_row(got.changes[-1].value or b"") == {"f": (20, 3)}
        assert page(net.request(node, ChangesOp(p, got.position, 10))).changes == ()
    # The state a key holds reads as the row it is.
    assert found(net.request(pref[1], GetOp(key, r="all"))).values == (row(20, 3),)


def test_leaderless_a_node_without_a_replica_forwards_and_the_page_names_the_replica() -> None:
    net = LeaderlessNet(cfg=leaderless_config(anti_entropy_interval_ms=100_000))
    key = keys_with(net, lambda _p, pref: "n1" not in pref)[0]
    p, pref = net.placement(key)
    assert stored(net.request(pref[0], merge(key, 1, 1, w="all"))).acks == 3
    got = page(net.request("n1", ChangesOp(p, 0, 10)))
    assert got.source in pref and [c.key for c in got.changes] == [key]


def test_leaderless_refuses_a_delete_or_plain_write_of_an_event_time_key() -> None:
    net = LeaderlessNet(cfg=leaderless_config(anti_entropy_interval_ms=100_000))
    key = keys_with(net, lambda _p, pref: "n1" in pref)[0]
    assert failure(net.request("n1", DeleteOp(key))).code == ErrorCode.BAD_REQUEST.value
    assert failure(net.request("n1", PutOp(key, row(1, 1)))).code == ErrorCode.BAD_REQUEST.value
    assert failure(net.request("n1", merge(key, 1, 1, consistency="linearizable"))).code == ErrorCode.BAD_REQUEST.value


def test_leaderless_pages_show_values_as_a_read_does_crdts_rendered_tombstones_as_none() -> None:
    net = LeaderlessNet(cfg=leaderless_config(policies=(("c/", "counter"),), anti_entropy_interval_ms=100_000))
    counter, plain = "c/hits", "plain"
    assert stored(net.request("n1", PutOp(counter, b'{"increment": 2}', w="all"))).acks == 3
    assert stored(net.request("n1", PutOp(counter, b'{"increment": 3}', w="all"))).acks == 3
    p, pref = net.placement(counter)
    got = page(net.request(pref[0], ChangesOp(p, 0, 10)))
    assert [(c.key, c.value) for c in got.changes] == [(counter, b"5")]
    assert found(net.request(pref[0], GetOp(counter, r="all"))).values == (b"5",)
    q, owners = net.placement(plain)
    assert stored(net.request(owners[0], PutOp(plain, b"v", w="all"))).acks == 3
    stored(net.request(owners[0], DeleteOp(plain, w="all")))
    shown = page(net.request(owners[0], ChangesOp(q, 0, 10, plain)))
    assert [(c.key, c.value) for c in shown.changes] == [(plain, None)]


def test_leaderless_a_position_a_reader_was_shown_is_never_given_to_another_change() -> None:
    """Anti-entropy syncs nothing: a page showing what it stored must wait for the sync, or a power loss takes
    the replica's counter back and hands a position the reader passed to a new acknowledged write."""
    net = LeaderlessNet(cfg=leaderless_config(anti_entropy_interval_ms=1000, handoff_interval_ms=100_000))
    key = keys_with(net, lambda _p, pref: True)[0]
    p, pref = net.placement(key)
    later = next(k for k in keys_with(net, lambda q, _pref: q == p, 10) if k != key)
    victim = pref[1]
    # Only the coordinator takes the write (its copies are lost in flight) ...
    assert stored(net.request(pref[0], merge(key, 1, "first", w="1"))).acks == 1
    net.queue.clear()
    # ... and anti-entropy brings it to the victim, which does not sync it.
    for _ in range(20):
        net.run_for(500)
        if net.state(victim, key) is not None:
            break
    assert net.state(victim, key) is not None and net.durable_state(victim, key) is None
    shown = page(net.request(victim, ChangesOp(p, 0, 10)))
    assert [c.key for c in shown.changes] == [key] and shown.source == victim
    net.queue.clear()
    net.power_loss(victim)
    assert stored(net.request(victim, merge(later, 1, "acknowledged", w="all"))).acks == 3
    after = page(net.request(victim, ChangesOp(p, shown.position, 10)))
    assert later in [c.key for c in after.changes]


# ---------------------------------------------------------------- a state machine over a leader cluster

FEATURES = ("x", "y")
KEYS = tuple(f"{ONLINE}{i}" for i in range(4))


class LeaderFeedMachine(RuleBasedStateMachine):
    """Merges through any node of a 3-node leader cluster, with crashes (process or power) and isolated nodes; a reader
    pages the feed from whichever node it likes. At the end (healed, everyone up) the reader pages to the end:
    for every key, the newest row it was shown holds every acknowledged merge."""

    @initialize(seed=st.integers(0, 2**16))
    def start(self, seed: int) -> None:
        self.net = LeaderNet(cfg=leader_config(timeouts=NO_SPREAD), rng=random.Random(seed))
        self.net.run_for(3000)
        self.acked: dict[str, Row] = {}
        self.seen: dict[str, Row] = {}
        self.position = 0
        self.ts = 0

    def up(self) -> list[str]:
        return [n for n in self.net.cfg.node_ids if n not in self.net.down]

    @rule(
        node=st.sampled_from(["n1", "n2", "n3"]),
        key=st.sampled_from(KEYS),
        feature=st.sampled_from(FEATURES),
        value=st.integers(0, 3),
        back=st.integers(0, 3),
    )
    def merge(self, node: str, key: str, feature: str, value: int, back: int) -> None:
        if node in self.net.down:
            return
        self.ts += 1
        cells: Row = {feature: (max(0, self.ts - back), value)}  # late events arrive too
        rid = self.net.submit(node, PutOp(key, encode_row(cells), merge=True))
        waited = 0
        while rid not in self.net.replies and waited < 2000:
            self.net.run_for(20)
            waited += 20
        result = self.net.replies.pop(rid, None)
        if isinstance(result, Written):
            self.acked[key] = merge_rows(self.acked.get(key, {}), cells)

    @rule(node=st.sampled_from(["n1", "n2", "n3"]), limit=st.integers(1, 3))
    def read(self, node: str, limit: int) -> None:
        if node in self.net.down:
            return
        rid = self.net.submit(node, ChangesOp(0, self.position, limit))
        waited = 0
        while rid not in self.net.replies and waited < 2000:
            self.net.run_for(20)
            waited += 20
        result = self.net.replies.pop(rid, None)
        if isinstance(result, ChangesPage):
            self.take(result)

    def take(self, got: ChangesPage) -> None:
        assert got.source == "" and got.partition == 0
        assert got.position >= self.position, "a page went back"
        for change in got.changes:
            assert change.version > self.position and change.version <= got.position
            assert change.value is not None
            self.seen[change.key] = merge_rows(self.seen.get(change.key, {}), decode_row(change.value))
        self.position = got.position

    @precondition(lambda self: len(self.net.down) == 0)
    @rule(node=st.sampled_from(["n1", "n2", "n3"]), power=st.booleans())
    def crash(self, node: str, power: bool) -> None:
        if power:  # only what was synced survives (fsync = "always": everything acknowledged)
            self.net.disks[node].crash("power")
            self.net.down.add(node)
            self.net.timers[node] = {}
        else:
            self.net.crash(node)
        self.net.run_for(300)

    @rule()
    def restart(self) -> None:
        for node in list(self.net.down):
            self.net.boot(node)
        self.net.run_for(500)

    @rule(node=st.sampled_from(["n1", "n2", "n3"]))
    def isolate(self, node: str) -> None:
        self.net.partition(node)
        self.net.run_for(300)

    @rule()
    def heal(self) -> None:
        self.net.heal()
        self.net.run_for(500)

    @invariant()
    def seen_rows_were_written(self) -> None:
        for key, cells in self.seen.items():
            for name, cell in cells.items():
                assert name in FEATURES and cell[1] in range(4), (key, cell)

    def teardown(self) -> None:
        if not hasattr(self, "net"):
            return
        self.net.heal()
        self.restart()
        self.net.run_for(5000)
        leader = self.net.leader()
        assert leader is not None
        for _ in range(100):
            got = page(self.net.call(leader, ChangesOp(0, self.position, 2)))
            self.take(got)
            if not got.more:
                break
        for key, cells in self.acked.items():
            assert merge_rows(self.seen.get(key, {}), cells) == self.seen.get(key, {}), key


TestLeaderFeedMachine = LeaderFeedMachine.TestCase
TestLeaderFeedMachine.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck)
)


def test_single_mode_a_position_a_reader_was_shown_is_never_given_to_another_change() -> None:
    """Under fsync = "batch" a write is answered before it is synced: a page showing it must wait for the sync,
    or a power loss takes the applied index back and the next write takes a position the reader passed."""
    net = single_net()
    p, (a, b) = owned_keys(net, "n1", 2)
    first = written(net.request("n1", merge(a, 1, "lost"))).version
    shown = page(net.request("n1", ChangesOp(p, 0, 10)))
    assert shown.position == first
    net.crash("n1")  # power loss: what was not synced is gone
    written(net.request("n1", merge(b, 1, "kept")))
    net.nodes["n1"].storage.sync()
    after = page(net.request("n1", ChangesOp(p, shown.position, 10)))
    assert b in [c.key for c in after.changes]


def test_leaderless_a_read_of_rows_whose_join_is_too_large_is_answered_not_raised() -> None:
    net = LeaderlessNet(cfg=leaderless_config(anti_entropy_interval_ms=100_000, handoff_interval_ms=100_000))
    key = keys_with(net, lambda _p, pref: True)[0]
    _, pref = net.placement(key)
    big = b"x" * 600_000
    for node, name in [(pref[0], "a"), (pref[1], "b")]:
        # Each taken by one replica only (its copies lost): both merges are valid and acknowledged.
        assert stored(net.request(node, PutOp(key, encode_row({name: (1, big)}), merge=True, w="1"))).acks == 1
        net.queue.clear()
    result = net.request(pref[2], GetOp(key, r="all"))
    assert isinstance(result, Failure | FoundSiblings)


# ---------------------------------------------------------------- range mode


def read_every_range(net: SingleNet, cursor: Cursor, seen: dict[str, int]) -> Cursor:
    """Page every live range through n1 until caught up, as GET /changes does: a page from another source than
    the cursor's position names is read again from 0."""
    for _ in range(100):
        more = False
        pmap = net.nodes["n1"].partition_map
        for p in range(pmap.partition_count):
            if not pmap.live(p):
                continue
            held = cursor.positions.get(p)
            got = page(net.request("n1", ChangesOp(p, 0 if held is None else held[0], 5)))
            if held is not None and held[1] != got.source:
                got = page(net.request("n1", ChangesOp(p, 0, 5)))
            for change in got.changes:
                seen[change.key] = max(seen.get(change.key, 0), change.version)
            cursor = cursor.after_page(got)
            more = more or got.more
        if not more:
            return cursor
    raise AssertionError("the feed never caught up")


def test_range_mode_a_reader_misses_nothing_a_range_merge_brings_in_at_old_versions() -> None:
    net = SingleNet(cfg=range_config())
    written_keys(net)
    advance(net, 5000)  # the ranges split and spread
    for i in range(200):  # the first range's positions run far ahead of its neighbour's
        written(net.request("n2", PutOp(RANGE_KEYS[0], b"%d" % i)))
    seen: dict[str, int] = {}
    cursor = read_every_range(net, Cursor(), seen)
    written(net.request("n2", PutOp("k008x", b"new")))  # in the neighbour, below the first range's position
    for key in RANGE_KEYS[:-3]:
        net.request("n1", DeleteOp(key))
    advance(net, 20_000)  # the ranges merge as keys go
    ranges = net.nodes["n1"].partition_map.ranges
    assert ranges is not None and ranges.range_count < 8
    read_every_range(net, cursor, seen)
    live = {
        k: r.version
        for node in net.nodes.values()
        for p in node.storage.partitions()
        for k, r in node.storage.copy_of(p)
    }
    assert "k008x" in live
    assert {k: v for k, v in live.items() if seen.get(k, 0) < v} == {}
