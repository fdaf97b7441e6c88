"""Gate mode of the benchmark (`run.sh --gate`): authenticated calls with the gate off
and on, and refused callers, for permit-proxy and Kamailio (kamailio-gate.cfg).

Per system, one proxy instance per variant, one after the other:

- ``auth``: digest authentication on, gate off (permit-proxy ``--no-gate``; Kamailio
  without ``WITH_GATE``); permitted caller alice -> uas1.
- ``gate``: the gate on (permit-proxy ``[gate] load_query = false``; Kamailio
  ``-A WITH_GATE``, htable allow-list); alice is on uas1's list, mallory is not. Measures
  alice's calls and mallory's refusals (INVITE, 407, ACK, INVITE+auth, 403, ACK).
- ``gate_query`` (permit-proxy only, not in --quick): the gate with its load query
  (OPTIONS to the callee before each permitted INVITE), the proxy's default.

Each measurement: a common offered load (CPU seconds per 1,000 calls) and a ramp to the
highest steady rate, with the judging of run.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from gate_report import gate_table
from procs import MemSampler, cleanup, on_signal, pick_ports, spawn, stop, tree
from report import versions
from run import HERE, SCEN, Bench
from sippstats import num, read_stats

DOMAIN = "localhost"
USERS = {"uas1": "uas1-bench-pw", "alice": "alice-bench-pw", "mallory": "mallory-bench-pw"}
PERMITS = [("uas1@localhost", "alice@localhost")]  # callee, caller


@dataclass
class Variant:
    key: str
    gate: bool
    load_query: bool
    refused: bool  # also measure refused callers on this instance

    @property
    def units(self) -> int:  # share of the time budget
        return 2 if self.refused else 1


def variants_for(system: str, args) -> list[Variant]:
    out = [Variant("auth", False, False, False), Variant("gate", True, False, True)]
    if system == "permit-proxy" and not args.quick and not args.no_query:
        out.append(Variant("gate_query", True, True, False))
    return out


def caller_args(caller: str, scenario: str) -> list[str]:
    return ["-sf", str(SCEN / scenario), "-s", "uas1", "-au", caller, "-ap", USERS[caller],
            "-auth_uri", f"uas1@{DOMAIN}", "-key", "caller", caller]


class GateBench(Bench):
    def run_system(self, name: str) -> dict:
        res: dict = {"system": name, "variants": {}}
        todo = variants_for(name, self.a)
        for i, v in enumerate(todo):
            left = sum(x.units for x in todo[i:])
            now = time.monotonic()
            end = now + (self.deadline - now) * v.units / left
            try:
                res["variants"][v.key] = self.run_variant(name, v, end)
            except Exception as e:  # noqa: BLE001 - reported in the table, the run goes on
                print(f"[{name}/{v.key}] ERROR: {e}", file=sys.stderr)
                res["variants"][v.key] = {"error": str(e)}
            time.sleep(1)
        return res

    def run_variant(self, name: str, v: Variant, deadline: float) -> dict:
        proxy_port, uas_port, uac_port, reg_port = pick_ports(self.a.base_port, 4)
        sysdir = self.sysdir = self.work / f"{name}-{v.key}"
        sysdir.mkdir()
        out: dict = {"variant": asdict(v)}
        proxy = self.start_gate_proxy(name, v, proxy_port, sysdir)
        self.proxy_pid = proxy.pid
        uas = None
        sampler = self.sampler = MemSampler(proxy.pid)
        try:
            target = f"127.0.0.1:{proxy_port}"
            if not self.register_uas(target, uas_port):
                raise RuntimeError(f"{name}: uas1 not registered within 15 s; see {sysdir}")
            out["processes"] = len(tree(proxy.pid))
            sampler.start()
            uas_stats = sysdir / "uas.csv"
            uas_scen = "uas_options.xml" if v.load_query else "uas.xml"
            uas = spawn(
                [self.a.sipp, "-sf", str(SCEN / uas_scen), "-s", "uas1", "-p", str(uas_port),
                 "-i", "127.0.0.1", "-nostdin", "-trace_stat", "-stf", str(uas_stats),
                 "-fd", "1", "-trace_err", "-error_file", str(sysdir / "uas.err"),
                 "-buff_size", "4194304", "-recv_timeout", "4000"],
                sysdir / "uas.out",
            )
            time.sleep(0.5)
            ctx = (proxy, uas, uas_stats, target, uac_port, proxy_port, uas_port)
            # Refusals first: an overloaded call ramp can leave a proxy without memory
            # (Kamailio's tm keeps unanswered transactions for fr_inv_timer) or stopped.
            kinds = [("calls", caller_args("alice", "uac_auth.xml"), self.a.call_start)]
            if v.refused:
                kinds.insert(0, ("refused", caller_args("mallory", "uac_refused.xml"),
                                 self.a.refused_start))
            tag = f"[{name}/{v.key}]"
            for kind, scen, _ in kinds:
                s = self.call_step(ctx, self.a.common_cps, self.a.common_s, scen, kind)
                out[f"{kind}_common"] = asdict(s) | {
                    "cps": self.a.common_cps,
                    "proxy_cpu_pct": s.pct(s.proxy_cpu_s),
                    "other_cpu_pct": s.pct(s.other_cpu_s),
                    "cpu_s_per_1000": s.proxy_cpu_s / max(s.success, 1) * 1000,
                    "sipp_cpu_s_per_1000": (s.uac_cpu_s + s.uas_cpu_s) / max(s.success, 1) * 1000,
                }
                self.log(f"{tag} {kind} at {self.a.common_cps}/s x {self.a.common_s}s: "
                         f"{s.success} ok, {s.failed} failed, proxy CPU {s.proxy_cpu_s:.2f}s -> "
                         f"{out[f'{kind}_common']['cpu_s_per_1000']:.3f} s/1000")
            for i, (kind, scen, start) in enumerate(kinds):
                now = time.monotonic()
                end = now + (deadline - now) / (len(kinds) - i)
                out[kind] = self.ramp(
                    f"{tag} {kind}",
                    lambda r, scen=scen, kind=kind: self.call_step(ctx, r, self.a.step_s, scen, kind),
                    start, self.a.call_max, end,
                )
            out["uas_calls"] = num(read_stats(uas_stats), "SuccessfulCall(C)")
        finally:
            sampler.halt.set()
            if uas is not None:
                stop(uas)
            stop(proxy, grace=8.0)
        out["exit_code"] = proxy.returncode
        return out

    # ------------------------------------------------------------------ proxies

    def start_gate_proxy(self, name: str, v: Variant, port: int, sysdir: Path):
        env = None
        if name == "kamailio":
            db = sysdir / "db"
            write_kamailio_db(db)
            rundir = sysdir / "run"
            rundir.mkdir()
            args = [
                self.a.kamailio, "-DD", "-E", "-f", str(HERE / "kamailio-gate.cfg"),
                "-A", f'DBURL="text://{db}"',
            ] + (["-A", "WITH_GATE"] if v.gate else []) + [
                "-l", f"udp:127.0.0.1:{port}",
                "-m", str(self.a.kam_shm), "-M", str(self.a.kam_pkg),
                "-Y", str(rundir), "-P", str(rundir / "kamailio.pid"), "-w", str(rundir),
            ]
        else:
            data = sysdir / "data"
            data.mkdir()
            base = [self.a.permit, "--data", str(data), "--domain", DOMAIN]
            for user, pw in USERS.items():
                self.cli(base + ["user", "add", user, "--password", pw], sysdir)
            for callee, caller in PERMITS:
                self.cli(base + ["permit", "add", callee, caller], sysdir)
            conf = sysdir / "permit.toml"
            conf.write_text(f"[gate]\nload_query = {'true' if v.load_query else 'false'}\n")
            args = [
                self.a.permit, "run", "--config", str(conf),
                "--listen", f"udp:127.0.0.1:{port}", "--listen", f"tcp:127.0.0.1:{port}",
                "--data", str(data), "--domain", DOMAIN,
            ] + ([] if v.gate else ["--no-gate"])
            level = os.environ.get("BENCH_PERMIT_LOG", "warn")
            env = dict(os.environ, PERMIT_LOG=level, RUST_LOG=level)
        self.log(f"[{name}/{v.key}] start: {' '.join(args)}")
        return spawn(args, sysdir / f"{name}.log", env=env)

    def cli(self, args: list[str], sysdir: Path) -> None:
        r = subprocess.run(args, capture_output=True, text=True, timeout=30)
        with open(sysdir / "setup.log", "a") as f:
            f.write(f"$ {' '.join(args)}\n{r.stdout}{r.stderr}")
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(args[-4:])} exited {r.returncode}: {r.stderr.strip()}")

    def register_uas(self, target: str, uas_port: int) -> bool:
        """Registers uas1 with digest (Contact = the UAS port); retried until the proxy answers."""
        end = time.monotonic() + 15
        while time.monotonic() < end:
            rc, st, _, _ = self.sipp(
                "register-uas", target,
                ["-sf", str(SCEN / "register_auth.xml"), "-inf", str(self.users_file(["uas1"])),
                 "-au", "uas1", "-ap", USERS["uas1"], "-auth_uri", DOMAIN,
                 "-p", str(uas_port), "-m", "1", "-recv_timeout", "1000"],
                timeout_s=3,
            )
            if rc == 0 and num(st, "SuccessfulCall(C)") == 1:
                return True
            time.sleep(0.5)
        return False


def write_kamailio_db(db: Path) -> None:
    """db_text tables: subscriber (HA1 = MD5(user:realm:password), RFC 2617 3.2.2.2; the
    password and ha1b columns, unused with calculate_ha1 = 0, hold "-": db_text refuses
    empty values),
    htable (the allow-list, key "CALLEE,CALLER", value 1) and their schema versions."""
    db.mkdir()
    rows = [
        f"{i}:{u}:{DOMAIN}:-:{hashlib.md5(f'{u}:{DOMAIN}:{pw}'.encode()).hexdigest()}:-"
        for i, (u, pw) in enumerate(USERS.items(), 1)
    ]
    (db / "subscriber").write_text(
        "id(int,auto) username(string) domain(string) password(string) ha1(string) "
        "ha1b(string) \n" + "\n".join(rows) + "\n")
    rows = [f"{i}:{callee},{caller}:0:0:1:0" for i, (callee, caller) in enumerate(PERMITS, 1)]
    (db / "htable").write_text(
        "id(int,auto) key_name(string) key_type(int) value_type(int) key_value(string) "
        "expires(int) \n" + "\n".join(rows) + "\n")
    (db / "version").write_text(
        "id(int,auto) table_name(string) table_version(int) \n1:subscriber:7\n2:htable:2\n")


def main_gate(args, ap) -> int:
    if args.quick:
        args.step_s, args.bisect, budget = 3, 0, 165
        args.common_cps = args.common_cps or 200
        args.common_s = 5
        args.call_start, args.refused_start, args.call_max = 400, 400, 6400
        args.settle_s = 5
    else:
        args.step_s, args.bisect, budget = 8, 2, 14 * 60
        args.common_cps = args.common_cps or 300
        args.common_s = 15
        args.call_start, args.refused_start, args.call_max = 500, 500, 16000
        args.settle_s = 20
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

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="permit-bench-gate-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    results = {"meta": versions(args), "mode": ("quick" if args.quick else "full") + " gate",
               "command": " ".join([sys.argv[0]] + sys.argv[1:]), "systems": []}
    results["meta"]["settings"] = {
        k: getattr(args, k) for k in
        ("step_s", "bisect", "common_cps", "common_s", "call_start", "refused_start",
         "call_max", "settle_s", "hold_ms", "kam_shm", "kam_pkg")
    }
    print(f"logs: {work}")
    print(json.dumps(results["meta"], indent=1))
    units = {s: sum(v.units for v in variants_for(s, args)) for s in systems}
    try:
        for i, name in enumerate(systems):
            left = budget - (time.monotonic() - start)
            share = units[name] / sum(units[s] for s in systems[i:])
            bench = GateBench(args, work, time.monotonic() + left * share)
            results["systems"].append(bench.run_system(name))
    finally:
        cleanup()
    results["elapsed_s"] = round(time.monotonic() - start, 1)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    text = gate_table(results, args)
    (work / "table.md").write_text(text + "\n")
    print()
    print(text)
    print(f"\nelapsed {results['elapsed_s']}s; results: {work / 'results.json'}")
    bad = any("error" in v for r in results["systems"] for v in r["variants"].values())
    return 1 if bad else 0
