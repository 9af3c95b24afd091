"""The convergence checker on replica copies: what counts as the same, what diverges, when it is skipped,
and how the chaos runners report it (the simulator's reading path included)."""

from __future__ import annotations

from typing import Any

import pytest

from chaos.checkers import convergence
from chaos.checkers.convergence import SKIPPED, check_copies, replica_state
from chaos.history import History
from chaos.run_sim import all_checkers, sim_convergence
from kvstore.config import StorageConfig, local_cluster
from kvstore.sim.cluster import SimCluster
from kvstore.storage.base import Record, Sibling
from partitioning.partition_map import PartitionMap

NOW_MS = 1_000_000
TWO_COPIES = (("n1", "n2"),)

VALUE = Record(b"v", 3, expires_at_ms=NOW_MS + 10)
SIBLINGS = Record(b"a", 4, siblings=(Sibling(b"b", 2, b"\x02"), Sibling(None, 1)))


Copy = list[tuple[str, Record]]


def verdict(n1: Copy, n2: Copy) -> dict[str, Any]:
    return check_copies({(0, "n1"): n1, (0, "n2"): n2}, TWO_COPIES, NOW_MS)


def test_identical_copies_converge() -> None:
    same = [("a", VALUE), ("b", Record(None, 5)), ("c", SIBLINGS)]
    result = verdict(same, list(same))
    assert result["valid"] is True
    assert (result["keys"], result["diverged_count"], result["partitions"], result["copies"]) == (3, 0, 1, 2)


def test_the_order_of_siblings_does_not_matter() -> None:
    reordered = Record(b"a", 4, siblings=tuple(reversed(SIBLINGS.siblings)))
    assert verdict([("c", SIBLINGS)], [("c", reordered)])["valid"] is True


@pytest.mark.parametrize(
    ("other", "what"),
    [
        (Record(b"w", 3, expires_at_ms=NOW_MS + 10), "value"),
        (Record(b"v", 4, expires_at_ms=NOW_MS + 10), "version"),
        (Record(None, 3, expires_at_ms=NOW_MS + 10), "tombstone"),
        (Record(b"v", 3, expires_at_ms=NOW_MS + 20), "expiry"),
        (Record(b"v", 3, expires_at_ms=NOW_MS + 10, context=b"\x09"), "context"),
        (Record(b"v", 3, expires_at_ms=NOW_MS + 10, siblings=(Sibling(b"x", 1),)), "siblings"),
    ],
)
def test_copies_that_differ_in_anything_stored_diverge(other: Record, what: str) -> None:
    result = verdict([("k", VALUE)], [("k", other)])
    assert result["valid"] is False, what
    assert result["diverged_count"] == 1
    [diverged] = result["diverged"]
    assert diverged["key"] == "k"
    assert diverged["values"]["n1"] == {"value": "v", "tombstone": False, "version": 3,
                                        "expires_at_ms": NOW_MS + 10, "context": "", "siblings": []}


def test_a_leaderless_records_version_is_its_replicas_own_position_and_not_compared() -> None:
    # A record with a causal context is leaderless mode's; its version numbers this replica's changes only.
    state = b"\x01"
    assert verdict([("k", Record(b"v", 3, context=state))], [("k", Record(b"v", 9, context=state))])["valid"] is True
    assert verdict([("k", Record(b"v", 3, context=state))], [("k", Record(b"w", 3, context=state))])["valid"] is False


def test_a_key_missing_from_one_replica_diverges() -> None:
    for held in (VALUE, Record(None, 2)):
        result = verdict([("k", held)], [])
        assert result["valid"] is False
        assert result["diverged"][0]["values"]["n2"] == "<absent>"
    # A copy that could not be read at all counts as empty.
    assert check_copies({(0, "n1"): [("k", VALUE)]}, TWO_COPIES, NOW_MS)["valid"] is False


def test_records_expired_at_the_judging_time_are_left_out() -> None:
    # One replica purged an expired value and a purgeable tombstone; the other has not yet: the same state.
    expired = [("a", Record(b"v", 1, expires_at_ms=NOW_MS)), ("b", Record(None, 2, expires_at_ms=NOW_MS - 1))]
    assert verdict(expired, [])["valid"] is True
    assert replica_state(expired, NOW_MS - 1) == {
        "a": convergence.Held(b"v", 1, NOW_MS, b"", ()),
    }


def test_bytes_that_are_not_text_are_shown_in_base64() -> None:
    result = verdict([("k", Record(b"\xff", 1))], [("k", Record(b"\xfe", 1))])
    values = result["diverged"][0]["values"]
    assert (values["n1"]["value"], values["n2"]["value"]) == ("base64:/w==", "base64:/g==")


def test_only_partitions_with_more_than_one_replica_are_compared() -> None:
    replicas = (("n1",), ("n1", "n2"), ("n2",))
    found = {(1, "n1"): [("k", VALUE)], (1, "n2"): [("k", VALUE)], (0, "n1"): [("x", VALUE)]}
    result = check_copies(found, replicas, NOW_MS)
    assert (result["valid"], result["keys"], result["partitions"], result["copies"]) == (True, 1, 1, 2)
    assert convergence.multi_copy_partitions(replicas) == [1]


def test_one_copy_per_partition_is_skipped_not_passed() -> None:
    result = check_copies({(0, "n1"): [("k", VALUE)]}, (("n1",), ("n2",)), NOW_MS)
    assert result == {"valid": SKIPPED, "reason": "every partition has one replica: there are no copies to compare"}


def test_the_old_entry_point_still_takes_plain_states() -> None:
    assert convergence.check({"n1": {"a": 1}, "n2": {"a": 1}}).valid
    assert not convergence.check({"n1": {"a": 1}, "n2": {}}, replicas_of=lambda _: ["n1", "n2"]).valid


# ---------------------------------------------------------------- how the runners report it


def test_a_skipped_check_is_reported_only_when_named_and_never_decides_the_run() -> None:
    skipped = {"valid": SKIPPED, "reason": "one copy"}
    assert "convergence" not in all_checkers(("set",), History(), 1.0, skipped)
    named = all_checkers(("set", "convergence"), History(), 1.0, skipped)
    assert named["convergence"] == skipped and named["set"]["valid"] is True
    # A check that compared copies is reported whether the scenario named it or not.
    ran = {"valid": False, "keys": 1}
    assert all_checkers(("set",), History(), 1.0, ran)["convergence"] == ran


def test_the_simulator_reads_each_replica_from_its_nodes_storage() -> None:
    config = local_cluster(3, partitions=4, storage=StorageConfig(engine="memory"))
    cluster = SimCluster(1, config)
    assert sim_convergence(cluster)["valid"] == SKIPPED
    # Two copies of each partition: the reading path a mode with more than one copy takes.
    cluster.node("n1").partition_map = PartitionMap.round_robin(config.node_ids, 4, replication_factor=2)
    for node in ("n1", "n2"):
        cluster.storage(node).write(0, "k", VALUE)
    converged = sim_convergence(cluster)
    assert (converged["valid"], converged["keys"], converged["partitions"], converged["copies"]) == (True, 1, 4, 8)
    cluster.storage("n2").write(0, "k", Record(b"v", 4))
    diverged = sim_convergence(cluster)
    assert diverged["valid"] is False and diverged["diverged"][0]["key"] == "k"
