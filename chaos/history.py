"""Jepsen-style histories: JSON lines, one op a line, in real-time order.

```json
{"process": 3, "type": "invoke", "f": "write", "key": "x", "value": 5, "time": 1200}
{"process": 3, "type": "ok", "f": "write", "key": "x", "value": 5, "time": 1500}
```

``type`` is ``invoke`` or a completion: ``ok`` (it happened), ``fail`` (it definitely did not happen)
or ``info`` (it may or may not have happened; the op stays open to the end of the history). A ``cas``
that ran and found another value is ``fail`` with ``"error": "precondition_failed"``: it did not change
anything, but it did observe the register, and the linearizability checker uses that.

A process runs one op at a time: a second invoke before the first completes is malformed. Our workloads
move on as a new process id after an ``info`` op, as Jepsen does; histories that reuse the id are still
read (the ``info`` op simply stays open).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

OpType = Literal["invoke", "ok", "fail", "info"]
OP_TYPES: tuple[str, ...] = ("invoke", "ok", "fail", "info")
PRECONDITION_FAILED = "precondition_failed"


class HistoryError(ValueError):
    """A history that cannot be read; the message names the file and line."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.source = source
        self.line = line


@dataclass(frozen=True, init=False)
class Event:
    """One line of a history."""

    index: int  # position in the history, 0-based
    process: Any
    type: OpType
    f: str
    key: Any = None
    value: Any = None
    time: int | None = None
    error: str | None = None
    line: int = 0  # 1-based line in the source file, for error messages

    def __init__(self, index: int, process: Any, type: OpType, f: str, key: Any = None, value: Any = None,
                 time: int | None = None, error: str | None = None, line: int = 0) -> None:
        # The frozen dataclass __init__ sets each field through object.__setattr__, three times the cost of
        # filling the instance dict, for every event a run records or a history file holds. The fields stay
        # read-only: assignment still raises FrozenInstanceError.
        fields = self.__dict__
        fields["index"] = index
        fields["process"] = process
        fields["type"] = type
        fields["f"] = f
        fields["key"] = key
        fields["value"] = value
        fields["time"] = time
        fields["error"] = error
        fields["line"] = line

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"process": self.process, "type": self.type, "f": self.f}
        if self.key is not None:
            out["key"] = _plain(self.key)
        out["value"] = _plain(self.value)
        if self.time is not None:
            out["time"] = self.time
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class Op:
    """An invocation paired with its completion (``None`` if the history ends first)."""

    invoke: Event
    complete: Event | None

    @property
    def process(self) -> Any:
        return self.invoke.process

    @property
    def f(self) -> str:
        return self.invoke.f

    @property
    def key(self) -> Any:
        return self.invoke.key

    @property
    def type(self) -> OpType:
        """The outcome: ``ok``, ``fail`` or ``info`` (an op that never completed is ``info``)."""
        return "info" if self.complete is None else self.complete.type

    @property
    def value(self) -> Any:
        """The completion's value where there is one (a read's result), else the invocation's."""
        if self.complete is not None and self.complete.type == "ok":
            return self.complete.value
        return self.invoke.value

    @property
    def error(self) -> str | None:
        return None if self.complete is None else self.complete.error

    @property
    def invoke_index(self) -> int:
        return self.invoke.index

    @property
    def complete_index(self) -> int | None:
        """Index of the completion; ``None`` for an op that may still be running at the end."""
        if self.complete is None or self.complete.type == "info":
            return None
        return self.complete.index


@dataclass
class History:
    events: list[Event] = field(default_factory=list)
    source: str = "<history>"

    def __len__(self) -> int:
        return len(self.events)

    def ops(self) -> list[Op]:
        """Invocations paired with completions, in invocation order."""
        return pair(self.events, self.source)

    def keys(self) -> list[Any]:
        seen: dict[Any, None] = {}
        for e in self.events:
            seen.setdefault(_hashable(e.key), None)
        return list(seen)

    def write(self, out: TextIO) -> None:
        for e in self.events:
            out.write(json.dumps(e.to_json(), separators=(", ", ": ")) + "\n")

    def save(self, path: str | Path) -> None:
        with open(path, "w") as fh:
            self.write(fh)


