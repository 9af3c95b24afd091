"""Each replica's live siblings of every key, from the replicas' copies (leaderless records)."""

from __future__ import annotations

from chaos.final_siblings import replica_siblings
from kvstore.storage.base import Record
from replication.dvv import Sibling, Versions, encode
from replication.vclock import VectorClock


def record(*siblings: tuple[str, int, bytes | None]) -> Record:
    state = Versions(tuple(Sibling((node, n), value, 0) for node, n, value in siblings),
                     VectorClock.of({node: n for node, n, _ in siblings}))
    values = state.values
    return Record(values[0] if values else None, 0, None, encode(state))


def test_every_replica_of_a_key_is_listed_with_its_live_values() -> None:
    copies = {
        (0, "n1"): [("a", record(("n1", 1, b"x"), ("n2", 1, b"y"))), ("b", record(("n1", 2, None)))],
        (0, "n2"): [("a", record(("n1", 1, b"x")))],
        (0, "n3"): [],
        (1, "n2"): [("c", record(("n2", 2, b"z")))],
        (1, "n3"): [("c", record(("n2", 2, b"z")))],
    }
    replicas = (("n1", "n2", "n3"), ("n2", "n3"))
    assert replica_siblings(copies, replicas) == {
        "a": {"n1": [b"x", b"y"], "n2": [b"x"], "n3": []},
        "b": {"n1": [], "n2": [], "n3": []},  # a tombstone: no live value
        "c": {"n2": [b"z"], "n3": [b"z"]},
    }
