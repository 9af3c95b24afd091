"""A node's hinted-handoff store (``replication.hinted_handoff.HintStore``) on its storage's metadata.

Each hint is one metadata name, ``hint/<id>``, whose value is the hint encoded with msgpack; a removal is a
metadata removal, so hints are synced by the same group commit as everything else the node writes, and a
hinted write's acknowledgement (durable) leaves only once its hint is on disk. ``HintedHandoff`` bounds how
many a node holds (``leaderless.max_hints``), which bounds the metadata they take.
"""

from __future__ import annotations

import msgpack

from kvstore.storage.base import Storage
from replication.hinted_handoff import Hint

PREFIX = "hint/"


class MetaHintStore:
    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def put(self, hint: Hint) -> None:
        value = [hint.target, hint.partition, hint.key, hint.state, hint.created_ms]
        self._storage.put_meta(_name(hint.hint_id), msgpack.packb(value, use_bin_type=True))

    def remove(self, hint_id: int) -> None:
        self._storage.remove_meta(_name(hint_id))

    def load(self) -> list[Hint]:
        hints = []
        for name in self._storage.meta_names(PREFIX):
            data = self._storage.get_meta(name)
            assert data is not None
            # Written by ``put`` alone and checksummed by the engine: one that does not decode is a bug.
            target, partition, key, state, created_ms = msgpack.unpackb(data, raw=False)
            hints.append(Hint(int(name[len(PREFIX) :]), target, partition, key, state, created_ms))
        return hints


def _name(hint_id: int) -> str:
    return f"{PREFIX}{hint_id:020d}"
