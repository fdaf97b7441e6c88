#!/usr/bin/env python3
"""A PBX trunk emulated with PJSIP (pjsua2): towards permit-proxy it behaves
as Asterisk 22 with this directory's pjsip.conf and extensions.conf does.

What it copies from Asterisk (see README.md, "The emulator"):

- Registration (res_pjsip_outbound_registration): REGISTER sip:DOMAIN with
  To/From <sip:USER@DOMAIN> through the outbound proxy (Route
  <sip:PROXY;lr>), Contact <sip:CONTACT_USER@IP:PORT> plus the
  contact_header_params (e.g. ;max-calls=2), digest answers to the 401, and
  a refresh 10 s before the registration lapses (REREGISTER_BUFFER_TIME).
- Qualify (aor qualify_frequency): OPTIONS sip:PROXY every --qualify
  seconds; each answer is printed.
- Answering (extension 600): 183 Session Progress with SDP (early media)
  at once, 200 after --early seconds, then every received audio frame is
  sent back (Echo()).
- Calling out (Dial(PJSIP/permit/sip:USER@DOMAIN)): INVITE sip:USER@DOMAIN
  through the outbound proxy, digest answer to the 407.
- In the dialog, once it is confirmed: DTMF as SIP INFO
  (application/dtmf-relay, dtmf_mode=info), a re-INVITE with a new offer
  (what direct_media does), a REFER (a transfer), in that order, each only
  if asked for.
- Media: SDES-SRTP only (media_encryption=sdes), over plain UDP signalling.

The OPTIONS qualify leaves from a second UDP socket of the emulator (pjsua2
has no call for an out-of-dialog OPTIONS); Asterisk sends it from its
transport. Everything else leaves from the one PJSIP transport.

Printed to stdout, one line each, flushed at once:

    REGISTER <code> <reason>        every final answer to a REGISTER
                                    (the first one and every refresh)
    REGISTERED                      the first 2xx with a binding
    QUALIFY <code> <reason>         the proxy's answer to an OPTIONS
    QUALIFY timeout                 no answer within 3 s
    INCOMING <remote URI>           a call arrived (--answer)
    CALL <state> <code> <reason>    call states: CALLING, EARLY,
                                    CONNECTING, CONFIRMED, DISCONNECTED
    MEDIA <status> <call state>     the audio stream's state (ACTIVE while
                                    EARLY: early media)
    TSX <UAC|UAS> <method> <code> <state>
                                    a final answer in a transaction of a call
    DTMF-SENT <digits>              the INFO requests were sent
    XFER <code> <reason> <final|provisional>
                                    a NOTIFY about our REFER (sipfrag status)
    RTP rx <packets> tx <packets>   the audio stream's counts at its end
    DONE ok | DONE fail <why>       the end; exit status 0, 1 or 3

Exit status: 0 when everything asked for happened, 1 when something was
refused, 3 at the --timeout deadline.

Examples:
    trunk_emulator.py --proxy 127.0.0.1:5060 --password pbx-secret --qualify 30 --answer --run 600
    trunk_emulator.py --proxy 127.0.0.1:5060 --password pbx-secret --call alice --dtmf 12
"""
import argparse
import os
import socket
import sys
import time
import uuid

import pjsua2 as pj

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

# Asterisk re-registers this many seconds before the registration lapses
# (REREGISTER_BUFFER_TIME in res_pjsip_outbound_registration.c).
REREGISTER_BUFFER_TIME = 10


def say(*words):
    print(*words, flush=True)


def finish(status, why=""):
    """Prints DONE and leaves at once (pjsua2 objects torn down by the
    Python GC after libDestroy can crash)."""
    say("DONE", "ok" if status == 0 else f"fail {why}".strip())
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


