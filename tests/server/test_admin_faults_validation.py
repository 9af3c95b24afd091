"""PUT /admin/faults checks every field of a policy, and no clock a policy sets can stop a node.

A clock offset of 1e30 used to be accepted (``int(1e30)``), and the next TTL write put a deadline
beyond 64 bits: enough to stop a node on SQLite storage. Every bad policy here is refused with a
definite 400 that changes nothing, and the node goes on serving TTL writes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import pytest

from kvstore.config import StorageConfig
from kvstore.faults import MAX_CLOCK_OFFSET_MS, MAX_DELAY_MS, MAX_DRIFT_PPM, MAX_SINCE_MS
from kvstore.messages import Message
from kvstore.server.clock import MAX_NODE_CLOCK_MS
from kvstore.server.inprocess import InProcessCluster, loopback_config
from kvstore.server.routes_admin import ADMIN_FAULTS_PATH


@pytest.fixture
async def sqlite_cluster(tmp_path: Path) -> AsyncIterator[InProcessCluster]:
    """Three nodes on SQLite, which holds deadlines as signed 64-bit integers."""
    storage = StorageConfig(engine="sqlite", fsync="never", data_dir=str(tmp_path))
    async with InProcessCluster(loopback_config(3, partitions=16, storage=storage)) as running:
        yield running


def bearer(cluster: InProcessCluster) -> dict[str, str]:
    return {"Authorization": f"Bearer {cluster.config.secret}", "Content-Type": "application/json"}


async def put_policy(http: aiohttp.ClientSession, cluster: InProcessCluster, body: bytes) -> tuple[int, object]:
    async with http.put(cluster.url("n1") + ADMIN_FAULTS_PATH, data=body, headers=bearer(cluster)) as response:
        return response.status, await response.json()


async def ttl_write_is_served(http: aiohttp.ClientSession, cluster: InProcessCluster) -> int:
    """Write a key n1 owns with a TTL and read it back; its deadline on n1's clock."""
    key = cluster.key_on("n1", "ttl")
    async with http.put(f"{cluster.url('n1')}/kv/{key}?ttl_ms=60000", data=b"v") as response:
        assert response.status == 200, await response.text()
    async with http.get(f"{cluster.url('n1')}/kv/{key}") as response:
        assert response.status == 200
        return int(response.headers["X-Kv-Expires-At-Ms"])


TEN_YEARS_MS = MAX_CLOCK_OFFSET_MS


def clock(**fields: object) -> dict[str, object]:
    return {"clocks": {"n1": {"offset_ms": 0, "drift_ppm": 0, "since_ms": 0, **fields}}}


