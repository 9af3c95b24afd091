"""HTTP client for a kvstore cluster: ``AsyncClient`` (aiohttp) and ``Client``, its synchronous face.

Results are the message dataclasses the node produces:

- ``get(key)`` returns ``Found`` (value, version, expiry) or ``None`` when the key does not exist;
- ``put`` returns ``Written``; ``delete`` returns ``Deleted`` (``existed`` says whether it was there);
- ``cas`` returns ``Written`` or ``Deleted`` (when ``new`` is None) and raises ``KvError`` with code
  ``precondition_failed`` when the current value is not ``expected``;
- ``scan`` returns ``ScanPage``; ``batch_get`` / ``batch_put`` return one ``Found`` / ``Written`` or
  ``Failure`` per entry, in order (a missing key is a ``Failure`` with code ``not_found``); from a leaderless
  cluster a read entry is ``FoundSiblings`` (every value and the context) and a written one has version 0;
- ``replica_copy(partition, secret=...)`` returns the ``ReplicaCopy`` of one node, read page by page through
  the admin route ``/admin/copies/{partition}`` (the cluster secret is its bearer token). Build the client
  on one node's URL to choose whose copy it reads.

Any other error is raised as ``KvError`` with the server's code, so ``error.definite`` tells whether
the operation certainly did not happen.

Routing: like a token-aware driver, the client reads the partition map from ``GET /cluster`` (on its first
key operation) and sends each key's operation straight to the node that owns the key's partition, saving
the hop a forward costs. It reads the map again when a node answers ``wrong_epoch`` or ``not_leader`` (the
map moved on; those answers are definite, so the operation is sent once more, by the new map) and when an
owner cannot be reached; until it has a map, and whenever the owner cannot be reached, it sends to the nodes
it was given, any of which forwards. ``route_by_map=False`` sends everything to the given nodes (chaos
pins each client process to one node that way).

Failover: the client sends to one node (the last that answered) and moves on to the next URL only when
the failure is definite: the connection could not be made, so the request was never sent. A read may
also move on after any transport failure (it has no effect). A write whose connection failed after it
was sent is never retried: it raises ``KvError`` ``timeout`` (indefinite). When no node can be reached
at all, the error is ``unavailable`` (definite).

Leader mode settings: ``get(key, consistency=..., max_staleness_ms=...)`` names how a read is served
(``linearizable``, ``read-index``, ``lease``, ``unsafe``, ``stale``; the bound only with ``stale``), ``put``,
``delete``, ``cas`` and ``batch_put`` take ``replication=`` (``sync``, ``semi-sync``, ``async``); left out, the
cluster's ``[replication]`` settings apply. With ``session=True`` the client keeps the ``X-Kv-Session`` token
(``kvstore/session.py``), sends it with every key op and merges every answer's into it: its reads then see its
own writes and never go back in time, whichever replica serves them. ``session_token`` is the token, which a
new client may start from (``session_token=``).

``Client`` runs one ``AsyncClient`` on a private event loop thread, so there is one implementation.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote, urlencode

import aiohttp
import msgpack
from yarl import URL

from kvstore import session as session_tokens
from kvstore.errors import ErrorCode, KvError
from kvstore.http_session import send_once_session
from kvstore.leaderless_mode import CONTEXT_HEADER
from kvstore.messages import Deleted, Failure, Found, FoundSiblings, ScanItem, ScanPage, Stored, Written
from kvstore.storage.base import Record, Sibling
from kvstore.validation import prefix_range
from partitioning.partition_map import PartitionMap

MSGPACK_TYPE = "application/msgpack"
_MSGPACK_HEADERS = {"Content-Type": MSGPACK_TYPE, "Accept": MSGPACK_TYPE}
DEFAULT_TIMEOUT_S = 10.0

T = TypeVar("T")
Value = bytes | str
# (key, value) or (key, value, ttl_ms)
PutItem = tuple[str, Value] | tuple[str, Value, int | None]


# After a failed read of the partition map, keys go to the given nodes for this long before it is read again.
MAP_RETRY_S = 1.0
# Answers after which the map is read again and a (definite) refusal is sent once more.
_STALE_MAP_CODES = frozenset({ErrorCode.WRONG_EPOCH, ErrorCode.NOT_LEADER})


@dataclass(frozen=True)
class _Routes:
    """What the client keeps of the partition map: the map itself (hash or range lookups, as the nodes do) and
    each partition's owner URL (None: not known)."""

    partition_map: PartitionMap
    owner_urls: tuple[str | None, ...]
    # Every member the map's document names: where to go when none of the given nodes answers any more.
    member_urls: tuple[str, ...] = ()

    @property
    def epoch(self) -> int:
        return self.partition_map.epoch

    def url_for(self, key: str) -> str | None:
        return self.owner_urls[self.partition_map.partition_for_key(key)]

    @staticmethod
    def of(doc: Mapping[str, Any]) -> _Routes:
        """From a ``GET /cluster`` document; ValueError if its map is not a valid one."""
        urls = {m["node_id"]: str(m["url"]).rstrip("/") for m in doc["members"] if m.get("url")}
        partition_map = PartitionMap.from_json(doc["partition_map"])
        owners = tuple(urls.get(replicas[0]) for replicas in partition_map.replicas)
        return _Routes(partition_map, owners, tuple(urls[node] for node in sorted(urls)))


