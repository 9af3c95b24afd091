"""The feature store's routes against real in-process nodes, in single, leader and leaderless mode: the registry,
pushes (newest event time wins whatever the order, duplicates change nothing), online reads (TTL at the node's
clock), watermarks, and the refusals, hostile input included."""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgpack
import pytest
from server_support import HANG_GUARD_S, error_of

from kvstore.config import LeaderlessConfig, Limits
from kvstore.features import batch as feature_batch
from kvstore.features.client import FeatureClient
from kvstore.features.ingest import MAX_PUSH_EVENTS
from kvstore.features.keys import events_prefix
from kvstore.server import routes_features
from kvstore.server.inprocess import InProcessCluster, loopback_config

Json = dict[str, Any]
TTL_MS = 3_600_000
DEFINITIONS: Json = {
    "entities": {"driver": {"join_key": "driver_id"}, "user": {"join_key": "user_id", "value_type": "string"}},
    "views": {
        "stats": {
            "entity": "driver",
            "features": {"rate": "float64", "trips": "int64", "name": "string", "tags": "string_list", "raw": "bytes"},
        },
        "fresh": {"entity": "user", "features": {"score": "float64", "ok": "bool"}, "ttl_ms": TTL_MS},
    },
}
# Small batches, so a push of a few events already takes several.
LIMITS = Limits(max_batch_keys=4)
JSON = {"Content-Type": "application/json"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture(params=["single", "leader", "leaderless"])
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[InProcessCluster]:
    mode = request.param
    if mode == "single":
        config = loopback_config(1, partitions=4, limits=LIMITS)
    elif mode == "leader":
        config = loopback_config(3, partitions=3, mode="leader", limits=LIMITS)
    else:
        config = loopback_config(3, partitions=4, mode="leaderless", leaderless=LeaderlessConfig(), limits=LIMITS)
    async with InProcessCluster(config) as running:
        yield running



async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    *,
    as_msgpack: bool = False,
    params: dict[str, str] | None = None,
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"} if as_msgpack else JSON
    data = None if body is None else msgpack.packb(body) if as_msgpack else json.dumps(body)
    async with http.request(method, url, data=data, headers=headers, params=params) as response:
        raw = await response.read()
        if response.content_type == "application/msgpack":
            return response.status, msgpack.unpackb(raw)
        return response.status, json.loads(raw)


async def ok(http: aiohttp.ClientSession, method: str, url: str, body: Any = None, **kw: Any) -> Any:
    """The answer of a request that must succeed; in leader mode retried while the leaders are elected."""
    for _ in range(int(HANG_GUARD_S / 0.05)):
        status, doc = await call(http, method, url, body, **kw)
        if status == 200:
            return doc
        if status not in (503, 504, 421) and doc["error"]["code"] not in ("not_leader", "unavailable", "timeout"):
            break
        await asyncio.sleep(0.05)
    raise AssertionError(f"{method} {url}: {status} {doc}")


async def refused(http: aiohttp.ClientSession, method: str, url: str, body: Any, status: int, code: str) -> str:
    got, doc = await call(http, method, url, body)
    assert (got, doc["error"]["code"]) == (status, code), doc
    message: str = doc["error"]["message"]
    return message


async def apply(http: aiohttp.ClientSession, base: str, definitions: Json = DEFINITIONS) -> Json:
    answer: Json = await ok(http, "PUT", f"{base}/features/registry", definitions)
    return answer


def event(entity: Any, ts: Any, **values: Any) -> Json:
    full = {"rate": None, "trips": None, "name": None, "tags": None, "raw": None, **values}
    return {"entity": entity, "event_ts_ms": ts, "values": full}


async def online(http: aiohttp.ClientSession, base: str, body: Json, **kw: Any) -> Json:
    answer: Json = await ok(http, "POST", f"{base}/features/online", body, **kw)
    return answer


# ---------------------------------------------------------------- registry


async def test_the_registry_is_versioned_and_read_on_every_request(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    n1, n2 = cluster.url("n1"), cluster.url(cluster.config.node_ids[-1])
    empty = await ok(http, "GET", f"{n1}/features/registry")
    assert empty == {"version": 0, "definitions": {"entities": {}, "views": {}}, "applied_at_ms": 0}
    assert await apply(http, n1) == {"version": 1, "changed": True}
    # The same definitions again (in another order): the same version.
    reordered = {"views": DEFINITIONS["views"], "entities": DEFINITIONS["entities"]}
    assert await apply(http, n1, reordered) == {"version": 1, "changed": False}
    current = await ok(http, "GET", f"{n2}/features/registry", as_msgpack=True)
    assert current["version"] == 1 and current["definitions"]["views"]["fresh"]["ttl_ms"] == TTL_MS
    # A pushed feature the view does not have is refused, until a new version adds it: the very next request.
    late = event(7, 1, speed=1.0)
    assert "no feature 'speed'" in await refused(
        http, "POST", f"{n1}/features/push", {"view": "stats", "events": [late]}, 400, "bad_request"
    )
    changed = json.loads(json.dumps(DEFINITIONS))
    changed["views"]["stats"]["features"]["speed"] = "float64"
    assert await apply(http, n2, changed) == {"version": 2, "changed": True}
    assert await ok(http, "POST", f"{n1}/features/push", {"view": "stats", "events": [{**late}]}) == {
        "events": 1,
        "writes": 2,
    }
    first = await ok(http, "GET", f"{n1}/features/registry", params={"version": "1"})
    assert first["version"] == 1 and "speed" not in first["definitions"]["views"]["stats"]["features"]
    assert (await ok(http, "GET", f"{n1}/features/registry"))["version"] == 2
    await refused(http, "GET", f"{n1}/features/registry?version=3", None, 404, "not_found")
    for bad in ("0", "x", "\u0663", "1" * 13, "-1"):
        status, _ = await call(http, "GET", f"{n1}/features/registry", params={"version": bad})
        assert status == 400


# ---------------------------------------------------------------- push and online reads


async def test_pushes_merge_newest_event_time_wins_whatever_the_order(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    n1, n2 = cluster.url("n1"), cluster.url(cluster.config.node_ids[-1])
    await apply(http, n1)
    newest = event(1, 300, rate=3.0, trips=3, name="three", tags=["c"], raw=None)
    older = event(1, 200, rate=2.0, trips=2, name="two", tags=["b"], raw=b"\x02")
    oldest = event(1, 100, rate=1.0, trips=1, name="one", tags=["a"], raw=b"\x01")
    # In msgpack the bytes feature is bin; JSON has no bytes (a JSON push leaves it null).
    for batch, through in (([newest], n1), ([oldest], n2), ([older, oldest], n1)):
        assert await ok(http, "POST", f"{through}/features/push", {"view": "stats", "events": batch}, as_msgpack=True)
    answer = await online(http, n2, {"view": "stats", "entities": [1, 2]})
    assert answer["features"] == ["name", "rate", "raw", "tags", "trips"]
    assert answer["values"] == {
        "name": ["three", None],
        "rate": [3.0, None],
        # The newest event carried no value for raw: an explicit missing value wins over older ones.
        "raw": [None, None],
        "tags": [["c"], None],
        "trips": [3, None],
    }
    assert answer["status"]["raw"] == ["missing", "missing"] and answer["status"]["rate"] == ["present", "missing"]
    assert answer["event_ts_ms"]["raw"] == [300, None] and answer["event_ts_ms"]["trips"] == [300, None]
    assert answer["registry_version"] == 1 and answer["source"] == "cluster"
    # Duplicates change nothing: the same push again, and the log holds the same three events.
    again = {"view": "stats", "events": [older, newest, oldest]}
    assert await ok(http, "POST", f"{n1}/features/push", again, as_msgpack=True) == {"events": 3, "writes": 4}
    assert await online(http, n1, {"view": "stats", "entities": [1]}) == {**answer, "entities": [1],
        "values": {k: v[:1] for k, v in answer["values"].items()},
        "status": {k: v[:1] for k, v in answer["status"].items()},
        "event_ts_ms": {k: v[:1] for k, v in answer["event_ts_ms"].items()}}


async def test_a_push_of_many_events_in_batches_json_and_msgpack_answers(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    n1 = cluster.url("n1")
    await apply(http, n1)
    events = [event(i, 1000 + i, rate=i / 2, trips=i, name=f"d{i}", tags=[str(i)] * (i % 3)) for i in range(25)]
    # 25 events, 25 entities: 50 writes in batches of 4.
    assert await ok(http, "POST", f"{n1}/features/push", {"view": "stats", "events": events}) == {
        "events": 25,
        "writes": 50,
    }
    entities = [24, 0, 99, 7]
    body = {"view": "stats", "entities": entities, "features": ["trips", "tags"]}
    answer = await online(http, n1, body, as_msgpack=True)
    assert answer["features"] == ["trips", "tags"] and set(answer["values"]) == {"trips", "tags"}
    assert answer["values"]["trips"] == [24, 0, None, 7]
    assert answer["values"]["tags"] == [[], [], None, ["7"]]
    assert answer["event_ts_ms"]["trips"] == [1024, 1000, None, 1007]
    assert answer["entities"] == entities


async def test_a_json_answer_is_strict_json_and_msgpack_keeps_every_value(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    n1 = cluster.url("n1")
    await apply(http, n1)
    odd = [event(1, 10, rate=float("nan"), raw=b"\xff\x00"), event(2, 10, rate=float("inf")), event(3, 10, rate=-1e309)]
    await ok(http, "POST", f"{n1}/features/push", {"view": "stats", "events": odd}, as_msgpack=True)
    body = {"view": "stats", "entities": [1, 2, 3], "features": ["rate", "raw"]}
    async with http.post(f"{n1}/features/online", json=body) as response:
        text = await response.text()
    # Strict JSON: no bare NaN or Infinity (json.loads would take them; a strict parser refuses them).
    doc = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in a JSON answer"))
    assert doc["values"] == {"rate": ["NaN", "Infinity", "-Infinity"], "raw": [{"b64": "/wA="}, None, None]}
    packed = await online(http, n1, body, as_msgpack=True)
    rates = packed["values"]["rate"]
    assert math.isnan(rates[0]) and rates[1:] == [math.inf, -math.inf] and packed["values"]["raw"][0] == b"\xff\x00"


async def test_ttl_expiry_is_judged_at_the_node_clock(cluster: InProcessCluster, http: aiohttp.ClientSession) -> None:
    n1 = cluster.url("n1")
    await apply(http, n1)
    now = now_ms()
    events = [
        {"entity": "old", "event_ts_ms": now - 2 * TTL_MS, "values": {"score": 0.5, "ok": True}},
        {"entity": "new", "event_ts_ms": now + TTL_MS, "values": {"score": 1.5, "ok": None}},
        {"user_id": "ünï✓", "event_ts_ms": now, "values": {"score": 2, "ok": False}},
    ]
    await ok(http, "POST", f"{n1}/features/push", {"view": "fresh", "events": events})
    answer = await online(http, n1, {"view": "fresh", "entities": ["old", "new", "ünï✓", "none"]})
    assert answer["values"] == {"ok": [None, None, False, None], "score": [None, 1.5, 2.0, None]}
    assert answer["status"] == {
        "ok": ["expired", "missing", "present", "missing"],
        "score": ["expired", "present", "present", "missing"],
    }
    assert answer["event_ts_ms"]["score"] == [now - 2 * TTL_MS, now + TTL_MS, now, None]
    nobody = await online(http, n1, {"view": "fresh", "entities": []})
    empty: dict[str, list[Any]] = {"ok": [], "score": []}
    assert (nobody["entities"], nobody["values"], nobody["status"]) == ([], empty, empty)


async def test_read_settings_are_the_modes(cluster: InProcessCluster, http: aiohttp.ClientSession) -> None:
    n1 = cluster.url("n1")
    mode = cluster.config.mode
    await apply(http, n1)
    await ok(http, "POST", f"{n1}/features/push", {"view": "stats", "events": [event(5, 1, trips=5)]})
    accepted = {
        "single": [{"consistency": "linearizable"}, {"consistency": "read-index"}],
        "leader": [{"consistency": "linearizable"}, {"consistency": "stale"}, {"consistency": "lease"}],
        "leaderless": [{"r": "quorum"}, {"r": "all"}, {"consistency": "linearizable"}],
    }[mode]
    for settings in accepted:
        answer = await online(http, n1, {"view": "stats", "entities": [5], "features": ["trips"], **settings})
        assert answer["values"] == {"trips": [5]}, settings
    refused_settings: list[dict[str, Any]] = {
        "single": [{"consistency": "stale"}, {"r": "one"}],
        "leader": [{"r": "one"}, {"consistency": "eventual"}],
        "leaderless": [{"r": "9"}, {"consistency": "stale"}],
    }[mode]
    for settings in [*refused_settings, {"consistency": 1}, {"r": None}]:
        body = {"view": "stats", "entities": [5], **settings}
        await refused(http, "POST", f"{n1}/features/online", body, 400, "bad_request")


# ---------------------------------------------------------------- watermarks


async def test_a_watermark_only_moves_forward(cluster: InProcessCluster, http: aiohttp.ClientSession) -> None:
    n1, n2 = cluster.url("n1"), cluster.url(cluster.config.node_ids[-1])
    await apply(http, n1)
    assert await ok(http, "GET", f"{n1}/features/watermarks/stats") == {"view": "stats", "watermark_ms": None}
    assert await ok(http, "PUT", f"{n1}/features/watermarks/stats", {"watermark_ms": 500}) == {
        "view": "stats",
        "watermark_ms": 500,
    }
    assert (await ok(http, "PUT", f"{n2}/features/watermarks/stats", {"watermark_ms": 300}))["watermark_ms"] == 500
    assert (await ok(http, "GET", f"{n2}/features/watermarks/stats", as_msgpack=True))["watermark_ms"] == 500
    assert (await ok(http, "PUT", f"{n2}/features/watermarks/stats", {"watermark_ms": 501}))["watermark_ms"] == 501
    await refused(http, "GET", f"{n1}/features/watermarks/nope", None, 404, "not_found")
    for bad in ({"watermark_ms": -1}, {"watermark_ms": 1.5}, {"watermark_ms": True}, {"watermark_ms": 1 << 63}, {}):
        await refused(http, "PUT", f"{n1}/features/watermarks/stats", bad, 400, "bad_request")
    await refused(http, "GET", f"{n1}/features/watermarks/stats?at=1", None, 400, "bad_request")


# ---------------------------------------------------------------- refusals and hostile input


PUSH_REFUSALS: list[tuple[Any, str]] = [
    ({"view": "stats"}, "missing field"),
    ({"view": "stats", "events": []}, "non-empty list"),
    ({"view": "stats", "events": {}}, "non-empty list"),
    ({"view": 5, "events": [event(1, 1)]}, "view must be a string"),
    ({"view": "stats", "events": [event(1, 1)], "extra": 1}, "unknown field"),
    ({"view": "stats", "events": [event("1", 1)]}, "driver_id must be an int64"),
    ({"view": "stats", "events": [event(1 << 63, 1)]}, "int64"),
    ({"view": "stats", "events": [event(True, 1)]}, "int64"),
    ({"view": "stats", "events": [event(1, -1)]}, "event_ts_ms"),
    ({"view": "stats", "events": [event(1, 1.0)]}, "event_ts_ms"),
    ({"view": "stats", "events": [event(1, 1 << 63)]}, "event_ts_ms"),
    ({"view": "stats", "events": [event(1, 1, trips="3")]}, "'trips' must be int64"),
    ({"view": "stats", "events": [event(1, 1, trips=1.0)]}, "'trips' must be int64"),
    ({"view": "stats", "events": [event(1, 1, trips=True)]}, "'trips' must be int64"),
    ({"view": "stats", "events": [event(1, 1, trips=1 << 64)]}, "'trips' must be int64"),
    ({"view": "stats", "events": [event(1, 1, tags="a")]}, "'tags' is a string_list"),
    ({"view": "stats", "events": [event(1, 1, tags=[1])]}, "'tags' must be string"),
    ({"view": "stats", "events": [event(1, 1, rate="NaN")]}, "'rate' must be float64"),
    ({"view": "stats", "events": [event(1, 1, speed=1)]}, "no feature 'speed'"),
    ({"view": "stats", "events": [{"entity": 1, "event_ts_ms": 1, "values": {"rate": 1.0}}]}, "is missing"),
    ({"view": "stats", "events": [{"entity": 1, "event_ts_ms": 1}]}, "values are an object"),
    ({"view": "stats", "events": [[1, 1]]}, "an event is an object"),
    ({"view": "stats", "events": [{**event(1, 1), "driver_id": 2}]}, "not both"),
    ({"view": "stats", "events": [{"event_ts_ms": 1, "values": event(1, 1)["values"]}]}, "driver_id must be an int64"),
    ({"view": "fresh", "events": [{"entity": "a/b", "event_ts_ms": 1, "values": {"score": 1, "ok": 1}}]}, "'/'"),
    ({"view": "fresh", "events": [{"entity": "", "event_ts_ms": 1, "values": {"score": 1, "ok": True}}]}, "1 to"),
    ({"view": "fresh", "events": [{"entity": "x" * 257, "event_ts_ms": 1, "values": {"score": 1, "ok": True}}]},
     "1 to 256"),
]


async def test_bad_pushes_are_refused_and_store_nothing(cluster: InProcessCluster, http: aiohttp.ClientSession) -> None:
    n1 = cluster.url("n1")
    await apply(http, n1)
    good = event(1, 10, rate=1.0, trips=1, name="kept", tags=[], raw=None)
    await ok(http, "POST", f"{n1}/features/push", {"view": "stats", "events": [good]})
    before = await online(http, n1, {"view": "stats", "entities": [1]})
    for body, words in PUSH_REFUSALS:
        # A bad event after good ones refuses the whole push: events[i] names it.
        if isinstance(body.get("events"), list) and body["events"]:
            body = {**body, "events": [event(1, 99, trips=99), *body["events"]]} if body["view"] == "stats" else body
        message = await refused(http, "POST", f"{n1}/features/push", body, 400, "bad_request")
        assert words in message, (body, message)
    await refused(http, "POST", f"{n1}/features/push", {"view": "nope", "events": [good]}, 404, "not_found")
    # A string entity id of 256 characters of 4 UTF-8 bytes: its keys are too long, found before any write.
    long_id = "\U0001f600" * 256
    body = {"view": "fresh", "events": [{"entity": "fine", "event_ts_ms": 1, "values": {"score": 1, "ok": True}},
                                        {"entity": long_id, "event_ts_ms": 1, "values": {"score": 1, "ok": True}}]}
    assert "bytes" in await refused(http, "POST", f"{n1}/features/push", body, 400, "bad_key")
    missing = await online(http, n1, {"view": "fresh", "entities": ["fine"]})
    assert missing["status"]["score"] == ["missing"]
    too_many = {"view": "stats", "events": [event(1, 1)] * (MAX_PUSH_EVENTS + 1)}
    await refused(http, "POST", f"{n1}/features/push", too_many, 413, "too_large")
    assert await online(http, n1, {"view": "stats", "entities": [1]}) == before


RAW_REFUSALS: list[tuple[str, bytes, dict[str, str], int]] = [
    ("/features/push", b'{"view": "stats", "events": [', {}, 400),
    ("/features/push", b'{"view": "stats", "view": "fresh", "events": []}', {}, 400),
    ("/features/push", b"[" * 100_000 + b"]" * 100_000, {}, 400),
    ("/features/push", b'{"view":"stats","events":[{"entity":1,"event_ts_ms":1' + b"0" * 5000 + b"}]}", {}, 400),
    ("/features/push", b'{"view":"fresh","events":[{"entity":"\\ud800","event_ts_ms":1,"values":{}}]}', {}, 400),
    (
        "/features/push",
        b'{"view":"fresh","events":[{"entity":"a","event_ts_ms":1,"values":{"score":1,"ok":"\\ud800"}}]}',
        {},
        400,
    ),
    (
        "/features/push",
        b'{"view":"stats","events":[{"entity":1,"event_ts_ms":1,"values":{"rate":1,"trips":1,"name":"\\udfff",'
        b'"tags":null,"raw":null}}]}',
        {},
        400,
    ),
    ("/features/push", gzip.compress(b" " * (40 << 20)), {"Content-Encoding": "gzip"}, 413),
    ("/features/push", b"\x81\xa4view\xc1", {"Content-Type": "application/msgpack"}, 400),
    ("/features/push", msgpack.packb({"view": "stats", "events": [{"entity": 1, "event_ts_ms": 1,
                                                                   "values": {"rate": b"x"}}]}),
     {"Content-Type": "application/msgpack"}, 400),
    ("/features/push", b'{"view":"stats","events":[]}', {"Content-Type": "text/plain"}, 415),
    ("/features/online", b'{"view":"stats","entities":[' + b"1," * 10_000 + b"1]}", {}, 400),
    ("/features/online", b'{"view":"stats","entities":[1],"features":["nope"]}', {}, 400),
    ("/features/online", b'{"view":"stats","entities":[1],"features":["rate","rate"]}', {}, 400),
    ("/features/online", b'{"view":"stats","entities":[1],"features":"rate"}', {}, 400),
    ("/features/online", b'{"view":"stats","entities":"1"}', {}, 400),
    ("/features/online", b'{"view":"stats","entities":[1.5]}', {}, 400),
    ("/features/online", b'{"view":"fresh","entities":["a/b"]}', {}, 400),
    ("/features/online", b'{"view":"nope","entities":[1]}', {}, 404),
    ("/features/online", b'{"view":"stats","entities":[1]}' + b" " * (5 << 20), {}, 413),
    ("/features/online?x=1", b'{"view":"stats","entities":[1]}', {}, 400),
    ("/features/push?w=1&replication=sync&x=1", b'{"view":"stats","events":[]}', {}, 400),
]


@pytest.mark.parametrize("single_only", [True])
async def test_hostile_bodies_get_a_clear_4xx_and_change_nothing(
    http: aiohttp.ClientSession, single_only: bool
) -> None:
    async with InProcessCluster(loopback_config(1, partitions=4)) as cluster:
        n1 = cluster.url("n1")
        await apply(http, n1)
        good = event(1, 10, rate=1.0, trips=1, name="kept", tags=["t"], raw=None)
        await ok(http, "POST", f"{n1}/features/push", {"view": "stats", "events": [good]})
        before = await online(http, n1, {"view": "stats", "entities": [1]})
        for path, body, headers, status in RAW_REFUSALS:
            async with http.post(f"{n1}{path}", data=body, headers={**JSON, **headers}) as response:
                assert response.status == status, (path, body[:80], await response.text())
                await error_of(response)
        bad_registries: list[Any] = [
            [],
            {"entities": {"e": {"join_key": "id", "description": ["x"]}}},
            {"entities": {"e": {"join_key": "id"}}, "views": {"v": {"entity": "e", "features": {"f": "int64"},
                                                                     "ttl_ms": 1 << 70}}},
            {"entities": {"e": {"join_key": "id", "value_type": "float"}}},
            {"entities": {"e/x": {"join_key": "id"}}},
            {"views": {"v": {"entity": "ghost", "features": {"f": "int64"}}}},
            {"entities": {"e": {"join_key": "id"}}, "views": {"v": {"entity": "e", "features": {}}}},
            {"entities": {"e": {"join_key": "id"}}, "views": {"v": {"entity": "e", "features": {"id": "int64"}}}},
            {"entities": {"e": {"join_key": "id"}}, "views": {"v": {"entity": "e", "features": {"f": "int128"}}}},
            {"entities": {"e": {"join_key": "id"}}, "views": {"v": {"entity": "e", "features": {"f": "int64"},
                                                                     "ttl_s": float("nan")}}},
        ]
        for bad in bad_registries:
            await refused(http, "PUT", f"{n1}/features/registry", bad, 400, "bad_request")
        async with http.put(
            f"{n1}/features/registry",
            data=b'{"entities":{"e":{"join_key":"id","description":"\\ud800"}}}',
            headers=JSON,
        ) as response:
            assert response.status == 400
        # Nothing changed: the registry, the data, and msgpack answers still encode.
        assert (await ok(http, "GET", f"{n1}/features/registry", as_msgpack=True))["version"] == 1
        assert await online(http, n1, {"view": "stats", "entities": [1]}) == before


async def test_plain_writes_under_the_event_time_prefixes_are_refused(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    n1 = cluster.url("n1")
    await apply(http, n1)
    await ok(http, "POST", f"{n1}/features/push", {"view": "stats", "events": [event(1, 1, trips=1)]})
    before = await online(http, n1, {"view": "stats", "entities": [1]})
    for key in ("__fs/on/stats/1", "__fs/ev/stats/1/0000000000000001/x", "__fs/wm/stats"):
        async with http.put(f"{n1}/kv/{key}", data=b"garbage") as response:
            message = str((await error_of(response))["message"])
            assert response.status == 400 and "belong to the feature store" in message
    batch = {"put": [{"key": "plain", "value": "v"}, {"key": "__fs/on/stats/1", "value": "garbage"}]}
    assert "belong to the feature store" in await refused(http, "POST", f"{n1}/batch", batch, 400, "bad_request")
    assert await online(http, n1, {"view": "stats", "entities": [1]}) == before


async def test_a_plain_write_of_the_registry_key_is_refused(http: aiohttp.ClientSession) -> None:
    async with InProcessCluster(loopback_config(1, partitions=4)) as cluster:
        n1 = cluster.url("n1")
        await apply(http, n1)
        async with http.put(f"{n1}/kv/__fs/registry", data=b"garbage") as response:
            status = response.status
        registry_status, _ = await call(http, "GET", f"{n1}/features/registry")
        assert (status, registry_status) == (400, 200)


async def test_concurrent_applies_each_version_holds_what_its_apply_answered(http: aiohttp.ClientSession) -> None:
    async with InProcessCluster(loopback_config(3, partitions=3, mode="leader")) as cluster:
        n1 = cluster.url("n1")
        await ok(http, "GET", f"{n1}/features/registry")
        variants = []
        for i in range(8):
            variant = json.loads(json.dumps(DEFINITIONS))
            variant["views"]["stats"]["description"] = f"variant {i}"
            variants.append(variant)
        urls = [f"{cluster.url(cluster.config.node_ids[i % 3])}/features/registry" for i in range(len(variants))]
        answers = await asyncio.gather(*(call(http, "PUT", url, v) for url, v in zip(urls, variants, strict=True)))
        applied = {}
        for variant, (status, doc) in zip(variants, answers, strict=True):
            # A lost race is a 409 (apply again), never a version holding another apply's definitions.
            assert status in (200, 409), doc
            if status == 200:
                applied[doc["version"]] = variant["views"]["stats"]["description"]
        assert applied
        current = await ok(http, "GET", f"{n1}/features/registry")
        assert current["definitions"]["views"]["stats"]["description"] == applied[current["version"]]
        for version, description in applied.items():
            held = await ok(http, "GET", f"{n1}/features/registry", params={"version": str(version)})
            assert held["definitions"]["views"]["stats"]["description"] == description


async def test_write_settings_are_the_modes(cluster: InProcessCluster, http: aiohttp.ClientSession) -> None:
    n1 = cluster.url("n1")
    mode = cluster.config.mode
    await apply(http, n1)
    body = {"view": "stats", "events": [event(3, 1, trips=3)]}
    accepted = {
        "single": [{"replication": "sync"}],
        "leader": [{"replication": "sync"}, {"replication": "async"}],
        "leaderless": [{"w": "quorum"}, {"w": "one"}, {"w": "3"}],
    }[mode]
    for params in accepted:
        assert await ok(http, "POST", f"{n1}/features/push", body, params=params) == {"events": 1, "writes": 2}
    refused_params = {
        "single": [{"replication": "async"}, {"w": "one"}],
        "leader": [{"w": "one"}, {"replication": "never"}],
        "leaderless": [{"w": "4"}, {"replication": "sync"}],
    }[mode]
    for params in [*refused_params, {"consistency": "linearizable"}]:
        status, doc = await call(http, "POST", f"{n1}/features/push", body, params=params)
        assert status == 400, (params, doc)
    # The settings are checked first: a 400 even for a view that does not exist.
    nowhere = {**body, "view": "nope"}
    assert (await call(http, "POST", f"{n1}/features/push", nowhere, params=refused_params[0]))[0] == 400


async def test_an_unacknowledged_push_says_how_many_writes_and_is_sent_again(http: aiohttp.ClientSession) -> None:
    config = loopback_config(3, partitions=4, mode="leaderless", leaderless=LeaderlessConfig())
    async with InProcessCluster(config, start=("n1", "n2")) as cluster:
        n1 = cluster.url("n1")
        await ok(http, "PUT", f"{n1}/features/registry", DEFINITIONS)
        body = {"view": "stats", "events": [event(i, 1, trips=i) for i in range(3)]}
        status, doc = await call(http, "POST", f"{n1}/features/push", body, params={"w": "all"})
        # Every write reaches two of its three replicas: none is acknowledged by all.
        assert status in (503, 504), doc
        assert doc["unacknowledged"] == doc["writes"] == 6 and "send it again" in doc["error"]["message"]


async def test_a_quorum_push_with_one_replica_down_is_acknowledged(http: aiohttp.ClientSession) -> None:
    config = loopback_config(3, partitions=4, mode="leaderless", leaderless=LeaderlessConfig())
    async with InProcessCluster(config, start=("n1", "n2")) as cluster:
        n1 = cluster.url("n1")
        await ok(http, "PUT", f"{n1}/features/registry", DEFINITIONS)
        body = {"view": "stats", "events": [event(i, 1, trips=i) for i in range(8)]}
        status, doc = await call(http, "POST", f"{n1}/features/push", body, params={"w": "quorum"})
        assert (status, doc) == (200, {"events": 8, "writes": 16})


async def test_an_export_pages_within_a_node_whose_scan_limit_is_lower(http: aiohttp.ClientSession) -> None:
    # The export asks for pages of 10,000 keys; this node serves at most 7 a page, and says so.
    config = loopback_config(1, partitions=4, limits=Limits(max_scan_limit=7))
    async with InProcessCluster(config) as cluster:
        n1 = cluster.url("n1")
        await apply(http, n1)
        events = [event(i % 5, 1000 + i, trips=i) for i in range(23)]
        await ok(http, "POST", f"{n1}/features/push", {"view": "stats", "events": events})

        def export() -> list[tuple[str, bytes]]:
            with FeatureClient([n1]) as fs:
                return list(feature_batch.event_log_items(fs, events_prefix("stats")))

        items = await asyncio.to_thread(export)
        assert len(items) == 23 and [key for key, _ in items] == sorted(key for key, _ in items)


async def test_an_online_read_of_more_stored_bytes_than_an_answer_holds_is_refused(
    cluster: InProcessCluster, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    n1 = cluster.url("n1")
    await apply(http, n1)
    events = [event(i, 5, name="x" * 400) for i in range(3)]
    await ok(http, "POST", f"{n1}/features/push", {"view": "stats", "events": events})
    monkeypatch.setattr(routes_features, "MAX_ONLINE_ANSWER_BYTES", 1000)  # two rows fit, three do not
    assert (await online(http, n1, {"view": "stats", "entities": [0, 1]}))["values"]["name"] == ["x" * 400] * 2
    body = {"view": "stats", "entities": [0, 1, 2]}
    assert "ask for fewer entities" in await refused(http, "POST", f"{n1}/features/online", body, 413, "too_large")
