"""LeaderWait: leader mode's ops held while their partition has no leader this node knows of.

A replica that knows no leader (an election is under way) answers ``Redirect("not_leader", None)``. Failing the
op at once would turn every election into a burst of errors for clients to retry; holding it forever would
hide an outage. So the node holds it here for at most ``wait_ms``: as soon as the partition's replica learns a
leader the node dispatches it again (to the replica if this node leads, else on to the leader), and when the
wait ends it fails, definitely (the op never reached a leader). Nothing is held beyond the node's in-flight
bound: every held op is one of the node's waiting tokens.
"""

from __future__ import annotations

LEADER_WAIT_TIMER = "leader-wait"


class LeaderWait:
    def __init__(self) -> None:
        # partition -> (token, op, deadline) in arrival order.
        self._held: dict[int, list[tuple[int, object, int]]] = {}
        self._timer_at: int | None = None

    def __len__(self) -> int:
        return sum(len(ops) for ops in self._held.values())

    def holds(self, partition: int) -> bool:
        return partition in self._held

    def hold(self, deadline: int, partition: int, token: int, op: object) -> int | None:
        """Hold ``op`` until ``deadline``; the time to arm ``LEADER_WAIT_TIMER`` at if it is not armed early
        enough, else None."""
        self._held.setdefault(partition, []).append((token, op, deadline))
        if self._timer_at is None or deadline < self._timer_at:
            self._timer_at = deadline
            return deadline
        return None

    def release(self, partition: int) -> list[tuple[int, object, int]]:
        """Every op held for ``partition`` (its leader is known now, or it left this node), oldest first, with
        its deadline (the rest of its time goes with it)."""
        return list(self._held.pop(partition, ()))

    def expire(self, now_ms: int) -> tuple[list[tuple[int, int]], int | None]:
        """The (partition, token) pairs whose wait ended, and when to fire the timer next (None: nothing held)."""
        self._timer_at = None
        expired: list[tuple[int, int]] = []
        for partition in sorted(self._held):
            ops = self._held[partition]
            expired.extend((partition, token) for token, _, deadline in ops if deadline <= now_ms)
            kept = [held for held in ops if held[2] > now_ms]
            if kept:
                self._held[partition] = kept
            else:
                del self._held[partition]
        if self._held:
            self._timer_at = min(deadline for ops in self._held.values() for _, _, deadline in ops)
        return expired, self._timer_at
