"""A small dispatcher for aiohttp's low-level server: exact paths and one-parameter prefix paths.

aiohttp's ``web.Server`` without ``Application`` is measurably faster (no URL dispatcher objects, no
middleware chain); the API has few routes, so a dict lookup and a prefix check are all it needs.
Every response, including unknown routes (404), wrong methods (405) and unexpected exceptions (500),
goes through ``handle``, so each has the JSON error shape and is counted in the metrics.

A prefix route ``/kv/{key}`` matches everything after ``/kv/`` in the raw path (so a key may contain
``/``), percent-decoded as UTF-8; the handler receives that parameter (``""`` for exact routes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import unquote

from aiohttp import web

from kvstore.errors import ErrorCode, KvError, shown
from kvstore.server.http_codec import error_response
from kvstore.server.metrics import NodeMetrics

log = logging.getLogger(__name__)

Handler = Callable[[web.BaseRequest, str], Awaitable[web.StreamResponse]]
UNMATCHED_ROUTE = "unmatched"


@dataclass(frozen=True)
class Route:
    method: str
    # The path as OpenAPI writes it, for example "/kv/{key}".
    template: str
    handler: Handler
    # Internal routes (peer traffic) are left out of the client API description.
    internal: bool = False

    @cached_property
    def label(self) -> str:
        return f"{self.method} {self.template}"


class Router:
    def __init__(self, metrics: NodeMetrics) -> None:
        self._metrics = metrics
        self._exact: dict[str, dict[str, Route]] = {}
        # (raw prefix, routes by method), for templates ending in one "{param}" segment.
        self._prefixed: list[tuple[str, dict[str, Route]]] = []

    @property
    def routes(self) -> list[Route]:
        tables = [*self._exact.values(), *(table for _, table in self._prefixed)]
        return [route for table in tables for route in table.values()]

    def add(self, method: str, template: str, handler: Handler, *, internal: bool = False) -> None:
        route = Route(method, template, handler, internal)
        if "{" not in template:
            table = self._exact.setdefault(template, {})
        else:
            prefix, _, rest = template.partition("{")
            if not rest.endswith("}") or "{" in rest or "/" in rest:
                raise ValueError(f"a route may only end in one parameter: {template!r}")
            tables = [t for p, t in self._prefixed if p == prefix]
            if tables:
                table = tables[0]
            else:
                table = {}
                self._prefixed.append((prefix, table))
        if method in table:
            raise ValueError(f"route {route.label} is registered twice")
        table[method] = route

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started_s = time.perf_counter()
        label = UNMATCHED_ROUTE
        allowed = ""
        try:
            raw_path = request.raw_path
            # Origin-form ("/kv/a?x") inline, as nearly every request is; absolute-form through target_path.
            path = raw_path.partition("?")[0] if raw_path[:1] == "/" else target_path(request)
            table, raw_param = self._match(path)
            route = table.get(request.method)
            if route is None:
                allowed = ", ".join(sorted(table))
                raise KvError(ErrorCode.METHOD_NOT_ALLOWED, f"{request.method} is not allowed here; use {allowed}")
            label = route.label
            response = await route.handler(request, _decode_param(raw_param))
        except KvError as exc:
            response = self._error(exc)
            if allowed:
                response.headers["Allow"] = allowed
            if exc.code is ErrorCode.REQUEST_TIMEOUT:
                # The rest of a body that came too slowly is not worth waiting for: close the connection.
                response.force_close()
        except ConnectionResetError:
            # The client went away in the middle of its request body: nobody to answer, nothing to log loudly.
            log.debug("client closed the connection during %s %s", request.method, request.path)
            response = self._error(KvError(ErrorCode.BAD_REQUEST, "the connection closed before the body was complete"))
        except Exception:
            log.exception("unexpected error serving %s %s", request.method, request.path)
            response = self._error(KvError(ErrorCode.INTERNAL, "internal error; the op may have happened"))
        self._metrics.observe(label, response.status, time.perf_counter() - started_s)
        return response

    def _error(self, error: KvError) -> web.Response:
        self._metrics.error(error.code.value)
        return error_response(error)

    def _match(self, raw_path: str) -> tuple[dict[str, Route], str]:
        table = self._exact.get(raw_path)
        if table is not None:
            return table, ""
        for prefix, table in self._prefixed:
            if raw_path.startswith(prefix):
                return table, raw_path[len(prefix) :]
        # Named in short, as all client input in an error: a request is never echoed at length.
        raise KvError(ErrorCode.NOT_FOUND, f"no route for {shown(raw_path)}")


def target_path(request: web.BaseRequest) -> str:
    """The path of the request target as sent (percent-encoded), without its query.

    An absolute-form target (``GET http://host:port/kv/a``) names the same path after its authority, and a
    server must accept one (RFC 9112 3.2.2); aiohttp hands it over whole.
    """
    target = request.raw_path
    if not target.startswith("/"):
        _, scheme_end, rest = target.partition("://")
        if scheme_end:
            ends = [i for i in (rest.find("/"), rest.find("?")) if i >= 0]
            target = rest[min(ends) :] if ends else ""
            if not target.startswith("/"):
                target = "/" + target
    return target.partition("?")[0]


def _decode_param(raw: str) -> str:
    if "%" not in raw:
        return raw
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError as exc:
        raise KvError(ErrorCode.BAD_KEY, "the key in the path is not valid percent-encoded UTF-8") from exc

