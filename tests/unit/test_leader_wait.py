"""LeaderWait: ops held per partition until a leader is known or their wait ends."""

from kvstore.leader_wait import LeaderWait


def test_held_ops_are_released_oldest_first_and_only_for_their_partition() -> None:
    wait = LeaderWait()
    assert wait.hold(1000, 7, 1, "a") == 1000  # the first hold arms the timer
    assert wait.hold(1010, 7, 2, "b") is None  # later deadline: the armed timer comes first
    assert wait.hold(1020, 8, 3, "c") is None
    assert len(wait) == 3 and wait.holds(7) and wait.holds(8) and not wait.holds(9)
    assert wait.release(7) == [(1, "a", 1000), (2, "b", 1010)]
    assert not wait.holds(7) and wait.release(7) == []
    assert len(wait) == 1


def test_waits_end_at_their_own_deadlines_whatever_order_they_came_in() -> None:
    wait = LeaderWait()
    assert wait.hold(2000, 1, 1, "client op") == 2000
    assert wait.hold(600, 1, 2, "forwarded op") == 600  # earlier than the armed timer: re-arm
    assert wait.expire(599) == ([], 600)
    assert wait.expire(600) == ([(1, 2)], 2000)
    assert wait.expire(2000) == ([(1, 1)], None)
    assert len(wait) == 0
