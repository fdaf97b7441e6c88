#!/usr/bin/env python3
"""One PJSIP user agent (pjsua2) against permit-proxy, for scripted tests.

Registers an account through the proxy, and optionally answers calls or
places one, then exits. What happens is printed to stdout, one line each,
flushed at once, so a test can follow it while the script runs:

    REGISTER <code> <reason>        every final answer to a REGISTER
    REGISTERED                      the first 2xx with a binding
    UNREGISTER <code> <reason>      the answer to the REGISTER with
                                    Expires: 0 sent before a clean exit
    INCOMING <remote URI>           a call arrived (--answer)
    CALL <state> <code> <reason>    call state changes: CALLING, EARLY,
                                    CONNECTING, CONFIRMED, DISCONNECTED
    MEDIA <status>                  the audio stream's state after each
                                    offer/answer: ACTIVE, LOCAL_HOLD,
                                    REMOTE_HOLD, NONE, ERROR
    TSX <UAC|UAS> <method> <code> <state>
                                    a final answer in a transaction of the
                                    call (sent as UAS, received as UAC)
    DONE ok | DONE fail <why>       the end; exit status 0 or 1

Exit status: 0 when everything asked for happened (registration if asked,
the call confirmed and ended if --call or --answer), 1 when something was
refused, 3 at the --timeout deadline, 2 for usage errors.

The full PJSIP log with every SIP message goes to --log (default: none).

Examples:
    pjsua_ua.py --proxy 127.0.0.1:5060 --user alice --password s3cret
    pjsua_ua.py --proxy 127.0.0.1:5060 --transport tcp --user alice --answer
    pjsua_ua.py --proxy 127.0.0.1:5060 --user bob --call alice --talk 1
    pjsua_ua.py --proxy 127.0.0.1:5061 --transport tls --user alice --password s3cret
    pjsua_ua.py --proxy 127.0.0.1:5060 --user bob --call alice --hold --update
"""
import argparse
import os
import sys
import time

import pjsua2 as pj

TRANSPORTS = {
    "udp": pj.PJSIP_TRANSPORT_UDP,
    "tcp": pj.PJSIP_TRANSPORT_TCP,
    "tls": pj.PJSIP_TRANSPORT_TLS,
}


MEDIA_STATUS = {
    pj.PJSUA_CALL_MEDIA_NONE: "NONE",
    pj.PJSUA_CALL_MEDIA_ACTIVE: "ACTIVE",
    pj.PJSUA_CALL_MEDIA_LOCAL_HOLD: "LOCAL_HOLD",
    pj.PJSUA_CALL_MEDIA_REMOTE_HOLD: "REMOTE_HOLD",
    pj.PJSUA_CALL_MEDIA_ERROR: "ERROR",
}

TSX_DONE = {
    pj.PJSIP_TSX_STATE_COMPLETED: "COMPLETED",
    pj.PJSIP_TSX_STATE_TERMINATED: "TERMINATED",
}


def say(*words):
    print(*words, flush=True)


def finish(status, why=""):
    """Prints DONE and leaves at once: no un-REGISTER, no destructors (pjsua2
    objects torn down by the Python GC after libDestroy can crash)."""
    say("DONE", "ok" if status == 0 else f"fail {why}".strip())
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


class LogFile(pj.LogWriter):
    """PJSIP's log into a file flushed line by line, so that nothing is lost
    when finish() leaves without tearing the library down."""

    def __init__(self, path):
        super().__init__()
        self.file = open(path, "w", buffering=1, encoding="utf-8", errors="replace")

    def write(self, entry):
        self.file.write(entry.msg if entry.msg.endswith("\n") else entry.msg + "\n")


class State:
    """What the callbacks saw; the main loop decides on it."""

    def __init__(self):
        self.registered = False
        self.register_final = None  # (code, reason) of the latest final answer
        self.unregistering = False
        self.calls = []  # live Call objects (kept referenced)
        self.confirmed = False
        self.disconnected = None  # (code, reason) once the call ended
        self.media = None  # the audio stream's latest MEDIA status
        self.updated = None  # final status of our UPDATE (--update)


