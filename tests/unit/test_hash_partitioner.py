"""key_hash places data: its values may never change, memo or not, and a key that cannot be hashed is refused."""

from __future__ import annotations

import hashlib

import pytest

import partitioning.hash_partitioner as hp
from partitioning.partition_map import PartitionMap

# Values of the first implementation (blake2b, 8-byte digest, big-endian), pinned: a change would move keys.
PINNED = {
    "k0": (0xA59C811A6CD19397, 23),
    "k1": (0x99DFA4B79D814120, 32),
    "user:42": (0xD9279B7CB3A5B282, 2),
    "é": (0xCB1ABF8BEFF3192F, 47),
    "日本語": (0xF419EDD5D4267B48, 8),
    "x" * 1024: (0xA4246765365B13AB, 43),
}


def reference(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")


def test_pinned_values_hold_first_time_and_from_the_memo() -> None:
    hp._memo.clear()
    for _ in range(2):  # computed, then remembered
        for key, (value, partition) in PINNED.items():
            assert hp.key_hash(key) == value
            assert hp.partition_for_key(key, 64) == partition
            assert PartitionMap((("n1",),) * 64).partition_for_key(key) == partition


def test_the_memo_stays_bounded_and_right_across_clears() -> None:
    keys = [f"key-{i}" for i in range(3 * hp._MEMO_ENTRIES + 7)]
    for _ in range(2):
        for key in keys:
            assert hp.key_hash(key) == reference(key)
            assert len(hp._memo) <= hp._MEMO_ENTRIES


def test_a_key_that_is_not_utf8_is_refused_and_not_remembered() -> None:
    with pytest.raises(UnicodeEncodeError):
        hp.key_hash("lone \ud800 surrogate")
    assert "lone \ud800 surrogate" not in hp._memo