class LogFile(pj.LogWriter):
    """PJSIP's log into a file flushed line by line."""

    def __init__(self, path):
        super().__init__()
        self.file = open(path, "w", buffering=1, encoding="utf-8", errors="replace")

    def write(self, entry):
        self.file.write(entry.msg if entry.msg.endswith("\n") else entry.msg + "\n")


def endpoint(log, user_agent, keep):
    """A PJSIP endpoint with one UDP transport on 127.0.0.1 (SIP and RTP),
    no sound device; returns it and the transport's local port."""
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0  # callbacks run inside libHandleEvents, on this thread
    cfg.uaConfig.mainThreadOnly = False
    cfg.uaConfig.userAgent = f"{user_agent} (pjsua2 {ep.libVersion().full})"
    cfg.logConfig.level = cfg.logConfig.consoleLevel = 5 if log else 0
    cfg.logConfig.msgLogging = bool(log)
    if log:
        writer = LogFile(log)
        keep.append(writer)  # PJSIP holds no Python reference
        cfg.logConfig.writer = writer
    cfg.medConfig.noVad = True
    ep.libInit(cfg)
    ep.audDevManager().setNullDev()
    tcfg = pj.TransportConfig()
    tcfg.port = 0
    tcfg.boundAddress = "127.0.0.1"
    tid = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
    ep.libStart()
    port = int(ep.transportGetInfo(tid).localName.rsplit(":", 1)[1])
    return ep, port


def base_account_config(args, id_user):
    """What every account of these scripts shares: the proxy as outbound
    proxy, digest credentials, SDES-SRTP required over plain UDP, no NAT
    helpers."""
    host, port = args.proxy.rsplit(":", 1)
    cfg = pj.AccountConfig()
    cfg.idUri = f"sip:{id_user}@{args.domain}"
    cfg.regConfig.registrarUri = f"sip:{args.domain}"
    cfg.sipConfig.proxies.append(f"sip:{host}:{port};lr")
    if args.password is not None:
        cred = pj.AuthCredInfo("digest", "*", id_user, pj.PJSIP_CRED_DATA_PLAIN_PASSWD, args.password)
        cfg.sipConfig.authCreds.append(cred)
    cfg.natConfig.contactRewriteUse = 0
    cfg.natConfig.viaRewriteUse = 0
    cfg.natConfig.sdpNatRewriteUse = 0
    cfg.natConfig.sipOutboundUse = 0
    cfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    # SDES (RFC 4568) required, and allowed over non-TLS signalling as
    # Asterisk's media_encryption=sdes does on a UDP transport.
    cfg.mediaConfig.srtpUse = pj.PJMEDIA_SRTP_MANDATORY
    cfg.mediaConfig.srtpSecureSignaling = 0
    return cfg


def rtp_counts(call):
    """(rx, tx) RTP packets of the call's audio stream, or None."""
    try:
        stat = call.getStreamStat(0)
    except pj.Error:
        return None
    return stat.rtcp.rxStat.pkt, stat.rtcp.txStat.pkt


