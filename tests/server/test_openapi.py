"""The OpenAPI description itself: valid OpenAPI 3.1, alternatives that exclude each other, and exactly
the input each route accepts, probed on a live node from what the description says: a single-mode node and a
leaderless one, each against the description it serves.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from unittest.mock import ANY

import aiohttp
import jsonschema_rs
import msgpack
import pytest
import schemathesis
from copy_support import TOMBSTONE, VALUE, WITH_SIBLINGS
from schemathesis.core.errors import LoaderError
from server_support import ADMIN_ROUTE_TEMPLATES, CLIENT_ROUTE_TEMPLATES

from kvstore.config import Limits
from kvstore.errors import ErrorCode
from kvstore.server.inprocess import InProcessCluster, loopback_config
from kvstore.server.openapi import build_openapi
from kvstore.server.router import Route
from kvstore.server.routes_admin import ADMIN_COPIES_TEMPLATE
from kvstore.storage.base import Record

Json = dict[str, Any]
SECRET = "openapi-test-secret"


@pytest.fixture(params=["single", "leaderless"])
def mode(request: pytest.FixtureRequest) -> str:
    param: str = request.param
    return param


@pytest.fixture
async def running(mode: str) -> AsyncIterator[InProcessCluster]:
    """A one-node cluster: it owns every key and partition, so no answer depends on forwarding."""
    replicas = {"replicas": 1} if mode == "leaderless" else {}
    async with InProcessCluster(loopback_config(1, partitions=4, secret=SECRET, mode=mode, **replicas)) as cluster:
        yield cluster


@pytest.fixture
def node(running: InProcessCluster) -> str:
    return running.url("n1")


@pytest.fixture
async def described(node: str, http: aiohttp.ClientSession) -> Json:
    async with http.get(f"{node}/openapi.json") as response:
        assert response.status == 200
        doc: Json = await response.json()
    return doc


def operations(doc: Json) -> Iterator[tuple[str, str, Json]]:
    for path, ops in doc["paths"].items():
        for method, operation in ops.items():
            yield method.upper(), path, operation


# ---------------------------------------------------------------- the document


async def test_the_description_is_valid_openapi_3_1(described: Json) -> None:
    schemathesis.openapi.from_dict(copy.deepcopy(described)).validate()
    # The control: the same validation refuses a broken document.
    broken = copy.deepcopy(described)
    broken["paths"]["/health"]["get"]["responses"] = "none"
    with pytest.raises((LoaderError, ValueError)):
        schemathesis.openapi.from_dict(broken).validate()


def test_bounds_come_from_the_limits_given() -> None:
    limits = Limits(max_key_bytes=64, max_batch_keys=7, max_scan_limit=50)
    full = build_openapi(CLIENT_ROUTES, limits)
    key = full["paths"]["/kv/{key}"]["get"]["parameters"][0]["schema"]
    assert (key["minLength"], key["maxLength"]) == (1, 64)
    scan = full["paths"]["/scan"]["get"]["parameters"][0]["schema"]["oneOf"][1]
    assert scan["properties"]["limit"]["maximum"] == 50
    batch = full["paths"]["/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert [branch["properties"][name]["maxItems"] for branch, name in zip(batch, ("get", "put"), strict=True)] == [
        7,
        7,
    ]


def test_the_replication_settings_are_the_modes() -> None:
    single = build_openapi(CLIENT_ROUTES)["paths"]
    leader = build_openapi(CLIENT_ROUTES, mode="leader")["paths"]
    read = single["/kv/{key}"]["get"]["parameters"][1]["schema"]
    assert read["properties"] == {"consistency": {"enum": ["linearizable", "read-index"], "description": ANY}}
    fresh, stale = leader["/kv/{key}"]["get"]["parameters"][1]["schema"]["oneOf"]
    assert fresh["properties"]["consistency"]["enum"] == ["linearizable", "read-index", "lease", "unsafe"]
    assert stale["required"] == ["consistency"] and stale["properties"]["consistency"]["const"] == "stale"
    assert set(stale["properties"]) == {"consistency", "max_staleness_ms"}
    for paths, settings in ((single, ["sync"]), (leader, ["sync", "semi-sync", "async"])):
        put = paths["/kv/{key}"]["put"]["parameters"][1]["schema"]["properties"]["replication"]
        delete = paths["/kv/{key}"]["delete"]["parameters"][1]["schema"]["properties"]["replication"]
        cas = paths["/cas/{key}"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
        batch = paths["/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"][1]
        for schema in (put, delete, *(branch["properties"]["replication"] for branch in cas),
                       batch["properties"]["replication"]):
            assert schema["enum"] == settings
    # Every key op takes and answers a session token.
    for method, path in (("get", "/kv/{key}"), ("put", "/kv/{key}"), ("delete", "/kv/{key}"), ("post", "/cas/{key}")):
        operation = single[path][method]
        assert any(p["name"] == "X-Kv-Session" and p["in"] == "header" for p in operation["parameters"])
        assert "X-Kv-Session" in operation["responses"]["200"]["headers"]


async def _unused(request: Any, param: str) -> Any:
    raise AssertionError("a description never calls a handler")


CLIENT_ROUTES = [Route(method, template, _unused) for method, template in CLIENT_ROUTE_TEMPLATES]
ADMIN_ROUTES = [Route(method, template, _unused) for method, template in ADMIN_ROUTE_TEMPLATES]


async def test_the_live_node_describes_its_client_and_admin_routes(described: Json) -> None:
    documented = {(method, path) for method, path, _ in operations(described)}
    assert documented == {*CLIENT_ROUTE_TEMPLATES, *ADMIN_ROUTE_TEMPLATES}
    # /admin/faults stays internal: only the copy route is documented, as secured by the cluster secret.
    assert "/admin/faults" not in described["paths"]
    secured = {(method, path) for method, path, operation in operations(described) if "security" in operation}
    assert secured == set(ADMIN_ROUTE_TEMPLATES)
    assert described["components"]["securitySchemes"] == {
        "clusterSecret": {"type": "http", "scheme": "bearer", "description": "The cluster secret"}
    }
    # Without a secured route there is nothing to name a security scheme for.
    unsecured = [r for r in CLIENT_ROUTES if (r.method, r.template) not in ADMIN_ROUTE_TEMPLATES]
    assert "components" not in build_openapi(unsecured)


async def test_the_copy_route_lists_its_refusals(described: Json) -> None:
    responses = described["paths"][ADMIN_COPIES_TEMPLATE]["get"]["responses"]
    codes = {
        status: response["content"]["application/json"]["schema"]["properties"]["error"]["properties"]["code"]["enum"]
        for status, response in responses.items()
        if status != "200"
    }
    assert codes == {
        "400": ["bad_request", "bad_key"],
        "401": ["unauthorized"],
        "404": ["not_found"],
        "408": ["request_timeout"],
        "414": ["uri_too_long"],
        "431": ["headers_too_large"],
        "500": ["internal"],
        "503": ["overloaded"],
    }


async def test_every_record_shape_of_a_copy_matches_the_description(
    running: InProcessCluster, http: aiohttp.ClientSession, described: Json
) -> None:
    storage = running.servers["n1"].storage
    for key, record in (("a", VALUE), ("b", TOMBSTONE), ("c", WITH_SIBLINGS), ("d", Record(b"", 1))):
        storage.write(0, key, record)
    ok = described["paths"][ADMIN_COPIES_TEMPLATE]["get"]["responses"]["200"]["content"]
    url = f"{running.url('n1')}/admin/copies/0"
    for media_type in ("application/json", "application/msgpack"):
        headers = {"Authorization": f"Bearer {SECRET}", "Accept": media_type}
        async with http.get(url, params={"limit": "3"}, headers=headers) as response:
            assert response.status == 200 and response.content_type == media_type
            body = await response.read()
        if media_type == "application/json":
            doc = json.loads(body)
        else:
            doc = msgpack.unpackb(body)
            assert isinstance(doc["records"][0]["value"], bytes) and doc["records"][1]["value"] is None
            # A JSON Schema validator knows no bytes; the msgpack schema takes any value where bytes go.
            doc = _bytes_as_text(doc)
        assert len(doc["records"]) == 3 and doc["next"] == "c"
        validator = jsonschema_rs.validator_for(ok[media_type]["schema"])
        assert validator.is_valid(doc), list(validator.iter_errors(doc))
        # The control: a record that says it is a tombstone while holding a value matches no shape.
        doc["records"][0]["tombstone"] = True
        assert not validator.is_valid(doc)


def _bytes_as_text(doc: Any) -> Any:
    if isinstance(doc, bytes):
        return doc.hex()
    if isinstance(doc, dict):
        return {k: _bytes_as_text(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_bytes_as_text(v) for v in doc]
    return doc


def test_a_route_without_a_description_is_refused() -> None:
    with pytest.raises(ValueError, match="route GET /undocumented has no OpenAPI description"):
        build_openapi([*CLIENT_ROUTES, Route("GET", "/undocumented", _unused)])
    # Internal routes (peer traffic, admin) are left out, described or not.
    doc = build_openapi([*CLIENT_ROUTES, Route("POST", "/peer", _unused, internal=True)])
    assert "/peer" not in doc["paths"]


async def test_every_status_a_route_answers_carries_exactly_its_error_codes(described: Json) -> None:
    for method, path, operation in operations(described):
        for status, response in operation["responses"].items():
            if status.startswith(("2", "3")):  # successes, and a leaderless read's siblings (300)
                continue
            body = response["content"]["application/json"]["schema"]
            error = body["properties"]["error"]
            codes = error["properties"]["code"]["enum"]
            assert codes, (method, path, status)
            assert {ErrorCode(code).http_status for code in codes} == {int(status)}, (method, path, status)
            definite = {ErrorCode(code).definite for code in codes}
            expected = {"const": definite.pop()} if len(definite) == 1 else {"type": "boolean"}
            assert error["properties"]["definite"] == expected, (method, path, status)
            assert body["required"] == ["error"] and body["additionalProperties"] is False


async def test_every_route_lists_the_refusals_of_the_http_edge(described: Json) -> None:
    # Any request can be malformed, slow, too long in its line or headers, or meet a full node.
    edge = {"400", "408", "414", "431", "500", "503"}
    for method, path, operation in operations(described):
        assert edge <= operation["responses"].keys(), (method, path)
        assert "default" not in operation["responses"], (method, path)


async def test_the_value_of_a_read_comes_with_its_version_header(described: Json, mode: str) -> None:
    responses = described["paths"]["/kv/{key}"]["get"]["responses"]
    ok = responses["200"]
    assert list(ok["content"]) == ["application/octet-stream"]
    if mode == "leaderless":
        # No version and no TTL: the causal context and the number of values instead, on every answer of a read.
        assert set(ok["headers"]) == {"X-Kv-Context", "X-Kv-Siblings"}
        assert ok["headers"]["X-Kv-Context"]["required"] is True and ok["headers"]["X-Kv-Siblings"]["required"]
        assert responses["300"]["headers"] == ok["headers"]
        assert set(responses["300"]["content"]) == {"application/json", "application/msgpack"}
        assert set(responses["404"]["headers"]) == {"X-Kv-Context", "X-Kv-Siblings"}
        assert "required" not in responses["404"]["headers"]["X-Kv-Context"]
        return
    assert "300" not in responses
    assert ok["headers"]["X-Kv-Version"]["required"] is True
    assert "required" not in ok["headers"]["X-Kv-Expires-At-Ms"]


# ---------------------------------------------------------------- alternatives exclude each other


def one_ofs(node: Any, where: str = "#") -> Iterator[tuple[str, list[Json]]]:
    if isinstance(node, dict):
        if "oneOf" in node:
            yield where, node["oneOf"]
        for name, child in node.items():
            yield from one_ofs(child, f"{where}/{name}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from one_ofs(child, f"{where}/{i}")


def _types(schema: Json) -> set[str] | None:
    """The JSON types a schema allows, when it says (``type``, ``const`` or ``enum``)."""
    if "type" in schema:
        kinds = schema["type"]
        return {kinds} if isinstance(kinds, str) else set(kinds)
    values = [schema["const"]] if "const" in schema else schema.get("enum")
    if values is None:
        return None
    return {_json_type(v) for v in values}


def _json_type(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}
    return names.get(type(value), "object")


def _values(schema: Json) -> list[object] | None:
    return [schema["const"]] if "const" in schema else schema.get("enum")


def exclusive(a: Json, b: Json) -> bool:
    """True when no instance can match both ``a`` and ``b``, judged from their structure alone."""
    a_types, b_types = _types(a), _types(b)
    if a_types is not None and b_types is not None and not a_types & b_types:
        return True
    a_values, b_values = _values(a), _values(b)
    if a_values is not None and b_values is not None and not set(map(json.dumps, a_values)) & set(
        map(json.dumps, b_values)
    ):
        return True
    if a_types == b_types == {"object"}:
        # A field one requires and the other forbids, or allows only with values the first cannot hold.
        for x, y in ((a, b), (b, a)):
            for name in x.get("required", []):
                if name in y.get("properties", {}):
                    if exclusive(x["properties"][name], y["properties"][name]):
                        return True
                elif y.get("additionalProperties") is False:
                    return True
    return False


async def test_the_branches_of_every_one_of_exclude_each_other(described: Json) -> None:
    found = list(one_ofs(described))
    # CAS answers, scan items, batch entries, members, bodies, query combinations, TTLs: all of them.
    assert len(found) >= 10
    for where, branches in found:
        for a, b in itertools.combinations(branches, 2):
            assert exclusive(a, b), f"{where}: {a} and {b} can both match"


async def test_a_cas_answer_is_written_or_deleted_never_both(described: Json, mode: str) -> None:
    if mode == "leaderless":
        # Refused whatever it is asked: no success answer is documented.
        assert not any(s.startswith("2") for s in described["paths"]["/cas/{key}"]["post"]["responses"])
        return
    schema = described["paths"]["/cas/{key}"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    written, deleted = schema["oneOf"]
    assert (written["required"], deleted["required"]) == (["key", "version"], ["key", "deleted"])
    assert written["additionalProperties"] is False and deleted["additionalProperties"] is False


# ---------------------------------------------------------------- the input each route accepts

_keys = (f"probe-{i}" for i in itertools.count())


def example(schema: Json) -> Any:
    """A value the schema allows, picked from what it says."""
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    if "examples" in schema:
        return schema["examples"][0]
    if "oneOf" in schema:
        return example(schema["oneOf"][0])
    kind = schema.get("type")
    if kind == "object":
        return {name: example(schema["properties"][name]) for name in schema.get("required", [])}
    if kind == "array":
        return [example(schema["items"])] * max(1, schema.get("minItems", 1))
    if kind == "integer":
        return schema.get("minimum", 1)
    if kind == "null":
        return None
    assert kind == "string", schema
    # The empty string is valid base64; a key must not be empty.
    return "" if "pattern" in schema else next(_keys)


def query_properties(operation: Json) -> dict[str, Json]:
    """Every query parameter an operation documents: the properties of its exploded query objects."""
    found: dict[str, Json] = {}
    for parameter in operation.get("parameters", []):
        if parameter["in"] != "query":
            continue
        schema = parameter["schema"]
        assert parameter["style"] == "form" and parameter["explode"] is True
        for branch in schema.get("oneOf", [schema]):
            assert branch["additionalProperties"] is False
            found.update(branch["properties"])
    return found


class Probe:
    """Requests to one operation, on a fresh key; what the node answered against what was expected is
    written to ``mismatches``, so one run lists every input a route takes or refuses wrongly."""

    def __init__(
        self, node: str, http: aiohttp.ClientSession, method: str, path: str, operation: Json, mismatches: list[str]
    ) -> None:
        self.node, self.http, self.method, self.template, self.operation = node, http, method, path, operation
        self.mismatches = mismatches
        self.path = path
        # A secured (admin) route is probed with the secret: its input is what is probed, not its auth.
        self.auth = {"Authorization": f"Bearer {SECRET}"} if "security" in operation else {}

    def body_schema(self, media_type: str = "application/json") -> Json | None:
        body = self.operation.get("requestBody")
        if body is None or "*/*" in body["content"]:
            return None
        schema: Json = body["content"][media_type]["schema"]
        return schema

    async def send(
        self, query: dict[str, str] | None = None, body: Any = None, media_type: str = "application/json"
    ) -> tuple[int, Json | None]:
        data: bytes | None = None
        headers = dict(self.auth)
        if body is not None:
            data = msgpack.packb(body) if "msgpack" in media_type else json.dumps(body).encode()
            headers["Content-Type"] = media_type
        elif self.operation.get("requestBody", {}).get("required"):
            return await self.send(query, self.valid_body(), media_type)
        # A fresh key each time: a CAS that expects the key absent finds it so. Partition 0 is the node's.
        self.path = self.template.replace("{key}", next(_keys)).replace("{partition}", "0")
        url = f"{self.node}{self.path}"
        async with self.http.request(self.method, url, params=query, data=data, headers=headers) as response:
            is_json = response.content_type == "application/json"
            return response.status, (await response.json() if is_json else None)

    def valid_body(self) -> Any:
        schema = self.body_schema()
        return None if schema is None else example(schema)

    async def accepts(self, query: dict[str, str] | None = None, body: Any = None, media_type: str = "") -> None:
        status, doc = await self.send(query, body, media_type or "application/json")
        if not 200 <= status < 300:
            self._mismatch("a 2xx", status, doc, query, body, media_type)

    async def refuses(
        self, query: dict[str, str] | None = None, body: Any = None, media_type: str = "", status: int = 400
    ) -> None:
        got, doc = await self.send(query, body, media_type or "application/json")
        if got != status or doc is None or ErrorCode(doc["error"]["code"]).http_status != status:
            self._mismatch(str(status), got, doc, query, body, media_type)

    def _mismatch(
        self, wanted: str, got: int, doc: Json | None, query: dict[str, str] | None, body: Any, media_type: str
    ) -> None:
        sent = f"{self.method} {self.path}" + (f" query={query}" if query else "")
        if body is not None:
            sent += f" {media_type or 'application/json'} body={body!r}"
        self.mismatches.append(f"{sent}: wanted {wanted}, got {got} {doc}")


def _wire(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


def refused_always(operation: Json) -> bool:
    """An operation the node's mode refuses whatever it is sent (CAS in leaderless mode): it documents no 2xx."""
    return not any(status.startswith("2") for status in operation["responses"])


