#!/usr/bin/env python3
"""Overload benchmark: goodput at 3x offered overload, permit-proxy beside Kamailio.

For each system in turn (never both at once), in one run:

1. **Peak**: a fresh proxy under a CPU cap (below) gets a call ramp (SIPp UAC ->
   proxy -> SIPp UAS, ``scenarios/uac_overload.xml``), rate doubled per step until a
   step loses calls, then bisected. The peak goodput is the highest rate of successful
   calls per second of offered time seen in any step.
2. **3x**: a fresh proxy (Kamailio with ratelimit set to its peak) gets 3x that peak
   for ``--overload-s`` seconds; goodput is reported as a percentage of the peak.
3. **3x unprotected** (unless ``--no-unprotected``): the same with the protection
   off (permit-proxy ``[overload] enabled = false``; Kamailio without pike/ratelimit,
   i.e. kamailio.cfg), to show what the protection changes.

The CPU cap: SIPp shares the machine's 2 cores with the proxy and cannot offer 3x the
peak of a proxy that has a whole core (permit-proxy's call peak on this machine is a
limit of SIPp). So every proxy process runs in a cgroup with a CPU quota, the same for
both systems (``--cpu-pct`` of one core, default 10, over 10 ms periods). Needs root and
a writable cpu cgroup (v1 ``/sys/fs/cgroup/cpu`` or v2 ``cpu.max``).

A refused call (503) is acknowledged and counted by SIPp as FailedCallRejected; goodput
counts SuccessfulCall only. Loopback only; bounded by ``--budget-s`` (default 840 s);
everything started is stopped by PID. See README.md "Overload".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from procs import (
    MemSampler, cleanup, cpu_ticks, delta, machine_ticks, on_signal, pick_ports, spawn, stop,
    ticks_by_pid, tree, udp_drops,
)
from report import versions
from run import SCEN, SIPP_BUF, Bench, HERE, ROOT
from sippstats import elapsed_s, generation_s, num, read_stats

SCENARIO = ["-sf", str(SCEN / "uac_overload.xml"), "-s", "uas1"]
# uac_overload.xml's messages in SIPp's -trace_counts file: the 503 received, and the
# 200 to the BYE (a call completed end to end: the goodput).
REFUSED, COMPLETED = "3_503_Recv", "8_200_Recv"


def read_counts(path: Path) -> list[tuple[float, dict[str, int]]]:
    """SIPp -trace_counts rows: (Unix time, cumulative count per scenario message)."""
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return []
    head = lines[0].rstrip(";").split(";") if lines else []
    rows = []
    for line in lines[1:]:
        cells = line.rstrip(";").split(";")
        try:
            t = float(cells[0].split("\t")[-1])
        except ValueError:
            continue
        rows.append((t, {k: int(v) for k, v in zip(head[2:], cells[2:]) if v.isdigit()}))
    return rows


def counted(rows, key: str, at: float) -> int:
    """The cumulative count of `key` in the last row at or before `at`."""
    n = 0
    for t, c in rows:
        if t > at:
            break
        n = c.get(key, 0)
    return n


def window_rate(rows, key: str, secs: float) -> float:
    """Per second of `key` while the load was offered, from the 2nd second to the end
    of the offered window (the first second is the ramp-in; what completes later, from
    a backlog, does not count)."""
    if not rows:
        return 0.0
    t0 = rows[0][0]
    return (counted(rows, key, t0 + secs) - counted(rows, key, t0 + 2)) / max(secs - 2, 1)


class CpuCap:
    """A cgroup with a CPU quota; a process started through wrap() runs inside it."""

    def __init__(self, pct: float, tag: str):
        # The kernel's smallest quota is 1 ms; the period is 10 ms unless a smaller
        # share needs a longer one (the proxy then waits up to period - quota).
        period_us = max(10_000, int(1000 * 100 / pct))
        quota = max(1000, round(period_us * pct / 100))
        name = f"permit-bench-overload-{os.getpid()}-{tag}"
        v1 = Path("/sys/fs/cgroup/cpu")
        if (v1 / "cpu.cfs_quota_us").exists():
            self.dir = v1 / name
            self.dir.mkdir()
            (self.dir / "cpu.cfs_period_us").write_text(str(period_us))
            (self.dir / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            self.dir = Path("/sys/fs/cgroup") / name
            self.dir.mkdir()
            (self.dir / "cpu.max").write_text(f"{quota} {period_us}")
        self.desc = f"{quota} us per {period_us} us ({100 * quota / period_us:.0f} % of a core)"

    def wrap(self, args: list[str]) -> list[str]:
        procs = self.dir / "cgroup.procs"
        return ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh"] + args

    def holds(self, pid: int) -> bool:
        try:
            return f"/{self.dir.name}" in Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return False

    def throttled(self) -> tuple[int, float]:
        """Periods in which the quota ran out, and seconds spent throttled."""
        st = dict(l.split() for l in (self.dir / "cpu.stat").read_text().splitlines() if l)
        if "throttled_time" in st:  # v1: nanoseconds
            return int(st.get("nr_throttled", 0)), int(st["throttled_time"]) / 1e9
        return int(st.get("nr_throttled", 0)), int(st.get("throttled_usec", 0)) / 1e6

    def close(self) -> None:
        for _ in range(20):
            try:
                self.dir.rmdir()
                return
            except OSError:
                time.sleep(0.25)


class OverloadBench(Bench):
    def __init__(self, args, work: Path, deadline: float, cap: CpuCap):
        super().__init__(args, work, deadline)
        self.cap = cap
        self.protect = True
        self.rl_limit = 1_000_000
        self.pike_density = 1_000_000

    def start_proxy(self, name: str, port: int, sysdir: Path):
        sysdir.mkdir(parents=True, exist_ok=True)
        if name == "kamailio":
            rundir = sysdir / "run"
            rundir.mkdir()
            if self.protect:
                cfg = sysdir / "kamailio-overload.cfg"
                text = (HERE / "kamailio-overload.cfg").read_text()
                text = text.replace("@RL_LIMIT@", str(self.rl_limit))
                text = text.replace("@PIKE_DENSITY@", str(self.pike_density))
                cfg.write_text(text)
            else:
                cfg = HERE / "kamailio.cfg"
            args = [
                self.a.kamailio, "-DD", "-E", "-f", str(cfg), "-l", f"udp:127.0.0.1:{port}",
                "-m", str(self.a.kam_shm), "-M", str(self.a.kam_pkg),
                "-Y", str(rundir), "-P", str(rundir / "kamailio.pid"), "-w", str(rundir),
            ]
            env = None
        else:
            data = sysdir / "data"
            data.mkdir()
            conf = sysdir / "permit.toml"
            extra = "".join(f"{kv}\n" for kv in self.a.permit_overload) if self.protect else ""
            conf.write_text(
                f"[overload]\nenabled = {'true' if self.protect else 'false'}\n{extra}")
            args = [
                self.a.permit, "run", "--config", str(conf),
                "--listen", f"udp:127.0.0.1:{port}", "--data", str(data),
                "--domain", "localhost", "--no-auth",
            ]
            level = os.environ.get("BENCH_PERMIT_LOG", "warn")
            env = dict(os.environ, PERMIT_LOG=level, RUST_LOG=level)
        args = self.cap.wrap(args)
        self.log(f"[{name}] start: {' '.join(args)}")
        return spawn(args, sysdir / f"{name}.log", env=env)

    def with_proxy(self, name: str, label: str, body):
        """Starts a fresh proxy and the UAS, runs body(ctx), stops both."""
        ports = pick_ports(self.a.base_port, 4)
        proxy_port, uas_port, uac_port, _ = ports
        self.sysdir = self.work / name / label
        proxy = self.start_proxy(name, proxy_port, self.sysdir)
        self.proxy_pid = proxy.pid
        uas = None
        try:
            target = f"127.0.0.1:{proxy_port}"
            if not self.wait_ready(target, uas_port):
                raise RuntimeError(f"{name}: no 200 OK to REGISTER within 15 s; see {self.sysdir}")
            if not all(self.cap.holds(p) for p in tree(proxy.pid)):
                raise RuntimeError(f"{name}: proxy processes not in the CPU cap's cgroup")
            self.sampler = MemSampler(proxy.pid)
            self.sampler.start()
            uas_stats = self.sysdir / "uas.csv"
            uas = spawn(
                [self.a.sipp, "-sf", str(SCEN / "uas.xml"), "-s", "uas1", "-p", str(uas_port),
                 "-i", "127.0.0.1", "-nostdin", "-trace_stat", "-stf", str(uas_stats),
                 "-fd", "1", "-trace_err", "-error_file", str(self.sysdir / "uas.err"),
                 "-buff_size", SIPP_BUF, "-recv_timeout", "4000"],
                self.sysdir / "uas.out",
            )
            time.sleep(0.5)
            return body((proxy, uas, uas_stats, target, uac_port, proxy_port, uas_port))
        finally:
            if getattr(self, "sampler", None):
                self.sampler.halt.set()
            if uas is not None:
                stop(uas)
            stop(proxy, grace=8.0)

    def step(self, ctx, rate: int, secs: float) -> dict:
        """One step at `rate` calls/s for `secs`; goodput and what the proxy refused."""
        proxy, uas, uas_stats, target, uac_port, proxy_port, uas_port = ctx
        pids = tree(proxy.pid)
        n = int(rate * secs)
        u0 = read_stats(uas_stats)
        self.sampler.forget_drops(uac_port)
        d0 = udp_drops()
        c0, s0, m0 = ticks_by_pid(pids), cpu_ticks([uas.pid]), machine_ticks(self_too=True)
        load0 = os.getloadavg()[0]
        t0 = self.cap.throttled()
        before = set(Path.cwd().glob("uac_overload_*_counts.csv"))
        rc, st, wall, uac_ticks = self.sipp(
            f"call-{rate}", target,
            SCENARIO + ["-p", str(uac_port), "-r", str(rate), "-rp", "1000", "-m", str(n),
                        "-l", str(max(rate * 5, 50)), "-recv_timeout", "4000",
                        "-d", str(self.a.hold_ms), "-trace_counts"],
            timeout_s=secs * 1.5 + 10,
        )
        # SIPp writes the counts file into its working directory, named by its PID.
        new = sorted(set(Path.cwd().glob("uac_overload_*_counts.csv")) - before)
        counts_path = self.sysdir / f"{self.seq:03d}-call-{rate}-counts.csv"
        if new:
            shutil.move(str(new[-1]), counts_path)
        counts = read_counts(counts_path)
        time.sleep(1.2)
        c1, s1, m1 = ticks_by_pid(pids), cpu_ticks([uas.pid]), machine_ticks(self_too=True)
        d1 = udp_drops()
        u1 = read_stats(uas_stats)
        judged = self.judge(
            rate, n, st, wall, secs, proxy.pid,
            proxy_ticks=delta(c0, c1), uac_ticks=uac_ticks, uas_ticks=s1 - s0,
            span=wall + 1.2, machine_busy=m1[0] - m0[0],
            uas_failed=num(u1, "FailedCall(C)") - num(u0, "FailedCall(C)"),
            uas_retrans=num(u1, "Retransmissions(C)") - num(u0, "Retransmissions(C)"),
            drops={
                "proxy": d1.get(proxy_port, 0) - d0.get(proxy_port, 0),
                "uas": d1.get(uas_port, 0) - d0.get(uas_port, 0),
                "client": self.sampler.last_drops(uac_port),
            },
        )
        t1 = self.cap.throttled()
        created = num(st, "TotalCallCreated")
        gen = generation_s(st, n)
        refused = counts[-1][1].get(REFUSED, 0) if counts else 0
        completed = counts[-1][1].get(COMPLETED, 0) if counts else 0
        out = asdict(judged) | {
            "seconds": secs,
            "goodput": window_rate(counts, COMPLETED, secs),
            "refused_per_s": window_rate(counts, REFUSED, secs),
            "completed": completed,
            "created": created,
            "offered_rate": created / gen if gen else None,
            "refused_503": refused,
            "other_failed": judged.failed,
            "load_avg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "throttled_periods": t1[0] - t0[0],
            "throttled_s": round(t1[1] - t0[1], 2),
        }
        self.log(
            f"      goodput {out['goodput']:.0f}/s, 503 {refused}, other failures "
            f"{out['other_failed']}, created {created}"
            + (f" in {gen:.0f}s" if gen else " (not all)") + f", load avg {load0:.2f}, "
            f"throttled {out['throttled_periods']} periods"
        )
        return out

    def peak(self, ctx) -> dict:
        """Doubles the rate until a step loses calls, bisects; keeps every step."""
        steps: list[dict] = []
        good, bad, rate = 0, None, self.a.start_rate
        # A step keeps up when its goodput is at least 97 % of the offered rate (a few
        # calls lost to a busy machine do not end the ramp; a backlog does).
        keeps_up = lambda s: s["goodput"] >= 0.97 * s["rate"]  # noqa: E731
        while rate <= self.a.max_rate and time.monotonic() < self.deadline:
            s = self.step(ctx, rate, self.a.step_s)
            steps.append(s)
            if not keeps_up(s):
                bad = rate
                self.settle()
                break
            good, rate = rate, rate * 2
        for _ in range(self.a.bisect):
            if bad is None or time.monotonic() >= self.deadline:
                break
            mid = (good + bad) // 2
            if bad - mid < max(bad // 20, 10) or mid <= good:
                break
            s = self.step(ctx, mid, self.a.step_s)
            steps.append(s)
            if keeps_up(s):
                good = mid
            else:
                bad = mid
                self.settle()
        best = max(steps, key=lambda s: s["goodput"]) if steps else None
        return {
            "highest_keeping_up": good,
            "first_failing": bad,
            "peak_goodput": best["goodput"] if best else 0.0,
            "peak_at_rate": best["rate"] if best else None,
            "steps": steps,
        }

    def run_system(self, name: str) -> dict:
        res: dict = {"system": name}
        self.protect = True
        self.rl_limit, self.pike_density = 1_000_000, 1_000_000
        self.log(f"[{name}] peak ramp from {self.a.start_rate}/s, steps of {self.a.step_s}s")
        res["peak"] = self.with_proxy(name, "peak", self.peak)
        peak = res["peak"]["peak_goodput"]
        self.log(f"[{name}] peak goodput {peak:.0f} calls/s "
                 f"(highest rate kept up with: {res['peak']['highest_keeping_up']}/s)")
        if peak <= 0:
            raise RuntimeError(f"{name}: no successful calls in the ramp")
        rate = int(round(3 * peak))
        # Kamailio's limit: its own measured peak (times --kam-limit-pct); pike stays
        # above the offered rate.
        self.rl_limit = max(int(peak * self.a.kam_limit_pct / 100), 1)
        self.pike_density = rate * 10
        for label, protect in [("3x", True), ("3x-unprotected", False)]:
            if not protect and self.a.no_unprotected:
                continue
            if time.monotonic() >= self.deadline:
                res[label] = {"skipped": "time budget"}
                continue
            self.protect = protect
            self.log(f"[{name}] {label}: {rate}/s for {self.a.overload_s}s")
            s = self.with_proxy(name, label, lambda ctx: self.step(ctx, rate, self.a.overload_s))
            s["goodput_pct_of_peak"] = round(100 * s["goodput"] / peak, 1)
            res[label] = s
            self.log(f"[{name}] {label}: goodput {s['goodput']:.0f}/s = "
                     f"{s['goodput_pct_of_peak']} % of peak")
        res["kamailio_rl_limit"] = self.rl_limit if name == "kamailio" else None
        return res


def table(results: dict) -> str:
    rows = [
        "| system | peak goodput (calls/s) | offered at 3x (calls/s) | goodput at 3x | % of peak "
        "| 503 at 3x | other failures at 3x | unprotected goodput at 3x (% of peak) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["systems"]:
        if "error" in r:
            rows.append(f"| {r['system']} | error: {r['error']} | | | | | | |")
            continue
        p, o = r["peak"], r.get("3x", {})
        u = r.get("3x-unprotected", {})
        off = o.get("offered_rate")
        unprot = (f"{u['goodput']:.0f} ({u['goodput_pct_of_peak']} %)"
                  if "goodput" in u else u.get("skipped", "not run"))
        rows.append(
            f"| {r['system']} | {p['peak_goodput']:.0f} (at {p['peak_at_rate']}/s offered) "
            f"| {o.get('rate', '')}" + (f" (SIPp reached {off:.0f})" if off else "")
            + f" | {o.get('goodput', 0):.0f} | {o.get('goodput_pct_of_peak', '')} % "
            f"| {o.get('refused_503', '')} | {o.get('other_failed', '')} | {unprot} |"
        )
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--systems", default="permit-proxy,kamailio")
    ap.add_argument("--permit", default=str(ROOT / "target/release/permit-proxy"))
    ap.add_argument("--kamailio", default="kamailio")
    ap.add_argument("--sipp", default="sipp")
    ap.add_argument("--base-port", type=int, default=25160)
    ap.add_argument("--out", help="directory for logs and results.json (default: a temp dir)")
    ap.add_argument("--cpu-pct-permit", type=float, default=3.0,
                    help="CPU quota of permit-proxy, percent of one core (cgroup)")
    ap.add_argument("--cpu-pct-kamailio", type=float, default=10.0,
                    help="CPU quota of Kamailio's processes together, percent of one core")
    ap.add_argument("--start-rate", type=int, default=100)
    ap.add_argument("--max-rate", type=int, default=8000)
    ap.add_argument("--step-s", type=int, default=8)
    ap.add_argument("--bisect", type=int, default=2)
    ap.add_argument("--overload-s", type=int, default=20)
    ap.add_argument("--no-unprotected", action="store_true",
                    help="skip the 3x step with the protection off")
    ap.add_argument("--kam-limit-pct", type=float, default=100.0,
                    help="Kamailio's ratelimit pipe, percent of its measured peak")
    ap.add_argument("--permit-overload", action="append", default=[], metavar="KEY=VALUE",
                    help="a further [overload] setting of permit-proxy when protected, "
                         "e.g. sustain_ms=0 (repeatable)")
    ap.add_argument("--hold-ms", type=int, default=20)
    ap.add_argument("--kam-shm", type=int, default=1024)
    ap.add_argument("--kam-pkg", type=int, default=16)
    ap.add_argument("--settle-s", type=int, default=15)
    ap.add_argument("--budget-s", type=int, default=840)
    args = ap.parse_args()
    args.quick = False

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if "permit-proxy" in systems and not os.access(args.permit, os.X_OK):
        print(f"error: {args.permit} not found; `cargo build --release -p permit-proxy`",
              file=sys.stderr)
        return 2
    for tool in [args.sipp] + ([args.kamailio] if "kamailio" in systems else []):
        if not shutil.which(tool):
            print(f"error: {tool} not installed", file=sys.stderr)
            return 2
    caps: dict[str, CpuCap] = {}
    try:
        for name in systems:
            pct = args.cpu_pct_permit if name == "permit-proxy" else args.cpu_pct_kamailio
            caps[name] = CpuCap(pct, name)
    except OSError as e:
        print(f"error: cannot create a cpu cgroup ({e}); run as root with cgroups mounted",
              file=sys.stderr)
        for c in caps.values():
            c.close()
        return 2

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="permit-overload-"))
    work.mkdir(parents=True, exist_ok=True)
    args.permit = str(Path(args.permit).resolve())
    os.chdir(work)  # SIPp writes its -trace_counts files into its working directory
    start = time.monotonic()
    results = {"meta": versions(args), "command": " ".join([sys.argv[0]] + sys.argv[1:]),
               "cpu_caps": {k: c.desc for k, c in caps.items()},
               "load_avg_at_start": os.getloadavg(), "systems": []}
    results["meta"]["settings"] = {k: v for k, v in vars(args).items()}
    print(f"logs: {work}")
    for k, c in caps.items():
        print(f"CPU cap of {k}: {c.desc}")
    try:
        for i, name in enumerate(systems):
            left = args.budget_s - (time.monotonic() - start)
            bench = OverloadBench(
                args, work, time.monotonic() + left / (len(systems) - i), caps[name])
            try:
                results["systems"].append(bench.run_system(name))
            except Exception as e:  # noqa: BLE001 - reported in the table, the run goes on
                print(f"[{name}] ERROR: {e}", file=sys.stderr)
                results["systems"].append({"system": name, "error": str(e)})
            time.sleep(1)
    finally:
        cleanup()
        for c in caps.values():
            c.close()
    results["elapsed_s"] = round(time.monotonic() - start, 1)
    results["load_avg_at_end"] = os.getloadavg()
    (work / "results.json").write_text(json.dumps(results, indent=1))
    text = table(results)
    (work / "table.md").write_text(text + "\n")
    print()
    print(text)
    print(f"\nelapsed {results['elapsed_s']}s; results: {work / 'results.json'}")
    return 1 if any("error" in r for r in results["systems"]) else 0


if __name__ == "__main__":
    sys.exit(main())
