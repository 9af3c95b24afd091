"""Which node leads, from what the live nodes say of themselves: the target of the leader-aimed faults.

Both chaos targets read each live node's ``leadership`` (``Node.leadership()`` in the simulator, ``GET
/cluster`` on a real cluster): per partition, the role and term of that node's replica. A node cut off from
the others may still call itself leader of a term the others have moved past, so per partition only the
claim of the highest term counts; ties (which Raft rules out within one term) go to the first node in the
given order, so the simulator's choice depends only on the cluster's state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def current_leaders(leadership: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[int, str]:
    """Partition -> the node whose replica leads it in the highest term any live node claims."""
    best: dict[int, tuple[int, str]] = {}
    for node, entries in leadership.items():
        for entry in entries:
            partition, term = entry.get("partition"), entry.get("term")
            if entry.get("role") != "leader" or type(partition) is not int or type(term) is not int:
                continue
            if partition not in best or term > best[partition][0]:
                best[partition] = (term, node)
    return {partition: node for partition, (_, node) in best.items()}


def pick_leader(leadership: Mapping[str, Sequence[Mapping[str, Any]]], partition: int | None) -> str | None:
    """The leader of ``partition``, or (None) the node that leads the most partitions; None if nobody leads."""
    leaders = current_leaders(leadership)
    if partition is not None:
        return leaders.get(partition)
    counts = {node: 0 for node in leadership}
    for node in leaders.values():
        counts[node] += 1
    best, most = None, 0
    for node, leads in counts.items():
        if leads > most:
            best, most = node, leads
    return best