# Routes whose inputs depend on each other and on stored state (a view must be registered; ``after`` goes with
# ``partition``): not probed field by field here, but by tests/server/test_server_{changes,features}.py and
# Schemathesis.
STATEFUL_ROUTES = ("/changes", "/features/")


async def test_each_route_accepts_exactly_the_query_parameters_it_documents(
    node: str, http: aiohttp.ClientSession, described: Json
) -> None:
    mismatches: list[str] = []
    for method, path, operation in operations(described):
        if path.startswith(STATEFUL_ROUTES):
            continue
        probe = Probe(node, http, method, path, operation, mismatches)
        if refused_always(operation):
            await probe.refuses()
            continue
        if method == "GET" and path == "/kv/{key}":
            # A read is accepted when the key exists: this one always does.
            async with http.put(f"{node}/kv/present", data=b"v") as response:
                assert response.status == 200
            probe.template = "/kv/present"
        await probe.accepts()
        for name, schema in query_properties(operation).items():
            await probe.accepts({name: _wire(example(schema))})
        await probe.refuses({"undocumented": "1"})
        for name, schema in query_properties(operation).items():
            for value in out_of_range(schema):
                await probe.refuses({name: value})
    assert not mismatches, "\n".join(mismatches)


def out_of_range(schema: Json) -> list[str]:
    """Values a numeric query parameter's schema rules out: its bounds overstepped, and what is not a
    finite decimal number (or, for an integer, not a whole one); for a leaderless quorum (a string with a pattern),
    names and numbers it does not take."""
    if schema.get("type") == "string" and "pattern" in schema:
        return ["0", "999", "some", "QUORUM", " 1", "-1", "1.0"]
    if schema.get("type") not in ("integer", "number"):
        return []
    # Python's int() and float() take some of these (underscores, spaces, other scripts' digits).
    values = ["not a number", "", "1e308", "-1e308", "1e400", "nan", "inf", "-inf", "0x10", "1_000", " 1", "\u0663"]
    if schema["type"] == "integer":
        values += ["1.5", "1e3", str(schema["minimum"] - 1), str(schema["maximum"] + 1), str(1 << 64)]
    else:
        values += [str(schema["exclusiveMinimum"]), str(schema["maximum"]) + ".001", "-0.5"]
    return values


