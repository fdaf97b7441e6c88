#!/bin/sh
# Side-by-side SIP benchmark of permit-proxy and Kamailio; see README.md.
# Usage: testbeds/bench/run.sh [--quick] [--gate] [--systems permit-proxy,kamailio] [--out DIR]
exec python3 "$(dirname "$0")/run.py" "$@"
