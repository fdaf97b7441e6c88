#!/usr/bin/env python3
"""Talk to a running baresip through its ctrl_tcp module.

ctrl_tcp speaks netstrings (``LEN:PAYLOAD,``) carrying JSON. A command is
``{"command": NAME, "params": TEXT, "token": ID}`` and gets a response with
the same token; events (``REGISTER_OK``, ``CALL_INCOMING``,
``CALL_ESTABLISHED``, ``CALL_CLOSED``, ...) arrive at any time on every
connected client.

    ctrl.py PORT [--wait SECS] [--until EVENT] ['COMMAND [PARAMS]']...

Each argument is one command, its name and parameters split at the first
space, sent in turn; every message received is printed as one JSON
line. The script returns after --wait seconds (default 3) or as soon as an
event of type --until arrives (exit status 0), or 1 if --until never came.

Examples:
    ctrl.py 5071 'uanew <sip:alice@localhost>;outbound="sip:127.0.0.1:5060";answermode=auto'
    ctrl.py 5171 --until CALL_ESTABLISHED 'dial sip:alice@localhost'
    ctrl.py 5171 hangup
"""
import argparse
import json
import socket
import sys
import time

def netstring(payload: bytes) -> bytes:
    return str(len(payload)).encode() + b":" + payload + b","


def split_netstrings(buf: bytes):
    """Yields complete payloads from buf; returns the unconsumed rest."""
    out = []
    while True:
        colon = buf.find(b":")
        if colon < 0 or not buf[:colon].isdigit():
            break
        size = int(buf[:colon])
        end = colon + 1 + size
        if len(buf) <= end:
            break
        out.append(buf[colon + 1:end])
        buf = buf[end + 1:]
    return out, buf


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--wait", type=float, default=3.0)
    parser.add_argument("--until")
    parser.add_argument("commands", nargs="*", metavar="'COMMAND [PARAMS]'")
    args = parser.parse_intermixed_args()
    commands = [(c.partition(" ")[0], c.partition(" ")[2]) for c in args.commands]

    sock = socket.create_connection(("127.0.0.1", args.port), timeout=5)
    sock.settimeout(0.1)
    for n, (name, params) in enumerate(commands):
        msg = {"command": name, "params": params, "token": f"ctrl{n}"}
        sock.sendall(netstring(json.dumps(msg).encode()))

    buf, deadline = b"", time.monotonic() + args.wait
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        messages, buf = split_netstrings(buf + chunk)
        for payload in messages:
            message = json.loads(payload)
            print(json.dumps(message), flush=True)
            if args.until and message.get("type") == args.until:
                return 0
    return 1 if args.until else 0


if __name__ == "__main__":
    sys.exit(main())
