"""msgpack encoding of every registered message class, from every package.

A registered dataclass is packed as a msgpack ext value holding ``[type name, field values...]``;
fields are packed recursively, so messages nest freely. Arrays decode as tuples, which is what the
frozen dataclasses hold, so ``decode(encode(m)) == m`` for every registered message: the simulator
checks exactly that by round-tripping each message it carries.

Decoding trusts nothing: peer frames are signed, but a bug, an older version or a replayed frame can
still hold anything. Every field is checked against its annotation before the dataclass is built (a
``Forward`` whose op is an int must not reach ``Node.step``), ints must fit in signed 64 bits, and
messages may nest at most ``MAX_MESSAGE_DEPTH`` deep. Lengths need no bound of their own:
``msgpack.unpackb`` refuses any str, bin, array, map or ext longer than the buffer holding it.

``register`` compiles one check per field from the class's type hints and refuses an annotation it
cannot check, so a new message type is either checked on decode or fails at import. The vocabulary:
``int`` (not bool), ``bool``, ``str``, ``bytes``, ``float`` (finite, or an int), ``None``, unions
(including aliases such as ``ClientOp``), ``tuple[X, ...]``, ``tuple[X, Y]``, ``list[X]``,
``frozenset[X]``, ``dict[K, V]``, ``Literal`` of str/int/bool/bytes/None, enums (sent as their value,
decoded to the member), registered dataclasses, and ``object``, which means any registered message
(how ``Message.body`` carries every protocol's messages). A referenced name must exist and a referenced
dataclass must be registered when ``register`` runs: define and register classes in dependency order.

Protocol packages (``replication``, ``partitioning``, ``transactions``) may not import kvstore, so
they do not call ``register`` themselves; ``kvstore.messages`` registers their message classes with
``register_all``.
"""

from __future__ import annotations

import dataclasses
import keyword
import math
import types
import typing
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any, Literal, TypeVar, Union

import msgpack

_EXT_DATACLASS = 1
_unpackb = msgpack.unpackb

# Each nested message is a separate msgpack.unpackb call, and each costs tens of KB of C stack: about
# 200 levels crash the process with a segfault. The deepest real message has 4 levels (Message >
# Forward > BatchPutOp > PutOp), so this leaves room for protocols to come and none for abuse.
MAX_MESSAGE_DEPTH = 16

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

T = TypeVar("T")
_Check = Callable[[Any], bool]
# Turns a checked wire value into what the dataclass holds (an enum member, a frozenset); None: as is.
_Convert = Callable[[Any], Any] | None
# A check as Python source: given the expression of a value, an expression that is True if it is valid.
_Expr = Callable[[str], str]


class CodecError(ValueError):
    """Bytes that are not a well-formed encoding of a registered message."""


@dataclasses.dataclass(frozen=True)
class _FieldSpec:
    name: str
    check: _Check
    convert: _Convert
    expected: str


@dataclasses.dataclass(frozen=True)
class _ClassSpec:
    cls: type[Any]
    fields: tuple[_FieldSpec, ...]
    # Fields without a default: a frame from an older version may omit the trailing ones that have one.
    required: int
    # The instance built from a complete, valid payload ``(name, field values...)``; None for anything
    # else, which ``_build_checked`` then builds or explains field by field.
    fast_build: Callable[[tuple[Any, ...]], Any]


_by_name: dict[str, type[Any]] = {}
_fields: dict[type[Any], tuple[str, ...]] = {}
_specs: dict[str, _ClassSpec] = {}
# Type name -> its spec's ``fast_build``, for the decoder's fast path.
_fast_builds: dict[str, Callable[[tuple[Any, ...]], Any]] = {}