class Qualifier:
    """OPTIONS sip:PROXY every `every` seconds from a UDP socket of our own
    (res_pjsip's qualify of the aor contact), and the answers."""

    def __init__(self, proxy, domain, user, every):
        host, port = proxy.rsplit(":", 1)
        self.target = (host, int(port))
        self.domain, self.user, self.every = domain, user, every
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.next_at = time.monotonic() if every > 0 else None
        self.cseq = 0
        self.pending = None  # (branch, deadline)
        self.answers = []

    def tick(self):
        now = time.monotonic()
        self.receive()
        if self.pending and now > self.pending[1]:
            say("QUALIFY", "timeout")
            self.pending = None
        if self.next_at is None or now < self.next_at or self.pending:
            return
        self.next_at = now + self.every
        self.cseq += 1
        branch = "z9hG4bKPj" + uuid.uuid4().hex
        local = self.sock.getsockname()
        host, port = self.target
        msg = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local[0]}:{local[1]};rport;branch={branch}\r\n"
            f"From: <sip:{self.user}@{self.domain}>;tag={uuid.uuid4().hex[:16]}\r\n"
            f"To: <sip:{host}:{port}>\r\n"
            f"Contact: <sip:{self.user}@{local[0]}:{local[1]}>\r\n"
            f"Call-ID: {uuid.uuid4()}\r\n"
            f"CSeq: {self.cseq} OPTIONS\r\n"
            "Max-Forwards: 70\r\n"
            "User-Agent: trunk_emulator (as Asterisk PBX)\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        self.sock.sendto(msg.encode(), self.target)
        self.pending = (branch, now + 3.0)

    def receive(self):
        while True:
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                return
            text = data.decode("utf-8", "replace")
            first = text.split("\r\n", 1)[0].split(" ", 2)
            if len(first) < 2 or not first[0].startswith("SIP/2.0") or not first[1].isdigit():
                continue
            code = int(first[1])
            if code < 200 or not self.pending or self.pending[0] not in text:
                continue
            say("QUALIFY", code, first[2] if len(first) > 2 else "-")
            self.answers.append(code)
            self.pending = None


class State:
    def __init__(self):
        self.registered = False
        self.register_final = None
        self.unregistering = False
        self.calls = []


class Call(pj.Call):
    """One call of the trunk, with the steps to run once it is confirmed."""

    def __init__(self, account, state, args, call_id=pj.PJSUA_INVALID_ID):
        super().__init__(account, call_id)
        self.state, self.args = state, args
        self.confirmed = False
        self.disconnected = None
        self.media = None
        self.early_until = None  # answer 200 at this time (incoming calls)
        self.steps = []
        self.waiting = None  # predicate: the current step is done
        self.finals = {}  # (role, method) -> list of final codes
        self.xfer_final = None
        self.rtp = None
        self.hangup_at = None

    def plan(self):
        """The in-dialog steps, in Asterisk's order."""
        if self.args.dtmf:
            self.steps.append(("dtmf", self.args.dtmf))
        if self.args.reinvite:
            self.steps.append(("reinvite", None))
        if self.args.refer:
            self.steps.append(("refer", self.args.refer))

    def onCallState(self, prm):
        info = self.getInfo()
        say("CALL", info.stateText.upper(), info.lastStatusCode, info.lastReason or "-")
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED:
            self.confirmed = True
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.disconnected = (info.lastStatusCode, info.lastReason)
            if self.rtp:
                say("RTP", "rx", self.rtp[0], "tx", self.rtp[1])

    def onCallMediaState(self, prm):
        info = self.getInfo()
        for i, m in enumerate(info.media):
            if m.type == pj.PJMEDIA_TYPE_AUDIO and m.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                # Echo(): what comes in goes back out.
                audio = self.getAudioMedia(i)
                audio.startTransmit(audio)

    def watch(self):
        try:
            info = self.getInfo()
            media = [m for m in info.media if m.type == pj.PJMEDIA_TYPE_AUDIO]
        except pj.Error:
            return
        if media:
            name = MEDIA_STATUS.get(media[0].status, str(media[0].status))
            if name != self.media:
                say("MEDIA", name, info.stateText.upper())
                self.media = name
            counts = rtp_counts(self)
            if counts:
                self.rtp = counts

    def onCallTsxState(self, prm):
        if prm.e.type != pj.PJSIP_EVENT_TSX_STATE:
            return
        tsx = prm.e.body.tsxState.tsx
        if tsx.statusCode < 200 or tsx.state not in TSX_DONE:
            return
        role = "UAC" if tsx.role == pj.PJSIP_ROLE_UAC else "UAS"
        say("TSX", role, tsx.method, tsx.statusCode, TSX_DONE[tsx.state])
        self.finals.setdefault((role, tsx.method), []).append(tsx.statusCode)

    def onCallTransferStatus(self, prm):
        say("XFER", prm.statusCode, prm.reason or "-", "final" if prm.finalNotify else "provisional")
        if prm.finalNotify:
            self.xfer_final = prm.statusCode

    def count(self, role, method):
        return len(self.finals.get((role, method), []))

    def tick(self):
        """Runs the next step when the current one is done."""
        if self.disconnected:
            return
        now = time.monotonic()
        if self.early_until is not None and now >= self.early_until:
            self.early_until = None
            op = pj.CallOpParam()
            op.statusCode = 200
            self.answer(op)
        if not self.confirmed:
            return
        if self.waiting is not None:
            if not self.waiting():
                return
            self.waiting = None
        if self.steps:
            kind, arg = self.steps.pop(0)
            if kind == "dtmf":
                before = self.count("UAC", "INFO")
                param = pj.CallSendDtmfParam()
                param.method = pj.PJSUA_DTMF_METHOD_SIP_INFO
                param.digits = arg
                param.duration = 100
                self.sendDtmf(param)
                say("DTMF-SENT", arg)
                self.waiting = lambda: self.count("UAC", "INFO") >= before + len(arg)
            elif kind == "reinvite":
                before = self.count("UAC", "INVITE")
                self.reinvite(pj.CallOpParam(True))
                self.waiting = lambda: self.count("UAC", "INVITE") > before
            elif kind == "refer":
                self.xfer(f"sip:{arg}@{self.args.domain}", pj.CallOpParam(True))
                # The REFER's own answer, then the final NOTIFY (RFC 3515 2.4.5).
                self.waiting = lambda: self.count("UAC", "REFER") > 0 and (
                    self.xfer_final is not None or self.finals[("UAC", "REFER")][-1] >= 300
                )
            return
        if self.hangup_at is None:
            self.hangup_at = now + self.args.talk
        elif now >= self.hangup_at and self.args.hangup:
            self.hangup(pj.CallOpParam(True))
            self.hangup_at = float("inf")


