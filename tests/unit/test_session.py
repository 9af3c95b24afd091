"""Session tokens (``kvstore/session.py``): parsing, advancing, merging and the size bound."""

from __future__ import annotations

import pytest

from kvstore.session import MAX_SESSION_BYTES, SessionTokenError, advance, merge, parse, render


def test_a_token_round_trips_in_order() -> None:
    assert parse("") == {}
    assert list(parse("7:120,3:98").items()) == [(7, 120), (3, 98)]
    assert render(parse("7:120,3:98")) == "7:120,3:98"


@pytest.mark.parametrize("token", ["7", "7:", ":1", "a:1", "1:-1", "1:1,", " 1:1", "1:1;2:2", "+1:1", "\u0661:1"])
def test_anything_else_is_refused(token: str) -> None:
    with pytest.raises(SessionTokenError):
        parse(token)


def test_advance_moves_the_partition_first_and_never_goes_back() -> None:
    positions = parse("7:120,3:98")
    assert render(advance(positions, 3, 150)) == "3:150,7:120"
    assert render(advance(positions, 3, 10)) == "3:98,7:120"
    assert render(advance(positions, 5, 1)) == "5:1,7:120,3:98"
    assert advance(positions, 5, 0) is positions  # nothing seen there: nothing to keep


def test_merge_keeps_each_partitions_highest_position() -> None:
    assert render(merge(parse("1:5,2:9"), parse("2:12,3:1"))) == "1:5,2:12,3:1"


def test_render_stays_within_the_bound_dropping_the_least_recent() -> None:
    positions = {partition: (1 << 63) - 1 for partition in range(200)}
    text = render(positions)
    assert len(text) <= MAX_SESSION_BYTES
    kept = parse(text)
    assert list(kept) == list(range(len(kept))) and 30 < len(kept) < 200
