"""Admin routes, authenticated with ``Authorization: Bearer <cluster secret>``; not for the client workload.

``GET|PUT|DELETE /admin/faults`` switch the message and clock faults a running node applies (used by chaos
on real clusters). The body of a PUT is a ``ChaosPolicy`` in JSON (``kvstore.faults.ChaosPolicy.to_json``):
cut links, delays, drop / duplicate / reorder probabilities, and clock faults keyed by node (a node applies
its own entry to its clock; clock ``since_ms`` is in wall-clock ms). Every field is checked for type and
bound, and node ids must be members of the cluster; a bad policy is a 400 and changes nothing. DELETE
restores the fault-free policy. These stay out of the OpenAPI description.

``GET /admin/copies/{partition}?after=<key>&limit=<n>`` answers this node's copy of one partition it holds a
replica of: every stored record in key order, tombstones and expired records included, with the version,
expiry, causal context and siblings the protocol stored (what the convergence checker compares across
replicas). The copy is what the node holds in memory, synced or not. Pages are bounded by count and by
bytes; ``next`` is the ``after`` of the following page. Documented in ``openapi.py``.
"""

from __future__ import annotations

import base64
import hmac
import os
import random

from multidict import CIMultiDict

from kvstore.config import ClusterConfig
from kvstore.errors import ErrorCode, KvError
from kvstore.faults import ChaosPolicy
from kvstore.messages import MovePartition, SetMember
from kvstore.node import Node
from kvstore.server.clock import NodeClock
from kvstore.server.faults import FaultSwitch
from kvstore.server.http_codec import (
    check_fields,
    encoded_response,
    json_response,
    query_params,
    read_document,
    wants_msgpack,
    wire_limit_bytes,
)
from kvstore.server.http_message import Request, Response
from kvstore.server.pump import Pump
from kvstore.server.router import Router
from kvstore.storage.base import Record, Storage
from kvstore.validation import check_key, parse_whole_number, show_int

ADMIN_FAULTS_PATH = "/admin/faults"
# A fault policy is a few links and numbers; anything much larger is not one.
MAX_POLICY_BYTES = 256 * 1024
ADMIN_MOVES_PATH = "/admin/moves"
MAX_MOVE_BYTES = 4096
ADMIN_MEMBERS_PATH = "/admin/members"
MAX_MEMBER_BYTES = 4096

ADMIN_COPIES_PREFIX = "/admin/copies/"
ADMIN_COPIES_TEMPLATE = ADMIN_COPIES_PREFIX + "{partition}"
DEFAULT_COPY_LIMIT = 1000
MAX_COPY_LIMIT = 10_000
# A page stops before the record that would take its keys, values and contexts past this many bytes (but
# holds at least one record), so that a page of large values is bounded too, not only counted.
MAX_COPY_PAGE_BYTES = 8 << 20


def authorize(headers: CIMultiDict[str], secret: bytes) -> None:
    """``unauthorized`` unless the headers carry ``Authorization: Bearer <secret>``."""
    header = headers.get("Authorization", "")
    scheme, _, token = header.strip(" ").partition(" ")
    # The scheme is case-insensitive and may be followed by more than one space (RFC 9110 11.4).
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.lstrip(" ").encode("utf-8", "replace"), secret):
        raise KvError(ErrorCode.UNAUTHORIZED, "admin routes need 'Authorization: Bearer <cluster secret>'")


class AdminRoutes:
    def __init__(self, config: ClusterConfig, node: Node, faults: FaultSwitch) -> None:
        self._token = config.secret.encode()
        self._node = node
        self._faults = faults

    def register(self, router: Router) -> None:
        router.add("GET", ADMIN_FAULTS_PATH, self.show, internal=True)
        policy_bytes = wire_limit_bytes(MAX_POLICY_BYTES)
        router.add(
            "PUT",
            ADMIN_FAULTS_PATH,
            self.install,
            internal=True,
            max_body_bytes=policy_bytes,
            check_head=lambda headers: authorize(headers, self._token),
        )
        router.add("DELETE", ADMIN_FAULTS_PATH, self.clear, internal=True)

    def _current(self) -> dict[str, object]:
        policy = self._faults.policy
        return {"faults": policy.to_json() if isinstance(policy, ChaosPolicy) else None}

    async def show(self, request: Request, _: str) -> Response:
        authorize(request.headers, self._token)
        return json_response(self._current())

    async def install(self, request: Request, _: str) -> Response:
        authorize(request.headers, self._token)
        doc, _as_msgpack = read_document(request, MAX_POLICY_BYTES)
        try:
            rng = random.Random(int.from_bytes(os.urandom(8), "big"))
            policy = ChaosPolicy.from_json(doc, rng, self._node.known_nodes)
        except ValueError as exc:
            raise KvError(ErrorCode.BAD_REQUEST, str(exc)) from exc
        self._faults.install(policy)
        return json_response(self._current())

    async def clear(self, request: Request, _: str) -> Response:
        authorize(request.headers, self._token)
        self._faults.clear()
        return json_response(self._current())


