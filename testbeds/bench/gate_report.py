"""The result table of the gate mode (gate.py)."""

from __future__ import annotations

from report import fmt


def gate_table(results: dict, args) -> str:
    sysn = [r["system"] for r in results["systems"]]
    by = {r["system"]: r["variants"] for r in results["systems"]}

    def get(name, path):
        v = by.get(name)
        for k in path:
            if not isinstance(v, dict) or k not in v:
                return None
            v = v[k]
        return v

    c = args.common_cps
    rows = [
        ("highest steady calls/s, authenticated, gate off", ("auth", "calls", "highest_steady"), ".0f"),
        ("highest steady calls/s, gate on, permitted caller", ("gate", "calls", "highest_steady"), ".0f"),
        ("highest steady calls/s, gate on with load query", ("gate_query", "calls", "highest_steady"), ".0f"),
        ("highest steady 403/s, refused caller", ("gate", "refused", "highest_steady"), ".0f"),
        (f"proxy CPU s per 1,000 calls at {c}/s, gate off", ("auth", "calls_common", "cpu_s_per_1000"), ".3f"),
        (f"proxy CPU s per 1,000 calls at {c}/s, gate on", ("gate", "calls_common", "cpu_s_per_1000"), ".3f"),
        (f"proxy CPU s per 1,000 calls at {c}/s, gate on with load query",
         ("gate_query", "calls_common", "cpu_s_per_1000"), ".3f"),
        (f"proxy CPU s per 1,000 refusals at {c}/s", ("gate", "refused_common", "cpu_s_per_1000"), ".3f"),
        (f"proxy CPU % of one core at {c}/s, gate on", ("gate", "calls_common", "proxy_cpu_pct"), ".1f"),
        (f"proxy CPU % of one core at {c} refusals/s", ("gate", "refused_common", "proxy_cpu_pct"), ".1f"),
        (f"SIPp CPU s per 1,000 calls at {c}/s, gate on", ("gate", "calls_common", "sipp_cpu_s_per_1000"), ".3f"),
        (f"SIPp CPU s per 1,000 refusals at {c}/s", ("gate", "refused_common", "sipp_cpu_s_per_1000"), ".3f"),
        (f"other processes' CPU at {c}/s gate off / gate on / refused, % of a core", None, None),
        ("proxy processes", ("gate", "processes"), ".0f"),
    ]
    head = "| metric | " + " | ".join(sysn)
    ratio = "permit-proxy" in by and "kamailio" in by
    if ratio:
        head += " | permit / kamailio"
    lines = [head + " |", "|" + "---|" * (len(sysn) + 1 + ratio)]
    for label, path, spec in rows:
        if path is None:
            cells = [" / ".join(fmt(get(n, (v, k, "other_cpu_pct")), ".0f") for v, k in
                                (("auth", "calls_common"), ("gate", "calls_common"),
                                 ("gate", "refused_common"))) for n in sysn]
            lines.append(f"| {label} | " + " | ".join(cells) + (" | n/a |" if ratio else " |"))
            continue
        cells = [fmt(get(n, path), spec) for n in sysn]
        if ratio:
            a, b = get("permit-proxy", path), get("kamailio", path)
            cells.append(fmt(a / b, ".2f") if a and b else "n/a")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    notes = []
    for n in sysn:
        for vkey, var in by[n].items():
            if "error" in var:
                notes.append(f"- {n}, {vkey}: ERROR {var['error']}")
                continue
            for kind in ("calls", "refused"):
                r = var.get(kind) or {}
                if r.get("limit_hint"):
                    notes.append(f"- {n}, {vkey} {kind}: first failing step "
                                 f"{r['first_failing']}/s: {r['limit_hint']}")
                elif r and r.get("first_failing") is None:
                    why = ("reached the ramp cap" if r["highest_steady"] * 2 > args.call_max
                           else "the time budget ended")
                    notes.append(f"- {n}, {vkey} {kind}: {why} without a failing step: "
                                 f"{r['highest_steady']}/s is a lower bound")
                cm = var.get(f"{kind}_common")
                if cm and not cm["ok"]:
                    notes.append(f"- {n}, {vkey}: the {c}/s {kind} step was NOT steady: "
                                 f"{'; '.join(cm['reasons'])}")
    return "\n".join(lines + ([""] + notes if notes else []))
