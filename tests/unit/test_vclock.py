import pytest
from hypothesis import given
from hypothesis import strategies as st

from replication.vclock import Order, VectorClock, dominant, merge_all

clocks = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(1, 5)).map(VectorClock.of)


def test_increment_and_get() -> None:
    clock = VectorClock().increment("a").increment("a").increment("b")
    assert clock.as_dict() == {"a": 2, "b": 1}
    assert clock.get("a") == 2
    assert clock.get("z") == 0


def test_compare_cases() -> None:
    base = VectorClock.of({"a": 1})
    later = base.increment("a")
    other = base.increment("b")
    assert base.compare(later) is Order.BEFORE
    assert later.compare(base) is Order.AFTER
    assert later.compare(other) is Order.CONCURRENT
    assert base.compare(VectorClock.of({"a": 1})) is Order.EQUAL
    assert VectorClock().compare(base) is Order.BEFORE


def test_merge_takes_pointwise_max() -> None:
    merged = VectorClock.of({"a": 3, "b": 1}).merge(VectorClock.of({"b": 4, "c": 2}))
    assert merged.as_dict() == {"a": 3, "b": 4, "c": 2}


def test_entries_must_be_sorted_and_positive() -> None:
    with pytest.raises(ValueError):
        VectorClock((("b", 1), ("a", 1)))
    with pytest.raises(ValueError):
        VectorClock((("a", 0),))


def test_dominant_keeps_concurrent_siblings_only() -> None:
    a = VectorClock.of({"a": 1})
    b = VectorClock.of({"b": 1})
    ab = a.merge(b).increment("a")
    assert dominant([a, b]) == [a, b]
    assert dominant([a, b, ab]) == [ab]
    assert dominant([a, a]) == [a]


@given(clocks, clocks)
def test_compare_is_antisymmetric(x: VectorClock, y: VectorClock) -> None:
    flipped = {Order.BEFORE: Order.AFTER, Order.AFTER: Order.BEFORE}
    order = x.compare(y)
    assert y.compare(x) is flipped.get(order, order)


@given(clocks, clocks, clocks)
def test_merge_is_a_join(x: VectorClock, y: VectorClock, z: VectorClock) -> None:
    assert x.merge(y) == y.merge(x)
    assert x.merge(y).merge(z) == x.merge(y.merge(z))
    assert x.merge(y).descends(x) and x.merge(y).descends(y)
    assert merge_all([x, y, z]) == x.merge(y).merge(z)
