"""The chaos report folder: files written, well-formed HTML, escaping, edge-case histories, sampling."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from chaos.history import History, from_dicts, load
from chaos.report import MAX_PLOTTED_OPS, FaultPeriod, write_report

VOID_TAGS = {"meta", "br", "hr", "img", "input", "link"}
EVIL = "<script>alert(1)</script>"


class StrictParser(HTMLParser):
    """Fails on any start tag left open or closed out of order (HTMLParser itself accepts anything)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in VOID_TAGS:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def parse(text: str) -> StrictParser:
    parser = StrictParser()
    parser.feed(text)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    return parser


def rows(*ops: tuple[Any, str, Any, int, int | None, str]) -> list[dict[str, Any]]:
    """(process, f, key, invoke ms, completion ms or None, outcome) -> invoke and completion events in time order."""
    events: list[tuple[int, int, dict[str, Any]]] = []
    for i, (process, f, key, start, end, outcome) in enumerate(ops):
        events.append((start, 2 * i, {"process": process, "type": "invoke", "f": f, "key": key, "value": 1,
                                      "time": start}))
        if end is not None:
            events.append((end, 2 * i + 1, {"process": process, "type": outcome, "f": f, "key": key, "value": 1,
                                             "time": end}))
    return [e for _, _, e in sorted(events, key=lambda t: (t[0], t[1]))]


def result(valid: Any = True, **checkers: dict[str, Any]) -> dict[str, Any]:
    return {"scenario": "register-partition", "seed": 7, "driver": "sim", "valid": valid,
            "checkers": checkers, "stats": {"ops": 3}}


FAULTS = [FaultPeriod("partition", 1000, 3000, "n1 | n2 n3"), FaultPeriod("kill", 4000, None, "n2")]


def test_writes_all_three_files(tmp_path: Path) -> None:
    history = from_dicts(rows((1, "write", "x", 0, 20, "ok"), (2, "read", "x", 500, 2500, "info"),
                              (3, "write", "x", 4100, 4150, "fail")))
    out = write_report(tmp_path / "run", history, FAULTS, result(linear={"valid": True, "ops": 3}))
    assert out == tmp_path / "run" / "report.html"
    assert [e.to_json() for e in load(tmp_path / "run" / "history.jsonl").events] == [
        e.to_json() for e in history.events]
    text = (tmp_path / "run" / "result.json").read_text()
    saved = json.loads(text)
    assert saved["faults"] == [
        {"kind": "partition", "start_ms": 1000, "end_ms": 3000, "detail": "n1 | n2 n3"},
        {"kind": "kill", "start_ms": 4000, "end_ms": None, "detail": "n2"},
    ]
    assert saved["checkers"] == {"linear": {"valid": True, "ops": 3}} and saved["seed"] == 7
    assert text == json.dumps(saved, indent=2, sort_keys=True) + "\n"  # pretty, sorted keys


def test_html_is_well_formed_with_plots_bands_and_verdict(tmp_path: Path) -> None:
    history = from_dicts(rows((1, "write", "x", 0, 20, "ok"), (2, "read", "x", 500, 2500, "info"),
                              (3, "cas", "x", 4100, 4150, "fail"), (4, "read", "x", 4200, None, "info")))
    page = write_report(tmp_path, history, FAULTS, result(False, linear={"valid": False, "ops": 4})).read_text()
    parser = parse(page)
    assert parser.tags.count("svg") >= 2
    # Each fault period is a band in both the latency and the throughput plot.
    assert page.count('class="fault-band"') == 2 * len(FAULTS)
    assert '<div class="verdict invalid">INVALID</div>' in page
    assert page.count('class="pt-ok"') == 1 and page.count('class="pt-fail"') == 1
    assert page.count('class="pt-info"') == 2  # the timed-out op and the one that never completed
    assert "never completed" in page
    assert 'class="rate-ok"' in page and 'class="rate-fail"' in page and 'class="rate-info"' in page


@pytest.mark.parametrize(("valid", "banner"), [(True, "VALID"), (False, "INVALID"), ("unknown", "UNKNOWN")])
def test_verdict_banner(tmp_path: Path, valid: Any, banner: str) -> None:
    page = write_report(tmp_path, History(), [], result(valid)).read_text()
    assert f'<div class="verdict {banner.lower()}">{banner}</div>' in page


