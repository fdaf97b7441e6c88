#!/usr/bin/env python3
"""Side-by-side SIP load benchmark: permit-proxy and Kamailio on loopback UDP.

For each system in turn (never both at once) the harness:

1. starts the proxy as its own child process and registers a SIPp UAS as user ``uas1``;
2. offers a fixed call load (the same for both systems) and measures the CPU seconds the
   proxy's processes used (utime + stime from /proc, all Kamailio processes summed), the
   peak memory and the call set-up time;
3. ramps the call rate (SIPp UAC -> proxy -> SIPp UAS) and reports the highest steady rate;
4. ramps the REGISTER rate (distinct users per step) and reports the highest steady rate;
5. stops the proxy by PID.

A step at rate R is *steady* when at least 99.9 % of its calls succeed, SIPp kept the
offered rate (the step did not overrun its time), retransmissions stay under 1 % of the
calls and do not grow within the step.

Only the Python 3.11 standard library is used. Everything it starts is stopped by PID on
exit, on error and on SIGINT/SIGTERM. See testbeds/bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from procs import (
    CLK_TCK, MemSampler, alive, cleanup, cpu_ticks, machine_ticks, on_signal, pick_ports,
    delta, pss_kib, reap, spawn, stop, ticks_by_pid, tree, udp_drops,
)
from report import limit_hint, table, versions
from sippstats import generation_s, num, read_stats, rtd_ms

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SCEN = HERE / "scenarios"

FAIL_RATIO = 0.001  # < 0.1 % failed
RETRANS_RATIO = 0.01  # retransmissions < 1 % of calls
SIPP_BUF = "4194304"  # SIPp socket buffers (capped by net.core.rmem_max/wmem_max)


@dataclass
class Step:
    rate: int
    planned: int
    ok: bool
    success: int
    failed: int
    retrans: int
    uas_failed: int
    uas_retrans: int
    wall_s: float  # from the client's start to the end of the measurement window
    proxy_cpu_s: float
    proxy_busiest_cpu_s: float  # the busiest single proxy process (Kamailio has several)
    uac_cpu_s: float  # the SIPp client (UAC, or the REGISTER client)
    uas_cpu_s: float
    other_cpu_s: float  # everything else on the machine (other users, kernel threads)
    reasons: list[str] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    udp_drops: dict[str, int] = field(default_factory=dict)  # receive-buffer drops by socket

    def pct(self, cpu_s: float) -> float:
        """CPU seconds as a percentage of one core over the step."""
        return round(100 * cpu_s / self.wall_s, 1) if self.wall_s else 0.0


class Bench:
    def __init__(self, args, work: Path, deadline: float):
        self.a = args
        self.work = work
        self.deadline = deadline
        self.seq = 0

    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def sipp(self, name: str, target: str, extra: list[str], timeout_s: float):
        """Run one SIPp client to completion; returns (rc, stats, wall, cpu ticks of it)."""
        self.seq += 1
        stem = self.sysdir / f"{self.seq:03d}-{name}"
        args = [
            self.a.sipp, target, "-i", "127.0.0.1", "-nostdin",
            "-trace_stat", "-stf", f"{stem}.csv", "-fd", "1",
            "-trace_err", "-error_file", f"{stem}.err",
            "-timeout", f"{int(timeout_s)}s",
            "-buff_size", SIPP_BUF,
        ] + extra
        t0 = time.monotonic()
        p = spawn(args, Path(f"{stem}.out"))
        ticks = reap(p, timeout_s + 10)
        wall = time.monotonic() - t0
        if ticks is None:  # still running past its own -timeout: stop it
            ticks = cpu_ticks([p.pid])
            stop(p, grace=2.0)
        return p.returncode, read_stats(Path(f"{stem}.csv")), wall, ticks

    # ------------------------------------------------------------------ one system

    def run_system(self, name: str) -> dict:
        ports = pick_ports(self.a.base_port, 4)
        proxy_port, uas_port, uac_port, reg_port = ports
        sysdir = self.sysdir = self.work / name
        sysdir.mkdir()
        res: dict = {"system": name, "proxy_port": proxy_port}
        proxy = self.start_proxy(name, proxy_port, sysdir)
        self.proxy_pid = proxy.pid
        try:
            target = f"127.0.0.1:{proxy_port}"
            if not self.wait_ready(target, uas_port):
                raise RuntimeError(f"{name}: no 200 OK to REGISTER within 15 s; see {sysdir}")
            res["processes"] = len(tree(proxy.pid))
            sampler = self.sampler = MemSampler(proxy.pid)
            sampler.start()
            uas_stats = sysdir / "uas.csv"
            uas = spawn(
                [self.a.sipp, "-sf", str(SCEN / "uas.xml"), "-s", "uas1", "-p", str(uas_port),
                 "-i", "127.0.0.1", "-nostdin", "-trace_stat", "-stf", str(uas_stats),
                 "-fd", "1", "-trace_err", "-error_file", str(sysdir / "uas.err"),
                 "-buff_size", SIPP_BUF, "-recv_timeout", "4000"],
                sysdir / "uas.out",
            )
            time.sleep(0.5)
            ctx = (proxy, uas, uas_stats, target, uac_port, proxy_port, uas_port)

            # Common load first: memory then holds one binding, not the ramp's thousands.
            sampler.new_phase()
            step = self.call_step(ctx, self.a.common_cps, self.a.common_s)
            pss, rss = pss_kib(tree(proxy.pid)), sampler.phase_rss()
            res["common"] = asdict(step) | {
                "cps": self.a.common_cps,
                "seconds": self.a.common_s,
                "proxy_cpu_pct": step.pct(step.proxy_cpu_s),
                "other_cpu_pct": step.pct(step.other_cpu_s),
                "cpu_s_per_1000": step.proxy_cpu_s / max(step.success, 1) * 1000,
                "sipp_cpu_s_per_1000": (step.uac_cpu_s + step.uas_cpu_s)
                / max(step.success, 1) * 1000,
                "setup_ms": self._last_setup_ms,
                "end_pss_mib": pss / 1024,
                "peak_rss_mib": rss / 1024,
            }
            self.log(
                f"[{name}] common load {self.a.common_cps} cps x {self.a.common_s}s: "
                f"{step.success} ok, {step.failed} failed, proxy CPU "
                f"{res['common']['proxy_cpu_s']:.2f}s -> "
                f"{res['common']['cpu_s_per_1000']:.3f} s/1000 calls, PSS {pss/1024:.1f} MiB"
            )

            # The two ramps share what is left of this system's time equally.
            now = time.monotonic()
            res["calls"] = self.ramp(
                f"[{name}] calls", lambda r: self.call_step(ctx, r, self.a.step_s),
                self.a.call_start, self.a.call_max, now + (self.deadline - now) / 2,
            )
            # Every user of the pool gets a binding first, so that each ramp step does the
            # same work (refreshing existing bindings) and memory stays bounded by the pool.
            self.log(f"[{name}] REGISTER pool: {self.a.reg_pool} users at {self.a.prefill_rate}/s")
            res["register_prefill"] = asdict(self.register_step(
                proxy, target, reg_port, self.a.prefill_rate,
                self.a.reg_pool / self.a.prefill_rate, "prefill"))
            res["registers"] = self.ramp(
                f"[{name}] REGISTER", lambda r: self.register_step(proxy, target, reg_port, r),
                self.a.reg_start, self.a.reg_max, self.deadline,
            )
            res["end_pss_mib"] = pss_kib(tree(proxy.pid)) / 1024
            res["run_peak_rss_mib"] = sampler.run_peak_rss / 1024
            res["bindings_registered"] = 1 + res["register_prefill"]["success"]
            every = [res["common"]] + res["calls"]["steps"] + res["registers"]["steps"]
            res["others_mean_pct"] = 100 * sum(s["other_cpu_s"] for s in every) / max(
                sum(s["wall_s"] for s in every), 1e-9)
            sampler.halt.set()
            stop(uas)
        finally:
            stop(proxy, grace=8.0)
        res["exit_code"] = proxy.returncode
        return res

    def start_proxy(self, name: str, port: int, sysdir: Path) -> subprocess.Popen:
        if name == "kamailio":
            rundir = sysdir / "run"
            rundir.mkdir()
            args = [
                self.a.kamailio, "-DD", "-E", "-f", str(HERE / "kamailio.cfg"),
                "-l", f"udp:127.0.0.1:{port}",
                "-m", str(self.a.kam_shm), "-M", str(self.a.kam_pkg),
                "-Y", str(rundir), "-P", str(rundir / "kamailio.pid"), "-w", str(rundir),
            ]
            env = None
        else:
            data = sysdir / "data"
            data.mkdir()
            args = [
                self.a.permit, "run", "--listen", f"udp:127.0.0.1:{port}",
                "--listen", f"tcp:127.0.0.1:{port}", "--data", str(data),
                "--domain", "localhost",
            ]
            # Authentication is not part of this comparison (Kamailio's config has none).
            if "--no-auth" in subprocess.run(
                [self.a.permit, "run", "--help"], capture_output=True, text=True, timeout=10
            ).stdout:
                args.append("--no-auth")
            # Kamailio logs notices and up; the proxy gets the same (no per-request lines).
            level = os.environ.get("BENCH_PERMIT_LOG", "warn")
            env = dict(os.environ, PERMIT_LOG=level, RUST_LOG=level)
        self.log(f"[{name}] start: {' '.join(args)}")
        return spawn(args, sysdir / f"{name}.log", env=env)

    def wait_ready(self, target: str, uas_port: int) -> bool:
        """Registers uas1 (Contact = the UAS port); retried until the proxy answers."""
        end = time.monotonic() + 15
        while time.monotonic() < end:
            rc, st, _, _ = self.sipp(
                "register-uas", target,
                ["-sf", str(SCEN / "register.xml"), "-inf", str(self.users_file(["uas1"])),
                 "-p", str(uas_port), "-m", "1", "-recv_timeout", "1000"],
                timeout_s=3,
            )
            if rc == 0 and num(st, "SuccessfulCall(C)") == 1:
                return True
            time.sleep(0.5)
        return False

    # ------------------------------------------------------------------ steps

    _last_setup_ms = float("nan")

    def call_step(self, ctx, rate: int, secs: float, scenario: list[str] | None = None,
                  label: str = "call") -> Step:
        """One step of calls; scenario: the SIPp client's scenario arguments (default:
        uac.xml to uas1; gate.py passes its authenticating callers)."""
        proxy, uas, uas_stats, target, uac_port, proxy_port, uas_port = ctx
        scenario = scenario or ["-sf", str(SCEN / "uac.xml"), "-s", "uas1"]
        pids = tree(proxy.pid)
        n = int(rate * secs)
        u0 = read_stats(uas_stats)
        self.sampler.forget_drops(uac_port)
        d0 = udp_drops()
        c0, s0, m0 = ticks_by_pid(pids), cpu_ticks([uas.pid]), machine_ticks(self_too=True)
        rc, st, wall, uac_ticks = self.sipp(
            f"{label}-{rate}", target,
            scenario + ["-p", str(uac_port),
             "-r", str(rate), "-rp", "1000", "-m", str(n), "-l", str(max(rate * 3, 50)),
             "-recv_timeout", "4000", "-d", str(self.a.hold_ms)],
            timeout_s=secs * 1.5 + 8,
        )
        time.sleep(1.2)  # the UAS finishes its calls (timewait) and dumps a stats row
        c1, s1, m1 = ticks_by_pid(pids), cpu_ticks([uas.pid]), machine_ticks(self_too=True)
        d1 = udp_drops()
        u1 = read_stats(uas_stats)
        span = wall + 1.2
        self._last_setup_ms = rtd_ms(st)
        return self.judge(
            rate, n, st, wall, secs, proxy.pid,
            proxy_ticks=delta(c0, c1), uac_ticks=uac_ticks, uas_ticks=s1 - s0, span=span,
            machine_busy=m1[0] - m0[0],
            uas_failed=num(u1, "FailedCall(C)") - num(u0, "FailedCall(C)"),
            uas_retrans=num(u1, "Retransmissions(C)") - num(u0, "Retransmissions(C)"),
            drops={
                "proxy": d1.get(proxy_port, 0) - d0.get(proxy_port, 0),
                "uas": d1.get(uas_port, 0) - d0.get(uas_port, 0),
                "client": self.sampler.last_drops(uac_port),
            },
        )

    def users_file(self, users: list[str]) -> Path:
        path = self.work / f"users-{len(users)}.csv"
        if not path.exists():
            path.write_text("SEQUENTIAL\n" + "".join(f"{u};\n" for u in users))
        return path

    def register_step(self, proxy, target: str, port: int, rate: int,
                      secs: float | None = None, label: str = "reg") -> Step:
        secs = secs or self.a.step_s
        pids = tree(proxy.pid)
        n = int(rate * secs)
        pool = self.users_file([f"u{i:06d}" for i in range(1, self.a.reg_pool + 1)])
        proxy_port = int(target.rsplit(":", 1)[1])
        self.sampler.forget_drops(port)
        d0 = udp_drops()
        c0, m0 = ticks_by_pid(pids), machine_ticks(self_too=True)
        rc, st, wall, ticks = self.sipp(
            f"{label}-{rate}", target,
            ["-sf", str(SCEN / "register.xml"), "-inf", str(pool),
             "-p", str(port), "-r", str(rate), "-rp", "1000", "-m", str(n),
             "-l", str(max(rate * 3, 50)), "-recv_timeout", "4000"],
            timeout_s=secs * 1.5 + 8,
        )
        c1, m1 = ticks_by_pid(pids), machine_ticks(self_too=True)
        d1 = udp_drops()
        return self.judge(
            rate, n, st, wall, secs, proxy.pid, proxy_ticks=delta(c0, c1),
            uac_ticks=ticks, uas_ticks=0, span=wall, machine_busy=m1[0] - m0[0],
            uas_failed=0, uas_retrans=0,
            drops={
                "proxy": d1.get(proxy_port, 0) - d0.get(proxy_port, 0),
                "client": self.sampler.last_drops(port),
            },
        )

    def judge(self, rate, n, st, wall, secs, proxy_pid, *, proxy_ticks, uac_ticks, uas_ticks,
              span, machine_busy, uas_failed, uas_retrans, drops) -> Step:
        success, failed = num(st, "SuccessfulCall(C)"), num(st, "FailedCall(C)")
        retrans = num(st, "Retransmissions(C)")
        reasons = []
        if not st:
            reasons.append("no SIPp statistics")
        if success < n * (1 - FAIL_RATIO):
            reasons.append(f"success {success}/{n}")
        if uas_failed > n * FAIL_RATIO:
            reasons.append(f"UAS failed {uas_failed}")
        gen = generation_s(st, n)
        if gen is None or gen > secs * 1.1 + 1.5:
            made = num(st, "TotalCallCreated")
            reasons.append(f"SIPp did not keep the rate: {made}/{n} started"
                           + (f" in {gen:.0f}s" if gen else "") + f" for {secs:.0f}s of load")
        if retrans + uas_retrans > n * RETRANS_RATIO:
            reasons.append(f"retransmissions {retrans}+{uas_retrans}")
        rows = st.get("_rows", []) if st else []
        per = [num(r, "Retransmissions(P)") for r in rows]
        if len(per) >= 6:
            third = len(per) // 3
            first, last = sum(per[:third]), sum(per[-third:])
            if last > 2 * first + max(3, n * FAIL_RATIO / 3):
                reasons.append(f"retransmissions growing ({first} -> {last} per third)")
        if proxy_pid is not None and not alive(proxy_pid):
            reasons.append("proxy exited")
        failures = {
            k.removesuffix("(C)"): num(st, k)
            for k in (st or {})
            if k.startswith("Failed") and k.endswith("(C)") and num(st, k)
        }
        sec = lambda t: t / CLK_TCK  # noqa: E731
        proxy_ticks, busiest = proxy_ticks
        other = max(sec(machine_busy - proxy_ticks - uac_ticks - uas_ticks), 0.0)
        step = Step(
            rate=rate, planned=n, ok=not reasons, success=success, failed=failed,
            retrans=retrans, uas_failed=uas_failed, uas_retrans=uas_retrans,
            wall_s=round(span, 3), proxy_cpu_s=sec(proxy_ticks),
            proxy_busiest_cpu_s=sec(busiest), uac_cpu_s=sec(uac_ticks),
            uas_cpu_s=sec(uas_ticks), other_cpu_s=round(other, 2),
            reasons=reasons, failures=failures, udp_drops=drops,
        )
        self.log(
            f"    {rate:>6}/s  {'ok  ' if step.ok else 'FAIL'} {success}/{n} ok, "
            f"{failed} failed, retrans {retrans}+{uas_retrans}, {span:.1f}s; CPU % of a core: "
            f"proxy {step.pct(step.proxy_cpu_s)}, SIPp {step.pct(step.uac_cpu_s)}"
            f"+{step.pct(step.uas_cpu_s)}, others {step.pct(step.other_cpu_s)}"
            + ("; UDP drops " + ", ".join(f"{k} {v}" for k, v in drops.items() if v)
               if any(drops.values()) else "")
            + (f"  <- {'; '.join(reasons)}" if reasons else "")
        )
        return step

    def settle(self) -> None:
        """After an overload the proxy still retransmits and times out transactions for a
        while; the next step starts only when it is idle again (or after settle_s)."""
        pids = tree(self.proxy_pid)
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.a.settle_s:
            c0 = cpu_ticks(pids)
            time.sleep(1.0)
            if (cpu_ticks(pids) - c0) / CLK_TCK < 0.03:
                break
        self.log(f"    (settled for {time.monotonic() - t0:.0f}s after the failing step)")

    def ramp(self, label: str, run_step, start: int, cap: int, deadline: float) -> dict:
        """Doubles the rate until a step fails (or the cap), then bisects the gap."""
        self.log(f"{label} ramp from {start}/s (steps of {self.a.step_s}s)")
        steps: list[Step] = []
        good, bad, rate = 0, None, start
        while rate <= cap and time.monotonic() < deadline:
            s = run_step(rate)
            steps.append(s)
            if not s.ok:
                bad = rate
                self.settle()
                break
            good = rate
            rate *= 2
        for _ in range(self.a.bisect):
            if bad is None or time.monotonic() >= deadline:
                break
            mid = (good + bad) // 2
            if bad - mid < max(bad // 20, 10) or mid <= good:
                break
            s = run_step(mid)
            steps.append(s)
            if s.ok:
                good = mid
            else:
                bad = mid
                self.settle()
        first_bad = next((s for s in steps if s.rate == bad), None) if bad else None
        out = {
            "highest_steady": good,
            "first_failing": bad,
            "capped": bad is None and good >= cap // 2,
            "deadline_hit": time.monotonic() >= deadline,
            "steps": [asdict(s) for s in steps],
        }
        if first_bad:
            out["limit_hint"] = limit_hint(asdict(first_bad))
        self.log(f"{label}: highest steady {good}/s" + (f", first failing {bad}/s" if bad else ""))
        return out


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run, under 3 minutes")
    ap.add_argument("--systems", default="permit-proxy,kamailio")
    ap.add_argument("--permit", default=str(ROOT / "target/release/permit-proxy"))
    ap.add_argument("--kamailio", default="kamailio")
    ap.add_argument("--sipp", default="sipp")
    ap.add_argument("--base-port", type=int, default=25060)
    ap.add_argument("--common-cps", type=int)
    ap.add_argument("--out", help="directory for logs and results.json (default: a temp dir)")
    ap.add_argument("--hold-ms", type=int, default=20,
                    help="pause between ACK and BYE (SIPp -d), milliseconds")
    ap.add_argument("--kam-shm", type=int, default=1024, help="kamailio -m (MiB)")
    ap.add_argument("--kam-pkg", type=int, default=16, help="kamailio -M (MiB)")
    ap.add_argument("--gate", action="store_true",
                    help="authentication and the gate instead (gate.py, kamailio-gate.cfg)")
    ap.add_argument("--no-query", action="store_true",
                    help="with --gate: skip permit-proxy with the load query on")
    args = ap.parse_args()
    if args.gate:
        from gate import main_gate
        return main_gate(args, ap)

    if args.quick:
        args.step_s, args.bisect, budget = 3, 0, 170
        args.common_cps = args.common_cps or 200
        args.common_s = 6
        args.call_start, args.call_max = 400, 6400
        args.reg_start, args.reg_max = 1000, 128000
        args.reg_pool, args.prefill_rate = 20000, 5000
        args.settle_s = 5
    else:
        args.step_s, args.bisect, budget = 10, 3, 14 * 60
        args.common_cps = args.common_cps or 300
        args.common_s = 20
        args.call_start, args.call_max = 250, 8000
        args.reg_start, args.reg_max = 1000, 128000
        args.reg_pool, args.prefill_rate = 100000, 5000
        args.settle_s = 30

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for s in systems:
        if s not in ("permit-proxy", "kamailio"):
            ap.error(f"unknown system {s}")
    if "permit-proxy" in systems and not os.access(args.permit, os.X_OK):
        print(f"error: {args.permit} not found; build it with "
              "`cargo build --release -p permit-proxy`", file=sys.stderr)
        return 2
    for tool in ([args.sipp] + ([args.kamailio] if "kamailio" in systems else [])):
        if not shutil.which(tool):
            print(f"error: {tool} not installed", file=sys.stderr)
            return 2

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="permit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    results = {"meta": versions(args), "mode": "quick" if args.quick else "full",
               "command": " ".join([sys.argv[0]] + sys.argv[1:]), "systems": []}
    results["meta"]["settings"] = {
        k: getattr(args, k) for k in
        ("step_s", "bisect", "common_cps", "common_s", "call_start", "call_max",
         "reg_start", "reg_max", "reg_pool", "prefill_rate", "settle_s", "hold_ms", "kam_shm", "kam_pkg")
    }
    print(f"logs: {work}")
    print(json.dumps(results["meta"], indent=1))
    # Each system gets an equal share of the remaining time.
    try:
        for i, name in enumerate(systems):
            left = budget - (time.monotonic() - start)
            bench = Bench(args, work, time.monotonic() + left / (len(systems) - i))
            try:
                results["systems"].append(bench.run_system(name))
            except Exception as e:  # noqa: BLE001 - reported in the table, the run goes on
                print(f"[{name}] ERROR: {e}", file=sys.stderr)
                results["systems"].append({"system": name, "error": str(e)})
            time.sleep(1)
    finally:
        cleanup()
    results["elapsed_s"] = round(time.monotonic() - start, 1)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    text = table(results, args)
    (work / "table.md").write_text(text + "\n")
    print()
    print(text)
    print(f"\nelapsed {results['elapsed_s']}s; results: {work / 'results.json'}")
    return 1 if any("error" in r for r in results["systems"]) else 0


if __name__ == "__main__":
    sys.exit(main())
