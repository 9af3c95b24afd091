"""Quorum reads and writes of ``LeaderlessReplica``: siblings, contexts, deletes, failures, sloppy quorums."""

from __future__ import annotations

from leaderless_env import Cluster

from replication import dvv
from replication.conflict import LastWriterWins
from replication.dvv import Versions
from replication.leaderless import (
    KeyRead,
    KeyStored,
    KeyValues,
    KeyWrite,
    LeaderlessSettings,
    QuorumFailed,
)
from replication.leaderless_messages import KeyReadRequest, KeyWriteAck, KeyWriteRequest
from replication.replica import Answer, ClientCall, PeerMessage, PeerUnreachable, Redirect
from replication.vclock import VectorClock

NODES = ("n1", "n2", "n3", "n4", "n5")


def cluster(**settings: object) -> Cluster:
    return Cluster(NODES, LeaderlessSettings(replicas=3, **settings))  # type: ignore[arg-type]


def stored(c: Cluster, node: str, token: int) -> KeyStored:
    result = c.result(node, token)
    assert isinstance(result, KeyStored), result
    return result


def values(c: Cluster, node: str, token: int) -> KeyValues:
    result = c.result(node, token)
    assert isinstance(result, KeyValues), result
    return result


def test_quorum_write_then_read_at_each_replica() -> None:
    c = cluster()
    token = c.write("n1", "k", b"v1", w=2)
    assert c.result("n1", token) is None  # one ack of two: waits for a peer
    c.drop(1)  # n3 never gets it: any two replicas still meet n1 or n2
    c.deliver_all()
    result = stored(c, "n1", token)
    assert result.acks == 2  # answered at w
    assert result.state.values == (b"v1",)
    assert ("n1", token) in c.durable_answers
    assert result.state.siblings[0].dot == ("n1", 1)
    for node in c.preference:
        read = c.read(node, "k", r=2)
        c.deliver_all()
        answer = values(c, node, read)
        assert answer.state is not None and answer.state.values == (b"v1",)
        assert answer.replies == 2
    assert all("k" not in c.stores[n].states for n in ("n4", "n5"))


def test_w1_answers_at_once_with_the_coordinators_copy() -> None:
    c = cluster()
    token = c.write("n2", "k", b"v", w=1)
    assert stored(c, "n2", token).acks == 1
    assert len(c.messages(KeyWriteRequest)) == 2


def test_two_blind_writes_through_two_coordinators_are_siblings() -> None:
    c = cluster()
    first = c.write("n1", "k", b"a", w=1)
    second = c.write("n2", "k", b"b", w=1)
    c.deliver_all()
    assert stored(c, "n1", first).acks == 1 and stored(c, "n2", second).acks == 1
    read = c.read("n3", "k", r=3)
    c.deliver_all()
    state = values(c, "n3", read).state
    assert state is not None
    assert state.values == (b"a", b"b")
    assert [s.dot for s in state.siblings] == [("n1", 1), ("n2", 1)]
    assert state.context == VectorClock.of({"n1": 1, "n2": 1})
    assert {c.stores[n].states["k"] for n in c.preference} == {state}


def test_a_write_with_the_reads_context_supersedes_exactly_what_it_saw() -> None:
    c = cluster()
    c.write("n1", "k", b"a", w=3)
    c.write("n2", "k", b"b", w=3)
    c.deliver_all()
    read = c.read("n1", "k", r=3)
    c.deliver_all()
    seen = values(c, "n1", read).state
    assert seen is not None and seen.values == (b"a", b"b")
    c.write("n3", "k", b"c", w=3)  # concurrent with the next write: not in its context
    c.deliver_all()
    token = c.write("n1", "k", b"resolved", w=3, context=seen.context)
    c.deliver_all()
    assert stored(c, "n1", token).acks == 3
    read = c.read("n2", "k", r=3)
    c.deliver_all()
    state = values(c, "n2", read).state
    assert state is not None
    assert state.values == (b"resolved", b"c")
    assert [s.dot for s in state.siblings] == [("n1", 2), ("n3", 1)]


def test_delete_then_read_is_deleted() -> None:
    c = cluster()
    c.write("n1", "k", b"v", w=3)
    c.deliver_all()
    read = c.read("n1", "k", r=3)
    c.deliver_all()
    context = values(c, "n1", read).state.context  # type: ignore[union-attr]
    token = c.write("n2", "k", None, w=3, context=context)
    c.deliver_all()
    assert stored(c, "n2", token).state.deleted
    read = c.read("n3", "k", r=2)
    c.deliver_all()
    state = values(c, "n3", read).state
    assert state is not None and state.deleted and state.values == ()
    assert len(state.siblings) == 1 and state.siblings[0].value is None


def test_read_of_a_key_nobody_holds_is_none() -> None:
    c = cluster()
    read = c.read("n1", "nothing", r=3)
    c.deliver_all()
    assert values(c, "n1", read) == KeyValues("nothing", None, 3)