class OrderRoutes:
    """An operator's orders to this node, which it acts on in one step and answers at once.

    ``POST /admin/moves``: move a partition to another node (``{"partition": p, "target": "n2"}``). The node
    that serves the partition starts the move and answers ``{"started": true}``; any other node, or one that
    refuses (the partition is moving already, the target is no member...), answers ``{"started": false,
    "reason": ...}``. A move runs on after the answer: watch ``GET /cluster``.

    ``POST /admin/members``: a membership order (``kvstore/membership.py``). ``{"node": "n4", "state":
    "active", "address": "127.0.0.1:7004"}`` admits a node (the address may be left out for one the roster
    knows); ``{"node": "n2", "state": "leaving"}`` drains one. The answer is this node's map epoch and the
    node's roster entry after the order; a refused order is a 400 naming why. The cluster then moves
    partitions on its own: watch ``GET /cluster`` (``balanced``, the roster, the layout).
    """

    def __init__(self, config: ClusterConfig, node: Node, pump: Pump) -> None:
        self._token = config.secret.encode()
        self._node = node
        self._pump = pump

    def register(self, router: Router) -> None:
        for path, handler, limit_bytes in (
            (ADMIN_MOVES_PATH, self.move, MAX_MOVE_BYTES),
            (ADMIN_MEMBERS_PATH, self.order, MAX_MEMBER_BYTES),
        ):
            router.add(
                "POST",
                path,
                handler,
                internal=True,
                max_body_bytes=wire_limit_bytes(limit_bytes),
                check_head=lambda headers: authorize(headers, self._token),
            )

    async def move(self, request: Request, _: str) -> Response:
        authorize(request.headers, self._token)
        doc = read_document(request, MAX_MOVE_BYTES)[0]
        check_fields(doc, ("partition", "target"), (), "move")
        partition, target = doc["partition"], doc["target"]
        if not isinstance(partition, int) or isinstance(partition, bool):
            raise KvError(ErrorCode.BAD_REQUEST, "move: partition must be an integer")
        if not isinstance(target, str):
            raise KvError(ErrorCode.BAD_REQUEST, "move: target must be a node id")
        if not 0 <= partition < self._node.partition_map.partition_count:
            raise KvError(ErrorCode.BAD_REQUEST, f"move: no partition {show_int(partition)}")
        self._pump.order(MovePartition(partition, target))
        reason = self._node.order_refusal
        doc_out: dict[str, object] = {"node_id": self._node.node_id, "partition": partition, "target": target}
        doc_out["started"] = reason is None
        if reason is not None:
            doc_out["reason"] = reason
        return encoded_response(doc_out, wants_msgpack(request))

    async def order(self, request: Request, _: str) -> Response:
        authorize(request.headers, self._token)
        doc = read_document(request, MAX_MEMBER_BYTES)[0]
        check_fields(doc, ("node", "state"), ("address",), "membership order")
        node_id, state, address = doc["node"], doc["state"], doc.get("address", "")
        for name, value in (("node", node_id), ("state", state), ("address", address)):
            if not isinstance(value, str):
                raise KvError(ErrorCode.BAD_REQUEST, f"membership order: {name} must be a string")
        self._pump.order(SetMember(node_id, state, address))
        reason = self._node.order_refusal
        if reason is not None:
            raise KvError(ErrorCode.BAD_REQUEST, f"membership order refused: {reason}")
        partition_map = self._node.partition_map
        entry = partition_map.member(node_id)
        doc_out: dict[str, object] = {
            "node_id": self._node.node_id,
            "map_epoch": partition_map.epoch,
            "member": None
            if entry is None
            else {"node": entry.node_id, "address": entry.address, "state": entry.state, "version": entry.version},
        }
        return encoded_response(doc_out, wants_msgpack(request))


