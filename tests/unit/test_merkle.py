"""MerkleTree: the hash tree anti-entropy compares (replication/anti_entropy.py)."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replication.anti_entropy import MerkleTree, key_digest

keys = st.text(alphabet="abcdefgh", min_size=0, max_size=4)
states = st.binary(min_size=0, max_size=6)
# A history of changes: (key, new state or None for a removal).
changes = st.lists(st.tuples(keys, st.none() | states), max_size=60)


def apply(tree: MerkleTree, contents: dict[str, bytes], key: str, new: bytes | None) -> None:
    tree.update(key, contents.get(key), new)
    if new is None:
        contents.pop(key, None)
    else:
        contents[key] = new


def built(contents: dict[str, bytes], leaves: int = 64, fanout: int = 4) -> MerkleTree:
    tree = MerkleTree(leaves, fanout)
    for key, state in contents.items():
        tree.update(key, None, state)
    return tree


def every_hash(tree: MerkleTree) -> list[tuple[bytes, ...]]:
    return [tree.hashes(level, range(size)) for level, size in enumerate(tree.level_sizes)]


def test_level_sizes() -> None:
    assert MerkleTree().level_sizes == (1, 4, 64, 1024)
    assert MerkleTree(17, 4).level_sizes == (1, 2, 5, 17)
    assert MerkleTree(16, 16).level_sizes == (1, 16)
    assert MerkleTree(1, 2).level_sizes == (1,)
    assert list(MerkleTree(17, 4).children(2, 4)) == [16]
    assert list(MerkleTree(17, 4).children(0, 0)) == [0, 1]


def test_bad_shapes_are_refused() -> None:
    for leaves, fanout in [(0, 16), (1024, 1), ((1 << 20) + 1, 16)]:
        with pytest.raises(ValueError):
            MerkleTree(leaves, fanout)


def test_leaf_of_is_a_stable_blake2b_of_the_key() -> None:
    tree = MerkleTree(1024, 16)
    expected = int.from_bytes(hashlib.blake2b(b"user:42", digest_size=8, person=b"kv-ae-leaf").digest(), "big") % 1024
    assert tree.leaf_of("user:42") == expected
    assert all(0 <= tree.leaf_of(f"k{i}") < 1024 for i in range(200))


def test_a_leaf_hash_is_the_xor_of_its_keys_digests() -> None:
    tree = MerkleTree(1, 2)
    tree.update("a", None, b"1")
    tree.update("b", None, b"2")
    xor = int.from_bytes(key_digest("a", b"1"), "big") ^ int.from_bytes(key_digest("b", b"2"), "big")
    assert tree.root() == xor.to_bytes(16, "big")
    assert tree.sorted_keys_in(0) == ["a", "b"]
    assert tree.sorted_keys_in(0, "b") == ["b"]
    assert tree.sorted_keys_in(0, "", "b") == ["a"]


def test_removing_everything_gives_the_empty_tree_back() -> None:
    empty = MerkleTree(64, 4)
    tree = MerkleTree(64, 4)
    tree.update("x", None, b"v1")
    tree.update("x", b"v1", b"v2")
    assert tree.root() != empty.root()
    tree.update("x", b"v2", None)
    assert every_hash(tree) == every_hash(empty)
    assert tree.sorted_keys_in(tree.leaf_of("x")) == []


def test_hashes_out_of_range_raise_index_error() -> None:
    tree = MerkleTree(64, 4)
    with pytest.raises(IndexError):
        tree.hashes(4, [0])
    with pytest.raises(IndexError):
        tree.hashes(1, [4])
    with pytest.raises(IndexError):
        tree.hashes(-1, [0])


def test_key_digest_separates_key_from_state() -> None:
    # Without the length prefix ("ab", "c") and ("a", "bc") would hash alike.
    assert key_digest("ab", b"c") != key_digest("a", b"bc")
    assert len(key_digest("k", b"")) == 16


@settings(max_examples=150, deadline=None)
@given(changes)
def test_incremental_equals_rebuilt(history: list[tuple[str, bytes | None]]) -> None:
    tree = MerkleTree(64, 4)
    contents: dict[str, bytes] = {}
    for index, (key, new) in enumerate(history):
        apply(tree, contents, key, new)
        if index % 7 == 0:
            tree.root()  # some recomputations in between: the dirty marks must not lose a change
    assert every_hash(tree) == every_hash(built(contents))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(keys, states, max_size=30), st.randoms(use_true_random=False))
def test_any_order_of_updates_gives_the_same_tree(contents: dict[str, bytes], rng: random.Random) -> None:
    items = list(contents.items())
    rng.shuffle(items)
    shuffled = MerkleTree(64, 4)
    for key, state in items:
        shuffled.update(key, None, state)
    assert every_hash(shuffled) == every_hash(built(contents))


@settings(max_examples=200, deadline=None)
@given(changes, changes)
def test_trees_are_equal_iff_contents_are(
    first: list[tuple[str, bytes | None]], second: list[tuple[str, bytes | None]]
) -> None:
    trees = [MerkleTree(64, 4), MerkleTree(64, 4)]
    contents: list[dict[str, bytes]] = [{}, {}]
    for tree, held, history in zip(trees, contents, [first, second], strict=True):
        for key, new in history:
            apply(tree, held, key, new)
    assert (trees[0].root() == trees[1].root()) == (contents[0] == contents[1])
    # The leaves that differ are exactly those of the keys whose states differ.
    differing = {
        trees[0].leaf_of(k) for k in contents[0].keys() | contents[1].keys() if contents[0].get(k) != contents[1].get(k)
    }
    leaves = range(64)
    found = {
        i for i, a, b in zip(leaves, trees[0].hashes(3, leaves), trees[1].hashes(3, leaves), strict=True) if a != b
    }
    assert found == differing
