#!/usr/bin/env bash
# Media relay benchmark on loopback: permit-proxy's relay beside rtpengine (userspace
# forwarding, one worker thread), and the direct path as the floor, in one run.
#
#   cargo build --release -p permit-proxy --example relay_bench
#   testbeds/bench/relay/run.sh [--secs 5] [--sizes 172,1200] [--loads 25000,50000,...] [--rounds 2] [--out DIR]
#
# Needs rtpengine (Debian package rtpengine-daemon; it is started here, not as a
# service). Every process it starts is stopped by PID on exit. Each round runs the
# direct path, then permit and rtpengine (their order swapped every other round).
# Results: one JSON line per phase in DIR/results.jsonl and Markdown tables of the
# medians over the rounds on stdout (docs/benchmarks.md).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
bench=$target/release/examples/relay_bench
secs=5
sizes=172,1200
loads=25000,50000,75000,100000,125000,150000,200000
rounds=2
out=
while [ $# -gt 0 ]; do
    case $1 in
        --secs) secs=$2; shift 2 ;;
        --sizes) sizes=$2; shift 2 ;;
        --loads) loads=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -x "$bench" ] || { echo "build it first: cargo build --release -p permit-proxy --example relay_bench" >&2; exit 2; }
command -v rtpengine >/dev/null || { echo "rtpengine missing: apt-get install rtpengine-daemon" >&2; exit 2; }
out=${out:-$(mktemp -d /tmp/relay-bench.XXXXXX)}
mkdir -p "$out"
echo "results in $out" >&2

rtpe_pid=
stop() {
    if [ -n "$rtpe_pid" ] && kill -0 "$rtpe_pid" 2>/dev/null; then
        kill -TERM "$rtpe_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$rtpe_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$rtpe_pid" 2>/dev/null || true
    fi
    rtpe_pid=
}
trap stop EXIT INT TERM

start_rtpengine() {
    # Userspace forwarding (--table=-1: no kernel module), one worker thread, like the
    # permit relay's one thread; control (ng) and CLI on loopback ports of our own.
    rtpengine --foreground --table=-1 --num-threads=1 --interface=127.0.0.1 \
        --listen-ng=127.0.0.1:22230 --listen-cli=127.0.0.1:22231 \
        --port-min=43000 --port-max=43999 --log-level=4 --log-stderr \
        >"$out/rtpengine.log" 2>&1 &
    rtpe_pid=$!
    for _ in $(seq 50); do
        if python3 - <<'PY' 2>/dev/null; then return 0; fi
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2)
s.sendto(b"p1 d7:command4:pinge", ("127.0.0.1", 22230))
assert b"pong" in s.recv(1000)
PY
        sleep 0.1
    done
    echo "rtpengine did not answer ping" >&2; cat "$out/rtpengine.log" >&2; exit 1
}

{
    echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) cpus"
    echo "# $(rtpengine --version 2>&1 | head -1)"
    echo "# permit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "(no git)")"
} >"$out/versions.txt"

: >"$out/results.jsonl"
IFS=, read -r -a size_list <<<"$sizes"
run_permit() {
    "$bench" permit --ports 45000 "${common[@]}" >>"$out/results.jsonl" 2>>"$out/permit.log"
}
run_rtpengine() {
    start_rtpengine
    "$bench" rtpengine --ng 127.0.0.1:22230 --pid "$rtpe_pid" "${common[@]}" >>"$out/results.jsonl"
    stop
}
for round in $(seq "$rounds"); do
    for size in "${size_list[@]}"; do
        common=(--secs "$secs" --size "$size" --loads "$loads" --streams 8)
        echo "round $round, $size-byte packets" >&2
        "$bench" direct "${common[@]}" >>"$out/results.jsonl"
        if [ $((round % 2)) -eq 1 ]; then run_permit; run_rtpengine; else run_rtpengine; run_permit; fi
    done
done
cat "$out/versions.txt"
python3 "$here/report.py" "$out/results.jsonl"
