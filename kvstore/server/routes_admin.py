"""Admin routes: switch the message and clock faults a running node applies (used by chaos on real clusters).

``GET|PUT|DELETE /admin/faults`` with ``Authorization: Bearer <cluster secret>``. The body of a PUT is a
``ChaosPolicy`` in JSON (``kvstore.faults.ChaosPolicy.to_json``): cut links, delays, drop / duplicate /
reorder probabilities, and clock faults keyed by node (a node applies its own entry to its clock; clock
``since_ms`` is in wall-clock ms). Every field is checked for type and bound, and node ids must be
members of the cluster; a bad policy is a 400 and changes nothing. DELETE restores the fault-free
policy. Not part of the client API.
"""

from __future__ import annotations

import hmac
import os
import random

from aiohttp import web

from kvstore.config import ClusterConfig
from kvstore.errors import ErrorCode, KvError
from kvstore.faults import ChaosPolicy
from kvstore.server.faults import FaultSwitch
from kvstore.server.http_codec import json_response, read_document
from kvstore.server.router import Router

ADMIN_FAULTS_PATH = "/admin/faults"
# A fault policy is a few links and numbers; anything much larger is not one.
MAX_POLICY_BYTES = 256 * 1024


class AdminRoutes:
    def __init__(self, config: ClusterConfig, faults: FaultSwitch) -> None:
        self._token = config.secret.encode()
        self._members = config.node_ids
        self._faults = faults
        self._body_timeout_s = config.timeouts.body_timeout_ms / 1000

    def register(self, router: Router) -> None:
        for method, handler in (("GET", self.show), ("PUT", self.install), ("DELETE", self.clear)):
            router.add(method, ADMIN_FAULTS_PATH, handler, internal=True)

    def _authorize(self, request: web.BaseRequest) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.strip(" ").partition(" ")
        # The scheme is case-insensitive and may be followed by more than one space (RFC 9110 11.4).
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.lstrip(" ").encode("utf-8", "replace"), self._token
        ):
            raise KvError(ErrorCode.UNAUTHORIZED, "admin routes need 'Authorization: Bearer <cluster secret>'")

    def _current(self) -> dict[str, object]:
        policy = self._faults.policy
        return {"faults": policy.to_json() if isinstance(policy, ChaosPolicy) else None}

    async def show(self, request: web.BaseRequest, _: str) -> web.StreamResponse:
        self._authorize(request)
        return json_response(self._current())

    async def install(self, request: web.BaseRequest, _: str) -> web.StreamResponse:
        self._authorize(request)
        doc, _as_msgpack = await read_document(request, MAX_POLICY_BYTES, self._body_timeout_s)
        try:
            policy = ChaosPolicy.from_json(doc, random.Random(int.from_bytes(os.urandom(8), "big")), self._members)
        except ValueError as exc:
            raise KvError(ErrorCode.BAD_REQUEST, str(exc)) from exc
        self._faults.install(policy)
        return json_response(self._current())

    async def clear(self, request: web.BaseRequest, _: str) -> web.StreamResponse:
        self._authorize(request)
        self._faults.clear()
        return json_response(self._current())
