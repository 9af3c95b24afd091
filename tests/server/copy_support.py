"""What the replica-copy tests share: serving the copy route on in-process nodes, and writing records
straight into a node's storage (tombstones and siblings included, which no client op makes in single mode)."""

from __future__ import annotations

from kvstore.server.inprocess import InProcessCluster
from kvstore.storage.base import Record, Sibling


def bearer(cluster: InProcessCluster) -> dict[str, str]:
    return {"Authorization": f"Bearer {cluster.config.secret}"}


# One record of each shape a replica can hold: a value with a TTL and context, a tombstone, siblings.
VALUE = Record(b"\xffvalue", 7, expires_at_ms=9_000_000_000_000, context=b"\x01ctx")
TOMBSTONE = Record(None, 8, expires_at_ms=9_000_000_000_001, context=b"")
WITH_SIBLINGS = Record(b"mine", 9, siblings=(Sibling(b"theirs", 4, b"\x02"), Sibling(None, 5)))