def register(cls: type[T]) -> type[T]:
    """Register a dataclass by its class name; names must be unique across all packages.

    Raises TypeError if a field's annotation is outside what the decoder can check.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    name = cls.__name__
    existing = _by_name.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(f"message name {name!r} is registered twice ({existing.__module__}, {cls.__module__})")
    spec = _compile_class(cls)
    field_names = tuple(f.name for f in spec.fields)
    payload = _compile_payload(name, field_names)
    _by_name[name] = cls
    _fields[cls] = field_names
    _specs[name] = spec
    _fast_builds[name] = spec.fast_build
    _payloads[cls] = payload
    return cls


def register_all(classes: Iterable[type[Any]]) -> None:
    for cls in classes:
        register(cls)


def registered(name: str) -> type[Any] | None:
    return _by_name.get(name)


# ---------------------------------------------------------------- encoding
#
# A message is packed by a chain of reusable packers, one per nesting level: the packer of level d meets
# a registered dataclass through its ``default`` hook and packs the ext payload with the packer of level
# d + 1 (a packer cannot pack from inside its own hook: they share one buffer). ``msgpack.packb`` builds a
# new Packer, with a 256 KiB buffer, for every call; once the heap was fragmented by a few thousand live
# objects, those allocations made encoding a Forward 10x slower than decoding it (30 us against 3 us).
# Levels past the chain get a fresh packer per message again, as every level once did: the bytes are
# the same either way. Packers hold state mid-pack, so a chain serves one encode at a time: an encode takes
# one from a free list (``list.pop`` and ``append`` are atomic, so threads never share one) and returns it.

# Deeper than any real message (4 levels) or trace event (a tuple holding one): a fresh packer beyond.
_CHAINED_LEVELS = 8

_ExtType = msgpack.ExtType
# ExtType's own __new__ re-checks its two arguments in Python on every call; ours are right by construction.
_new_ext = tuple.__new__

# Registered class -> the ext payload of an instance, ``(type name, field values...)``.
_payloads: dict[type[Any], Callable[[Any], tuple[Any, ...]]] = {}


def _compile_payload(name: str, field_names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """One generated function per class reads every field with a plain attribute load.

    Field names appear in the source as attribute names, so each must be an identifier: dataclasses
    only make such fields, and the check keeps anything else out of generated code.
    """
    for field_name in field_names:
        if not field_name.isidentifier() or keyword.iskeyword(field_name):
            raise TypeError(f"cannot register {name}: field {field_name!r} is not an identifier")
    values = "".join(f"o.{field_name}, " for field_name in field_names)
    payload: Callable[[Any], tuple[Any, ...]] = eval(f"lambda o: ({_bind(name)}, {values})", _namespace)
    return payload


def _plain(obj: object) -> object:
    """What a value that is not a registered message is sent as: an enum's value, a set sorted."""
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, (set, frozenset)):
        # Sorted so that the encoding (and any hash of it) does not depend on set iteration order.
        return sorted(obj)
    cls = type(obj)
    raise TypeError(f"cannot encode {cls.__module__}.{cls.__qualname__}: not a registered message")


def _default_packing_with(pack: Callable[[object], bytes]) -> Callable[[object], object]:
    """The ``default`` hook of one level: a registered message becomes an ext packed by ``pack``."""

    def default(obj: object) -> object:
        payload = _payloads.get(type(obj))
        if payload is None:
            return _plain(obj)
        return _new_ext(_ExtType, (_EXT_DATACLASS, pack(payload(obj))))

    return default


def _pack_fresh(payload: object) -> bytes:
    data: bytes = msgpack.packb(payload, default=_default_fresh, use_bin_type=True)
    return data


_default_fresh = _default_packing_with(_pack_fresh)


def _packer_chain() -> Callable[[object], bytes]:
    """The top level's ``pack`` of a new chain, built from the innermost level outwards."""
    default = _default_fresh
    for _ in range(_CHAINED_LEVELS):
        pack: Callable[[object], bytes] = msgpack.Packer(default=default, use_bin_type=True).pack
        default = _default_packing_with(pack)
    return pack


# Chains not in use. Bounded: past this many, a returned chain is dropped.
_free_chains: list[Callable[[object], bytes]] = []
_MAX_FREE_CHAINS = 8

# A packer keeps its buffer at the largest size it ever held. A chain that packed a message bigger than
# this is dropped rather than kept; every message inside a frame is smaller than the frame, so this
# bounds every level.
_MAX_RETAINED_BYTES = 1 << 20


def fields(obj: object) -> tuple[Any, ...]:
    """``(type name, field values...)`` of a registered message: what its ext value holds, one level down.

    Exact and deterministic like ``encode``, for a caller that hashes many messages among other values
    (the simulator's trace): packed inside a larger value, the tuple costs a fifth of the message's own
    ext packing. TypeError for an instance of a class that is not registered.
    """
    payload = _payloads.get(type(obj))
    if payload is None:
        cls = type(obj)
        raise TypeError(f"cannot take the fields of {cls.__module__}.{cls.__qualname__}: not a registered message")
    return payload(obj)


def encode(obj: object) -> bytes:
    try:
        pack = _free_chains.pop()
    except IndexError:
        pack = _packer_chain()
    data = pack(obj)
    if len(data) <= _MAX_RETAINED_BYTES and len(_free_chains) < _MAX_FREE_CHAINS:
        _free_chains.append(pack)
    return data