def test_write_short_of_w_times_out_indefinitely_and_suspects_the_silent() -> None:
    c = cluster()
    c.cut |= {frozenset(("n1", "n2")), frozenset(("n1", "n3"))}
    token = c.write("n1", "k", b"v", w=2)
    c.deliver_all()
    assert c.result("n1", token) is None
    c.advance(2000)
    result = c.result("n1", token)
    assert isinstance(result, QuorumFailed) and result.reason == "timeout" and result.definite is False
    assert c.stores["n1"].states["k"].values == (b"v",)  # it may be stored: it is, here
    # Both silent peers are avoided now: a sloppy write goes to both fallbacks.
    c.write("n1", "k2", b"v", w=3)
    hinted = {(e.dst, e.body.hint_for) for e in c.messages(KeyWriteRequest)}  # type: ignore[attr-defined]
    assert hinted == {("n4", "n2"), ("n5", "n3")}


def test_strict_mode_with_too_few_up_is_unavailable_and_stores_nothing() -> None:
    c = cluster(sloppy=False)
    c.down |= {"n2", "n3"}
    first = c.write("n1", "k", b"v", w=1)  # finds both down as it sends, and suspects them
    assert stored(c, "n1", first).acks == 1
    token = c.write("n1", "k2", b"v", w=2)
    result = c.result("n1", token)
    assert result == QuorumFailed("unavailable", True, "1 replicas reachable, w=2")
    assert "k2" not in c.stores["n1"].states
    assert not c.messages(KeyWriteRequest)
    read = c.read("n1", "k2", r=2)
    assert c.result("n1", read) == QuorumFailed("unavailable", True, "1 replicas reachable, r=2")


def test_sloppy_write_with_a_preference_node_down_hints_the_first_fallback() -> None:
    c = cluster()
    c.down.add("n2")
    token = c.write("n1", "k", b"v", w=3)
    hinted = [e for e in c.sent if isinstance(e.body, KeyWriteRequest) and e.body.hint_for]
    assert [(e.dst, e.body.hint_for) for e in hinted] == [("n4", "n2")]  # type: ignore[attr-defined]
    c.deliver_all()
    assert stored(c, "n1", token).acks == 3
    assert [h.hint_for for h in c.hints["n4"].values()] == ["n2"]
    assert "k" not in c.stores["n4"].states  # a hint is the node's business, not the replica's
    # Suspected now: the next write goes straight to the fallback.
    c.sent.clear()
    c.write("n1", "k2", b"v", w=3)
    assert {(e.dst, e.body.hint_for) for e in c.sent} == {("n3", ""), ("n4", "n2")}  # type: ignore[attr-defined]
    # Handoff brings n2 the state once it is back.
    c.down.clear()
    c.deliver_all()
    c.hand_off()
    c.deliver_all()
    assert c.stores["n2"].states["k"] == c.stores["n1"].states["k"]
    assert c.hints["n4"] == {}


def test_an_unreachable_fallback_moves_the_hint_to_the_next() -> None:
    c = cluster()
    c.down |= {"n2", "n4"}
    token = c.write("n1", "k", b"v", w=3)
    sent = [(e.dst, e.body.hint_for) for e in c.sent if isinstance(e.body, KeyWriteRequest)]
    assert sent == [("n2", ""), ("n4", "n2"), ("n5", "n2"), ("n3", "")]
    c.deliver_all()
    assert stored(c, "n1", token).acks == 3


def test_strict_mode_never_uses_fallbacks() -> None:
    c = cluster(sloppy=False)
    c.down.add("n2")
    token = c.write("n1", "k", b"v", w=2)
    c.deliver_all()
    assert stored(c, "n1", token).acks == 2
    assert all(e.dst in c.preference for e in c.sent)


def test_any_message_clears_suspicion_and_suspicion_expires() -> None:
    c = cluster(sloppy=False)
    c.down.add("n2")
    c.write("n1", "k", b"v", w=1)
    c.down.clear()
    c.deliver_all()
    c.sent.clear()
    c.write("n1", "k", b"w", w=1)
    assert {e.dst for e in c.sent} == {"n3"}  # n2 is still avoided
    c.step("n1", PeerMessage("n2", KeyReadRequest(1, "x")))
    c.sent.clear()
    c.write("n1", "k", b"x", w=1)
    assert {e.dst for e in c.sent} == {"n2", "n3"}
    c.down.add("n3")
    c.write("n1", "k", b"y", w=1)
    c.down.clear()
    c.advance(1000)
    c.sent.clear()
    c.write("n1", "k", b"z", w=1)
    assert {e.dst for e in c.sent if isinstance(e.body, KeyWriteRequest)} == {"n2", "n3"}


def test_a_node_outside_the_preference_list_redirects_to_the_first() -> None:
    c = cluster()
    effects = c.replicas["n4"].step(c.now_ms, ClientCall(7, KeyWrite("k", b"v", VectorClock(), 1)))
    assert effects == [Answer(7, Redirect("not_leader", leader="n1"))]
    effects = c.replicas["n5"].step(c.now_ms, ClientCall(8, KeyRead("k", 1)))
    assert effects == [Answer(8, Redirect("not_leader", leader="n1"))]


