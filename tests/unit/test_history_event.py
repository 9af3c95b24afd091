"""``chaos.history.Event`` has a hand-written ``__init__`` (for speed): it must stay the dataclass's own."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from chaos.history import Event


def test_init_takes_every_field_in_order_with_its_default() -> None:
    params = list(inspect.signature(Event.__init__).parameters.values())[1:]
    fields = dataclasses.fields(Event)
    assert [p.name for p in params] == [f.name for f in fields]
    assert [p.default for p in params] == [inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
                                           for f in fields]


def test_an_event_is_frozen_comparable_and_hashable() -> None:
    event = Event(3, 7, "ok", "write", "x", 5, time=120, error=None, line=4)
    assert dataclasses.asdict(event) == {"index": 3, "process": 7, "type": "ok", "f": "write", "key": "x", "value": 5,
                                         "time": 120, "error": None, "line": 4}
    assert event == Event(index=3, process=7, type="ok", f="write", key="x", value=5, time=120, line=4)
    assert event != dataclasses.replace(event, value=6)
    assert hash(event) == hash(Event(3, 7, "ok", "write", "x", 5, 120, None, 4))
    assert repr(event).startswith("Event(index=3, process=7, type='ok'")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.value = 6  # type: ignore[misc]
