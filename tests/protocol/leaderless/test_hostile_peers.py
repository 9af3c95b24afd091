"""Untrusted peer input never crashes a replica: malformed states are refused, wrong types and unknown requests
ignored, and nothing of it reaches the store."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from leaderless_env import Cluster

from replication import dvv
from replication.dvv import Versions
from replication.leaderless import LeaderlessSettings
from replication.leaderless_messages import (
    LEADERLESS_MESSAGES,
    HandoffAck,
    HandoffRequest,
    KeyReadReply,
    KeyWriteAck,
    KeyWriteRequest,
    PurgeKey,
)
from replication.replica import PeerMessage, PeerUnreachable, SendTo, TimerFired
from replication.vclock import VectorClock

NODES = ("n1", "n2", "n3", "n4")

junk = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.text(max_size=8),
    st.binary(max_size=40), st.lists(st.integers(), max_size=3), st.sampled_from([b"", b"\xc1", b"\x92\x90"]),
)


def cluster() -> Cluster:
    return Cluster(NODES, LeaderlessSettings(replicas=3))


def test_a_state_that_does_not_decode_is_refused_and_nothing_stored() -> None:
    c = cluster()
    for bad in (b"", b"\xc1", b"\x92\x90", b"\x92\x91\x94\xa2n9\x00\xc0\x00\x90", b"x" * 100):
        effects = c.replicas["n2"].step(c.now_ms, PeerMessage("n1", KeyWriteRequest(5, "k", bad)))
        assert len(effects) == 1 and isinstance(effects[0], SendTo)
        ack = effects[0].body
        assert isinstance(ack, KeyWriteAck) and ack.ok is False and ack.reason.startswith("not an encoded key state")
        assert not effects[0].durable
        assert c.replicas["n2"].step(c.now_ms, PeerMessage("n1", HandoffRequest(5, "k", bad))) == []
    assert c.stores["n2"].states == {}


def test_a_good_write_request_and_handoff_are_merged_and_acknowledged_durably() -> None:
    c = cluster()
    state = Versions((dvv.Sibling(("n1", 3), b"v", 10),), VectorClock.of({"n1": 3}))
    effects = c.replicas["n2"].step(c.now_ms, PeerMessage("n1", KeyWriteRequest(5, "k", dvv.encode(state))))
    assert effects == [SendTo("n1", KeyWriteAck(5, "k"), durable=True)]
    other = Versions((dvv.Sibling(("n3", 1), b"w", 10),), VectorClock.of({"n3": 1}))
    effects = c.replicas["n2"].step(c.now_ms, PeerMessage("n4", HandoffRequest(9, "k", dvv.encode(other))))
    assert effects == [SendTo("n4", HandoffAck(9), durable=True)]
    assert c.stores["n2"].states["k"].values == (b"v", b"w")
    # A hint for another node is the node's hint store's business: the replica neither stores nor answers it.
    effects = c.replicas["n2"].step(c.now_ms, PeerMessage("n1", KeyWriteRequest(6, "j", dvv.encode(state), "n3")))
    assert effects == [] and "j" not in c.stores["n2"].states


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(LEADERLESS_MESSAGES), fields=st.lists(junk, min_size=4, max_size=4),
       src=st.sampled_from(["n1", "n3", "n9", ""]), timer=st.text(max_size=12))
def test_hostile_bodies_never_crash_and_never_store(kind: type, fields: list[Any], src: str, timer: str) -> None:
    c = cluster()
    c.read("n2", "k", r=2)
    c.write("n2", "j", b"v", w=3)
    before = dict(c.stores["n2"].states)
    arity = len(dataclasses.fields(kind))
    body = kind(*fields[:arity])
    replica = c.replicas["n2"]
    replica.step(c.now_ms, PeerMessage(src, body))
    replica.step(c.now_ms, PeerUnreachable(src, body))
    replica.step(c.now_ms, TimerFired(timer))
    replica.step(c.now_ms, PeerMessage(src, object()))
    if not _a_valid_state_for_this_replica(body):
        assert c.stores["n2"].states == before


def _a_valid_state_for_this_replica(body: object) -> bool:
    if not isinstance(body, KeyWriteRequest | HandoffRequest) or not isinstance(body.state, bytes):
        return False
    try:
        dvv.decode(body.state)
    except ValueError:
        return False
    return True


def test_replies_and_acks_with_unknown_ids_or_wrong_senders_count_for_nothing() -> None:
    c = cluster()
    token = c.write("n1", "k", b"v", w=3)
    req = c.inflight[0].body.req  # type: ignore[attr-defined]
    for src, body in (("n4", KeyWriteAck(req, "k")), ("n2", KeyWriteAck(req + 1, "k")),
                      ("n2", KeyWriteAck(req, "other")), ("n2", KeyReadReply(req, "k", b""))):
        c.step("n1", PeerMessage(src, body))
    c.step("n1", PeerMessage("n2", KeyWriteAck(req, "k")))
    c.step("n1", PeerMessage("n2", KeyWriteAck(req, "k")))  # a duplicate counts once
    assert c.result("n1", token) is None
    c.step("n1", PeerMessage("n3", KeyWriteAck(req, "k")))
    assert c.result("n1", token) is not None


def test_purge_key_for_a_live_value_is_ignored() -> None:
    c = cluster()
    c.write("n2", "k", b"v", w=1)
    context = dvv.encode_context(c.stores["n2"].states["k"].context)
    c.replicas["n2"].step(c.now_ms, PeerMessage("n1", PurgeKey("k", context)))
    assert c.stores["n2"].states["k"].values == (b"v",)
