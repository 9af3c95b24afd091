"""A small dispatcher for the HTTP edge: exact paths and one-parameter prefix paths.

The API has few routes, so a dict lookup and a prefix check are all it needs. Each route names the
largest request body it reads (``max_body_bytes``), which the edge enforces while the body arrives.
Every response, including unknown routes (404), wrong methods (405) and unexpected exceptions (500),
goes through ``handle``, so each has the JSON error shape and is counted in the metrics.

A prefix route ``/kv/{key}`` matches everything after ``/kv/`` in the raw path (so a key may contain
``/``), percent-decoded as UTF-8; the handler receives that parameter (``""`` for exact routes).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import unquote

from multidict import CIMultiDict

from kvstore.errors import ErrorCode, KvError, shown
from kvstore.server.http_codec import error_response
from kvstore.server.http_message import Request, Response
from kvstore.server.metrics import NodeMetrics

log = logging.getLogger(__name__)

Handler = Callable[[Request, str], Awaitable[Response]]
# Checks a request's headers before its body is read, raising KvError to refuse it (an unauthorized
# request is refused for that, not for a body it should never have sent).
HeadCheck = Callable[[CIMultiDict[str]], None]
UNMATCHED_ROUTE = "unmatched"
# The body a route that reads none may still be sent (and is ignored): enough for any small stray body.
NO_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Route:
    method: str
    # The path as OpenAPI writes it, for example "/kv/{key}".
    template: str
    handler: Handler
    # Internal routes (peer traffic) are left out of the client API description.
    internal: bool = False
    # The largest body the route reads, as it is sent (compressed or not: the route inflates it).
    max_body_bytes: int = NO_BODY_BYTES
    check_head: HeadCheck | None = None

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

    def add(
        self,
        method: str,
        template: str,
        handler: Handler,
        *,
        internal: bool = False,
        max_body_bytes: int = NO_BODY_BYTES,
        check_head: HeadCheck | None = None,
    ) -> None:
        route = Route(method, template, handler, internal, max_body_bytes, check_head)
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

    def admit(self, method: str, raw_target: str, headers: CIMultiDict[str]) -> int:
        """Called by the edge once a request's head is in: the largest body it reads for the request (its
        route's limit, or ``NO_BODY_BYTES`` when nothing matches, which ``handle`` then answers 404 or 405);
        a KvError if the route refuses the request on its headers alone."""
        found = self._lookup(target_path(raw_target))
        route = found[0].get(method) if found is not None else None
        if route is None:
            return NO_BODY_BYTES
        if route.check_head is not None:
            route.check_head(headers)
        return route.max_body_bytes

    async def handle(self, request: Request) -> Response:
        started_s = time.perf_counter()
        label = UNMATCHED_ROUTE
        allowed = ""
        try:
            path = target_path(request.raw_path)
            table, raw_param = self._match(path)
            route = table.get(request.method)
            if route is None:
                allowed = ", ".join(sorted(table))
                method = shown(request.method)
                raise KvError(ErrorCode.METHOD_NOT_ALLOWED, f"{method} is not allowed here; use {allowed}")
            label = route.label
            response = await route.handler(request, _decode_param(raw_param))
        except KvError as exc:
            response = self._error(exc)
            if allowed:
                response.headers["Allow"] = allowed
        except Exception:
            log.exception("unexpected error serving %s %s", shown(request.method), shown(request.raw_path))
            response = self._error(KvError(ErrorCode.INTERNAL, "internal error; the op may have happened"))
        self._metrics.observe(label, response.status, time.perf_counter() - started_s)
        return response

    def _error(self, error: KvError) -> Response:
        self._metrics.error(error.code.value)
        return error_response(error)

    def _lookup(self, raw_path: str) -> tuple[dict[str, Route], str] | None:
        table = self._exact.get(raw_path)
        if table is not None:
            return table, ""
        for prefix, table in self._prefixed:
            if raw_path.startswith(prefix):
                return table, raw_path[len(prefix) :]
        return None

    def _match(self, raw_path: str) -> tuple[dict[str, Route], str]:
        found = self._lookup(raw_path)
        if found is None:
            # Named in short, as all client input in an error: a request is never echoed at length.
            raise KvError(ErrorCode.NOT_FOUND, f"no route for {shown(raw_path)}")
        return found


def target_path(target: str) -> str:
    """The path of a request target as sent (percent-encoded), without its query.

    An absolute-form target (``GET http://host:port/kv/a``) names the same path after its authority, and a
    server must accept one (RFC 9112 3.2.2).
    """
    if "#" in target:
        # A fragment is never sent by a conforming client, and names nothing on the server.
        target = target.partition("#")[0]
    if target[:1] == "/":
        # Origin-form ("/kv/a?x"), as nearly every request is.
        return target.partition("?")[0]
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
    if _BAD_ESCAPE.search(raw):
        # unquote keeps "%zz" as it is: the key would silently be three other characters than those meant.
        raise KvError(ErrorCode.BAD_KEY, "the key in the path has a % not followed by two hex digits")
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError as exc:
        raise KvError(ErrorCode.BAD_KEY, "the key in the path is not valid percent-encoded UTF-8") from exc


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
