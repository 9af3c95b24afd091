"""The report folder of a chaos run: ``history.jsonl``, ``result.json`` and a self-contained ``report.html``.

The page has a verdict banner, Jepsen-style latency and throughput plots with fault periods as shaded
bands, and one table per checker. Plots are inline SVG built here (the machine may have no internet, so
no external JS, CSS or fonts). Every string that reaches the page is escaped: keys, values and checker
output come from the workload and are user-controlled.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from html import escape
from pathlib import Path
from typing import Any

from chaos.history import History, Op

# Above this many ops the latency plot samples ok ops (fail/info ops are always kept), bounding the page size.
MAX_PLOTTED_OPS = 20_000
LIST_LIMIT = 20  # list entries shown per checker field
MAX_BUCKETS = 1_000  # throughput buckets, so very long runs widen the bucket instead
LATENCY_FLOOR_MS = 1  # a log axis cannot show 0; faster ops are drawn at 1 ms
REQUIRED_RESULT_KEYS = ("scenario", "seed", "driver", "valid", "checkers", "stats")

OUTCOME_COLOURS = {"ok": "#2ca02c", "fail": "#d62728", "info": "#f0a202"}
BAND_COLOURS = ("#7f7f7f", "#1f77b4", "#9467bd", "#8c564b", "#e377c2", "#17becf")
# Marker outlines centred on 0,0, one per `f`: circle, square, triangle, diamond, cross.
MARKERS = (
    "M-2.6,0a2.6,2.6 0 1,0 5.2,0a2.6,2.6 0 1,0 -5.2,0Z",
    "M-2.3,-2.3H2.3V2.3H-2.3Z",
    "M0,-3L2.9,2.2H-2.9Z",
    "M0,-3.2L3.2,0L0,3.2L-3.2,0Z",
    "M-3,-1H-1V-3H1V-1H3V1H1V3H-1V1H-3Z",
)

WIDTH, HEIGHT = 1000, 320
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 34, 46  # plot-area margins, px

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1060px}
h1{font-size:22px;margin:0 0 8px}h2{font-size:18px;margin:28px 0 8px}h3{font-size:15px;margin:18px 0 6px}
.verdict{font-size:26px;font-weight:700;padding:10px 16px;border-radius:6px;color:#fff;margin:8px 0 16px}
.verdict.valid{background:#2ca02c}.verdict.invalid{background:#d62728}.verdict.unknown{background:#777}
.badge{font-size:12px;padding:1px 6px;border-radius:4px;color:#fff;margin-left:8px}
.badge.valid{background:#2ca02c}.badge.invalid{background:#d62728}.badge.unknown{background:#777}
table{border-collapse:collapse;margin:4px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f4f4f4;font-weight:600}pre{margin:0;max-height:300px;overflow:auto}
ol{margin:0;padding-left:22px}.note{color:#666}.legend span{margin-right:14px;white-space:nowrap}
svg text{font:11px system-ui,sans-serif;fill:#333}.grid{stroke:#eee}.axis{stroke:#555}
"""


@dataclass(frozen=True)
class FaultPeriod:
    """A fault the nemesis held from ``start_ms`` to ``end_ms`` (``None``: still active when the run ended)."""

    kind: str
    start_ms: int
    end_ms: int | None
    detail: str

    def __post_init__(self) -> None:
        if self.end_ms is not None and self.end_ms < self.start_ms:
            raise ValueError(f"fault {self.kind!r} ends at {self.end_ms} ms, before it starts at {self.start_ms} ms")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Point:
    start_ms: int
    latency_ms: int | None  # None: never completed
    outcome: str
    f: str


@dataclass(frozen=True)
class _Scale:
    """Maps data values to pixels, linearly or on a log10 scale."""

    lo: float
    hi: float
    px_lo: float
    px_hi: float
    log: bool = False

    def __call__(self, value: float) -> float:
        lo, hi, v = self.lo, self.hi, value
        if self.log:
            lo, hi, v = math.log10(lo), math.log10(hi), math.log10(v)
        return round(self.px_lo + (v - lo) / (hi - lo) * (self.px_hi - self.px_lo), 1)


