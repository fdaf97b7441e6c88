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




def elapsed_s(row: dict) -> float | None:
    try:
        h, m, s = (int(x) for x in row.get("ElapsedTime(C)", "").split(":"))
    except ValueError:
        return None
    return h * 3600 + m * 60 + s


def generation_s(stats: dict, n: int) -> float | None:
    """Seconds SIPp took to start all n calls (first periodic row that counts them all),
    None if it never did. Whole seconds: the rows come once a second (-fd 1)."""
    for row in stats.get("_rows", []) if stats else []:
        if num(row, "TotalCallCreated") >= n:
            return elapsed_s(row)
    return None
