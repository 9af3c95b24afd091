"""Leaderless mode: each replica's live siblings of every key, from the copies the convergence check reads.

A leaderless record keeps the key's whole state (``replication.dvv.Versions``, canonically encoded) in its
``context`` (``kvstore/version_store.py``); its live values are what a read of that one replica would return.
The runners read every replica's copy of each partition once (``Storage.copy_of`` in the simulator, the admin
route on a real cluster) and hand the same copies to the convergence checker and to this, so the siblings
checker's final state is the replicas' stores themselves, read before any final read could repair them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from kvstore.storage.base import Record
from replication.dvv import decode

# {store key: {node: [live sibling values]}}
StoredSiblings = dict[str, dict[str, list[bytes]]]


def replica_siblings(
    copies: Mapping[tuple[int, str], Iterable[tuple[str, Record]]], replicas: Sequence[Sequence[str]]
) -> StoredSiblings:
    """Every key any replica of its partition holds, with each replica's live siblings (``[]`` for a replica that
    holds nothing of the key, or only a tombstone): a key belongs on every replica of its partition."""
    held: dict[tuple[int, str], dict[str, list[bytes]]] = {
        (partition, node): {key: list(decode(record.context).values) for key, record in copy}
        for (partition, node), copy in copies.items()
    }
    siblings: StoredSiblings = {}
    for (partition, _node), keys in held.items():
        for key in keys:
            if key not in siblings:
                siblings[key] = {n: held.get((partition, n), {}).get(key, []) for n in replicas[partition]}
    return siblings
