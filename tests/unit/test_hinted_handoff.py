"""Hinted handoff (replication/hinted_handoff.py): storing, merging, bounding and delivering a fallback's hints."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from replication import dvv
from replication.conflict import Siblings
from replication.hinted_handoff import HandoffSend, Hint, HintedHandoff
from replication.leaderless_messages import HandoffAck, HandoffRequest, KeyWriteAck, KeyWriteRequest
from replication.vclock import VectorClock

POLICY = Siblings(max_siblings=64)


class MemoryHintStore:
    def __init__(self) -> None:
        self.hints: dict[int, Hint] = {}

    def put(self, hint: Hint) -> None:
        self.hints[hint.hint_id] = hint

    def remove(self, hint_id: int) -> None:
        self.hints.pop(hint_id, None)

    def load(self) -> list[Hint]:
        return list(self.hints.values())


def merge_states(partition: int, key: str, old: bytes, new: bytes) -> bytes:
    return dvv.encode(POLICY.merge(dvv.decode(old), dvv.decode(new)))


def state(node: str, counter: int, value: bytes) -> bytes:
    """A one-sibling state written blind by ``node``."""
    return dvv.encode(dvv.update(None, VectorClock(), (node, counter), value, 1000, max_siblings=64))


def handoff(store: MemoryHintStore | None = None, incarnation: int = 1000, **kwargs: int) -> HintedHandoff:
    return HintedHandoff(store or MemoryHintStore(), merge_states, incarnation=incarnation, **kwargs)


def hinted(req: int, key: str, body: bytes, target: str = "t") -> KeyWriteRequest:
    return KeyWriteRequest(req, key, body, hint_for=target)


def requests(sends: list[HandoffSend]) -> list[tuple[str, int, str, int]]:
    """(dst, partition, key, hint id) of each handoff sent."""
    out = []
    for send in sends:
        assert isinstance(send.body, HandoffRequest)
        assert not send.durable
        out.append((send.dst, send.partition, send.body.key, send.body.hint))
    return out


def test_a_hinted_write_is_stored_acked_durably_handed_off_and_dropped_on_ack() -> None:
    store = MemoryHintStore()
    hh = handoff(store)
    body = state("c", 1, b"v")
    assert hh.start(0) == []
    assert hh.next_tick_ms(0) is None
    assert hh.on_hinted_write(5, "c", 7, hinted(41, "k", body)) == [
        HandoffSend("c", 7, KeyWriteAck(41, "k"), durable=True)
    ]
    assert list(store.hints.values()) == [Hint(1000, "t", 7, "k", body, 5)]
    assert hh.stats.held == 1
    assert hh.stats.held_bytes == 1 + len(body)
    assert hh.next_tick_ms(10) == 1010
    assert hh.tick(10) == [HandoffSend("t", 7, HandoffRequest(1000, "k", body), durable=False)]
    hh.on_ack(20, "t", 7, HandoffAck(1000))
    assert store.hints == {}
    assert hh.stats.held == 0
    assert hh.stats.held_bytes == 0
    assert hh.stats.delivered == 1
    assert hh.tick(30) == []
    assert hh.next_tick_ms(30) is None


def test_an_ack_from_another_node_or_partition_or_for_an_unknown_hint_is_ignored() -> None:
    hh = handoff()
    hh.on_hinted_write(0, "c", 7, hinted(1, "k", state("c", 1, b"v")))
    hh.tick(0)
    hh.on_ack(1, "x", 7, HandoffAck(1000))
    hh.on_ack(1, "t", 8, HandoffAck(1000))
    hh.on_ack(1, "t", 7, HandoffAck(999))
    assert [h.hint_id for h in hh.hints()] == [1000]
    assert hh.stats.stale_acks == 3
    assert hh.stats.delivered == 0


def test_a_second_write_of_the_key_merges_under_a_new_id_and_the_old_ack_does_not_drop_it() -> None:
    store = MemoryHintStore()
    hh = handoff(store)
    first, second = state("c", 1, b"one"), state("d", 1, b"two")
    hh.on_hinted_write(0, "c", 7, hinted(1, "k", first))
    assert requests(hh.tick(0)) == [("t", 7, "k", 1000)]
    acks = hh.on_hinted_write(5, "d", 7, hinted(2, "k", second))
    assert acks == [HandoffSend("d", 7, KeyWriteAck(2, "k"), durable=True)]
    merged = merge_states(7, "k", first, second)
    assert list(store.hints.values()) == [Hint(1001, "t", 7, "k", merged, 0)]
    assert dvv.decode(merged).values == (b"one", b"two")
    assert hh.stats.merged == 1
    hh.on_ack(6, "t", 7, HandoffAck(1000))
    assert hh.hints() == [Hint(1001, "t", 7, "k", merged, 0)]
    assert hh.stats.stale_acks == 1
    # The merged hint is not in flight: it goes at the next tick.
    assert requests(hh.tick(7)) == [("t", 7, "k", 1001)]


def test_the_same_key_for_another_target_or_partition_is_another_hint() -> None:
    hh = handoff()
    body = state("c", 1, b"v")
    hh.on_hinted_write(0, "c", 7, hinted(1, "k", body, target="t"))
    hh.on_hinted_write(0, "c", 7, hinted(2, "k", body, target="u"))
    hh.on_hinted_write(0, "c", 8, hinted(3, "k", body, target="t"))
    assert [(h.hint_id, h.target, h.partition) for h in hh.hints()] == [(1000, "t", 7), (1001, "u", 7), (1002, "t", 8)]
    assert requests(hh.tick(0)) == [("t", 7, "k", 1000), ("t", 8, "k", 1002), ("u", 7, "k", 1001)]


def test_past_max_hints_a_new_key_is_refused_but_a_held_key_still_merges() -> None:
    store = MemoryHintStore()
    hh = handoff(store, max_hints=2)
    hh.on_hinted_write(0, "c", 7, hinted(1, "a", state("c", 1, b"v")))
    hh.on_hinted_write(0, "c", 7, hinted(2, "b", state("c", 2, b"v")))
    [refusal] = hh.on_hinted_write(0, "c", 7, hinted(3, "z", state("c", 3, b"v")))
    assert refusal.dst == "c"
    assert not refusal.durable
    assert isinstance(refusal.body, KeyWriteAck)
    assert (refusal.body.req, refusal.body.key, refusal.body.ok) == (3, "z", False)
    assert refusal.body.reason.startswith("hint store full")
    assert sorted(h.key for h in store.hints.values()) == ["a", "b"]
    assert hh.stats.refused_full == 1
    [ack] = hh.on_hinted_write(0, "d", 7, hinted(4, "a", state("d", 1, b"w")))
    assert ack.body == KeyWriteAck(4, "a") and ack.durable


def test_past_max_hint_bytes_a_write_or_a_growing_merge_is_refused() -> None:
    small, other = state("c", 1, b"x"), state("d", 1, b"y" * 50)
    hh = handoff(max_hint_bytes=1 + len(small) + 1 + len(small))
    assert hh.on_hinted_write(0, "c", 7, hinted(1, "a", small))[0].durable
    assert hh.on_hinted_write(0, "c", 7, hinted(2, "b", small))[0].durable
    for req, key in ((3, "c"), (4, "a")):
        [refusal] = hh.on_hinted_write(0, "d", 7, hinted(req, key, other))
        assert isinstance(refusal.body, KeyWriteAck) and not refusal.body.ok
        assert refusal.body.reason.startswith("hint store full")
    assert [dvv.decode(h.state).values for h in hh.hints()] == [(b"x",), (b"x",)]
    assert hh.stats.refused_full == 2


def test_a_state_that_does_not_decode_or_a_write_without_a_target_is_refused() -> None:
    store = MemoryHintStore()
    hh = handoff(store)
    [refusal] = hh.on_hinted_write(0, "c", 7, hinted(1, "k", b"\xc1garbage"))
    assert isinstance(refusal.body, KeyWriteAck)
    assert (refusal.body.ok, refusal.durable) == (False, False)
    assert refusal.body.reason.startswith("not an encoded key state")
    [refusal] = hh.on_hinted_write(0, "c", 7, KeyWriteRequest(2, "k", state("c", 1, b"v")))
    assert isinstance(refusal.body, KeyWriteAck) and not refusal.body.ok
    assert store.hints == {}
    assert hh.stats.refused_invalid == 2


def test_a_merge_the_policy_refuses_is_refused() -> None:
    def refusing(partition: int, key: str, old: bytes, new: bytes) -> bytes:
        raise ValueError("too many siblings")

    hh = HintedHandoff(MemoryHintStore(), refusing, incarnation=1)
    hh.on_hinted_write(0, "c", 7, hinted(1, "k", state("c", 1, b"v")))
    [refusal] = hh.on_hinted_write(0, "c", 7, hinted(2, "k", state("c", 2, b"v")))
    assert isinstance(refusal.body, KeyWriteAck) and not refusal.body.ok
    assert "too many siblings" in refusal.body.reason
    assert [h.hint_id for h in hh.hints()] == [1]


def test_at_most_max_in_flight_per_target_in_id_order_and_the_rest_after_acks() -> None:
    hh = handoff(max_in_flight_per_target=2, resend_after_ms=100)
    for i in range(4):
        hh.on_hinted_write(0, "c", 7, hinted(i, f"k{i}", state("c", i + 1, b"v")))
    hh.on_hinted_write(0, "c", 7, hinted(9, "u0", state("c", 9, b"v"), target="u"))
    assert requests(hh.tick(0)) == [("t", 7, "k0", 1000), ("t", 7, "k1", 1001), ("u", 7, "u0", 1004)]
    assert hh.tick(50) == []
    hh.on_ack(60, "t", 7, HandoffAck(1001))
    assert requests(hh.tick(70)) == [("t", 7, "k2", 1002)]
    # k0 was sent at 0 and never acked: sent again once resend_after_ms passed, with u0.
    assert requests(hh.tick(100)) == [("t", 7, "k0", 1000), ("u", 7, "u0", 1004)]
    assert hh.stats.resent == 2


def test_an_unreachable_target_backs_off_exponentially_up_to_the_max_and_reachable_resets_it() -> None:
    hh = handoff(handoff_interval_ms=100, backoff_max_ms=350, max_in_flight_per_target=4)
    hh.on_hinted_write(0, "c", 7, hinted(1, "a", state("c", 1, b"v")))
    hh.on_hinted_write(0, "c", 7, hinted(2, "b", state("c", 2, b"v")))
    now = 0
    for expected_backoff in (100, 200, 350, 350):
        sends = hh.tick(now)
        assert requests(sends) == [("t", 7, "a", 1000), ("t", 7, "b", 1001)]
        for send in sends:  # both fail: one back-off, not two
            assert isinstance(send.body, HandoffRequest)
            hh.on_unreachable(now, send.dst, send.partition, send.body)
        assert hh.tick(now + expected_backoff - 1) == []
        now += expected_backoff
    assert hh.stats.backoffs == 4
    sends = hh.tick(now)
    for send in sends:
        assert isinstance(send.body, HandoffRequest)
        hh.on_unreachable(now, send.dst, send.partition, send.body)
    assert hh.tick(now + 1) == []
    hh.reachable("t")
    assert requests(hh.tick(now + 1)) == [("t", 7, "a", 1000), ("t", 7, "b", 1001)]


def test_a_merge_keeps_the_targets_back_off() -> None:
    hh = handoff(handoff_interval_ms=100)
    hh.on_hinted_write(0, "c", 7, hinted(1, "a", state("c", 1, b"v")))
    [send] = hh.tick(0)
    assert isinstance(send.body, HandoffRequest)
    hh.on_unreachable(0, "t", 7, send.body)
    hh.on_hinted_write(10, "d", 7, hinted(2, "a", state("d", 1, b"w")))
    assert hh.tick(50) == []
    assert requests(hh.tick(100)) == [("t", 7, "a", 1001)]


def test_hints_survive_a_restart_and_new_ids_do_not_collide() -> None:
    store = MemoryHintStore()
    before = handoff(store, incarnation=5)
    before.on_hinted_write(0, "c", 7, hinted(1, "a", state("c", 1, b"v")))
    before.on_hinted_write(0, "c", 7, hinted(2, "b", state("c", 2, b"v")))
    # The next boot's incarnation happens to fall on a held id: that id is skipped.
    after = handoff(store, incarnation=6)
    assert requests(after.start(100)) == [("t", 7, "a", 5), ("t", 7, "b", 6)]
    assert after.stats.held == 2
    after.on_hinted_write(100, "c", 7, hinted(3, "z", state("c", 3, b"v")))
    assert sorted(store.hints) == [5, 6, 7]
    after.on_ack(110, "t", 7, HandoffAck(5))
    assert sorted(store.hints) == [6, 7]


def test_start_joins_two_hints_of_one_key_left_by_a_crash_mid_merge() -> None:
    store = MemoryHintStore()
    one, two = state("c", 1, b"one"), state("d", 1, b"two")
    store.put(Hint(40, "t", 7, "k", one, 3))
    store.put(Hint(90, "t", 7, "k", two, 4))
    hh = handoff(store, incarnation=500)
    assert requests(hh.start(10)) == [("t", 7, "k", 500)]
    [hint] = store.hints.values()
    assert (hint.hint_id, hint.created_ms) == (500, 3)
    assert dvv.decode(hint.state).values == (b"one", b"two")
    assert hh.stats.held == 1
    assert hh.stats.held_bytes == 1 + len(hint.state)


def test_a_hint_expires_max_hint_age_ms_after_its_first_write_even_when_merged_since() -> None:
    store = MemoryHintStore()
    hh = handoff(store, max_hint_age_ms=1000)
    hh.on_hinted_write(100, "c", 7, hinted(1, "k", state("c", 1, b"a")))
    hh.on_hinted_write(900, "c", 7, hinted(2, "k", state("c", 2, b"b")))  # merged: the first write's time stays
    hh.on_hinted_write(900, "c", 7, hinted(3, "j", state("c", 3, b"c")))
    assert requests(hh.tick(1099)) == [("t", 7, "k", 1001), ("t", 7, "j", 1002)]
    assert hh.tick(1100) == []  # k expired undelivered (its in-flight handoff goes with it); j is in flight
    assert [(h.key, h.created_ms) for h in store.hints.values()] == [("j", 900)]
    assert (hh.stats.expired, hh.stats.held) == (1, 1)
    hh.on_ack(1200, "t", 7, HandoffAck(1001))  # the expired hint's handoff, acked late: nothing to drop
    assert hh.stats.held == 1


def test_hint_ids_wrap_within_signed_64_bits() -> None:
    hh = handoff(incarnation=(1 << 63) - 1)
    hh.on_hinted_write(0, "c", 7, hinted(1, "a", state("c", 1, b"v")))
    hh.on_hinted_write(0, "c", 7, hinted(2, "b", state("c", 2, b"v")))
    assert [h.hint_id for h in hh.hints()] == [1, (1 << 63) - 1]


# ------------------------------------------------------------ a model of fallback, coordinator and target

TARGETS = ("t", "u")
KEYS = ("a", "b")
PARTITION = 3


class HandoffMachine(RuleBasedStateMachine):
    """A fallback takes hinted writes and hands them to targets over a lossy network, and restarts. Whatever
    happens, nothing acknowledged is lost: each acknowledged state is in the join of what its target merged and
    the hint still held; the store holds exactly what the fallback holds; the bounds hold."""

    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryHintStore()
        self.incarnation = 1
        self.hh = self._boot()
        self.now_ms = 0
        self.counter = 0
        self.req = 0
        self.acked: dict[tuple[str, str], list[dvv.Versions]] = {}
        self.at_target: dict[tuple[str, str], dvv.Versions] = {}
        self.network: list[HandoffSend] = []

    def _boot(self) -> HintedHandoff:
        return HintedHandoff(
            self.store, merge_states, max_hints=3, max_in_flight_per_target=2, resend_after_ms=50,
            handoff_interval_ms=10, backoff_max_ms=40, incarnation=self.incarnation,
        )  # fmt: skip

    @rule(node=st.sampled_from(TARGETS), key=st.sampled_from(KEYS), value=st.binary(max_size=4))
    def hinted_write(self, node: str, key: str, value: bytes) -> None:
        self.counter += 1
        self.req += 1
        # Each write from its own coordinator: none of their contexts covers another's dot.
        versions = dvv.update(None, VectorClock(), (f"c{self.counter}", 1), value, self.now_ms, max_siblings=64)
        [answer] = self.hh.on_hinted_write(
            self.now_ms, "c", PARTITION, hinted(self.req, key, dvv.encode(versions), node)
        )
        assert isinstance(answer.body, KeyWriteAck)
        assert answer.durable == answer.body.ok
        if answer.body.ok:
            self.acked.setdefault((node, key), []).append(versions)
        else:
            assert answer.body.reason.startswith("hint store full")

    @rule(elapsed_ms=st.integers(0, 60))
    def tick(self, elapsed_ms: int) -> None:
        self.now_ms += elapsed_ms
        sends = self.hh.tick(self.now_ms)
        ids = [s.body.hint for s in sends if isinstance(s.body, HandoffRequest)]
        assert len(ids) == len(sends) == len(set(ids))
        assert all(sum(s.dst == node for s in sends) <= 2 for node in TARGETS)
        self.network.extend(sends)

    @precondition(lambda self: self.network)
    @rule(data=st.data(), outcome=st.sampled_from(["deliver", "lose", "unreachable", "deliver_ack_lost"]))
    def network_event(self, data: st.DataObject, outcome: str) -> None:
        send = self.network.pop(data.draw(st.integers(0, len(self.network) - 1)))
        assert isinstance(send.body, HandoffRequest)
        if outcome == "unreachable":
            self.hh.on_unreachable(self.now_ms, send.dst, send.partition, send.body)
            return
        if outcome == "lose":
            return
        slot = (send.dst, send.body.key)
        self.at_target[slot] = dvv.merge(self.at_target.get(slot, dvv.EMPTY), dvv.decode(send.body.state))
        if outcome == "deliver":
            self.hh.reachable(send.dst)
            self.hh.on_ack(self.now_ms, send.dst, send.partition, HandoffAck(send.body.hint))

    @rule(node=st.sampled_from(TARGETS))
    def reachable(self, node: str) -> None:
        self.hh.reachable(node)

    @rule()
    def restart(self) -> None:
        self.incarnation += 1000
        self.hh = self._boot()
        self.network.extend(self.hh.start(self.now_ms))

    @invariant()
    def nothing_acknowledged_is_lost(self) -> None:
        held = {(h.target, h.key): dvv.decode(h.state) for h in self.hh.hints()}
        for slot, written in self.acked.items():
            known = dvv.merge(self.at_target.get(slot, dvv.EMPTY), held.get(slot, dvv.EMPTY))
            for versions in written:
                assert dvv.merge(known, versions) == known

    @invariant()
    def the_store_holds_what_the_fallback_holds_within_bounds(self) -> None:
        hints = self.hh.hints()
        assert sorted(self.store.hints.values(), key=lambda h: h.hint_id) == hints
        assert len({(h.target, h.partition, h.key) for h in hints}) == len(hints) <= 3
        assert self.hh.stats.held == len(hints)
        assert self.hh.stats.held_bytes == sum(len(h.key) + len(h.state) for h in hints)


HandoffMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestHandoffMachine = HandoffMachine.TestCase
