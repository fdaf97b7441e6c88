#!/bin/sh
# Goodput at 3x offered overload, permit-proxy beside Kamailio (pike + ratelimit); see
# README.md "Overload". Needs root (a CPU-capped cgroup per proxy).
# Usage: testbeds/bench/overload.sh [--systems permit-proxy,kamailio] [--permit BIN] [--out DIR]
exec python3 "$(dirname "$0")/overload.py" "$@"
