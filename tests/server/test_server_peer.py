"""Peer transport on live nodes: forwarding, an owner that is down, authentication, fault policies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import aiohttp
import pytest

from kvstore import codec
from kvstore.config import Limits, Timeouts
from kvstore.messages import Forward, GetOp, Message
from kvstore.server.inprocess import InProcessCluster, loopback_config
from kvstore.server.peer import FROM_HEADER, SIGNATURE_HEADER, sign

MSGPACK = "application/msgpack"


class Fixed:
    """Every message gets the same fate: ``delays_ms`` (one entry per copy; empty drops it)."""

    def __init__(self, delays_ms: Sequence[int]) -> None:
        self.delays_ms = tuple(delays_ms)

    def on_send(self, now_ms: int, msg: Message) -> Sequence[int]:
        return self.delays_ms

    def clock_offset_ms(self, node_id: str, now_ms: int) -> int:
        return 0


async def test_an_owner_that_refuses_connections_gives_a_definite_503(http: aiohttp.ClientSession) -> None:
    async with InProcessCluster(loopback_config(3), start=("n1", "n2")) as cluster:
        key = cluster.key_on("n3", "down")
        async with http.put(f"{cluster.url('n1')}/kv/{key}", data=b"v") as response:
            assert response.status == 503
            error = (await response.json())["error"]
            assert error["code"] == "unavailable"
            assert error["definite"] is True
        async with http.get(f"{cluster.url('n1')}/cluster") as response:
            members = {m["node_id"]: m for m in (await response.json())["members"]}
        assert members["n3"]["health"] == "down"
        assert members["n3"]["last_error"].startswith("cannot connect")
        # Keys of live owners are unaffected.
        async with http.put(f"{cluster.url('n1')}/kv/{cluster.key_on('n2', 'up')}", data=b"v") as response:
            assert response.status == 200


async def test_a_scan_with_an_owner_down_fails_as_unavailable(http: aiohttp.ClientSession) -> None:
    async with (
        InProcessCluster(loopback_config(2), start=("n1",)) as cluster,
        http.get(f"{cluster.url('n1')}/scan?prefix=a") as response,
    ):
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "unavailable"


async def test_a_restarted_peer_is_reached_again(http: aiohttp.ClientSession) -> None:
    async with InProcessCluster(loopback_config(2)) as cluster:
        key = cluster.key_on("n2", "again")
        async with http.put(f"{cluster.url('n1')}/kv/{key}", data=b"before") as response:
            assert response.status == 200
        await cluster.stop_node("n2")
        async with http.get(f"{cluster.url('n1')}/kv/{key}") as response:
            assert response.status == 503
        await cluster.start_node("n2")
        # A read is reached again (and finds nothing: n2 keeps its data in memory only) ...
        async with http.get(f"{cluster.url('n1')}/kv/{key}") as response:
            assert response.status == 404
        # ... and so is a write.
        async with http.put(f"{cluster.url('n1')}/kv/{key}", data=b"after") as response:
            assert response.status == 200
        async with http.get(f"{cluster.url('n1')}/kv/{key}") as response:
            assert await response.read() == b"after"


# ---------------------------------------------------------------- authentication


@pytest.fixture
async def pair() -> AsyncIterator[InProcessCluster]:
    async with InProcessCluster(loopback_config(2, secret="s3cret")) as cluster:
        yield cluster


def forward_batch(src: str, dst: str) -> bytes:
    msg = Message(src, dst, 0, Forward(incarnation=1, forward_id=1, target_incarnation=0, op=GetOp("k")))
    return codec.encode((msg,))


async def post_peer(
    http: aiohttp.ClientSession, cluster: InProcessCluster, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, object]]:
    async with http.post(f"{cluster.url('n2')}/peer", data=body, headers=headers) as response:
        return response.status, (await response.json() if response.status >= 400 else {})


async def test_a_signed_batch_is_accepted(pair: InProcessCluster, http: aiohttp.ClientSession) -> None:
    body = forward_batch("n1", "n2")
    headers = {"Content-Type": MSGPACK, FROM_HEADER: "n1", SIGNATURE_HEADER: sign("s3cret", body)}
    assert await post_peer(http, pair, body, headers) == (204, {})


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({FROM_HEADER: "n1"}, "missing X-Kv-Signature"),
        ({FROM_HEADER: "n1", SIGNATURE_HEADER: "00" * 32}, "bad signature"),
        ({FROM_HEADER: "n1", SIGNATURE_HEADER: "wrong-secret"}, "bad signature"),
        ({FROM_HEADER: "intruder", SIGNATURE_HEADER: "x"}, "X-Kv-From must name another member of the cluster"),
        ({SIGNATURE_HEADER: "x"}, "X-Kv-From must name another member of the cluster"),
    ],
)
async def test_unauthenticated_batches_are_401_and_not_delivered(
    pair: InProcessCluster, http: aiohttp.ClientSession, headers: dict[str, str], message: str
) -> None:
    body = forward_batch("n1", "n2")
    if headers.get(SIGNATURE_HEADER) == "wrong-secret":
        headers[SIGNATURE_HEADER] = sign("not-the-secret", body)
    status, error = await post_peer(http, pair, body, {"Content-Type": MSGPACK, **headers})
    assert status == 401
    assert error == {"error": {"code": "unauthorized", "message": message, "definite": True}}
    assert pair.servers["n2"].node.inflight == 0


async def test_signed_but_malformed_batches_are_400(pair: InProcessCluster, http: aiohttp.ClientSession) -> None:
    for body in (b"\xc1", codec.encode(("not a message",)), forward_batch("n1", "n1")):
        headers = {"Content-Type": MSGPACK, FROM_HEADER: "n1", SIGNATURE_HEADER: sign("s3cret", body)}
        status, error = await post_peer(http, pair, body, headers)
        assert status == 400
        assert error["error"]["code"] == "bad_request"  # type: ignore[index]


async def test_nodes_with_different_secrets_cannot_talk(http: aiohttp.ClientSession) -> None:
    config = loopback_config(2, timeouts=Timeouts(request_timeout_ms=300))
    async with InProcessCluster(config, start=("n1",)) as cluster:
        other = InProcessCluster(config.replace(secret="another"), start=("n2",))
        async with other:
            async with http.put(f"{cluster.url('n1')}/kv/{cluster.key_on('n2', 's')}", data=b"v") as response:
                # n2 refuses the batch with 401 before delivering any of it: certainly not applied (definite).
                assert response.status == 503
                error = (await response.json())["error"]
                assert (error["code"], error["definite"]) == ("unavailable", True)
            assert other.servers["n2"].storage.key_count() == 0


# ---------------------------------------------------------------- fault policies


@pytest.fixture
async def quick() -> AsyncIterator[InProcessCluster]:
    config = loopback_config(2, timeouts=Timeouts(request_timeout_ms=300), limits=Limits(max_inflight=1))
    async with InProcessCluster(config) as cluster:
        yield cluster


async def test_dropped_forwards_time_out_as_indefinite_504(
    quick: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    quick.faults("n1").install(Fixed(()))
    async with http.put(f"{quick.url('n1')}/kv/{quick.key_on('n2', 'drop')}", data=b"v") as response:
        assert response.status == 504
        error = (await response.json())["error"]
        assert (error["code"], error["definite"]) == ("timeout", False)
    assert quick.servers["n2"].storage.key_count() == 0


async def test_duplicated_messages_apply_a_write_once(quick: InProcessCluster, http: aiohttp.ClientSession) -> None:
    for node_id in ("n1", "n2"):
        quick.faults(node_id).install(Fixed((0, 0)))
    key = quick.key_on("n2", "dup")
    async with http.put(f"{quick.url('n1')}/kv/{key}", data=b"v") as response:
        assert await response.json() == {"key": key, "version": 1}
    async with http.get(f"{quick.url('n1')}/kv/{key}") as response:
        assert await response.read() == b"v"
    owner = quick.servers["n2"]
    partition = owner.node.partition_map.partition_for_key(key)
    assert owner.storage.log(partition).applied_index() == 1  # the duplicate was not applied again


async def test_delayed_messages_still_arrive_and_the_policy_can_be_swapped_back(
    quick: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    quick.faults("n1").install(Fixed((20,)))
    key = quick.key_on("n2", "late")
    async with http.put(f"{quick.url('n1')}/kv/{key}", data=b"v") as response:
        assert response.status == 200
    quick.faults("n1").clear()
    async with http.get(f"{quick.url('n1')}/kv/{key}") as response:
        assert await response.read() == b"v"


async def test_requests_beyond_the_inflight_bound_are_refused_as_overloaded(
    quick: InProcessCluster, http: aiohttp.ClientSession
) -> None:
    quick.faults("n1").install(Fixed(()))
    url = quick.url("n1")
    pending = asyncio.create_task(http.get(f"{url}/kv/{quick.key_on('n2', 'wait')}"))
    pump = quick.servers["n1"].pump
    while pump.outstanding == 0:
        await asyncio.sleep(0.005)
    async with http.get(f"{url}/kv/{quick.key_on('n1', 'local')}") as response:
        assert response.status == 503
        error = (await response.json())["error"]
        assert (error["code"], error["definite"]) == ("overloaded", True)
    async with await pending as response:
        assert response.status == 504