async def test_query_combinations_the_description_excludes_are_refused(
    node: str, http: aiohttp.ClientSession, described: Json, mode: str
) -> None:
    mismatches: list[str] = []
    put = described["paths"]["/kv/{key}"]["put"]
    query = put["parameters"][1]["schema"]
    probe = Probe(node, http, "PUT", "/kv/{key}", put, mismatches)
    if mode == "leaderless":
        # No TTL and no replication setting: a quorum (1..N, here N=1) and ABD, with the context as a header.
        assert set(query["properties"]) == {"w", "consistency"}
        assert [p["name"] for p in put["parameters"]] == ["key", "quorum", "X-Kv-Context"]
        await probe.accepts({"w": "001", "consistency": "linearizable"})
        for refused in ({"ttl": "1.5"}, {"ttl_ms": "1500"}, {"replication": "sync"}, {"w": "2"}, {"w": "0001"}):
            await probe.refuses(refused)
    else:
        assert query["not"] == {"required": ["ttl", "ttl_ms"]}
        assert set(query["properties"]) == {"ttl", "ttl_ms", "replication"}
        await probe.accepts({"ttl": "1.5", "replication": "sync"})
        await probe.refuses({"ttl": "1.5", "ttl_ms": "1500"})

    scan = described["paths"]["/scan"]["get"]
    by_prefix, by_range = scan["parameters"][0]["schema"]["oneOf"]
    assert by_prefix["required"] == ["prefix"] and "prefix" not in by_range["properties"]
    probe = Probe(node, http, "GET", "/scan", scan, mismatches)
    await probe.accepts({"prefix": "a", "limit": "5"})
    await probe.accepts({"start": "a", "end": "b", "limit": "5"})
    await probe.refuses({"prefix": "a", "start": "a"})
    await probe.refuses({"limit": str(by_range["properties"]["limit"]["maximum"] + 1)})
    assert not mismatches, "\n".join(mismatches)