class Account(pj.Account):
    def __init__(self, state, args):
        super().__init__()
        self.state, self.args = state, args

    def onRegState(self, prm):
        if prm.code < 200:
            return
        say("UNREGISTER" if self.state.unregistering else "REGISTER", prm.code, prm.reason or "-")
        self.state.register_final = (prm.code, prm.reason)
        if 200 <= prm.code < 300 and prm.expiration > 0 and not self.state.registered:
            self.state.registered = True
            say("REGISTERED")

    def onIncomingCall(self, prm):
        call = Call(self, self.state, self.args, prm.callId)
        self.state.calls.append(call)
        say("INCOMING", call.getInfo().remoteUri)
        if not self.args.answer:
            op = pj.CallOpParam()
            op.statusCode = 486
            call.hangup(op)
            return
        # Progress(): 183 with the SDP answer, early media flows.
        op = pj.CallOpParam()
        op.statusCode = 183
        call.answer(op)
        call.early_until = time.monotonic() + self.args.early
        call.plan()


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--proxy", required=True, help="IP:PORT of permit-proxy (outbound proxy)")
    p.add_argument("--domain", default="localhost")
    p.add_argument("--user", default="pbx", help="the trunk's user at the proxy")
    p.add_argument("--password", help="its digest password")
    p.add_argument("--contact-user", default="600", help="registration contact_user")
    p.add_argument("--contact-params", default="max-calls=2",
                   help="registration contact_header_params ('' for none)")
    p.add_argument("--expires", type=int, default=3600, help="registration expiration")
    p.add_argument("--qualify", type=float, default=30, help="OPTIONS to the proxy every SECS (0: never)")
    p.add_argument("--answer", action="store_true",
                   help="answer calls: 183 with SDP, 200 after --early, echo the audio")
    p.add_argument("--early", type=float, default=1.0, help="seconds of early media before the 200")
    p.add_argument("--call", metavar="USER", help="call sip:USER@DOMAIN (Dial)")
    p.add_argument("--dtmf", metavar="DIGITS", help="send DIGITS as SIP INFO once a call is confirmed")
    p.add_argument("--reinvite", action="store_true", help="then send a re-INVITE with a new offer")
    p.add_argument("--refer", metavar="USER", help="then transfer the other party to sip:USER@DOMAIN")
    p.add_argument("--talk", type=float, default=1.0, help="seconds after the steps before hanging up")
    p.add_argument("--keep", dest="hangup", action="store_false",
                   help="answered calls: never hang up (wait for the other side)")
    p.add_argument("--run", type=float, default=0,
                   help="stay registered this long (then exit 0); 0: exit after --call, or never")
    p.add_argument("--timeout", type=float, default=60.0, help="overall deadline (exit 3)")
    p.add_argument("--log", help="PJSIP log file with every SIP message")
    return p.parse_args()