def decode(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, ext_hook=_TOP_HOOK, use_list=False, raw=False, strict_map_key=False)
    except CodecError:
        raise
    except msgpack.StackError as exc:
        raise CodecError("undecodable message: arrays or maps nested too deeply") from exc
    # RecursionError: msgpack's pure-Python fallback recurses where the C extension raises StackError.
    except (ValueError, TypeError, RecursionError, msgpack.ExtraData, msgpack.FormatError) as exc:
        raise CodecError(f"undecodable message: {exc}") from exc


# ---------------------------------------------------------------- decoding messages


def _hook_at(depth: int) -> Callable[[int, bytes], object]:
    """The ext hook for a buffer ``depth`` messages deep: it decodes the payload with the next one.

    One hook per depth, built once, keeps the depth out of shared state and costs nothing per call.
    """
    if depth >= MAX_MESSAGE_DEPTH:

        def too_deep(code: int, data: bytes) -> object:
            raise CodecError(f"messages nested more than {MAX_MESSAGE_DEPTH} deep")

        return too_deep

    def hook(code: int, data: bytes) -> object:
        if code != _EXT_DATACLASS:
            raise CodecError(f"unknown msgpack ext type {code}")
        payload = _unpackb(data, ext_hook=inner, use_list=False, raw=False, strict_map_key=False)
        # The common case without a call: a known name and a complete, valid payload.
        if type(payload) is tuple and payload and type(payload[0]) is str:
            fast_build = _fast_builds.get(payload[0])
            if fast_build is not None:
                try:
                    message = fast_build(payload)
                except (TypeError, ValueError):
                    message = None  # from a __post_init__, say: _build names it
                if message is not None:
                    return message
        return _build(payload)

    inner = _hook_at(depth + 1)
    return hook


# Longer than any registered message name.
_MAX_NAME_SHOWN = 100


def _build(payload: object) -> object:
    if type(payload) is not tuple or not payload or type(payload[0]) is not str:
        raise CodecError("malformed message payload")
    spec = _specs.get(payload[0])
    if spec is None:
        # Cut short: the name is the sender's bytes, and a frame can be megabytes long.
        raise CodecError(f"unknown message type {payload[0][:_MAX_NAME_SHOWN]!r}")
    try:
        message = spec.fast_build(payload)
        return _build_checked(spec, payload[1:]) if message is None else message
    except CodecError:
        raise
    except (TypeError, ValueError) as exc:  # from a __post_init__, say
        raise CodecError(f"bad fields for {payload[0]}: {exc}") from exc


def _build_checked(spec: _ClassSpec, values: tuple[Any, ...]) -> object:
    """The slow path: a frame that omits defaulted fields, or one to refuse with the field named."""
    name = spec.cls.__name__
    if not spec.required <= len(values) <= len(spec.fields):
        raise CodecError(f"{name} has {len(spec.fields)} fields ({spec.required} required), got {len(values)}")
    # Not strict: a frame may omit trailing fields that have defaults.
    for field, value in zip(spec.fields, values, strict=False):
        if not field.check(value):
            raise CodecError(f"{name}.{field.name} must be {field.expected}, got {_describe_value(value)}")
    converted = (v if f.convert is None else f.convert(v) for f, v in zip(spec.fields, values, strict=False))
    return spec.cls(*converted)


def _describe_value(value: object) -> str:
    if type(value) is int:
        return f"int {value}" if INT64_MIN <= value <= INT64_MAX else "an int outside signed 64 bits"
    if type(value) is float:
        return f"float {value}"
    return type(value).__name__


_TOP_HOOK = _hook_at(0)


# ---------------------------------------------------------------- compiling checks from annotations
#
# Every annotation compiles to an expression; one function per class inlines the expressions of all
# its fields, so a valid message costs no call per field (closures, one call per field, made decoding
# a Forward 80% slower). The same expressions, one lambda per field, name the bad field on a refusal.
# Generated source refers to objects only through names this module binds (``_n<i>``); field names
# appear only as string literals, and in the encoder's payload functions as attribute names, each
# checked to be an identifier first.

_namespace: dict[str, Any] = {
    "__builtins__": {},
    "type": type,
    "len": len,
    "all": all,
    "map": map,
    "int": int,
    "float": float,
    "tuple": tuple,
    "dict": dict,
    "new": object.__new__,
    "isfinite": math.isfinite,
    "INT64_MIN": INT64_MIN,
    "INT64_MAX": INT64_MAX,
    "registered": _fields,
}


def _bind(obj: object) -> str:
    """A name for ``obj`` in the namespace generated code runs in."""
    name = f"_n{len(_namespace)}"
    _namespace[name] = obj
    return name