class CopyRoutes:
    """``GET /admin/copies/{partition}``: one replica's copy of a partition, read straight from storage.

    Served on the loop thread, as every step is, so a page is one consistent moment of the node's memory.
    """

    def __init__(self, config: ClusterConfig, node: Node, storage: Storage, clock: NodeClock) -> None:
        self._token = config.secret.encode()
        self._limits = config.limits
        self._node = node
        self._storage = storage
        self._clock = clock

    def register(self, router: Router) -> None:
        router.add("GET", ADMIN_COPIES_TEMPLATE, self.copy)

    async def copy(self, request: Request, raw_partition: str) -> Response:
        authorize(request.headers, self._token)
        params = query_params(request, ("after", "limit"))
        partition_map = self._node.partition_map
        partition = self._partition(raw_partition, partition_map.partition_count)
        limit = self._limit(params.get("limit"))
        after = self._after(params.get("after"))
        node_id = self._node.node_id
        replicas = partition_map.replicas[partition]
        if node_id not in replicas:
            raise KvError(
                ErrorCode.NOT_FOUND,
                f"node {node_id} holds no replica of partition {partition} (its replicas: {', '.join(replicas)})",
            )
        as_msgpack = wants_msgpack(request)
        # One record past the page tells whether more follow.
        records = self._storage.records_after(partition, after, limit + 1)
        page: list[dict[str, object]] = []
        page_bytes = 0
        end = 0
        for key, record in records[:limit]:
            size = _record_bytes(key, record)
            if page and page_bytes + size > MAX_COPY_PAGE_BYTES:
                break
            page.append(_record_doc(key, record, as_msgpack))
            page_bytes += size
            end += 1
        doc = {
            "node_id": node_id,
            "partition": partition,
            "epoch": partition_map.epoch,
            "replicas": list(replicas),
            "clock_ms": self._clock.now_ms(),
            "records": page,
            # The last key of this page while more follow: the next page's ``after``.
            "next": records[end - 1][0] if end < len(records) else None,
        }
        return encoded_response(doc, as_msgpack)

    @staticmethod
    def _partition(raw: str, partition_count: int) -> int:
        partition = parse_whole_number(raw, "partition")
        if not 0 <= partition < partition_count:
            raise KvError(
                ErrorCode.BAD_REQUEST, f"partition must be 0..{partition_count - 1}, got {show_int(partition)}"
            )
        return partition

    @staticmethod
    def _limit(text: str | None) -> int:
        if text is None:
            return DEFAULT_COPY_LIMIT
        limit = parse_whole_number(text, "limit")
        if not 1 <= limit <= MAX_COPY_LIMIT:
            raise KvError(ErrorCode.BAD_REQUEST, f"limit must be 1..{MAX_COPY_LIMIT}, got {show_int(limit)}")
        return limit

    def _after(self, text: str | None) -> str | None:
        if text is None:
            return None
        try:
            # A cursor is a key (the last of a page), so it is checked as one.
            return check_key(text, self._limits)
        except KvError as exc:
            raise KvError(ErrorCode.BAD_REQUEST, f"after: {exc.message}") from None


def _record_bytes(key: str, record: Record) -> int:
    siblings = sum(len(s.value or b"") + len(s.context) for s in record.siblings)
    return len(key.encode()) + len(record.value or b"") + len(record.context) + siblings


def _bytes_field(data: bytes | None, as_msgpack: bool) -> object:
    """Raw bytes in msgpack, base64 in JSON; None stays None (a tombstone's value)."""
    if data is None or as_msgpack:
        return data
    return base64.b64encode(data).decode("ascii")


def _record_doc(key: str, record: Record, as_msgpack: bool) -> dict[str, object]:
    return {
        "key": key,
        "value": _bytes_field(record.value, as_msgpack),
        "tombstone": record.tombstone,
        "version": record.version,
        "expires_at_ms": record.expires_at_ms,
        "context": _bytes_field(record.context, as_msgpack),
        "siblings": [
            {
                "value": _bytes_field(s.value, as_msgpack),
                "version": s.version,
                "context": _bytes_field(s.context, as_msgpack),
            }
            for s in record.siblings
        ],
    }
