#!/usr/bin/env bash
# Starts permit-proxy (127.0.0.1:5060) and Asterisk (127.0.0.1:5080) on one
# machine with this directory's configuration. Stop both with Ctrl-C.
#
#   testbeds/asterisk/run.sh                   # permit-proxy and asterisk from PATH
#   ASTERISK=/opt/asterisk/sbin/asterisk PROXY=target/debug/permit-proxy testbeds/asterisk/run.sh
#
# RUN (default /tmp/permit-asterisk) receives the proxy's data directory
# (RUN/permit-data, with the users pbx, alice, bob, carol and their lists),
# Asterisk's configuration (RUN/etc: a copy of the .conf files here plus
# asterisk.conf) and Asterisk's logs (RUN/log/full). Asterisk's CLI:
#   asterisk -C RUN/etc/asterisk.conf -r
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
RUN="${RUN:-/tmp/permit-asterisk}"
ASTERISK="${ASTERISK:-$(command -v asterisk || true)}"
PROXY="${PROXY:-$(command -v permit-proxy || true)}"
[ -x "$ASTERISK" ] || { echo "no asterisk: set ASTERISK=/path/to/sbin/asterisk" >&2; exit 1; }
[ -x "$PROXY" ] || { echo "no permit-proxy: set PROXY=/path/to/permit-proxy" >&2; exit 1; }
# Asterisk's modules live next to its sbin/: PREFIX/lib/asterisk/modules (or lib64).
prefix="$(dirname "$(dirname "$ASTERISK")")"
MODULES="${MODULES:-}"
for dir in "$prefix/lib/asterisk/modules" "$prefix/lib64/asterisk/modules" /usr/lib/asterisk/modules; do
  [ -z "$MODULES" ] && [ -d "$dir" ] && MODULES="$dir"
done
[ -n "$MODULES" ] || { echo "no Asterisk modules directory: set MODULES=..." >&2; exit 1; }
# Its data directory (documentation/ in it): PREFIX/var/lib/asterisk.
DATA="${DATA:-}"
for dir in "$prefix/var/lib/asterisk" /var/lib/asterisk /usr/share/asterisk; do
  [ -z "$DATA" ] && [ -d "$dir/documentation" ] && DATA="$dir"
done
[ -n "$DATA" ] || { echo "no Asterisk data directory (with documentation/): set DATA=..." >&2; exit 1; }

mkdir -p "$RUN"/{etc,lib,spool,run,log}
cp "$here"/{pjsip,extensions,modules,rtp,logger}.conf "$RUN/etc/"
sed -e "s|@RUN@|$RUN|g" -e "s|@MODULES@|$MODULES|g" -e "s|@DATA@|$DATA|g" "$here/asterisk.conf.in" > "$RUN/etc/asterisk.conf"

# The proxy side: the trunk's user and the phones, and who may call whom.
data="$RUN/permit-data"
if [ ! -f "$data/permit.sqlite" ]; then
  p() { "$PROXY" --data "$data" --domain localhost "$@" >/dev/null; }
  p user add pbx --password pbx-secret
  p user add alice --password alice-secret
  p user add bob --password bob-secret
  p user add carol --password carol-secret
  p permit add pbx@localhost alice@localhost     # alice may call the PBX
  p permit add pbx@localhost bob@localhost       # bob too
  p permit add alice@localhost pbx@localhost     # the PBX may call alice
  p permit add bob@localhost alice@localhost     # alice may call bob (a transfer target)
  # carol permits nobody: the PBX's call to her gets 403.
fi

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait; }
trap cleanup EXIT INT TERM
"$PROXY" --data "$data" --domain localhost \
  --listen udp:127.0.0.1:5060 --listen tcp:127.0.0.1:5060 run &
pids+=($!)
sleep 1
# -f: stay in the foreground; -n: no colours; -vvv: verbose console log.
"$ASTERISK" -C "$RUN/etc/asterisk.conf" -f -n -vvv &
pids+=($!)
echo "permit-proxy pid ${pids[0]}, asterisk pid ${pids[1]}; CLI: $ASTERISK -C $RUN/etc/asterisk.conf -r"
wait