BAD_POLICIES: list[tuple[str, object]] = [
    # clocks
    ("offset 1e30", clock(offset_ms=1e30)),
    ("offset beyond ten years", clock(offset_ms=TEN_YEARS_MS + 1)),
    ("offset before ten years", clock(offset_ms=-TEN_YEARS_MS - 1)),
    ("offset 2**63", clock(offset_ms=2**63)),
    ("offset float", clock(offset_ms=1.5)),
    ("offset whole float", clock(offset_ms=1000.0)),
    ("offset string", clock(offset_ms="1000")),
    ("offset bool", clock(offset_ms=True)),
    ("offset null", clock(offset_ms=None)),
    ("offset object", clock(offset_ms={"ms": 1})),
    ("drift beyond", clock(drift_ppm=MAX_DRIFT_PPM + 1)),
    ("drift below", clock(drift_ppm=-MAX_DRIFT_PPM - 1)),
    ("drift float", clock(drift_ppm=0.5)),
    ("since negative", clock(since_ms=-1)),
    ("since beyond", clock(since_ms=MAX_SINCE_MS + 1)),
    ("since string", clock(since_ms="now")),
    ("clock unknown field", clock(skew=5)),
    ("clock not an object", {"clocks": {"n1": 5}}),
    ("clocks not an object", {"clocks": [["n1", 5]]}),
    ("clock of a non-member", {"clocks": {"n9": {"offset_ms": 1}}}),
    ("clock of an empty id", {"clocks": {"": {"offset_ms": 1}}}),
    # probabilities
    ("drop above 1", {"drop_probability": 2}),
    ("drop below 0", {"drop_probability": -0.1}),
    ("drop string", {"drop_probability": "0.5"}),
    ("drop bool", {"drop_probability": True}),
    ("drop null", {"drop_probability": None}),
    ("duplicate list", {"duplicate_probability": [0.5]}),
    ("reorder huge", {"reorder_probability": 1e308}),
    # reordering and delays
    ("reorder_ms negative", {"reorder_ms": -1}),
    ("reorder_ms beyond", {"reorder_ms": MAX_DELAY_MS + 1}),
    ("reorder_ms float", {"reorder_ms": 10.5}),
    ("reorder_ms string", {"reorder_ms": "10"}),
    ("delay kind unknown", {"delay": {"kind": "warp"}}),
    ("delay kind int", {"delay": {"kind": 1}}),
    ("delay kind list", {"delay": {"kind": ["fixed"]}}),
    ("delay ms beyond", {"delay": {"kind": "fixed", "ms": MAX_DELAY_MS + 1}}),
    ("delay ms 1e30", {"delay": {"kind": "fixed", "ms": 1e30}}),
    ("delay ms negative", {"delay": {"kind": "exponential", "ms": -5}}),
    ("delay ms string", {"delay": {"kind": "fixed", "ms": "5"}}),
    ("delay uniform inverted", {"delay": {"kind": "uniform", "ms": 5, "min_ms": 6}}),
    ("delay unknown field", {"delay": {"kind": "fixed", "ms": 5, "jitter": 1}}),
    ("delay not an object", {"delay": 5}),
    # links
    ("cut not a list", {"cut_links": "n1-n2"}),
    ("cut a string pair", {"cut_links": ["n1n2"]}),
    ("cut a triple", {"cut_links": [["n1", "n2", "n3"]]}),
    ("cut an int id", {"cut_links": [["n1", 2]]}),
    ("cut a null id", {"cut_links": [[None, "n2"]]}),
    ("cut a nested id", {"cut_links": [[["n1"], "n2"]]}),
    ("cut a non-member", {"cut_links": [["n1", "n9"]]}),
    ("cut a self-link", {"cut_links": [["n1", "n1"]]}),
    ("link delay pair only", {"link_delays": [["n1", "n2"]]}),
    ("link delay bad delay", {"link_delays": [["n1", "n2", {"kind": "fixed", "ms": -1}]]}),
    ("link delay non-member", {"link_delays": [["n1", "x", {"kind": "fixed", "ms": 1}]]}),
    ("link delays not a list", {"link_delays": {"n1": "n2"}}),
    # the policy itself
    ("unknown field", {"surprise": 1}),
    ("a list", [1, 2]),
    ("a number", 5),
    ("null", None),
]


