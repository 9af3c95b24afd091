"""Key -> partition by a stable hash.

Python's ``hash()`` of a str changes per process (PYTHONHASHSEED), so it can never place data:
blake2b is the same on every machine, in every run.
"""

from __future__ import annotations

import hashlib

# Bound once: the node hashes a key for every op.
_blake2b = hashlib.blake2b
_from_bytes = int.from_bytes

# The hashes of keys seen lately. blake2b is most of what placing a key costs (~450 ns of a ~4 us node
# step for a GET) and clients come back to the same keys. A hash depends on the key alone, so the memo
# is right for every map and every node of a process; it is emptied when full, so it stays bounded.
_MEMO_ENTRIES = 4096
_memo: dict[str, int] = {}


def key_hash(key: str) -> int:
    """A 64-bit hash of ``key`` that is the same in every process and on every machine."""
    value = _memo.get(key)
    if value is None:
        value = _from_bytes(_blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")
        if len(_memo) >= _MEMO_ENTRIES:
            _memo.clear()
        _memo[key] = value
    return value


def partition_for_key(key: str, partitions: int) -> int:
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    return key_hash(key) % partitions