# The admin route of replica copies (kvstore.server.routes_admin; the client does not import the server).
COPIES_PREFIX = "/admin/copies/"
# Records asked for per page of a copy: the route's maximum, so a copy takes as few round trips as it can.
COPY_PAGE_LIMIT = 10_000


@dataclass(frozen=True)
class ReplicaCopy:
    """One node's copy of one partition: every stored record in key order, tombstones and expired ones too."""

    node_id: str
    partition: int
    epoch: int
    # The partition map's replicas of the partition, as the node knew them.
    replicas: tuple[str, ...]
    # The node's clock when it read the last page.
    clock_ms: int
    records: tuple[tuple[str, Record], ...]


def key_path(route: str, key: str) -> str:
    """``/route/<key>`` with the key percent-encoded whole ('/' and '.' too, so no proxy or URL library
    can read it as path segments)."""
    return f"/{route}/" + quote(key, safe="").replace(".", "%2E")


def _as_bytes(value: Value) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


class _Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def error(self) -> KvError:
        """The server's error, or one inferred from the status when the body is not the error shape."""
        try:
            detail = json.loads(self.body)["error"]
            return KvError(ErrorCode(detail["code"]), str(detail["message"]))
        except (ValueError, KeyError, TypeError):
            code = ErrorCode.INTERNAL if self.status >= 500 else ErrorCode.BAD_REQUEST
            return KvError(code, f"HTTP {self.status}: {self.body[:200]!r}")

    def document(self) -> dict[str, Any]:
        if self.status >= 400:
            raise self.error()
        doc = msgpack.unpackb(self.body, raw=False)
        if not isinstance(doc, dict):
            raise KvError(ErrorCode.INTERNAL, "the server answered with something other than an object")
        return doc


class SiblingsFound(KvError):
    """``get`` of a leaderless key that holds several concurrent values: they are in ``siblings`` (with the
    context a write must send to resolve them). ``get_siblings`` returns them instead of raising."""

    def __init__(self, siblings: FoundSiblings) -> None:
        count = len(siblings.values)
        super().__init__(
            ErrorCode.PRECONDITION_FAILED,
            f"key {siblings.key!r} holds {count} concurrent values (siblings): read them all and write the one to "
            f"keep with their context",
        )
        self.siblings = siblings