class Call(pj.Call):
    def __init__(self, account, state, call_id=pj.PJSUA_INVALID_ID):
        super().__init__(account, call_id)
        self.state = state

    def onCallState(self, prm):
        info = self.getInfo()
        name = info.stateText.upper()
        say("CALL", name, info.lastStatusCode, info.lastReason or "-")
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED:
            self.state.confirmed = True
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.state.disconnected = (info.lastStatusCode, info.lastReason)

    def watch_media(self):
        """Prints MEDIA when the audio stream's state changed (polled from the
        main loop, after the events of each round)."""
        try:
            # Keep the CallInfo referenced: its media vector lives in it.
            info = self.getInfo()
            media = [m for m in info.media if m.type == pj.PJMEDIA_TYPE_AUDIO]
        except pj.Error:
            return
        if media:
            name = MEDIA_STATUS.get(media[0].status, str(media[0].status))
            if name != self.state.media:
                say("MEDIA", name)
                self.state.media = name

    def onCallMediaState(self, prm):
        # Also sampled here: a hold and its resume can both arrive within one
        # round of the main loop, and polling alone would miss the hold.
        if not self.state.disconnected:
            self.watch_media()

    def onCallTsxState(self, prm):
        if prm.e.type != pj.PJSIP_EVENT_TSX_STATE:
            return
        tsx = prm.e.body.tsxState.tsx
        if tsx.statusCode < 200 or tsx.state not in TSX_DONE:
            return
        role = "UAC" if tsx.role == pj.PJSIP_ROLE_UAC else "UAS"
        say("TSX", role, tsx.method, tsx.statusCode, TSX_DONE[tsx.state])
        if role == "UAC" and tsx.method == "UPDATE":
            self.state.updated = tsx.statusCode


class Account(pj.Account):
    def __init__(self, state, answer):
        super().__init__()
        self.state = state
        self.answer = answer

    def onRegState(self, prm):
        if prm.code < 200:
            return
        say("UNREGISTER" if self.state.unregistering else "REGISTER", prm.code, prm.reason or "-")
        self.state.register_final = (prm.code, prm.reason)
        if 200 <= prm.code < 300 and prm.expiration > 0 and not self.state.registered:
            self.state.registered = True
            say("REGISTERED")

    def onIncomingCall(self, prm):
        call = Call(self, self.state, prm.callId)
        self.state.calls.append(call)
        say("INCOMING", call.getInfo().remoteUri)
        op = pj.CallOpParam()
        op.statusCode = 180
        call.answer(op)
        if self.answer:
            op = pj.CallOpParam()
            op.statusCode = 200
            call.answer(op)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--proxy", required=True, help="IP:PORT of permit-proxy")
    p.add_argument("--transport", choices=TRANSPORTS, default="udp")
    p.add_argument("--domain", default="localhost")
    p.add_argument("--user", required=True)
    p.add_argument("--password", help="digest password (none: no credentials)")
    p.add_argument("--no-register", action="store_true", help="do not REGISTER")
    p.add_argument("--answer", action="store_true", help="answer one call with 200, wait for its end")
    p.add_argument("--call", metavar="USER", help="call sip:USER@DOMAIN")
    p.add_argument("--talk", type=float, default=1.0, help="seconds before hanging up (--call)")
    p.add_argument("--hold", action="store_true",
                   help="once the call is confirmed, put it on hold and resume it (two re-INVITEs)")
    p.add_argument("--update", action="store_true",
                   help="once the call is confirmed (and resumed), send an UPDATE (RFC 3311) with an offer")
    p.add_argument("--srtp", action="store_true",
                   help="optional SDES-SRTP (RFC 4568): offer a=crypto under RTP/AVP, answer it, on any transport")
    p.add_argument("--timeout", type=float, default=30.0, help="overall deadline in seconds")
    p.add_argument("--log", help="PJSIP log file with the SIP messages")
    return p.parse_args()


def endpoint(args, keep):
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0  # callbacks run inside libHandleEvents, on this thread
    cfg.uaConfig.mainThreadOnly = False
    cfg.uaConfig.userAgent = f"pjsua2 {ep.libVersion().full} (permit testbed)"
    # The writer takes what would go to the console: consoleLevel governs it.
    cfg.logConfig.level = cfg.logConfig.consoleLevel = 5 if args.log else 0
    cfg.logConfig.msgLogging = bool(args.log)
    if args.log:
        writer = LogFile(args.log)
        keep.append(writer)  # PJSIP holds no Python reference
        cfg.logConfig.writer = writer
    cfg.medConfig.noVad = True
    ep.libInit(cfg)
    ep.audDevManager().setNullDev()  # no sound device needed

    tcfg = pj.TransportConfig()
    tcfg.port = 0
    tcfg.boundAddress = "127.0.0.1"
    if args.transport == "tls":
        tcfg.tlsConfig.verifyServer = False  # the proxy's certificate is self-signed
        tcfg.tlsConfig.method = pj.PJSIP_TLSV1_2_METHOD
    ep.transportCreate(TRANSPORTS[args.transport], tcfg)
    ep.libStart()
    return ep


