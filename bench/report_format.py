"""What every benchmark's report shares: figures rounded for the JSON line, and where the data lived."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any


def rounded(value: Any) -> Any:
    """``value`` with every float cut to 4 significant digits, through dicts and lists."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def filesystem_of(path: Path) -> str:
    """The type of the filesystem ``path`` is on (from /proc/mounts), or "unknown"."""
    path = path.resolve()
    best_mount, best_type = "", "unknown"
    with contextlib.suppress(OSError), open("/proc/mounts") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) < 3:
                continue
            mount = fields[1]
            if path.is_relative_to(mount) and len(mount) > len(best_mount):
                best_mount, best_type = mount, fields[2]
    return best_type