class AsyncClient:
    def __init__(
        self,
        urls: Sequence[str] | str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        route_by_map: bool = True,
        session: bool = False,
        session_token: str = "",
    ) -> None:
        # The session's positions (None: no session); a bad starting token is a ValueError here, not a 400 later.
        self._positions: session_tokens.Positions | None = _parse_token(session_token) if session else None
        self._urls = [u.rstrip("/") for u in ([urls] if isinstance(urls, str) else urls)]
        if not self._urls:
            raise ValueError("at least one node URL is needed")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        # The node that answered last; requests start there.
        self._preferred = 0
        self._route_by_map = route_by_map
        self._routes: _Routes | None = None
        self._member_urls: tuple[str, ...] = ()
        # loop.time() before which the map is not read again (after a failed read).
        self._map_retry_at_s = 0.0

    async def __aenter__(self) -> Self:
        return self

    @property
    def session_token(self) -> str:
        """The session's ``X-Kv-Session`` token ("" without a session, or before any answer)."""
        return "" if self._positions is None else session_tokens.render(self._positions)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------ keys

    async def get(
        self, key: str, *, consistency: str | None = None, max_staleness_ms: int | None = None
    ) -> Found | None:
        query = {}
        if consistency is not None:
            query["consistency"] = consistency
        if max_staleness_ms is not None:
            query["max_staleness_ms"] = str(max_staleness_ms)
        response = await self._send_key(key, "GET", key_path("kv", key), query=query, idempotent=True)
        if response.status == 200:
            expires = response.headers.get("X-Kv-Expires-At-Ms")
            # Leaderless mode has no versions (its values are named by the causal context).
            version = int(response.headers.get("X-Kv-Version", "0"))
            return Found(key, response.body, version, None if expires is None else int(expires))
        if response.status == 300:
            raise SiblingsFound(await self.get_siblings(key))
        error = response.error()
        if error.code is ErrorCode.NOT_FOUND:
            return None
        raise error

    async def put(
        self, key: str, value: Value, *, ttl_ms: int | None = None, replication: str | None = None
    ) -> Written:
        query = _replication_query(replication)
        if ttl_ms is not None:
            query["ttl_ms"] = str(ttl_ms)
        response = await self._send_key(
            key, "PUT", key_path("kv", key), query=query, body=_as_bytes(value), headers={"Accept": MSGPACK_TYPE}
        )
        doc = response.document()
        # A leaderless cluster answers a context instead of a version: ``put_causal`` returns it.
        return Written(doc["key"], doc.get("version", 0))

    async def delete(self, key: str, *, replication: str | None = None) -> Deleted:
        query = _replication_query(replication)
        response = await self._send_key(
            key, "DELETE", key_path("kv", key), query=query, headers={"Accept": MSGPACK_TYPE}
        )
        doc = response.document()
        return Deleted(doc["key"], doc["deleted"])

    # ------------------------------------------------------------ leaderless mode: siblings and contexts

    async def get_siblings(
        self, key: str, *, r: str | int | None = None, consistency: str | None = None, repair: str | None = None
    ) -> FoundSiblings:
        """Leaderless mode: every value of ``key`` (several when concurrent writes left siblings; none when it is
        absent or deleted) and the causal context to send with the write that follows."""
        query = {name: str(v) for name, v in (("r", r), ("consistency", consistency), ("repair", repair)) if v}
        response = await self._send_key(
            key, "GET", key_path("kv", key), query=query, idempotent=True, headers={"Accept": MSGPACK_TYPE}
        )
        context = base64.b64decode(response.headers.get(CONTEXT_HEADER, ""))
        if response.status == 200:
            return FoundSiblings(key, (response.body,), context)
        if response.status == 300:
            doc = msgpack.unpackb(response.body, raw=False)
            return FoundSiblings(key, tuple(s["value"] for s in doc["siblings"]), context)
        error = response.error()
        if error.code is ErrorCode.NOT_FOUND:
            return FoundSiblings(key, (), context)
        raise error

    async def put_causal(
        self,
        key: str,
        value: Value,
        *,
        context: bytes = b"",
        w: str | int | None = None,
        consistency: str | None = None,
    ) -> Stored:
        """Leaderless mode: write ``key``, superseding exactly the values the read that gave ``context`` returned
        (b"": a blind write, which adds a sibling)."""
        return await self._write_causal(key, "PUT", _as_bytes(value), context, w, consistency)

    async def delete_causal(
        self, key: str, *, context: bytes = b"", w: str | int | None = None, consistency: str | None = None
    ) -> Stored:
        """Leaderless mode: delete the values the read that gave ``context`` returned (a tombstone)."""
        return await self._write_causal(key, "DELETE", b"", context, w, consistency)

    async def _write_causal(
        self, key: str, method: str, body: bytes, context: bytes, w: str | int | None, consistency: str | None
    ) -> Stored:
        query = {name: str(v) for name, v in (("w", w), ("consistency", consistency)) if v}
        headers = {"Accept": MSGPACK_TYPE}
        if context:
            headers[CONTEXT_HEADER] = base64.b64encode(context).decode("ascii")
        response = await self._send_key(key, method, key_path("kv", key), query=query, body=body, headers=headers)
        doc = response.document()
        return Stored(doc["key"], base64.b64decode(doc["context"]), doc["acks"])

    async def cas(
        self,
        key: str,
        expected: Value | None,
        new: Value | None,
        *,
        ttl_ms: int | None = None,
        replication: str | None = None,
    ) -> Written | Deleted:
        body: dict[str, object] = {
            "expected": None if expected is None else _as_bytes(expected),
            "new": None if new is None else _as_bytes(new),
        }
        if ttl_ms is not None:
            body["ttl_ms"] = ttl_ms
        if replication is not None:
            body["replication"] = replication
        response = await self._send_key(
            key, "POST", key_path("cas", key), body=msgpack.packb(body, use_bin_type=True), headers=_MSGPACK_HEADERS
        )
        doc = response.document()
        if "deleted" in doc:
            return Deleted(doc["key"], doc["deleted"])
        return Written(doc["key"], doc["version"])

    # ------------------------------------------------------------ ranges and batches

    async def scan(
        self, prefix: str | None = None, *, start: str | None = None, end: str | None = None, limit: int = 1000
    ) -> ScanPage:
        """Keys with ``prefix``, or in ``[start, end)``, in key order; at most ``limit``."""
        query = {"limit": str(limit)}
        if prefix is not None:
            query["prefix"] = prefix
        if start is not None:
            query["start"] = start
        if end is not None:
            query["end"] = end
        response = await self._send("GET", "/scan", query=query, headers={"Accept": MSGPACK_TYPE}, idempotent=True)
        return _scan_page(response.document())

    async def scan_pages(
        self, prefix: str | None = None, *, start: str | None = None, end: str | None = None, page_size: int = 1000
    ) -> AsyncIterator[ScanPage]:
        """Every key with ``prefix``, or in ``[start, end)``, in key order, a page of at most ``page_size`` at a
        time: each page resumes where the last ended (the answer's ``next``), across partitions and ranges,
        whatever splits, merges or moves happen between pages."""
        if prefix is not None:
            if start is not None or end is not None:
                raise ValueError("give either prefix or start/end, not both")
            start, end = prefix_range(prefix)
        resume: str | None = start or ""
        while resume is not None:
            query = {"limit": str(page_size), "start": resume}
            if end is not None:
                query["end"] = end
            response = await self._send("GET", "/scan", query=query, headers={"Accept": MSGPACK_TYPE}, idempotent=True)
            doc = response.document()
            yield _scan_page(doc)
            resume = doc.get("next")

    async def batch_get(self, keys: Sequence[str]) -> list[Found | FoundSiblings | Failure]:
        body = msgpack.packb({"get": list(keys)}, use_bin_type=True)
        response = await self._send("POST", "/batch", body=body, headers=_MSGPACK_HEADERS, idempotent=True)
        results: list[Found | FoundSiblings | Failure] = []
        for entry in response.document()["results"]:
            if entry["ok"] and "siblings" in entry:
                values = tuple(sibling["value"] for sibling in entry["siblings"])
                results.append(FoundSiblings(entry["key"], values, base64.b64decode(entry["context"])))
            elif entry["ok"]:
                results.append(Found(entry["key"], entry["value"], entry["version"], entry.get("expires_at_ms")))
            else:
                results.append(_failure(entry))
        return results

    async def batch_put(self, items: Sequence[PutItem], *, replication: str | None = None) -> list[Written | Failure]:
        entries = []
        for item in items:
            entry: dict[str, object] = {"key": item[0], "value": _as_bytes(item[1])}
            if len(item) > 2 and item[2] is not None:
                entry["ttl_ms"] = item[2]
            entries.append(entry)
        doc: dict[str, object] = {"put": entries}
        if replication is not None:
            doc["replication"] = replication
        body = msgpack.packb(doc, use_bin_type=True)
        response = await self._send("POST", "/batch", body=body, headers=_MSGPACK_HEADERS)
        # A leaderless cluster answers a context instead of a version, as to ``put``.
        results = response.document()["results"]
        return [Written(e["key"], e.get("version", 0)) if e["ok"] else _failure(e) for e in results]

    # ------------------------------------------------------------ cluster

    async def cluster(self) -> dict[str, Any]:
        response = await self._send("GET", "/cluster", headers={"Accept": MSGPACK_TYPE}, idempotent=True)
        return response.document()

    async def call(
        self,
        method: str,
        path: str,
        doc: Mapping[str, Any] | None = None,
        *,
        query: Mapping[str, str] | None = None,
        idempotent: bool = False,
    ) -> dict[str, Any]:
        """A route that takes and answers documents (the feature store's): ``doc`` sent as msgpack, the answer
        decoded; KvError for an error answer."""
        headers = {"Accept": MSGPACK_TYPE}
        body = None
        if doc is not None:
            headers["Content-Type"] = MSGPACK_TYPE
            body = msgpack.packb(doc, use_bin_type=True)
        response = await self._send(method, path, query=query, body=body, headers=headers, idempotent=idempotent)
        return response.document()

    async def health(self) -> dict[str, Any]:
        response = await self._send("GET", "/health", idempotent=True)
        if response.status >= 400:
            raise response.error()
        doc: dict[str, Any] = json.loads(response.body)
        return doc

    async def metrics(self) -> str:
        response = await self._send("GET", "/metrics", idempotent=True)
        if response.status >= 400:
            raise response.error()
        return response.body.decode("utf-8")

    # ------------------------------------------------------------ admin

    async def replica_copy(self, partition: int, *, secret: str, page_limit: int = COPY_PAGE_LIMIT) -> ReplicaCopy:
        """The whole copy of ``partition`` held by the node that answers, read page by page.

        Raises ``KvError``: ``not_found`` when that node holds no replica of the partition, ``unauthorized``
        for a wrong secret, ``unavailable`` when the pages came from different nodes (the client failed over
        in the middle, so the pages are no one node's copy).
        """
        headers = {"Accept": MSGPACK_TYPE, "Authorization": f"Bearer {secret}"}
        records: list[tuple[str, Record]] = []
        query = {"limit": str(page_limit)}
        first: dict[str, Any] | None = None
        while True:
            response = await self._send(
                "GET", f"{COPIES_PREFIX}{partition}", query=query, headers=headers, idempotent=True
            )
            doc = response.document()
            if first is None:
                first = doc
            elif doc["node_id"] != first["node_id"]:
                raise KvError(
                    ErrorCode.UNAVAILABLE,
                    f"the copy of partition {partition} began on {first['node_id']} and went on on {doc['node_id']}",
                )
            records.extend((r["key"], _record(r)) for r in doc["records"])
            if doc["next"] is None:
                return ReplicaCopy(
                    first["node_id"],
                    partition,
                    first["epoch"],
                    tuple(first["replicas"]),
                    doc["clock_ms"],
                    tuple(records),
                )
            query = {"after": doc["next"], "limit": str(page_limit)}

    # ------------------------------------------------------------ transport

    async def _send_key(
        self,
        key: str,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = False,
    ) -> _Response:
        """``_send``, first to the owner of ``key``'s partition when the map names it; with the session's token,
        if any, which takes in the one the answer carries."""
        if self._positions:
            headers = {**(headers or {}), session_tokens.SESSION_HEADER: session_tokens.render(self._positions)}
        for attempt in range(2):
            routes = await self._current_routes()
            owner = routes.url_for(key) if routes is not None else None
            response = await self._send(
                method, path, query=query, body=body, headers=headers, idempotent=idempotent, first=owner
            )
            if attempt or routes is None or response.status != 503 or not self._stale_map(response):
                break
            # The map moved on, and the refusal is definite: read the map again and send once more.
            self._routes = None
            self._map_retry_at_s = 0.0
        if self._positions is not None:
            self._keep_session(response)
        return response

    def _keep_session(self, response: _Response) -> None:
        token = response.headers.get(session_tokens.SESSION_HEADER)
        if token is None:
            return
        try:
            # Merged, not replaced: answers to concurrent ops of one session arrive in any order.
            self._positions = session_tokens.merge(session_tokens.parse(token), self._positions or {})
        except session_tokens.SessionTokenError:
            return  # a node's bug, and the op itself succeeded: the session keeps what it knew

    @staticmethod
    def _stale_map(response: _Response) -> bool:
        return response.error().code in _STALE_MAP_CODES

    async def _current_routes(self) -> _Routes | None:
        if not self._route_by_map:
            return None
        if self._routes is not None:
            return self._routes
        now_s = asyncio.get_running_loop().time()
        if now_s < self._map_retry_at_s:
            return None
        try:
            self._routes = _Routes.of(await self.cluster())
            self._member_urls = self._routes.member_urls
        except (KvError, KeyError, TypeError, ValueError):
            # No map (an older node, a refusal, nobody up): the given nodes forward; try again in a while.
            self._map_retry_at_s = now_s + MAP_RETRY_S
            return None
        return self._routes

    async def _send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = False,
        first: str | None = None,
    ) -> _Response:
        """Send to ``first`` (a key's owner), then on to the given nodes from the last that answered; only a
        failure that is certainly definite (never connected), or any failure of an idempotent request,
        moves on to the next."""
        if self._session is None:
            self._session = send_once_session(timeout=self._timeout)
        target = path if not query else f"{path}?{urlencode(query, quote_via=quote)}"
        failures: list[str] = []
        definite = True
        candidates = [(self._preferred + attempt) % len(self._urls) for attempt in range(len(self._urls))]
        bases: list[tuple[str, int | None]] = [(self._urls[i], i) for i in candidates]
        if first is not None:
            bases = [(first, None), *((b, i) for b, i in bases if b != first)]
        # Then the members the last map named (nodes that joined since; the given ones may all have left).
        tried = {b for b, _ in bases}
        bases.extend((url, None) for url in self._member_urls if url not in tried)
        for base, index in bases:
            url = URL(base + target, encoded=True)
            try:
                async with self._session.request(method, url, data=body, headers=headers) as response:
                    payload = await response.read()
                    if index is not None:
                        self._preferred = index
                    return _Response(response.status, response.headers, payload)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # Never connected, so never sent: safe to try the next node for any operation.
                failures.append(f"{base}: {exc}")
                if index is None:
                    # The owner the map named is not reachable: read the map again later.
                    self._routes = None
            except (aiohttp.ClientError, TimeoutError) as exc:
                if not idempotent:
                    raise KvError(
                        ErrorCode.TIMEOUT, f"{base} did not answer ({exc!r}); the op may have happened"
                    ) from exc
                failures.append(f"{base}: {exc!r}")
                definite = False
        code = ErrorCode.UNAVAILABLE if definite else ErrorCode.TIMEOUT
        raise KvError(code, "no node answered: " + "; ".join(failures))


