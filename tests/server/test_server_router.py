"""The router's dispatch and error shapes, called directly with mocked requests."""

from __future__ import annotations

import json

import pytest
from multidict import CIMultiDict

from kvstore.errors import ErrorCode, KvError
from kvstore.server.http_message import Request, Response
from kvstore.server.metrics import NodeGauges, NodeMetrics
from kvstore.server.router import NO_BODY_BYTES, Router


def make_request(method: str, target: str) -> Request:
    return Request(method, target, CIMultiDict(), b"", ("127.0.0.1", 1))


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

    async def echo(request: Request, param: str) -> Response:
        seen.append(param)
        return Response(param.encode())

    async def explode(request: Request, param: str) -> Response:
        raise RuntimeError("secret internals")

    async def refuse(request: Request, param: str) -> Response:
        raise KvError(ErrorCode.OVERLOADED, "busy")

    router.add("GET", "/item/{name}", echo)
    router.add("GET", "/boom", explode)
    router.add("GET", "/busy", refuse)
    return router, metrics, seen


def body_of(response: Response) -> dict[str, object]:
    doc: dict[str, object] = json.loads(response.body)
    return doc


async def test_a_prefix_route_gets_the_decoded_rest_of_the_path() -> None:
    router, _, seen = make_router()
    await router.handle(make_request("GET", "/item/a/b%2Fc%20d?x=1"))
    assert seen == ["a/b/c d"]


async def test_an_unexpected_exception_is_a_500_without_internals(caplog: pytest.LogCaptureFixture) -> None:
    router, _, _ = make_router()
    response = await router.handle(make_request("GET", "/boom"))
    assert response.status == 500
    assert body_of(response) == {
        "error": {"code": "internal", "message": "internal error; the op may have happened", "definite": False}
    }
    assert "secret internals" in caplog.text


async def test_errors_are_counted_by_code_and_requests_by_route() -> None:
    router, metrics, _ = make_router()
    for path in ("/busy", "/busy", "/nowhere", "/item/x"):
        await router.handle(make_request("GET", path))
    text = metrics.exposition().decode()
    assert 'kvstore_errors_total{code="overloaded"} 2.0' in text
    assert 'kvstore_errors_total{code="not_found"} 1.0' in text
    assert 'kvstore_http_requests_total{route="GET /busy",status="503"} 2.0' in text
    assert 'kvstore_http_requests_total{route="unmatched",status="404"} 1.0' in text
    assert 'kvstore_http_requests_total{route="GET /item/{name}",status="200"} 1.0' in text


def test_routes_must_be_unique_and_end_in_one_parameter() -> None:
    router, _, _ = make_router()

    async def handler(request: Request, param: str) -> Response:
        return Response()

    with pytest.raises(ValueError, match="registered twice"):
        router.add("GET", "/boom", handler)
    with pytest.raises(ValueError, match="only end in one parameter"):
        router.add("GET", "/a/{x}/b", handler)
    router.add("PUT", "/item/{name}", handler)
    assert sorted(r.label for r in router.routes) == [
        "GET /boom",
        "GET /busy",
        "GET /item/{name}",
        "PUT /item/{name}",
    ]


def test_admit_gives_the_route_body_limit_and_runs_its_head_check() -> None:
    router, _, _ = make_router()

    async def handler(request: Request, param: str) -> Response:
        return Response()

    def members_only(headers: CIMultiDict[str]) -> None:
        if headers.get("X-Member") != "yes":
            raise KvError(ErrorCode.UNAUTHORIZED, "members only")

    router.add("POST", "/upload/{name}", handler, max_body_bytes=1234, check_head=members_only)
    assert router.admit("POST", "/upload/a?x=1", CIMultiDict({"X-Member": "yes"})) == 1234
    assert router.admit("POST", "http://host:1/upload/a", CIMultiDict({"X-Member": "yes"})) == 1234
    with pytest.raises(KvError, match="members only"):
        router.admit("POST", "/upload/a", CIMultiDict())
    # No route, or no such method: the small default, and the router answers 404 or 405 once the body is in.
    assert router.admit("GET", "/upload/a", CIMultiDict()) == NO_BODY_BYTES
    assert router.admit("POST", "/nowhere", CIMultiDict()) == NO_BODY_BYTES