def _function(expr: _Expr) -> Callable[[Any], Any]:
    function: Callable[[Any], Any] = eval(f"lambda x: {expr('x')}", _namespace)
    return function


def _compile_class(cls: type[Any]) -> _ClassSpec:
    try:
        hints = typing.get_type_hints(cls)
    except NameError as exc:
        raise TypeError(f"cannot register {cls.__name__}: {exc}; define what it refers to first") from exc
    specs: list[_FieldSpec] = []
    exprs: list[str] = []
    args: list[str] = []
    required = 0
    for index, field in enumerate(dataclasses.fields(cls)):
        if not field.init or field.kw_only:
            # Decoding builds the dataclass positionally from the encoded field values.
            raise TypeError(f"cannot register {cls.__name__}: field {field.name!r} is not a positional init field")
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            required = index + 1
        annotation = hints[field.name]
        try:
            expr, convert = _compile(annotation)
        except TypeError as exc:
            raise TypeError(f"cannot register {cls.__name__}: field {field.name!r}: {exc}") from exc
        specs.append(_FieldSpec(field.name, _function(expr), convert, _describe(annotation)))
        exprs.append(expr(f"v{index}"))
        args.append(f"v{index}" if convert is None else f"{_bind(convert)}(v{index})")
    # Takes the whole payload, type name first, so that decoding a message copies no tuple.
    lines = ["def build(payload):", f"    if len(payload) == {len(specs) + 1}:"]
    lines.append(f"        _, {''.join(f'v{i}, ' for i in range(len(specs)))}= payload")
    lines.append(f"        if {' and '.join(exprs) or 'True'}:")
    cls_name = _bind(cls)
    if hasattr(cls, "__post_init__") or hasattr(cls, "__slots__"):
        lines.append(f"            return {cls_name}({', '.join(args)})")
    else:
        # Fill the instance dict as pickle and copy do: a frozen dataclass __init__ sets each field
        # through object.__setattr__, which cost more than all the checks together.
        lines += [f"            message = new({cls_name})", "            fields = message.__dict__"]
        lines += [f"            fields[{s.name!r}] = {arg}" for s, arg in zip(specs, args, strict=True)]
        lines.append("            return message")
    lines.append("    return None")
    source = "\n".join(lines) + "\n"
    scope: dict[str, Any] = {}
    exec(source, _namespace, scope)
    return _ClassSpec(cls=cls, fields=tuple(specs), required=required, fast_build=scope["build"])


# Annotations checked by the exact type of the value alone.
_EXACT = (str, bytes, bool, type(None))


def _compile(annotation: Any) -> tuple[_Expr, _Convert]:
    """The check for wire values of ``annotation`` and how to convert them; TypeError if unsupported."""
    if annotation is None or annotation is type(None):
        return (lambda v: f"{v} is None"), None
    if annotation in _EXACT:
        return _exact_expr(annotation), None
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if annotation not in _fields:
            raise TypeError(f"{annotation.__name__} is not registered; register it first")
        return _exact_expr(annotation), None
    if annotation is int:
        return _int_expr, None
    if annotation is float:
        # An int is a valid float (PEP 484); NaN and infinities would break decode(encode(m)) == m.
        return (lambda v: f"((type({v}) is float and isfinite({v})) or {_int_expr(v)})"), None
    if annotation is object:
        return (lambda v: f"type({v}) in registered"), None
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        # The encoder sends a member's value; the dataclass gets the member back.
        return _compile_members([m.value for m in annotation], {str, int, bytes}, annotation.__name__), annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union or origin is types.UnionType:
        return _compile_union(args)
    if origin is Literal:
        return _compile_members(list(args), {str, int, bool, bytes, type(None)}, f"Literal{list(args)}"), None
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _compile_sequence(args[0], "tuple")
    if origin is tuple and (args or annotation == tuple[()]):
        return _compile_fixed_tuple(args)
    if origin is list and len(args) == 1:
        return _compile_sequence(args[0], "list")
    if origin is frozenset and len(args) == 1:
        return _compile_sequence(args[0], "frozenset")
    if origin is dict and len(args) == 2:
        return _compile_dict(args[0], args[1])
    raise TypeError(f"the codec cannot check values of {annotation!r}")


def _exact_expr(kind: type[Any]) -> _Expr:
    name = _bind(kind)
    return lambda v: f"type({v}) is {name}"


def _int_expr(v: str) -> str:
    return f"(type({v}) is int and INT64_MIN <= {v} <= INT64_MAX)"


