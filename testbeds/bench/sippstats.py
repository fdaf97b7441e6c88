"""SIPp statistics files (-trace_stat): the last row, counters and response times."""

from __future__ import annotations

from pathlib import Path


def read_stats(path: Path) -> dict[str, str]:
    """Last row of a SIPp -trace_stat file as {column: value}."""
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return {}
    if len(lines) < 2:
        return {}
    head = lines[0].split(";")
    rows = [dict(zip(head, r.split(";"))) for r in lines[1:]]
    last = rows[-1]
    last["_rows"] = rows  # type: ignore[assignment]
    return last


def num(stats: dict, key: str) -> int:
    try:
        return int(float(stats.get(key, "0") or 0))
    except ValueError:
        return 0


def rtd_ms(stats: dict, key: str = "ResponseTime1(C)") -> float:
    v = stats.get(key, "")
    try:
        h, m, s, us = (int(x) for x in v.split(":"))
    except ValueError:
        return float("nan")
    return ((h * 60 + m) * 60 + s) * 1000 + us / 1000


