"""The result table, the limit hints and the machine/version facts of a run."""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def limit_hint(d: dict) -> str:
    """What most likely stopped the first failing step, from CPU use and socket drops."""
    w = d["wall_s"] or 1.0
    pct = {k: 100 * d[k] / w for k in ("proxy_cpu_s", "uac_cpu_s", "uas_cpu_s", "other_cpu_s")}
    busiest = 100 * d.get("proxy_busiest_cpu_s", d["proxy_cpu_s"]) / w
    shares = (f"mean CPU: proxy {pct['proxy_cpu_s']:.0f}% (busiest process {busiest:.0f}%), "
              f"SIPp client {pct['uac_cpu_s']:.0f}%, "
              f"SIPp UAS {pct['uas_cpu_s']:.0f}%, other processes {pct['other_cpu_s']:.0f}%")
    ncpu = os.cpu_count() or 1
    drops = {k: v for k, v in d.get("udp_drops", {}).items() if v}
    if drops:
        shares += "; UDP receive-buffer drops: " + ", ".join(f"{k} {v}" for k, v in drops.items())
    if max(pct["uac_cpu_s"], pct["uas_cpu_s"]) >= 85:
        return f"a SIPp process saturated its core ({shares})"
    if busiest >= 85:
        return f"a proxy process saturated its core ({shares})"
    if sum(pct.values()) >= 85 * ncpu:
        return f"the machine's {ncpu} cores were saturated ({shares})"
    if drops.get("proxy"):
        return (f"the proxy's socket overflowed while no core was saturated on average: it "
                f"did not read fast enough at moments ({shares})")
    return f"no process saturated on average ({shares}): latency or errors in the proxy"


def versions(args) -> dict:
    def out(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip()
        except (OSError, subprocess.TimeoutExpired):
            return "n/a"

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    git = out(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = out(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    binary = Path(args.permit)
    if binary.exists():
        st = binary.stat()
        built = datetime.datetime.fromtimestamp(st.st_mtime).astimezone().isoformat(timespec="seconds")
        sha = hashlib.sha256(binary.read_bytes()).hexdigest()[:12]
        src = binary.resolve().parent
        rev = out(["git", "-C", str(src), "rev-parse", "--short", "HEAD"])
        changes = out(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"])
        tree = f"source tree at {rev}" + (" with uncommitted changes" if changes else "")
        permit = f"{binary} (built {built}, sha256 {sha}, {tree})"
    else:
        permit = "n/a"
    return {
        "permit_proxy_binary": permit,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "kamailio": out([args.kamailio, "-v"]).splitlines()[0] if shutil.which(args.kamailio) else "n/a",
        "sipp": out([args.sipp, "-v"]).splitlines()[0].strip() if shutil.which(args.sipp) else "n/a",
        "harness_git": git + (" (with uncommitted changes)" if dirty and dirty != "n/a" else ""),
    }


def fmt(v, spec=".0f"):
    return "n/a" if v is None or v != v else format(v, spec)


def table(results: dict, args) -> str:
    sysn = [r["system"] for r in results["systems"]]
    by = {r["system"]: r for r in results["systems"]}

    def get(name, path):
        v = by.get(name)
        for k in path:
            if not isinstance(v, dict) or k not in v:
                return None
            v = v[k]
        return v

    c = args.common_cps
    rows = [
        (f"proxy CPU s per 1,000 calls at {c} CPS", ("common", "cpu_s_per_1000"), ".3f"),
        (f"proxy CPU % of one core at {c} CPS", ("common", "proxy_cpu_pct"), ".1f"),
        (f"SIPp UAC+UAS CPU s per 1,000 calls at {c} CPS", ("common", "sipp_cpu_s_per_1000"), ".3f"),
        ("highest steady calls/s (CPS)", ("calls", "highest_steady"), ".0f"),
        ("highest steady REGISTER/s", ("registers", "highest_steady"), ".0f"),
        (f"memory at the end of the {c} CPS step, PSS MiB", ("common", "end_pss_mib"), ".1f"),
        (f"memory during the {c} CPS step, peak RSS (sum) MiB", ("common", "peak_rss_mib"), ".1f"),
        ("memory at the end of the run, PSS MiB", ("end_pss_mib",), ".1f"),
        ("memory over the whole run, peak RSS (sum) MiB", ("run_peak_rss_mib",), ".1f"),
        ("bindings registered in the run", ("bindings_registered",), ".0f"),
        ("proxy processes", ("processes",), ".0f"),
        (f"other processes' CPU during the {c} CPS step, % of a core", ("common", "other_cpu_pct"), ".0f"),
        ("other processes' CPU over the system's run, mean % of a core", ("others_mean_pct",), ".0f"),
    ]
    head = "| metric | " + " | ".join(sysn)
    ratio = "permit-proxy" in by and "kamailio" in by
    if ratio:
        head += " | permit / kamailio"
    lines = [head + " |", "|" + "---|" * (len(sysn) + 1 + ratio)]
    for label, path, spec in rows:
        vals = [get(n, path) for n in sysn]
        cells = [fmt(v, spec) for v in vals]
        if ratio:
            a, b = get("permit-proxy", path), get("kamailio", path)
            cells.append(fmt(a / b, ".2f") if a and b else "n/a")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    notes = []
    for n in sysn:
        for kind in ("calls", "registers"):
            r = by[n].get(kind) or {}
            if r.get("limit_hint"):
                notes.append(f"- {n}, {kind}: first failing step {r['first_failing']}/s: {r['limit_hint']}")
            elif r.get("capped"):
                notes.append(f"- {n}, {kind}: reached the ramp cap without failing")
        c = by[n].get("common")
        if c and not c["ok"]:
            notes.append(f"- {n}: the {args.common_cps} CPS step was NOT steady: {'; '.join(c['reasons'])}")
        if "error" in by[n]:
            notes.append(f"- {n}: ERROR {by[n]['error']}")
    return "\n".join(lines + ([""] + notes if notes else []))