def main():
    args = parse_args()
    state = State()
    keep = []
    ep, port = endpoint(args.log, "trunk_emulator", keep)

    cfg = base_account_config(args, args.user)
    # Contact: <sip:CONTACT_USER@IP:PORT>;PARAMS, as Asterisk writes it
    # (PJSIP's contactParams are not applied to a forced Contact).
    contact = f"<sip:{args.contact_user}@127.0.0.1:{port}>"
    if args.contact_params:
        contact += ";" + args.contact_params
    cfg.sipConfig.contactForced = contact
    cfg.regConfig.timeoutSec = args.expires
    # Asterisk refreshes REREGISTER_BUFFER_TIME before the granted expiry.
    cfg.regConfig.delayBeforeRefreshSec = REREGISTER_BUFFER_TIME if args.expires > REREGISTER_BUFFER_TIME \
        else max(1, args.expires // 2)
    cfg.regConfig.retryIntervalSec = 30
    acc = Account(state, args)
    acc.create(cfg)

    qualify = Qualifier(args.proxy, args.domain, args.user, args.qualify)
    start = time.monotonic()
    deadline = start + args.timeout

    def pump(until):
        while not until():
            if time.monotonic() > deadline:
                return False
            ep.libHandleEvents(20)
            qualify.tick()
            for call in state.calls:
                call.watch()
                call.tick()
        return True

    def done(status, why=""):
        if state.registered:
            state.unregistering = True
            state.register_final = None
            acc.setRegistration(False)
            end = time.monotonic() + 3
            pump(lambda: state.register_final is not None or time.monotonic() > end)
        finish(status, why)

    if not pump(lambda: state.register_final is not None):
        done(3, "timeout waiting for the REGISTER answer")
    if not state.registered:
        code, reason = state.register_final
        done(1, f"register {code} {reason}")

    if args.call:
        call = Call(acc, state, args)
        call.plan()
        state.calls.append(call)
        call.makeCall(f"sip:{args.call}@{args.domain}", pj.CallOpParam(True))
        if not pump(lambda: call.confirmed or call.disconnected):
            done(3, "timeout waiting for the call")
        if not call.confirmed:
            code, reason = call.disconnected
            done(1, f"call {code} {reason}")
        args.hangup = True
        if not pump(lambda: call.disconnected):
            done(3, "timeout waiting for the hang-up")
        if call.xfer_final is not None and not 200 <= call.xfer_final < 300:
            done(1, f"transfer {call.xfer_final}")
        if args.run <= 0:
            done(0)

    if args.run > 0:
        if not pump(lambda: time.monotonic() > start + args.run):
            done(3, "timeout before the end of --run")
        live = [c for c in state.calls if not c.disconnected]
        if live:
            done(1, f"{len(live)} call(s) still up at the end of --run")
        failed = [c.xfer_final for c in state.calls if c.xfer_final is not None and c.xfer_final >= 300]
        if failed:
            done(1, f"transfer {failed[0]}")
        done(0)
    pump(lambda: False)
    done(3, "timeout")


if __name__ == "__main__":
    main()
