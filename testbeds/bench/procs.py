"""Processes of the benchmark: start, account (CPU, memory, UDP drops) and stop by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")

_children: list[subprocess.Popen] = []


def spawn(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:
        p = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    _children.append(p)
    return p


def proc_children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(root: int) -> list[int]:
    """root and all its descendants (Kamailio forks its workers from the main process)."""
    kids = proc_children()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(f[11]) + int(f[12])  # utime, stime (fields 14 and 15)
    return total


def ticks_by_pid(pids: list[int]) -> dict[int, int]:
    return {pid: cpu_ticks([pid]) for pid in pids}


def delta(before: dict[int, int], after: dict[int, int]) -> tuple[int, int]:
    """(total, busiest single process) CPU ticks between two ticks_by_pid snapshots."""
    d = [after[p] - before.get(p, 0) for p in after]
    return sum(d), max(d, default=0)


def machine_ticks(self_too: bool = False) -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat; with self_too the
    harness's own CPU is left out of busy (it is not load on the systems under test)."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + f[4]
    busy = sum(f[:8]) - idle
    if self_too:
        busy -= cpu_ticks([os.getpid()])
    return busy, sum(f[:8])


def rss_kib(pids: list[int]) -> tuple[int, int]:
    """(sum VmRSS, max VmHWM) in KiB over pids, from /proc/PID/status: cheap, no page walk."""
    rss = hwm = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = max(hwm, int(line.split()[1]))
        except OSError:
            continue
    return rss, hwm


def pss_kib(pids: list[int]) -> int:
    """Sum of PSS in KiB (shared pages split between the processes that map them).

    Read once per phase, not sampled: smaps_rollup walks the page tables under the
    process's mmap lock."""
    pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return pss


def stop(p: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM by PID, then SIGKILL; descendants that outlive the parent are killed by PID."""
    if p.poll() is None:
        family = tree(p.pid)
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(2)
        for pid in family[1:]:
            kill_pid(pid)
    if p in _children:
        _children.remove(p)


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, 0)
    except OSError:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def cleanup() -> None:
    for p in list(_children):
        try:
            stop(p, grace=2.0)
        except Exception:  # noqa: BLE001 - best effort on the way out
            kill_pid(p.pid)


def on_signal(signum, _frame):
    cleanup()
    sys.exit(128 + signum)


def udp_drops() -> dict[int, int]:
    """Datagrams the kernel dropped per local 127.0.0.1 UDP port (full receive buffer)."""
    out: dict[int, int] = {}
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        f = line.split()
        ip, port = f[1].split(":")
        if ip == "0100007F":
            out[int(port, 16)] = out.get(int(port, 16), 0) + int(f[-1])
    return out


class MemSampler(threading.Thread):
    """Samples the proxy's RSS and the UDP drop counters twice a second."""

    def __init__(self, root_pid: int):
        super().__init__(daemon=True)
        self.root = root_pid
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.run_peak_rss = 0
        self.phase_peak_rss = 0
        self.drops_seen: dict[int, int] = {}

    def run(self):
        while not self.halt.is_set():
            rss, _ = rss_kib(tree(self.root))
            drops = udp_drops()
            with self.lock:
                self.drops_seen.update(drops)
                self.run_peak_rss = max(self.run_peak_rss, rss)
                self.phase_peak_rss = max(self.phase_peak_rss, rss)
            self.halt.wait(0.5)

    def new_phase(self) -> None:
        with self.lock:
            self.phase_peak_rss = 0

    def phase_rss(self) -> int:
        with self.lock:
            return self.phase_peak_rss

    def forget_drops(self, port: int) -> None:
        """The next SIPp client binds this port anew: its counter starts again at 0."""
        with self.lock:
            self.drops_seen.pop(port, None)

    def last_drops(self, port: int) -> int:
        with self.lock:
            return self.drops_seen.get(port, 0)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def reap(p: subprocess.Popen, timeout: float) -> int | None:
    """Waits for p; returns the CPU ticks it used (from wait4's rusage), None on timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            if p in _children:
                _children.remove(p)
            return round((ru.ru_utime + ru.ru_stime) * CLK_TCK)
        time.sleep(0.05)
    return None


def port_free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def pick_ports(base: int, n: int) -> list[int]:
    ports, p = [], base
    while len(ports) < n:
        if p > base + 2000:
            raise RuntimeError(f"no {n} free loopback ports from {base}")
        if port_free(p):
            ports.append(p)
        p += 1
    return ports