@pytest.mark.parametrize("policy", [p for _, p in BAD_POLICIES], ids=[name for name, _ in BAD_POLICIES])
async def test_a_bad_policy_is_a_definite_400_and_the_node_goes_on(
    sqlite_cluster: InProcessCluster, http: aiohttp.ClientSession, policy: object
) -> None:
    status, body = await put_policy(http, sqlite_cluster, json.dumps(policy).encode())
    assert status == 400
    assert isinstance(body, dict) and body["error"]["code"] == "bad_request" and body["error"]["definite"] is True
    async with http.get(sqlite_cluster.url("n1") + ADMIN_FAULTS_PATH, headers=bearer(sqlite_cluster)) as response:
        assert await response.json() == {"faults": None}
    await ttl_write_is_served(http, sqlite_cluster)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"clocks": {"n1": {"offset_ms": 1e30}}}',
            f"clocks.n1.offset_ms must be a whole number in [{-TEN_YEARS_MS}, {TEN_YEARS_MS}], got 1e+30",
        ),
        (b'{"drop_probability": NaN}', "drop_probability must be a number in [0, 1], got nan"),
        (b'{"duplicate_probability": Infinity}', "duplicate_probability must be a number in [0, 1], got inf"),
        (b'{"reorder_ms": 1e400}', f"reorder_ms must be a whole number in [0, {MAX_DELAY_MS}], got inf"),
        (
            b'{"clocks": {"n1": {"drift_ppm": ' + b"9" * 30 + b"}}}",
            f"clocks.n1.drift_ppm must be a whole number in [{-MAX_DRIFT_PPM}, {MAX_DRIFT_PPM}], "
            "got a number of more than 24 digits",
        ),
        (
            b'{"link_delays": [["n1", "n2", {"kind": "fixed", "ms": true}]]}',
            f"link_delays[0][2].ms must be a whole number in [0, {MAX_DELAY_MS}], got True",
        ),
        (b'{"cut_links": [["n1", "n9"]]}', "cut_links[0]: 'n9' is not a member of the cluster (n1, n2, n3)"),
        (
            b'{"delay": {"kind": "fixed", "ms": 5, "jitter": 1}}',
            "unknown delay setting(s): jitter (known: kind, ms, min_ms)",
        ),
    ],
)
async def test_a_refusal_names_the_field_and_its_bound(
    cluster: InProcessCluster, http: aiohttp.ClientSession, body: bytes, message: str
) -> None:
    status, answer = await put_policy(http, cluster, body)
    assert status == 400
    assert isinstance(answer, dict) and answer["error"]["message"] == message


async def test_a_policy_at_every_bound_round_trips_and_ttl_writes_go_on(
    sqlite_cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    policy = {
        "cut_links": [["n2", "n3"], ["n3", "n2"]],
        "delay": {"kind": "uniform", "ms": MAX_DELAY_MS, "min_ms": 0},
        "link_delays": [["n1", "n3", {"kind": "exponential", "ms": MAX_DELAY_MS, "min_ms": 0}]],
        "drop_probability": 0.0,
        "duplicate_probability": 0.0,
        "reorder_probability": 0.0,
        "reorder_ms": MAX_DELAY_MS,
        "clocks": {
            "n1": {"offset_ms": TEN_YEARS_MS, "drift_ppm": MAX_DRIFT_PPM, "since_ms": MAX_SINCE_MS},
            "n2": {"offset_ms": -TEN_YEARS_MS, "drift_ppm": -MAX_DRIFT_PPM, "since_ms": 0},
        },
    }
    status, answer = await put_policy(http, sqlite_cluster, json.dumps(policy).encode())
    assert (status, answer) == (200, {"faults": policy})
    await ttl_write_is_served(http, sqlite_cluster)


async def test_whole_probabilities_are_accepted_as_numbers(
    cluster: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    status, answer = await put_policy(http, cluster, b'{"drop_probability": 0, "duplicate_probability": 1}')
    assert status == 200
    assert isinstance(answer, dict)
    faults = answer["faults"]
    assert (faults["drop_probability"], faults["duplicate_probability"]) == (0.0, 1.0)


class SkewedBy:
    """A policy, as a test or a future fault might install directly, that skews every clock by ``offset_ms``."""

    def __init__(self, offset_ms: int) -> None:
        self.offset_ms = offset_ms

    def on_send(self, now_ms: int, msg: Message) -> Sequence[int]:
        return (0,)

    def clock_offset_ms(self, node_id: str, now_ms: int) -> int:
        return self.offset_ms


@pytest.mark.parametrize("offset_ms", [10**30, 2**63, MAX_NODE_CLOCK_MS])
async def test_a_clock_skewed_past_64_bits_is_clamped_and_ttl_writes_go_on(
    sqlite_cluster: InProcessCluster, http: aiohttp.ClientSession, offset_ms: int
) -> None:
    sqlite_cluster.faults("n1").install(SkewedBy(offset_ms))
    # The deadline is 60 s past the clamped clock: the largest a TTL of 60 s can have.
    assert await ttl_write_is_served(http, sqlite_cluster) == MAX_NODE_CLOCK_MS + 60_000
