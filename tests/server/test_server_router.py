"""The router's dispatch and error shapes, called directly with mocked requests."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from kvstore.errors import ErrorCode, KvError
from kvstore.server.metrics import NodeGauges, NodeMetrics
from kvstore.server.router import Router


def make_router() -> tuple[Router, NodeMetrics, list[str]]:
    gauges = NodeGauges(
        inflight=lambda: 0,
        held_effects=lambda: 0,
        peer_queues=dict,
        peer_up=dict,
        written_lsn=lambda: 0,
        synced_lsn=lambda: 0,
        key_count=lambda: 0,
    )
    metrics = NodeMetrics("n1", gauges)
    router = Router(metrics)
    seen: list[str] = []

    async def echo(request: web.BaseRequest, param: str) -> web.StreamResponse:
        seen.append(param)
        return web.Response(text=param)

    async def explode(request: web.BaseRequest, param: str) -> web.StreamResponse:
        raise RuntimeError("secret internals")

    async def refuse(request: web.BaseRequest, param: str) -> web.StreamResponse:
        raise KvError(ErrorCode.OVERLOADED, "busy")

    router.add("GET", "/item/{name}", echo)
    router.add("GET", "/boom", explode)
    router.add("GET", "/busy", refuse)
    return router, metrics, seen


def body_of(response: web.StreamResponse) -> dict[str, object]:
    assert isinstance(response, web.Response)
    assert response.body is not None
    return json.loads(bytes(response.body))  # type: ignore[arg-type, no-any-return]


async def test_a_prefix_route_gets_the_decoded_rest_of_the_path() -> None:
    router, _, seen = make_router()
    await router.handle(make_mocked_request("GET", "/item/a/b%2Fc%20d?x=1"))
    assert seen == ["a/b/c d"]


async def test_an_unexpected_exception_is_a_500_without_internals(caplog: pytest.LogCaptureFixture) -> None:
    router, _, _ = make_router()
    response = await router.handle(make_mocked_request("GET", "/boom"))
    assert response.status == 500
    assert body_of(response) == {
        "error": {"code": "internal", "message": "internal error; the op may have happened", "definite": False}
    }
    assert "secret internals" in caplog.text


async def test_errors_are_counted_by_code_and_requests_by_route() -> None:
    router, metrics, _ = make_router()
    for path in ("/busy", "/busy", "/nowhere", "/item/x"):
        await router.handle(make_mocked_request("GET", path))
    text = metrics.exposition().decode()
    assert 'kvstore_errors_total{code="overloaded"} 2.0' in text
    assert 'kvstore_errors_total{code="not_found"} 1.0' in text
    assert 'kvstore_http_requests_total{route="GET /busy",status="503"} 2.0' in text
    assert 'kvstore_http_requests_total{route="unmatched",status="404"} 1.0' in text
    assert 'kvstore_http_requests_total{route="GET /item/{name}",status="200"} 1.0' in text


def test_routes_must_be_unique_and_end_in_one_parameter() -> None:
    router, _, _ = make_router()

    async def handler(request: web.BaseRequest, param: str) -> web.StreamResponse:
        return web.Response()

    with pytest.raises(ValueError, match="registered twice"):
        router.add("GET", "/boom", handler)
    with pytest.raises(ValueError, match="only end in one parameter"):
        router.add("GET", "/a/{x}/b", handler)
    router.add("PUT", "/item/{name}", handler)
    assert sorted(r.label for r in router.routes) == [
        "GET /boom", "GET /busy", "GET /item/{name}", "PUT /item/{name}",
    ]