def test_bad_quorums_policy_refusals_and_overload_are_definite() -> None:
    c = Cluster(NODES, LeaderlessSettings(replicas=3, max_pending_requests=2))
    assert c.result("n1", c.write("n1", "k", b"v", w=4)) == QuorumFailed("refused", True,
                                                                           "a quorum must be 1 to 3, not 4")
    assert isinstance(c.result("n1", c.read("n1", "k", r=0)), QuorumFailed)
    bad_repair = c.read("n1", "k", r=1, repair="never")
    assert isinstance(c.result("n1", bad_repair), QuorumFailed)
    c.write("n1", "a", b"v", w=3)
    c.write("n1", "b", b"v", w=3)
    over = c.result("n1", c.write("n1", "c", b"v", w=3))
    assert isinstance(over, QuorumFailed) and over.reason == "overloaded" and over.definite
    assert "c" not in c.stores["n1"].states


def test_too_many_siblings_is_refused_and_nothing_stored() -> None:
    from replication.conflict import Siblings

    c = Cluster(NODES, LeaderlessSettings(replicas=3), policy=Siblings(max_siblings=2))
    c.write("n1", "k", b"a", w=1)
    c.write("n1", "k", b"b", w=1)
    before = c.stores["n1"].states["k"]
    result = c.result("n1", c.write("n1", "k", b"c", w=1))
    assert isinstance(result, QuorumFailed) and result.reason == "refused" and result.definite
    assert c.stores["n1"].states["k"] == before
    assert c.replicas["n1"].partition_counter == 2


def test_request_ids_and_dots_across_a_restart() -> None:
    c = cluster()
    c.write("n1", "k", b"a", w=3)
    old_req = c.messages(KeyWriteRequest)[0].body.req  # type: ignore[attr-defined]
    c.deliver_all()
    c.start("n1")  # a new incarnation; the counter comes back from the hard state
    assert c.replicas["n1"].partition_counter == 1
    token = c.write("n1", "j", b"b", w=2)  # another key: only the partition counter keeps the dot fresh
    new_req = c.messages(KeyWriteRequest)[0].body.req  # type: ignore[attr-defined]
    assert new_req != old_req
    # Acks naming the previous life's request do not count for the new one.
    c.step("n1", PeerMessage("n2", KeyWriteAck(old_req, "k")))
    c.step("n1", PeerMessage("n3", KeyWriteAck(old_req, "k")))
    assert c.result("n1", token) is None
    c.deliver_all()
    result = stored(c, "n1", token)
    assert [s.dot for s in result.state.siblings] == [("n1", 2)]
    assert c.logs["n1"].hard == b"\x92\x01\x02"


def test_replies_from_nodes_not_asked_or_for_other_keys_are_ignored() -> None:
    from replication.leaderless_messages import KeyReadReply

    c = cluster()
    token = c.read("n1", "k", r=2)
    req = c.messages(KeyReadRequest)[0].body.req  # type: ignore[attr-defined]
    forged = dvv.encode(Versions((dvv.Sibling(("n9", 1), b"forged", 1),), VectorClock.of({"n9": 1})))
    c.step("n1", PeerMessage("n4", KeyReadReply(req, "k", forged)))  # not asked
    c.step("n1", PeerMessage("n2", KeyReadReply(req, "other", forged)))  # another key
    c.step("n1", PeerMessage("n2", KeyReadReply(req, "k", b"\xc1garbage")))  # does not decode: no reply
    assert c.result("n1", token) is None
    c.deliver_all()
    assert values(c, "n1", token) == KeyValues("k", None, 2)


def test_a_read_that_can_no_longer_reach_r_fails_at_once() -> None:
    c = cluster()
    c.down.add("n2")
    token = c.read("n1", "k", r=3)
    assert c.result("n1", token) == QuorumFailed("unavailable", True, "2 replicas reachable, r=3")
    assert c.replicas["n1"].pending_requests() == 0


def test_a_write_stays_open_after_its_answer_to_hint_a_replica_found_down() -> None:
    c = cluster()
    token = c.write("n1", "k", b"v", w=2)
    c.deliver(1)  # n3 stores it
    c.deliver(1)  # n3's ack: answered
    assert stored(c, "n1", token).acks == 2
    c.step("n1", PeerUnreachable("n2", c.drop(0).body))
    assert [(e.dst, e.body.hint_for) for e in c.messages(KeyWriteRequest)] == [("n4", "n2")]  # type: ignore[attr-defined]
    c.deliver_all()
    assert c.replicas["n1"].pending_requests() == 0
    assert [h.hint_for for h in c.hints["n4"].values()] == ["n2"]


def test_last_writer_wins_keeps_one_value() -> None:
    c = Cluster(NODES, LeaderlessSettings(replicas=3), policy=LastWriterWins())
    c.write("n1", "k", b"old", w=1)
    c.now_ms += 5
    c.write("n2", "k", b"new", w=1)
    c.deliver_all()
    read = c.read("n3", "k", r=3)
    c.deliver_all()
    state = values(c, "n3", read).state
    assert state is not None and state.values == (b"new",)
    assert {c.stores[n].states["k"] for n in c.preference} == {state}