def account(args, state):
    host, port = args.proxy.rsplit(":", 1)
    route = f"sip:{host}:{port};transport={args.transport};lr"
    cfg = pj.AccountConfig()
    cfg.idUri = f"sip:{args.user}@{args.domain}"
    cfg.regConfig.registrarUri = f"sip:{args.domain};transport={args.transport}"
    cfg.regConfig.registerOnAdd = not args.no_register
    cfg.regConfig.timeoutSec = 600
    cfg.regConfig.retryIntervalSec = 0  # no automatic retry after a failure
    cfg.sipConfig.proxies.append(route)
    if args.password is not None:
        # A plain-text password: PJSIP 2.15 derives HA1 for whichever
        # algorithm it answers (MD5, SHA-256). An HA1 credential with
        # algoType set does not work through the pjsua2 2.15.1 wheel: the
        # algorithm type is lost and the HA1 taken for MD5.
        cred = pj.AuthCredInfo("digest", "*", args.user, pj.PJSIP_CRED_DATA_PLAIN_PASSWD, args.password)
        cfg.sipConfig.authCreds.append(cred)
    cfg.natConfig.contactRewriteUse = 0
    cfg.natConfig.viaRewriteUse = 0
    cfg.natConfig.sdpNatRewriteUse = 0
    cfg.natConfig.sipOutboundUse = 0
    cfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    if args.srtp:
        cfg.mediaConfig.srtpUse = pj.PJMEDIA_SRTP_OPTIONAL
        cfg.mediaConfig.srtpSecureSignaling = 0  # also over UDP (labs)
    acc = Account(state, args.answer)
    acc.create(cfg)
    return acc


def main():
    args = parse_args()
    state = State()
    keep = []
    ep = endpoint(args, keep)
    acc = account(args, state)
    deadline = time.monotonic() + args.timeout

    def pump(until, limit=None):
        """Handles events until until() holds; False at the deadline
        (--timeout, or limit seconds from now)."""
        end = deadline if limit is None else time.monotonic() + limit
        while not until():
            if time.monotonic() > end:
                return False
            ep.libHandleEvents(20)
            for call in state.calls:
                if not state.disconnected:
                    call.watch_media()
        return True

    def done(status, why=""):
        """Removes the binding (RFC 3261 10.2.2), so that a later run does
        not find a stale contact, then finishes."""
        if state.registered:
            state.unregistering = True
            state.register_final = None
            acc.setRegistration(False)
            pump(lambda: state.register_final is not None, limit=3)
        finish(status, why)

    def modify(call):
        """--hold and --update on the confirmed call: hold, resume, UPDATE."""
        if args.hold:
            call.setHold(pj.CallOpParam(True))
            if not pump(lambda: state.media == "LOCAL_HOLD" or state.disconnected):
                done(3, "timeout waiting for the hold")
            # Stay on hold a moment, so that the other side sees it too.
            hold_end = time.monotonic() + 0.5
            pump(lambda: time.monotonic() > hold_end or state.disconnected)
            op = pj.CallOpParam(True)
            op.opt.flag = pj.PJSUA_CALL_UNHOLD
            call.reinvite(op)
            if not pump(lambda: state.media == "ACTIVE" or state.disconnected):
                done(3, "timeout waiting for the resume")
        if args.update and not state.disconnected:
            call.update(pj.CallOpParam(True))
            if not pump(lambda: state.updated is not None or state.disconnected):
                done(3, "timeout waiting for the answer to UPDATE")
            if state.updated is not None and not 200 <= state.updated < 300:
                call.hangup(pj.CallOpParam(True))
                pump(lambda: state.disconnected, limit=3)
                done(1, f"update {state.updated}")

    if not args.no_register:
        if not pump(lambda: state.register_final is not None):
            done(3, "timeout waiting for the REGISTER answer")
        code, reason = state.register_final
        if not state.registered:
            done(1, f"register {code} {reason}")

    if args.call:
        call = Call(acc, state)
        state.calls.append(call)
        call.makeCall(f"sip:{args.call}@{args.domain}", pj.CallOpParam(True))
        if not pump(lambda: state.confirmed or state.disconnected):
            done(3, "timeout waiting for the call")
        if not state.confirmed:
            code, reason = state.disconnected
            done(1, f"call {code} {reason}")
        modify(call)
        talk_end = time.monotonic() + args.talk
        pump(lambda: time.monotonic() > talk_end or state.disconnected)
        if not state.disconnected:
            call.hangup(pj.CallOpParam(True))
        if not pump(lambda: state.disconnected):
            done(3, "timeout waiting for the hang-up")
    elif args.answer:
        if args.hold or args.update:
            if not pump(lambda: state.confirmed or state.disconnected):
                done(3, "timeout waiting for a call to be confirmed")
            if state.confirmed and not state.disconnected:
                modify(state.calls[0])
        if not pump(lambda: state.disconnected):
            done(3, "timeout waiting for a call to come and end")
        if not state.confirmed:
            code, reason = state.disconnected
            done(1, f"incoming call ended unconfirmed {code} {reason}")
    done(0)


if __name__ == "__main__":
    main()