def test_user_strings_are_escaped(tmp_path: Path) -> None:
    history = from_dicts(rows((1, EVIL, EVIL, 0, 10, "ok")))
    checker = {"valid": False, "lost": [{"key": EVIL}], "first": EVIL, "nested": {EVIL: EVIL}}
    res = {**result(False, **{EVIL: checker}), "scenario": EVIL, "stats": {EVIL: EVIL}}
    page = write_report(tmp_path, history, [FaultPeriod(EVIL, 0, 5, EVIL)], res).read_text()
    parse(page)
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_empty_history(tmp_path: Path) -> None:
    page = write_report(tmp_path, History(), [], result("unknown")).read_text()
    parse(page)
    assert "no ops" in page and 'class="pt-' not in page and 'class="rate-' not in page
    assert "No faults." in page
    assert (tmp_path / "history.jsonl").read_text() == ""


def test_one_op_history(tmp_path: Path) -> None:
    history = from_dicts(rows((1, "write", "x", 0, 5, "ok")))
    page = write_report(tmp_path, history, [FaultPeriod("pause", 2, 4, "n1")], result()).read_text()
    parse(page)
    assert page.count('class="pt-ok"') == 1 and page.count('class="rate-ok"') == 1
    assert page.count('class="fault-band"') == 2
    coords = [float(v) for v in re.findall(r' (?:x|y|x1|x2|y1|y2|width)="([^"]*)"', page)]
    assert coords and all(math.isfinite(v) and -6 <= v <= 1000 for v in coords)  # no degenerate scale


def test_equal_latencies_get_a_usable_axis(tmp_path: Path) -> None:
    history = from_dicts(rows(*((i, "read", "x", i * 100, i * 100 + 10, "ok") for i in range(5))))
    page = write_report(tmp_path, history, [], result()).read_text()
    parse(page)
    # 10 ms is a power of ten; the axis still spans a decade above it with 2x/5x ticks.
    assert ">10</text>" in page and ">20</text>" in page and ">100</text>" in page


def test_checker_fields_are_rendered_generically(tmp_path: Path) -> None:
    checker = {"valid": True, "count": 42, "lost": list(range(25)), "by_key": {"x": [1, 2]}}
    page = write_report(tmp_path, History(), [], result(sets=checker)).read_text()
    assert "<th>count</th><td>42</td>" in page
    assert "25 entries, first 20 shown" in page
    assert page.count("<li><code>") == 20 and "<li><code>19</code></li>" in page and "<code>20</code>" not in page
    assert "<pre>{\n  &quot;x&quot;: [\n    1,\n    2\n  ]\n}</pre>" in page
    assert '<span class="badge valid">VALID</span>' in page


def test_big_history_samples_ok_ops_and_keeps_every_fail_and_info(tmp_path: Path) -> None:
    n = MAX_PLOTTED_OPS + 5_000
    outcome = ["ok"] * n
    for i in range(0, n, 97):
        outcome[i] = "fail"
    for i in range(50, n, 211):
        outcome[i] = "info"
    history = from_dicts(rows(*((i, "write", i % 10, i, i + 3, outcome[i]) for i in range(n))))
    page = write_report(tmp_path, history, [], result()).read_text()
    fails, infos = outcome.count("fail"), outcome.count("info")
    assert page.count('class="pt-fail"') == fails and page.count('class="pt-info"') == infos
    ok_plotted = page.count('class="pt-ok"')
    assert ok_plotted + fails + infos <= MAX_PLOTTED_OPS
    assert ok_plotted >= MAX_PLOTTED_OPS // 2
    assert f"of {n} ops" in page


def test_bad_input_is_rejected_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing stats"):
        write_report(tmp_path / "a", History(), [], {k: v for k, v in result().items() if k != "stats"})
    with pytest.raises(ValueError, match="not JSON-able"):
        write_report(tmp_path / "b", History(), [], {**result(), "stats": {"s": {1, 2}}})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="before it starts"):
        FaultPeriod("kill", 10, 5, "n1")