def _replication_query(replication: str | None) -> dict[str, str]:
    return {} if replication is None else {"replication": replication}


def _parse_token(token: str) -> session_tokens.Positions:
    try:
        return session_tokens.parse(token)
    except session_tokens.SessionTokenError as exc:
        raise ValueError(f"session_token: {exc}") from None


def _scan_page(doc: Mapping[str, Any]) -> ScanPage:
    return ScanPage(tuple(ScanItem(i["key"], i["value"], i["version"]) for i in doc["items"]), doc["truncated"])


def _record(doc: Mapping[str, Any]) -> Record:
    siblings = tuple(Sibling(s["value"], s["version"], s["context"]) for s in doc["siblings"])
    return Record(doc["value"], doc["version"], doc["expires_at_ms"], doc["context"], siblings)


def _failure(entry: Mapping[str, Any]) -> Failure:
    error = entry["error"]
    return Failure(error["code"], error["message"])


class Client:
    """The synchronous client: every call runs the ``AsyncClient`` method on a private loop thread."""

    def __init__(
        self,
        urls: Sequence[str] | str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        route_by_map: bool = True,
        session: bool = False,
        session_token: str = "",
    ) -> None:
        self._async = AsyncClient(
            urls, timeout_s=timeout_s, route_by_map=route_by_map, session=session, session_token=session_token
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kvstore-client", daemon=True)
        self._thread.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(call, self._loop).result()

    @property
    def session_token(self) -> str:
        return self._async.session_token

    def get(self, key: str, *, consistency: str | None = None, max_staleness_ms: int | None = None) -> Found | None:
        return self._run(self._async.get(key, consistency=consistency, max_staleness_ms=max_staleness_ms))

    def put(self, key: str, value: Value, *, ttl_ms: int | None = None, replication: str | None = None) -> Written:
        return self._run(self._async.put(key, value, ttl_ms=ttl_ms, replication=replication))

    def delete(self, key: str, *, replication: str | None = None) -> Deleted:
        return self._run(self._async.delete(key, replication=replication))

    def get_siblings(
        self, key: str, *, r: str | int | None = None, consistency: str | None = None, repair: str | None = None
    ) -> FoundSiblings:
        return self._run(self._async.get_siblings(key, r=r, consistency=consistency, repair=repair))

    def put_causal(
        self,
        key: str,
        value: Value,
        *,
        context: bytes = b"",
        w: str | int | None = None,
        consistency: str | None = None,
    ) -> Stored:
        return self._run(self._async.put_causal(key, value, context=context, w=w, consistency=consistency))

    def delete_causal(
        self, key: str, *, context: bytes = b"", w: str | int | None = None, consistency: str | None = None
    ) -> Stored:
        return self._run(self._async.delete_causal(key, context=context, w=w, consistency=consistency))

    def cas(
        self,
        key: str,
        expected: Value | None,
        new: Value | None,
        *,
        ttl_ms: int | None = None,
        replication: str | None = None,
    ) -> Written | Deleted:
        return self._run(self._async.cas(key, expected, new, ttl_ms=ttl_ms, replication=replication))

    def scan(
        self, prefix: str | None = None, *, start: str | None = None, end: str | None = None, limit: int = 1000
    ) -> ScanPage:
        return self._run(self._async.scan(prefix, start=start, end=end, limit=limit))

    def batch_get(self, keys: Sequence[str]) -> list[Found | FoundSiblings | Failure]:
        return self._run(self._async.batch_get(keys))

    def batch_put(self, items: Sequence[PutItem], *, replication: str | None = None) -> list[Written | Failure]:
        return self._run(self._async.batch_put(items, replication=replication))

    def cluster(self) -> dict[str, Any]:
        return self._run(self._async.cluster())

    def call(
        self,
        method: str,
        path: str,
        doc: Mapping[str, Any] | None = None,
        *,
        query: Mapping[str, str] | None = None,
        idempotent: bool = False,
    ) -> dict[str, Any]:
        return self._run(self._async.call(method, path, doc, query=query, idempotent=idempotent))

    def scan_pages(self, prefix: str, *, page_size: int = 1000) -> Iterator[ScanPage]:
        """Every key with ``prefix`` in key order, a page at a time (``AsyncClient.scan_pages``)."""
        pages = self._async.scan_pages(prefix, page_size=page_size)

        async def next_page() -> ScanPage | None:
            return await anext(pages, None)

        while (page := self._run(next_page())) is not None:
            yield page

    def health(self) -> dict[str, Any]:
        return self._run(self._async.health())

    def metrics(self) -> str:
        return self._run(self._async.metrics())

    def replica_copy(self, partition: int, *, secret: str, page_limit: int = COPY_PAGE_LIMIT) -> ReplicaCopy:
        return self._run(self._async.replica_copy(partition, secret=secret, page_limit=page_limit))