def write_report(folder: Path, history: History, faults: list[FaultPeriod], result: dict[str, Any]) -> Path:
    """Write the three report files into ``folder`` (created if needed); return the HTML path.

    ``result`` must be JSON-able and hold at least the keys of ``REQUIRED_RESULT_KEYS``. Everything is
    rendered before anything is written, so bad input leaves no half-written folder.
    """
    missing = [k for k in REQUIRED_RESULT_KEYS if k not in result]
    if missing:
        raise ValueError(f"result is missing {', '.join(missing)}")
    if not isinstance(result["checkers"], dict) or not isinstance(result["stats"], dict):
        raise ValueError("result['checkers'] and result['stats'] must be dicts")
    try:
        result_text = json.dumps({**result, "faults": [p.to_json() for p in faults]}, indent=2, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"result is not JSON-able: {exc}") from exc
    # Render from the JSON round trip, so the page shows exactly what result.json holds.
    page = _page(history, faults, json.loads(result_text))
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "history.jsonl", "w", encoding="utf-8", newline="\n") as fh:
        history.write(fh)
    (folder / "result.json").write_text(result_text + "\n", encoding="utf-8")
    html_path = folder / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return html_path


def _page(history: History, faults: Sequence[FaultPeriod], result: dict[str, Any]) -> str:
    ops = history.ops()
    times = [e.time for e in history.events if e.time is not None]
    fault_times = [t for p in faults for t in (p.start_ms, p.end_ms) if t is not None]
    run_end_ms = max([*times, *fault_times, 0]) or 1000  # an empty or instant run still gets a 1 s axis
    points = [p for p in (_point(op) for op in ops) if p is not None]
    plotted, every_k = _sample(points, MAX_PLOTTED_OPS)
    fs = sorted({p.f for p in points})
    kinds = sorted({p.kind for p in faults})
    palette = {kind: BAND_COLOURS[i % len(BAND_COLOURS)] for i, kind in enumerate(kinds)}
    notes = []
    if every_k > 1:
        notes.append(f"Sampled: plotted {len(plotted)} of {len(points)} ops (one ok op in {every_k}, all fail and "
                     "info ops).")
    if len(points) < len(ops):
        notes.append(f"{len(ops) - len(points)} ops have no timestamp and are not plotted.")
    meta = {"scenario": result["scenario"], "seed": result["seed"], "driver": result["driver"], "ops": len(ops),
            "events": len(history), "run length (s)": max(times, default=0) / 1000, "fault periods": len(faults)}
    checkers = result["checkers"]
    parts = [
        f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_esc(result['scenario'])} - "
        f"chaos report</title><style>{CSS}</style></head><body>",
        f"<h1>{_esc(result['scenario'])}</h1>",
        f"<div class=\"verdict {_verdict(result['valid'])}\">{_verdict(result['valid']).upper()}</div>",
        _table(meta),
        "<h2>Latency</h2>",
        *(f"<p class=\"note\">{_esc(n)}</p>" for n in notes),
        _legend(fs, kinds, palette),
        _latency_svg(plotted, faults, run_end_ms, fs, palette),
        "<h2>Throughput</h2>",
        _throughput_svg(ops, faults, run_end_ms, palette),
        "<h2>Faults</h2>",
        _faults_table(faults),
        "<h2>Checkers</h2>",
        *(_checker(name, checkers[name]) for name in sorted(checkers)),
        "<h2>Stats</h2>",
        _table(result["stats"]),
        "</body></html>\n",
    ]
    return "\n".join(parts)


def _esc(value: Any) -> str:
    return escape(value if isinstance(value, str) else json.dumps(value, sort_keys=True))


def _verdict(valid: Any) -> str:
    if valid == "skipped":
        return "skipped"
    return "valid" if valid is True else "invalid" if valid is False else "unknown"


def _point(op: Op) -> _Point | None:
    start = op.invoke.time
    if start is None:
        return None
    if op.complete is None:
        return _Point(start, None, "info", op.f)
    end = op.complete.time
    return _Point(start, None if end is None else max(end - start, 0), op.type, op.f)


def _sample(points: list[_Point], limit: int) -> tuple[list[_Point], int]:
    """Every k-th ok point plus all fail/info points, so at most ``limit`` unless fail/info alone exceed it."""
    if len(points) <= limit:
        return points, 1
    ok_count = sum(1 for p in points if p.outcome == "ok")
    budget = max(limit - (len(points) - ok_count), 1)
    every_k = math.ceil(ok_count / budget)
    kept, seen_ok = [], 0
    for p in points:
        if p.outcome == "ok":
            seen_ok += 1
            if (seen_ok - 1) % every_k:
                continue
        kept.append(p)
    return kept, every_k