def _compile_members(values: list[Any], allowed: set[type[Any]], what: str) -> _Expr:
    pairs = frozenset((type(value), value) for value in values)
    kinds = frozenset(kind for kind, _ in pairs)
    if not kinds <= allowed:
        raise TypeError(f"{what} has values other than {', '.join(sorted(k.__name__ for k in allowed))}")
    kinds_name, pairs_name = _bind(kinds), _bind(pairs)
    # Keyed by type too, so True does not pass for a value of 1; the type test first keeps unhashable
    # values (a decoded map) out of the set lookup.
    return lambda v: f"(type({v}) in {kinds_name} and (type({v}), {v}) in {pairs_name})"


def _compile_union(args: tuple[Any, ...]) -> tuple[_Expr, _Convert]:
    # Members known by their exact type are one set lookup, however many there are (ClientOp has 7).
    exact: set[type[Any]] = set()
    others: list[tuple[_Expr, _Convert]] = []
    for arg in args:
        compiled = _compile(arg)
        if arg in _EXACT or (isinstance(arg, type) and dataclasses.is_dataclass(arg)):
            exact.add(arg)
        else:
            others.append(compiled)
    exact_name = _bind(frozenset(exact))

    def expr(v: str) -> str:
        return "(" + " or ".join([f"type({v}) in {exact_name}", *(other(v) for other, _ in others)]) + ")"

    if all(convert is None for _, convert in others):
        return expr, None
    member_checks = [(_function(other), convert) for other, convert in others]

    def convert(value: Any) -> Any:
        if type(value) in exact:
            return value
        for member_check, member_convert in member_checks:
            if member_check(value):
                return value if member_convert is None else member_convert(value)
        raise AssertionError("converting a value that failed its check")

    return expr, convert


def _compile_sequence(item: Any, kind: Literal["tuple", "list", "frozenset"]) -> tuple[_Expr, _Convert]:
    """``tuple[X, ...]``, ``list[X]`` or ``frozenset[X]`` (sent sorted, as an array): all decode as tuples.

    ``list[X]`` is checked but left the tuple msgpack decodes: messages are frozen and hold tuples, and
    the simulator's round-trip check reports a class that uses a list.
    """
    item_expr, item_convert = _compile(item)
    item_check = _bind(_function(item_expr))

    def expr(v: str) -> str:
        return f"(type({v}) is tuple and all(map({item_check}, {v})))"

    if kind == "frozenset":
        if item_convert is None:
            return expr, frozenset
        convert_item = item_convert
        return expr, lambda value: frozenset(map(convert_item, value))
    if kind == "list" or item_convert is None:
        return expr, None
    convert_tuple_item = item_convert
    return expr, lambda value: tuple(map(convert_tuple_item, value))


def _compile_fixed_tuple(args: tuple[Any, ...]) -> tuple[_Expr, _Convert]:
    compiled = [_compile(a) for a in args]

    def expr(v: str) -> str:
        items = [item_expr(f"{v}[{i}]") for i, (item_expr, _) in enumerate(compiled)]
        return "(" + " and ".join([f"type({v}) is tuple", f"len({v}) == {len(args)}", *items]) + ")"

    converts = tuple(convert for _, convert in compiled)
    if all(convert is None for convert in converts):
        return expr, None
    return expr, lambda value: tuple(x if c is None else c(x) for c, x in zip(converts, value, strict=True))


def _compile_dict(key: Any, value: Any) -> tuple[_Expr, _Convert]:
    (key_expr, key_convert), (value_expr, value_convert) = _compile(key), _compile(value)
    key_check, value_check = _bind(_function(key_expr)), _bind(_function(value_expr))

    def expr(v: str) -> str:
        return f"(type({v}) is dict and all(map({key_check}, {v})) and all(map({value_check}, {v}.values())))"

    if key_convert is None and value_convert is None:
        return expr, None

    def convert(mapping: dict[Any, Any]) -> dict[Any, Any]:
        return {
            k if key_convert is None else key_convert(k): v if value_convert is None else value_convert(v)
            for k, v in mapping.items()
        }

    return expr, convert


def _describe(annotation: Any) -> str:
    """An annotation as a reader writes it, for error messages: ``int | None``, ``tuple[str, ...]``."""
    if annotation is None or annotation is type(None):
        return "None"
    if annotation is object:
        return "a registered message"
    if isinstance(annotation, type):
        return "int64" if annotation is int else annotation.__name__
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union or origin is types.UnionType:
        return " | ".join(_describe(a) for a in args)
    if origin is Literal:
        return f"one of {', '.join(repr(a) for a in args)}"
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _describe(a) for a in args)
        return f"{origin.__name__}[{inner}]"
    return repr(annotation)
