"""``FeatureClient`` and ``ChangeFeed`` against real 3-node clusters (node processes on 127.0.0.1).

One cluster per mode (single, leader, leaderless) serves the tests that leave it running; they apply the same
definitions first and use entity ids of their own. Tests that kill nodes start clusters of their own. Every
cluster is stopped however a test ends. The last two tests need no cluster: the feed's queue bound and which push
failures the client sends again."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from kvstore.change_feed import ChangeFeed, Changes
from kvstore.client import Client
from kvstore.cluster import LocalCluster
from kvstore.errors import ErrorCode, KvError
from kvstore.features import client as features_client
from kvstore.features.client import FeatureClient
from kvstore.features.definitions import Definitions, Entity, FeatureView
from kvstore.features.ingest import parse_events, push_ops
from kvstore.features.serving import EXPIRED, MISSING, PRESENT, OnlineFeatures
from partitioning.partition_map import PartitionMap

DRIVER = Entity("driver", "driver_id")
USER = Entity("user", "user_id", "string")
STATS_TTL_MS = 60_000
STATS = FeatureView("stats", DRIVER, {"trips": "int64", "rate": "float64"}, ttl_ms=STATS_TTL_MS)
TAGS = FeatureView("tags", USER, {"tags": "string_list", "blob": "bytes", "vip": "bool"})
DEFS = Definitions({"driver": DRIVER, "user": USER}, {"stats": STATS, "tags": TAGS})
# The same with a shorter TTL on stats: a registry change that changes answers.
SHORT_TTL_MS = 10_000
DEFS_SHORT_TTL = Definitions(
    DEFS.entities, {**DEFS.views, "stats": FeatureView("stats", DRIVER, dict(STATS.features), ttl_ms=SHORT_TTL_MS)}
)
FEED_THREAD = "kvstore-change-feed"
# Bounds on waiting for something to happen (never a measure of speed).
WAIT_S = 20.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def eventually(check: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}")
        time.sleep(0.02)


def feed_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == FEED_THREAD and thread.is_alive())


def stats_event(entity: int, ts: int, trips: int | None, rate: float | None) -> dict[str, Any]:
    return {"entity": entity, "event_ts_ms": ts, "values": {"trips": trips, "rate": rate}}


def same_answer(local: OnlineFeatures, cluster: OnlineFeatures) -> None:
    assert (local.source, cluster.source) == ("local", "cluster")
    assert local.entities == cluster.entities
    assert local.features == cluster.features
    assert local.values == cluster.values
    assert local.status == cluster.status
    assert local.event_ts_ms == cluster.event_ts_ms
    assert local.registry_version == cluster.registry_version


def owned_elsewhere(fs: FeatureClient, node: str, events: list[dict[str, Any]]) -> bool:
    """Whether no write of pushing ``events`` to stats goes to a partition ``node`` prefers to own."""
    partition_map = PartitionMap.from_json(fs.client.cluster()["partition_map"])
    ops = push_ops(STATS, parse_events(STATS, events))
    return all(partition_map.owner(partition_map.partition_for_key(op.key)) != node for op in ops)


@contextmanager
def running_cluster(directory: Path, mode: str) -> Iterator[LocalCluster]:
    cluster = LocalCluster.create(directory, nodes=3, mode=mode)
    try:
        cluster.up()  # stops what it started if it fails
        yield cluster
    finally:
        cluster.down(grace_s=5.0)


@pytest.fixture(scope="module", params=["single", "leader", "leaderless"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp(request.param), request.param) as running:
        yield running


@pytest.fixture
def fs(cluster: LocalCluster) -> Iterator[FeatureClient]:
    with FeatureClient(cluster.urls()) as client:
        client.apply(DEFS)
        yield client


# ---------------------------------------------------------------- the shared clusters


def test_apply_versions_the_registry(fs: FeatureClient) -> None:
    base = fs.registry().version
    assert base >= 1
    assert fs.apply(DEFS) == {"version": base, "changed": False}
    assert fs.apply(DEFS_SHORT_TTL) == {"version": base + 1, "changed": True}
    current = fs.registry()
    assert (current.version, current.definitions) == (base + 1, DEFS_SHORT_TTL)
    assert fs.view("stats").ttl_ms == SHORT_TTL_MS
    assert fs.registry(base).definitions == DEFS
    with pytest.raises(KvError) as missing:
        fs.registry(base + 1000)
    assert missing.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(KvError) as unknown:
        fs.view("drivers")
    assert unknown.value.code is ErrorCode.NOT_FOUND and "stats" in unknown.value.message
    # Going back is a change too: a new version.
    assert fs.apply(DEFS) == {"version": base + 2, "changed": True}
    assert fs.registry().definitions == DEFS


def test_push_then_online_reads_from_the_cluster(fs: FeatureClient) -> None:
    now = now_ms()
    newest = [stats_event(100, now - 1000, 2, None), stats_event(102, now, None, 2.5)]
    older = [
        stats_event(100, now - 5000, 1, 0.1),
        stats_event(100, now - 5000, 1, 0.1),  # a duplicate
        stats_event(101, now - STATS_TTL_MS - 1, 9, 9.0),  # older than the TTL
    ]
    # The newest events first: arrival order does not matter, the newest event time wins per feature.
    assert fs.push("stats", newest) == 2
    assert fs.push("stats", older, batch_size=1) == 3

    answer = fs.get_online_features("stats", [100, 101, 102, 103, 100])
    assert answer.source == "cluster"
    assert answer.features == ("rate", "trips")
    assert answer.values == {"rate": [None, None, 2.5, None, None], "trips": [2, None, None, None, 2]}
    assert answer.status == {
        "rate": [MISSING, EXPIRED, PRESENT, MISSING, MISSING],
        "trips": [PRESENT, EXPIRED, MISSING, MISSING, PRESENT],
    }
    assert answer.event_ts_ms["trips"] == [now - 1000, now - STATS_TTL_MS - 1, now, None, now - 1000]
    assert answer.registry_version == fs.registry().version
    linearizable = fs.get_online_features("stats", [100], ["trips"], consistency="linearizable")
    assert linearizable.values == {"trips": [2]}


def test_push_refusals_name_the_event_and_nothing_is_written(fs: FeatureClient) -> None:
    now = now_ms()
    with pytest.raises(KvError) as bad:
        fs.push("stats", [stats_event(110, now, 1, 1.0), {"entity": 110, "event_ts_ms": now, "values": {"trips": 1}}])
    assert bad.value.code is ErrorCode.BAD_REQUEST
    assert "events[1]" in bad.value.message and "'rate' is missing" in bad.value.message
    assert fs.get_online_features("stats", [110]).status == {"rate": [MISSING], "trips": [MISSING]}
    with pytest.raises(KvError) as unknown:
        fs.push("no_view", [stats_event(110, now, 1, 1.0)])
    assert unknown.value.code is ErrorCode.NOT_FOUND


def test_local_reads_equal_cluster_reads_and_follow_pushes(fs: FeatureClient) -> None:
    now = now_ms()
    fs.push("stats", [stats_event(200, now - 100, 5, 0.5), stats_event(201, now - STATS_TTL_MS, 6, 0.6)])
    fs.push(
        "tags",
        [{"entity": "u-1", "event_ts_ms": now, "values": {"tags": ["a", "b"], "blob": b"\x00\xff", "vip": True}}],
    )
    threads_before = feed_threads()
    local = fs.serve_locally(["stats", "tags"])
    assert fs.local is local
    assert feed_threads() == threads_before + 3  # one feed per view, one for the registry

    for view, entities in (("stats", [200, 201, 202]), ("tags", ["u-1", "u-2"])):
        same_answer(fs.get_online_features(view, entities), fs.online_from_cluster(view, entities))
    tags = fs.get_online_features("tags", ["u-1"])
    assert tags.values == {"blob": [b"\x00\xff"], "tags": [["a", "b"]], "vip": [True]}
    tags.values["tags"][0].append("padding")  # the caller's to change: the replica keeps its own
    assert fs.get_online_features("tags", ["u-1"]).values["tags"] == [["a", "b"]]
    assert fs.get_online_features("stats", [200], max_staleness_ms=10_000).source == "local"
    # A bad id gets the cluster's refusal from the replica too.
    refusals = []
    for read in (fs.get_online_features, fs.online_from_cluster):
        with pytest.raises(KvError) as bad:
            read("stats", [200, "200"])
        refusals.append((bad.value.code, bad.value.message))
    assert refusals[0] == refusals[1] == (ErrorCode.BAD_REQUEST, "driver_id must be an int64, got '200'")
    # A read that names a consistency is the cluster's to answer.
    assert fs.get_online_features("stats", [200], consistency="linearizable").source == "cluster"

    # A push reaches the replica: once it caught up in a round begun after the push was acknowledged.
    fs.push("stats", [stats_event(202, now, 7, 0.7), stats_event(200, now, None, 0.9)])
    acknowledged_s = time.monotonic()
    assert local.wait_fresher_than(acknowledged_s, WAIT_S)
    # Eventually rather than at once: the feed's node may not have applied the push yet (see local_replica.py).
    expected = {"rate": [0.9, 0.7], "trips": [None, 7]}
    eventually(lambda: fs.get_online_features("stats", [200, 202]).values == expected, "the push reaches the replica")
    answer = fs.get_online_features("stats", [200, 202])
    assert answer.source == "local"
    same_answer(answer, fs.online_from_cluster("stats", [200, 202]))

    fs.close()
    assert fs.local is None
    assert feed_threads() == threads_before


def test_a_registry_change_reaches_the_local_replica(fs: FeatureClient) -> None:
    now = now_ms()
    # 30 s old: live under a TTL of 60 s, expired under one of 10 s.
    fs.push("stats", [stats_event(300, now - 30_000, 3, 0.3)])
    local = fs.serve_locally(["stats"])
    before = fs.get_online_features("stats", [300])
    assert (before.source, before.status["trips"]) == ("local", [PRESENT])
    try:
        version = fs.apply(DEFS_SHORT_TTL)["version"]
        eventually(lambda: local.registry.version == version, "the replica reads the new registry")
        after = fs.get_online_features("stats", [300])
        assert after.registry_version == version
        assert after.status == {"rate": [EXPIRED], "trips": [EXPIRED]}
        same_answer(after, fs.online_from_cluster("stats", [300]))

        # A view the registry drops is no longer served locally: the cluster says it is gone.
        dropped = fs.apply(Definitions({"user": USER}, {"tags": TAGS}))["version"]
        eventually(lambda: local.registry.version == dropped, "the replica reads the registry without stats")
        with pytest.raises(KvError) as gone:
            fs.get_online_features("stats", [300])
        assert gone.value.code is ErrorCode.NOT_FOUND and "'stats'" in gone.value.message
    finally:
        fs.apply(DEFS)


def test_numpy_values_and_ids_are_taken_as_the_python_values_they_stand_for(fs: FeatureClient) -> None:
    numpy = pytest.importorskip("numpy")
    now = now_ms()
    trips = numpy.array([1, 2], dtype=numpy.int64)
    rates = numpy.array([0.5, 1.5])
    ids = numpy.array([500, 501], dtype=numpy.int64)
    # Field by field as a DataFrame's rows hand them over: numpy.int64 is no int, numpy.float64 no exact float.
    events = [
        {"entity": ids[i], "event_ts_ms": numpy.int64(now), "values": {"trips": trips[i], "rate": rates[i]}}
        for i in range(2)
    ]
    fs.push(
        "tags",
        [
            {
                "entity": numpy.str_("u-9"),
                "event_ts_ms": now,
                "values": {"tags": numpy.array(["x"]), "blob": None, "vip": numpy.bool_(True)},
            }
        ],
    )
    assert fs.push("stats", events) == 2
    from_cluster = fs.get_online_features("stats", ids)
    assert from_cluster.entities == [500, 501]
    assert from_cluster.values == {"rate": [0.5, 1.5], "trips": [1, 2]}
    assert fs.get_online_features("tags", [numpy.str_("u-9")]).values["tags"] == [["x"]]
    fs.serve_locally(["stats"])
    same_answer(fs.get_online_features("stats", ids), from_cluster)


def test_a_stale_replica_gives_way_to_the_cluster(fs: FeatureClient) -> None:
    now = now_ms()
    fs.push("stats", [stats_event(400, now - 10, 1, 0.1)])
    local = fs.serve_locally(["stats"])
    # Stop following the cluster: the replica keeps its rows and ages.
    local.close()
    fs.push("stats", [stats_event(400, now, 2, 0.2)])
    eventually(lambda: fs.staleness_ms() > 200, "the stopped replica grows stale")

    fresh = fs.get_online_features("stats", [400], max_staleness_ms=100)
    assert (fresh.source, fresh.values["trips"]) == ("cluster", [2])
    held = fs.get_online_features("stats", [400])  # no bound: any staleness will do
    assert (held.source, held.values["trips"]) == ("local", [1])
    assert held.staleness_ms > 200


def test_a_failed_serve_locally_keeps_no_replica(fs: FeatureClient) -> None:
    threads_before = feed_threads()
    fs.serve_locally(["stats"])
    with pytest.raises(KvError) as unknown:
        fs.serve_locally(["stats", "no_such_view"])
    assert unknown.value.code is ErrorCode.NOT_FOUND and "no_such_view" in unknown.value.message
    assert fs.local is None
    assert fs.get_online_features("stats", [1]).source == "cluster"
    assert feed_threads() == threads_before


def test_change_feed_backpressure_blocks_the_reader_and_loses_nothing(cluster: LocalCluster) -> None:
    keys = {f"bp/{i:04d}": f"v{i}".encode() for i in range(300)}
    with Client(cluster.urls()) as client:
        for key, value in keys.items():
            client.put(key, value)
    with ChangeFeed(cluster.urls(), prefix="bp/", page_limit=5, max_queued_frames=2) as feed:
        eventually(lambda: feed.queued_frames == 2, "the queue fills")
        first_cursor = feed.cursor
        time.sleep(0.3)  # the reader had time to read on, had it not been held back
        assert feed.queued_frames == 2
        assert feed.cursor == first_cursor == ""  # nothing taken yet

        seen: dict[str, bytes | None] = {}
        frames = 0
        while set(seen) != set(keys):
            frame = feed.next(timeout_s=WAIT_S)
            if isinstance(frame, Changes):
                frames += 1
                seen.update((change.key, change.value) for change in frame.changes)
        assert seen == keys
        assert frames >= len(keys) // 5  # pages of at most 5 changes: the reader waited on the queue many times
        assert feed.cursor == frame.cursor


def test_change_feed_refusal_is_raised_not_retried(cluster: LocalCluster) -> None:
    with ChangeFeed(cluster.urls(), cursor="not-a-cursor") as feed:
        with pytest.raises(KvError) as refused:
            feed.next(timeout_s=WAIT_S)
        assert refused.value.code is ErrorCode.BAD_REQUEST
        assert "not a change-feed cursor" in refused.value.message
        assert feed.failure is refused.value
        assert feed.reconnects == 0


# ---------------------------------------------------------------- clusters that lose nodes


@pytest.mark.parametrize("mode", ["leader", "leaderless"])
def test_change_feed_resumes_after_its_node_is_killed_and_misses_no_acknowledged_key(tmp_path: Path, mode: str) -> None:
    with running_cluster(tmp_path / "cluster", mode) as cluster, Client(cluster.urls()) as client:
        first_node = cluster.config.node_ids[0]
        acknowledged: dict[str, bytes] = {}
        done = threading.Event()

        def write(start: int, stop: int) -> None:
            for i in range(start, stop):
                key, value = f"cf/{i:04d}", f"v{i}".encode()
                try:
                    client.put(key, value)
                except KvError:
                    continue  # not acknowledged: the feed owes nothing for it
                acknowledged[key] = value

        def write_rest() -> None:
            write(150, 300)
            done.set()

        seen: dict[str, bytes | None] = {}

        def consume(feed: ChangeFeed, until: Callable[[], bool]) -> None:
            deadline = time.monotonic() + WAIT_S
            while not until():
                assert time.monotonic() < deadline, f"missing: {sorted(set(acknowledged) - set(seen))[:5]}"
                try:
                    frame = feed.next(timeout_s=1.0)
                except Exception:  # queue.Empty: nothing new yet
                    continue
                if isinstance(frame, Changes):
                    seen.update((c.key, c.value) for c in frame.changes)

        # The feed reads from the first node: kill it (-9) in the middle of the writes.
        feed = ChangeFeed(cluster.urls(), prefix="cf/")
        try:
            write(0, 150)
            consume(feed, lambda: len(seen) >= 100)
            cluster.kill(first_node)
            writer = threading.Thread(target=write_rest)
            writer.start()
            consume(feed, lambda: done.is_set() and set(acknowledged) <= set(seen))
            writer.join()
        finally:
            feed.close()
        assert len(acknowledged) >= 250, "the survivors took most writes"
        assert {k: seen[k] for k in acknowledged} == acknowledged
        assert feed.reconnects >= 1

        # A later feed from the consumer's cursor delivers what was written since, without starting over.
        cursor = feed.cursor
        before = dict(seen)
        seen.clear()
        write(300, 320)
        later = {f"cf/{i:04d}" for i in range(300, 320)}
        with ChangeFeed(cluster.urls(), prefix="cf/", cursor=cursor) as resumed:
            consume(resumed, lambda: later & set(acknowledged) <= set(seen))
        assert later & set(acknowledged), "the survivors took writes"
        assert len(set(seen) & set(before)) < len(before)


def test_local_replica_fails_over_then_gives_way_when_every_node_is_gone(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "cluster", "leader") as cluster, FeatureClient(cluster.urls()) as fs:
        fs.apply(DEFS)
        now = now_ms()
        fs.push("stats", [stats_event(1, now, 1, 0.1)])
        local = fs.serve_locally(["stats"])
        nodes = cluster.config.node_ids
        # An entity whose writes avoid the partitions the first node prefers to own: their pushes fail while it is
        # down until a new leader is known, which is not what this test is about.
        entity = next(e for e in range(2, 1000) if owned_elsewhere(fs, nodes[0], [stats_event(e, now, 2, 0.2)]))
        fs.push("stats", [stats_event(entity, now - 1, 1, 0.1)])

        # Its feeds read from the first node: killed, they go on from another.
        cluster.kill(nodes[0])
        fs.push("stats", [stats_event(entity, now, 2, 0.2)])
        acknowledged_s = time.monotonic()
        assert local.wait_fresher_than(acknowledged_s, WAIT_S), local.errors()
        eventually(
            lambda: fs.get_online_features("stats", [1, entity]).values["trips"] == [1, 2],
            "the push reaches the replica through another node",
        )
        answer = fs.get_online_features("stats", [1, entity], max_staleness_ms=WAIT_S * 1000)
        assert (answer.source, answer.values["trips"]) == ("local", [1, 2])

        # Nothing left to follow: a bounded read cannot be served fresh, and says so; an unbounded one is.
        for node in nodes[1:]:
            cluster.kill(node)
        eventually(lambda: fs.staleness_ms() > 500, "the replica grows stale")
        with pytest.raises(KvError) as gone:
            fs.get_online_features("stats", [entity], max_staleness_ms=100)
        assert gone.value.code is ErrorCode.UNAVAILABLE
        held = fs.get_online_features("stats", [entity])
        assert (held.source, held.values["trips"]) == ("local", [2])
        assert local.errors(), "the feeds say why they fall behind"

        # Iterating a feed of a cluster that is gone waits for frames (it does not raise), until it is closed.
        feed = ChangeFeed(cluster.urls())
        outcome: list[object] = []
        consumer = threading.Thread(target=lambda: outcome.extend(feed))
        consumer.start()
        consumer.join(timeout=1.5)
        assert consumer.is_alive() and outcome == []
        feed.close()
        consumer.join(timeout=WAIT_S)
        assert not consumer.is_alive() and outcome == []
        assert feed.reconnects >= 1


def test_pushes_go_on_after_a_node_is_killed_in_leader_mode(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "cluster", "leader") as cluster, FeatureClient(cluster.urls()) as fs:
        fs.apply(DEFS)
        first = cluster.config.node_ids[0]
        events = [stats_event(entity, now_ms(), 1, 0.1) for entity in range(20)]
        assert not owned_elsewhere(fs, first, events)
        cluster.kill(first)
        with Client(cluster.urls()) as client:
            # Single-key writes go on once the survivors elected leaders for the dead node's partitions.
            eventually(lambda: _put_succeeds(client), "single-key writes succeed again")
        assert fs.push("stats", events) == len(events)


def _put_succeeds(client: Client) -> bool:
    try:
        for i in range(20):
            client.put(f"probe/{i}", b"x")
    except KvError:
        return False
    return True


def test_change_feed_queue_is_always_bounded() -> None:
    with pytest.raises(ValueError, match="max_queued_frames must be at least 1, got 0"):
        ChangeFeed(["http://127.0.0.1:1"], max_queued_frames=0)


def test_push_retries_transient_failures_only(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    answers: list[KvError | dict[str, Any]] = []

    def call(method: str, path: str, doc: Any = None, **_: Any) -> dict[str, Any]:
        calls.append(path)
        answer = answers.pop(0)
        if isinstance(answer, KvError):
            raise answer
        return answer

    monkeypatch.setattr(time, "sleep", lambda _s: None)  # the pauses between sends, not the test's own
    with FeatureClient("http://127.0.0.1:1") as fs:
        monkeypatch.setattr(fs.client, "call", call)
        event = stats_event(1, 1, 1, 1.0)
        answers[:] = [
            KvError(ErrorCode.UNAVAILABLE, "leader changing"),
            KvError(ErrorCode.TIMEOUT, "slow"),
            {"events": 1, "writes": 2},
        ]
        assert fs.push("stats", [event]) == 1
        assert len(calls) == 3
        calls.clear()
        answers[:] = [KvError(ErrorCode.INTERNAL, "a bug")]
        with pytest.raises(KvError, match="a bug"):
            fs.push("stats", [event])
        assert len(calls) == 1, "an internal error would answer the same again"
        calls.clear()
        answers[:] = [KvError(ErrorCode.UNAVAILABLE, "down")] * features_client.PUSH_ATTEMPTS
        with pytest.raises(KvError, match="down"):
            fs.push("stats", [event])
        assert len(calls) == features_client.PUSH_ATTEMPTS
