#!/usr/bin/env bash
# Starts one baresip UA for manual tests against permit-proxy.
#
#   run.sh DIR SIP_PORT CTRL_PORT [CAFILE]
#
# Writes DIR/config from config.template (SIP on 127.0.0.1:SIP_PORT for UDP
# and TCP, TLS on SIP_PORT+1, ctrl_tcp on 127.0.0.1:CTRL_PORT; CAFILE names
# the CA for TLS), an empty DIR/accounts, and runs baresip in the foreground
# with the SIP trace on (-s). Add an account and drive it with ctrl.py:
#
#   ctrl.py CTRL_PORT 'uanew <sip:alice@localhost>;auth_pass=secret;outbound="sip:127.0.0.1:5060;transport=udp";regint=600;answermode=auto'
#
# CTRL_PORT must not be SIP_PORT + 1.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ $# -ge 3 ] || { sed -n '2,13p' "$0" >&2; exit 2; }
dir="$1" sip="$2" ctrl="$3" cafile="${4:-}"
[ "$ctrl" != "$((sip + 1))" ] || { echo "CTRL_PORT must not be SIP_PORT + 1 (baresip's TLS port)" >&2; exit 2; }
tls=""
[ -z "$cafile" ] || tls="sip_cafile		$cafile"
mkdir -p "$dir"
sed -e "s/@SIP_PORT@/$sip/g" -e "s/@CTRL_PORT@/$ctrl/g" -e "s|@TLS@|$tls|g" \
  "$here/config.template" >"$dir/config"
: >"$dir/accounts"
exec baresip -f "$dir" -s
