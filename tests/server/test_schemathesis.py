"""Schemathesis over the node's own OpenAPI description, against a live node in a separate process.

Every operation gets schemathesis's examples, coverage (boundary values, deterministic) and fuzzing
phases, with valid and invalid input. Every answer must be documented (status, content type, headers,
body) and none may be a server error. (That a route accepts exactly the input documented is
tests/server/test_openapi.py's probe.)

The cases are generated when the module is imported, from the description built off a node's route
table; ``test_the_live_node_serves_the_description_tested`` checks the live node serves exactly that
document. Examples are bounded and derandomized: the same requests every run. A single-mode node and a
leaderless one are each tested against their own description (leaderless: quorums, contexts, siblings, a counter
key prefix for CRDT ops).
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import TYPE_CHECKING, Any

import msgpack
import pytest
import schemathesis
from hypothesis import HealthCheck, reject, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from kvstore.config import ClusterConfig, LeaderlessConfig
from kvstore.server.app import NodeServer
from kvstore.server.inprocess import loopback_config
from kvstore.server.openapi import build_openapi
from kvstore.server.routes_changes import MAX_WAIT_MS
from kvstore.storage.factory import open_storage

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import NodeProcess

# One node owning every partition, so no answer depends on a peer that is not running.
CONFIG = loopback_config(1, partitions=4)
# The same in leaderless mode: one replica per key, blind writes through it still make siblings; keys under c/
# are counters, so generated values there are CRDT ops (mostly malformed: 400).
LEADERLESS_CONFIG = loopback_config(
    1, partitions=4, mode="leaderless", replicas=1, leaderless=LeaderlessConfig(policies=(("c/", "counter"),))
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Per operation, phase and generation mode: enough to reach the branches, few enough for a quick run.
MAX_EXAMPLES = 100
# Leaderless mode differs in its key routes only: fewer examples keep the second run cheap.
LEADERLESS_MAX_EXAMPLES = 30
# A bound on one request to a local node, never a measure of speed.
REQUEST_TIMEOUT_S = 30
# GET /changes stays open wait_ms once caught up (default 30 s, at most 10 min): every generated stream would
# stall the run. A valid wait_ms, or none, is sent as at most this; out-of-range or malformed ones go as
# generated, as they are refused at once. This keeps the description the node serves (and tests) untouched, where
# a narrower wait_ms in a copy of it would make schemathesis send "invalid" values up to the real bound, each a
# stream held open that long.
STREAM_WAIT_MS = 20


def described_api(config: ClusterConfig) -> dict[str, Any]:
    """The description a node of ``config`` serves, built off its route table (no socket is opened)."""

    async def build() -> dict[str, Any]:
        server = NodeServer(config, config.nodes[0].node_id, open_storage(config, config.nodes[0].node_id))
        return build_openapi(server.router.routes, config.limits, config.mode, config.replication_factor)

    return asyncio.run(build())


def load(description: dict[str, Any]) -> Any:
    return schemathesis.openapi.from_dict(
        description,
        config=schemathesis.Config.from_dict(
            {
                "generation": {"mode": "all"},
                "phases": {"stateful": {"enabled": False}},
            }
        ),
    )


DESCRIPTION = described_api(CONFIG)
LEADERLESS_DESCRIPTION = described_api(LEADERLESS_CONFIG)
schema = load(DESCRIPTION)
leaderless_schema = load(LEADERLESS_DESCRIPTION)


@schemathesis.serializer("application/msgpack", "application/x-msgpack")
def _msgpack_body(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    try:
        packed: bytes = msgpack.packb(value, use_bin_type=True)
    except OverflowError:
        # msgpack has no integers beyond 64 bits: such a body cannot be sent as msgpack at all.
        reject()
    return packed


@pytest.fixture(scope="module")
def node(node_process: Callable[[ClusterConfig, str], NodeProcess]) -> NodeProcess:
    return node_process(CONFIG, "n1")


@pytest.fixture(scope="module")
def leaderless_node(node_process: Callable[[ClusterConfig, str], NodeProcess]) -> NodeProcess:
    return node_process(LEADERLESS_CONFIG, "n1")


def test_the_live_node_serves_the_description_tested(node: NodeProcess, leaderless_node: NodeProcess) -> None:
    for running, description in ((node, DESCRIPTION), (leaderless_node, LEADERLESS_DESCRIPTION)):
        with urllib.request.urlopen(f"{running.url}/openapi.json", timeout=REQUEST_TIMEOUT_S) as response:
            assert json.load(response) == description
    assert description["paths"]["/kv/{key}"]["get"]["responses"].keys() >= {"200", "300", "404"}


def bound_stream(case: schemathesis.Case[Any]) -> None:
    """A change-feed stream the case would hold open for long holds it open ``STREAM_WAIT_MS`` at most."""
    if case.path != "/changes" or not isinstance(case.query, dict):
        return
    wait_ms = case.query.get("wait_ms", STREAM_WAIT_MS)
    text = "" if isinstance(wait_ms, bool) else str(wait_ms)
    # As the node reads it: ASCII digits (a bool, "1e3" or "\u0663" is refused at once).
    if text.isascii() and text.isdigit() and int(text) <= MAX_WAIT_MS:
        case.query["wait_ms"] = min(int(text), STREAM_WAIT_MS)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_documented(case: schemathesis.Case[Any], node: NodeProcess) -> None:
    bound_stream(case)
    case.call_and_validate(base_url=node.url, checks=CHECKS, timeout=REQUEST_TIMEOUT_S)


@leaderless_schema.parametrize()
@settings(
    max_examples=LEADERLESS_MAX_EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck)
)
def test_every_leaderless_answer_is_documented(case: schemathesis.Case[Any], leaderless_node: NodeProcess) -> None:
    bound_stream(case)
    case.call_and_validate(base_url=leaderless_node.url, checks=CHECKS, timeout=REQUEST_TIMEOUT_S)