async def test_each_body_accepts_exactly_the_fields_it_documents(
    node: str, http: aiohttp.ClientSession, described: Json, mode: str
) -> None:
    probed: list[str] = []
    mismatches: list[str] = []
    for method, path, operation in operations(described):
        schema = Probe(node, http, method, path, operation, mismatches).body_schema()
        if schema is None or path.startswith(STATEFUL_ROUTES):
            continue

        probe = Probe(node, http, method, path, operation, mismatches)
        shapes = list(_object_shapes(schema))
        if refused_always(operation):
            for shape in shapes:
                await probe.refuses(body=example(shape))
            continue
        for shape in shapes:
            body = example(shape)
            for media_type in operation["requestBody"]["content"]:
                await probe.accepts(body=body, media_type=media_type)
            await _probe_fields(probe, shape, shapes, lambda fields: fields, probed, f"{method} {path}")
        await probe.refuses(body=example(schema), media_type="text/plain", status=415)
    assert not mismatches, "\n".join(mismatches)
    # Both CAS encodings (but in leaderless mode, which refuses CAS), batch gets and puts, and both shapes of a
    # batch put entry.
    assert len(probed) == (4 if mode == "leaderless" else 6), probed


async def _probe_fields(
    probe: Probe, shape: Json, shapes: list[Json], wrap: Callable[[Json], Any], probed: list[str], where: str
) -> None:
    """Each field of an object ``shape``, one of ``shapes`` (wrapped into a whole body by ``wrap``): the
    object is taken with every optional field, and refused with an undocumented one or without a required
    one (unless that leaves another shape); and so on down into arrays of objects."""
    probed.append(f"{where} {sorted(shape['properties'])}")
    fields = example(shape)
    for name in shape["properties"].keys() - set(shape["required"]):
        await probe.accepts(body=wrap({**fields, name: example(shape["properties"][name])}))
    await probe.refuses(body=wrap({**fields, "undocumented": 1}))
    for name in shape["required"]:
        rest = {k: v for k, v in fields.items() if k != name}
        if any(fits(rest, other) for other in shapes):
            await probe.accepts(body=wrap(rest))
        else:
            await probe.refuses(body=wrap(rest))
    for name, schema in shape["properties"].items():
        if schema.get("type") == "array" and any(True for _ in _object_shapes(schema["items"], strict=False)):
            items = list(_object_shapes(schema["items"]))
            for item in items:

                def wrap_item(entry: Json, name: str = name) -> Any:
                    return wrap({**fields, name: [entry]})

                await probe.accepts(body=wrap_item(example(item)))
                await _probe_fields(probe, item, items, wrap_item, probed, f"{where}.{name}[]")


def fits(fields: Json, shape: Json) -> bool:
    """Whether an object of ``example`` values has the fields ``shape`` requires and allows, with the
    constant values it names."""
    properties = shape["properties"]
    if not set(shape["required"]) <= fields.keys() <= properties.keys():
        return False
    return all(_values(properties[k]) is None or v in (_values(properties[k]) or []) for k, v in fields.items())


def _object_shapes(schema: Json, strict: bool = True) -> Iterator[Json]:
    """Each object shape ``schema`` allows (its oneOf branches, or itself); every one forbids other fields."""
    for branch in schema.get("oneOf", [schema]):
        if branch.get("type") != "object":
            assert not strict, branch
            continue
        assert branch["additionalProperties"] is False, branch
        yield branch
