"""The configuration and its changes as values: how they apply, what is refused, and their encodings."""

from __future__ import annotations

import pytest

from replication.raft import decode_hard_state, encode_hard_state
from replication.raft_membership import (
    ADD_LEARNER,
    PROMOTE,
    REMOVE,
    ChangeReplicas,
    Configuration,
    decode_change,
    decode_configuration,
    encode_change,
    encode_configuration,
)

BASE = Configuration(("a", "b", "c"), ("d",), 7)


def test_changes_apply_one_node_at_a_time() -> None:
    assert BASE.changed(ChangeReplicas(ADD_LEARNER, "e"), 8) == Configuration(("a", "b", "c"), ("d", "e"), 8)
    assert BASE.changed(ChangeReplicas(PROMOTE, "d"), 8) == Configuration(("a", "b", "c", "d"), (), 8)
    assert BASE.changed(ChangeReplicas(REMOVE, "b"), 8) == Configuration(("a", "c"), ("d",), 8)
    assert BASE.changed(ChangeReplicas(REMOVE, "d"), 8) == Configuration(("a", "b", "c"), (), 8)


def test_replayed_changes_keep_what_they_want() -> None:
    # A replica that started from a guessed configuration replays changes that do not fit it.
    assert BASE.changed(ChangeReplicas(ADD_LEARNER, "a"), 8) == Configuration(("a", "b", "c"), ("d",), 8)
    assert BASE.changed(ChangeReplicas(PROMOTE, "a"), 8) == Configuration(("b", "c", "a"), ("d",), 8)
    assert Configuration(("a",)).changed(ChangeReplicas(REMOVE, "a"), 1).voters == ("a",)


def test_refusals() -> None:
    assert BASE.refusal(ChangeReplicas(ADD_LEARNER, "e")) is None
    assert BASE.refusal(ChangeReplicas(ADD_LEARNER, "a")) == "a is already a member of the group"
    assert BASE.refusal(ChangeReplicas(PROMOTE, "a")) == "a is not a learner of the group"
    assert BASE.refusal(ChangeReplicas(REMOVE, "x")) == "x is not a member of the group"
    assert Configuration(("a",), ("b",)).refusal(ChangeReplicas(REMOVE, "a")) == "a is the group's last voter"


def test_encodings_round_trip() -> None:
    for change in (ChangeReplicas(ADD_LEARNER, "n-é"), ChangeReplicas(PROMOTE, "x"), ChangeReplicas(REMOVE, "y")):
        assert decode_change(encode_change(change)) == change
    assert decode_configuration(encode_configuration(BASE)) == BASE
    assert decode_hard_state(encode_hard_state(3, "b", BASE)) == (3, "b", BASE)
    assert decode_hard_state(encode_hard_state(3, None, BASE)) == (3, None, BASE)
    # Hard state written before configurations were kept still reads.
    assert decode_hard_state(encode_hard_state(4, "a")) == (4, "a", None)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", b"\x03x", b"\x01\xff", b"\x00" + b"x" * 257],
)
def test_bad_changes_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_change(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        encode_configuration(BASE)[:-1],
        encode_configuration(BASE) + b"x",
        encode_configuration(Configuration((), ("a",))),
        encode_configuration(Configuration(("a", "a"))),
    ],
)
def test_bad_configurations_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_configuration(data)
