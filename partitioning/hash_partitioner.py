"""Key -> partition by a stable hash.

Python's ``hash()`` of a str changes per process (PYTHONHASHSEED), so it can never place data:
blake2b is the same on every machine, in every run.
"""

from __future__ import annotations

import hashlib

# Bound once: the node hashes a key for every op.
_blake2b = hashlib.blake2b
_from_bytes = int.from_bytes


def key_hash(key: str) -> int:
    """A 64-bit hash of ``key`` that is the same in every process and on every machine."""
    return _from_bytes(_blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")


def partition_for_key(key: str, partitions: int) -> int:
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    return key_hash(key) % partitions