def _nice_ceil(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is at least ``value``."""
    exponent = math.floor(math.log10(value))
    for mantissa in (1, 2, 5, 10):
        if mantissa * 10**exponent >= value * (1 - 1e-9):
            return float(mantissa * 10**exponent)
    raise AssertionError("unreachable: mantissa 10 always suffices")


def _linear_ticks(hi: float, count: int = 6) -> list[float]:
    step = _nice_ceil(hi / count)
    return [i * step for i in range(int(hi / step + 1e-9) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    decades = range(round(math.log10(lo)), round(math.log10(hi)) + 1)
    # A narrow range gets 2x and 5x ticks too, so the axis is never down to one or two labels.
    mantissas = (1, 2, 5) if len(decades) <= 3 else (1,)
    return [m * 10.0**d for d in decades for m in mantissas if lo <= m * 10.0**d <= hi]


def _fmt(value: float) -> str:
    return f"{value:g}"


def _frame(x: _Scale, y: _Scale, y_ticks: Iterable[float], y_label: str) -> list[str]:
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} '
           f'{HEIGHT}">', f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#fff"/>']
    for t in _linear_ticks(x.hi / 1000):
        px = x(t * 1000)
        out.append(f'<line class="grid" x1="{px}" y1="{TOP}" x2="{px}" y2="{HEIGHT - BOTTOM}"/>')
        out.append(f'<text x="{px}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{_fmt(t)}</text>')
    for t in y_ticks:
        py = y(t)
        out.append(f'<line class="grid" x1="{LEFT}" y1="{py}" x2="{WIDTH - RIGHT}" y2="{py}"/>')
        out.append(f'<text x="{LEFT - 6}" y="{py + 4}" text-anchor="end">{_fmt(t)}</text>')
    out.append(f'<path class="axis" fill="none" d="M{LEFT},{TOP}V{HEIGHT - BOTTOM}H{WIDTH - RIGHT}"/>')
    out.append(f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 8}" text-anchor="middle">time (s)</text>')
    out.append(f'<text transform="translate(16,{(TOP + HEIGHT - BOTTOM) / 2}) rotate(-90)" '
               f'text-anchor="middle">{_esc(y_label)}</text>')
    return out


def _bands(faults: Sequence[FaultPeriod], x: _Scale, palette: dict[str, str]) -> list[str]:
    out = []
    for p in faults:
        x0 = x(min(p.start_ms, x.hi))
        x1 = x(x.hi if p.end_ms is None else min(p.end_ms, x.hi))
        end = "end of run" if p.end_ms is None else f"{p.end_ms / 1000:g} s"
        tip = _esc(f"{p.kind} {p.start_ms / 1000:g} s - {end}: {p.detail}")
        out.append(f'<g class="fault-band"><title>{tip}</title><rect x="{x0}" y="{TOP}" width="{max(x1 - x0, 1.5)}" '
                   f'height="{HEIGHT - TOP - BOTTOM}" fill="{palette[p.kind]}" fill-opacity="0.16"/>'
                   f'<text x="{x0 + 3}" y="{TOP + 12}">{_esc(p.kind)}</text></g>')
    return out


def _latency_svg(points: Sequence[_Point], faults: Sequence[FaultPeriod], run_end_ms: int, fs: Sequence[str],
                 palette: dict[str, str]) -> str:
    latencies = [max(p.latency_ms, LATENCY_FLOOR_MS) for p in points if p.latency_ms is not None]
    lo = 10.0 ** math.floor(math.log10(min(latencies, default=LATENCY_FLOOR_MS)))
    hi = 10.0 ** math.ceil(math.log10(max(latencies, default=1000)))
    hi = max(hi, lo * 10)  # all latencies equal (or a power of ten) would otherwise give an empty range
    x = _Scale(0, run_end_ms, LEFT, WIDTH - RIGHT)
    y = _Scale(lo, hi, HEIGHT - BOTTOM, TOP, log=True)
    out = _frame(x, y, _log_ticks(lo, hi), "latency (ms, log)")
    out.append("<defs>" + "".join(f'<path id="m{i}" d="{d}"/>' for i, d in enumerate(MARKERS)) + "</defs>")
    out.extend(_bands(faults, x, palette))
    pending_y = TOP - 10  # ops that never completed sit in a strip above the plot area
    if any(p.latency_ms is None for p in points):
        out.append(f'<text x="{WIDTH - RIGHT}" y="{pending_y - 6}" text-anchor="end">never completed</text>')
    marker = {f: i % len(MARKERS) for i, f in enumerate(fs)}
    for p in points:
        py = pending_y if p.latency_ms is None else y(max(p.latency_ms, LATENCY_FLOOR_MS))
        out.append(f'<use class="pt-{p.outcome}" href="#m{marker[p.f]}" x="{x(p.start_ms)}" y="{py}" '
                   f'fill="{OUTCOME_COLOURS[p.outcome]}" fill-opacity="0.7"/>')
    if not points:
        out.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no ops</text>')
    out.append("</svg>")
    return "\n".join(out)


def _bucket_ms(run_end_ms: int) -> int:
    """1 s buckets, as Jepsen's rate plot; about 20 buckets for runs under 10 s; wider for very long runs."""
    if run_end_ms < 10_000:
        return max(int(_nice_ceil(run_end_ms / 20)), 1)
    return max(int(_nice_ceil(run_end_ms / MAX_BUCKETS)), 1000)


def _throughput_svg(ops: Sequence[Op], faults: Sequence[FaultPeriod], run_end_ms: int,
                    palette: dict[str, str]) -> str:
    bucket_ms = _bucket_ms(run_end_ms)
    n_buckets = max(math.ceil(run_end_ms / bucket_ms), 1)
    counts = {outcome: [0] * n_buckets for outcome in OUTCOME_COLOURS}
    for op in ops:
        if op.complete is not None and op.complete.time is not None:
            counts[op.type][min(max(op.complete.time, 0) // bucket_ms, n_buckets - 1)] += 1
    per_s = 1000 / bucket_ms
    top = max((c * per_s for row in counts.values() for c in row), default=0) or 1
    x = _Scale(0, run_end_ms, LEFT, WIDTH - RIGHT)
    y = _Scale(0, _nice_ceil(top * 1.05), HEIGHT - BOTTOM, TOP)
    out = _frame(x, y, _linear_ticks(y.hi, 5), f"completions / s ({_fmt(bucket_ms / 1000)} s buckets)")
    out.extend(_bands(faults, x, palette))
    for outcome, row in counts.items():
        if not any(row):
            continue
        # A step line: each bucket is a flat segment, so one bucket still shows and the bucketing is honest.
        steps = " ".join(f"{x(i * bucket_ms)},{y(c * per_s)} {x(min((i + 1) * bucket_ms, run_end_ms))},"
                         f"{y(c * per_s)}" for i, c in enumerate(row))
        out.append(f'<polyline class="rate-{outcome}" fill="none" stroke="{OUTCOME_COLOURS[outcome]}" '
                   f'stroke-width="1.8" points="{steps}"><title>{outcome}</title></polyline>')
    out.append("</svg>")
    return "\n".join(out)


def _legend(fs: Sequence[str], kinds: Sequence[str], palette: dict[str, str]) -> str:
    def swatch(shape: str, label: str) -> str:
        return f'<span><svg width="12" height="12" viewBox="-6 -6 12 12">{shape}</svg> {_esc(label)}</span>'

    items = [swatch(f'<circle r="4" fill="{c}"/>', o) for o, c in OUTCOME_COLOURS.items()]
    items += [swatch(f'<path d="{MARKERS[i % len(MARKERS)]}" fill="#555"/>', f) for i, f in enumerate(fs)]
    items += [swatch(f'<rect x="-6" y="-6" width="12" height="12" fill="{palette[k]}" fill-opacity="0.3"/>', k)
              for k in kinds]
    return f'<p class="legend">{"".join(items)}</p>'


def _faults_table(faults: Sequence[FaultPeriod]) -> str:
    if not faults:
        return '<p class="note">No faults.</p>'
    rows = "".join(
        f"<tr><td>{_esc(p.kind)}</td><td>{p.start_ms / 1000:g}</td>"
        f"<td>{'still active' if p.end_ms is None else f'{p.end_ms / 1000:g}'}</td><td>{_esc(p.detail)}</td></tr>"
        for p in faults)
    return f"<table><tr><th>kind</th><th>start (s)</th><th>end (s)</th><th>detail</th></tr>{rows}</table>"


def _checker(name: str, output: Any) -> str:
    head = f"<h3>{_esc(name)}"
    if not isinstance(output, dict):
        return f"{head}</h3><pre>{_esc(output)}</pre>"
    verdict = _verdict(output.get("valid"))
    return f'{head}<span class="badge {verdict}">{verdict.upper()}</span></h3>{_table(output)}'


def _table(fields: dict[str, Any]) -> str:
    # In the given order: result dicts arrive key-sorted from their JSON round trip, the summary in reading order.
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_cell(v)}</td></tr>" for k, v in fields.items())
    return f"<table>{rows}</table>" if rows else '<p class="note">(empty)</p>'


def _cell(value: Any) -> str:
    """Scalars as text, lists as their first ``LIST_LIMIT`` entries with a count, dicts as JSON."""
    if isinstance(value, dict):
        return f"<pre>{escape(json.dumps(value, indent=2, sort_keys=True))}</pre>"
    if isinstance(value, list):
        if not value:
            return "(none)"
        items = "".join(f"<li><code>{_esc(v)}</code></li>" for v in value[:LIST_LIMIT])
        shown = f", first {LIST_LIMIT} shown" if len(value) > LIST_LIMIT else ""
        return f'<span class="note">{len(value)} entries{shown}</span><ol>{items}</ol>'
    return _esc(value)