@dataclass(frozen=True)
class JsonObject:
    """A JSON object as a hashable value, never equal to a list of pairs."""

    items: tuple[tuple[str, Any], ...]


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return JsonObject(tuple(sorted((k, _hashable(v)) for k, v in value.items())))
    return value


def _plain(value: Any) -> Any:
    """The JSON value back from its hashable form."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, JsonObject):
        return {k: _plain(v) for k, v in value.items}
    return value


def parse_event(obj: Any, index: int, source: str, line: int) -> Event:
    if not isinstance(obj, dict):
        raise HistoryError(source, line, "each line must be a JSON object")
    for name in ("process", "type", "f"):
        if name not in obj:
            raise HistoryError(source, line, f"missing field {name!r}")
    op_type = obj["type"]
    if op_type not in OP_TYPES:
        raise HistoryError(source, line, f"type must be one of {', '.join(OP_TYPES)}, got {op_type!r}")
    if not isinstance(obj["f"], str) or not obj["f"]:
        raise HistoryError(source, line, "f must be a non-empty string")
    process = obj["process"]
    if isinstance(process, (list, dict)) or process is None:
        raise HistoryError(source, line, "process must be a number or a string")
    time = obj.get("time")
    if time is not None and (not isinstance(time, (int, float)) or isinstance(time, bool)):
        raise HistoryError(source, line, "time must be a number")
    error = obj.get("error")
    if error is not None and not isinstance(error, str):
        error = json.dumps(error)
    return Event(
        index=index,
        process=process,
        type=op_type,
        f=obj["f"],
        key=_hashable(obj.get("key")),
        value=_hashable(obj.get("value")),
        time=None if time is None else int(time),
        error=error,
        line=line,
    )


def read_events(lines: Iterable[str], source: str) -> Iterator[Event]:
    index = 0
    for line_no, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise HistoryError(source, line_no, f"not valid JSON: {exc.msg}") from exc
        yield parse_event(obj, index, source, line_no)
        index += 1


def load(path: str | Path) -> History:
    source = str(path)
    try:
        with open(path, encoding="utf-8") as fh:
            events = list(read_events(fh, source))
    except OSError as exc:
        raise HistoryError(source, 0, f"cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise HistoryError(source, 0, f"not UTF-8 text: {exc.reason}") from exc
    history = History(events, source)
    history.ops()  # validates the pairing, so every problem is reported at load time
    return history


def from_dicts(rows: Iterable[dict[str, Any]], source: str = "<history>") -> History:
    events = [parse_event(row, i, source, i + 1) for i, row in enumerate(rows)]
    history = History(events, source)
    history.ops()
    return history


def pair(events: Iterable[Event], source: str) -> list[Op]:
    open_by_process: dict[Any, Event] = {}
    ops: dict[int, Op] = {}
    for e in events:
        if e.type == "invoke":
            if e.process in open_by_process:
                earlier = open_by_process[e.process]
                raise HistoryError(
                    source, e.line, f"process {e.process!r} invokes again while its op from line {earlier.line} is open"
                )
            open_by_process[e.process] = e
            ops[e.index] = Op(e, None)
            continue
        invoke = open_by_process.pop(e.process, None)
        if invoke is None:
            raise HistoryError(source, e.line, f"{e.type} for process {e.process!r} with no open invoke")
        if invoke.f != e.f:
            raise HistoryError(source, e.line, f"completion f {e.f!r} does not match invoke f {invoke.f!r}")
        if invoke.key != e.key and e.key is not None:
            raise HistoryError(source, e.line, f"completion key {e.key!r} does not match invoke key {invoke.key!r}")
        ops[invoke.index] = Op(invoke, e)
    return [ops[i] for i in sorted(ops)]
