#!/usr/bin/env python3
"""A phone (pjsua2) at permit-proxy that calls a trunk or is called by one,
for the Asterisk testbed: like testbeds/pjsua/pjsua_ua.py, with SDES-SRTP
required and reports of what a PBX does in a dialog (early media, DTMF as
SIP INFO, re-INVITE, REFER).

Printed to stdout, one line each, flushed at once:

    REGISTER <code> <reason>        every final answer to a REGISTER
    REGISTERED                      the first 2xx with a binding
    INCOMING <remote URI>           a call arrived (--answer)
    CALL <state> <code> <reason>    the call's states
    MEDIA <status> <call state>     the audio stream's state; ACTIVE while
                                    EARLY is early media (183 with SDP)
    DTMF <digit> <INFO|RFC2833>     a DTMF digit arrived, and how
    TSX <UAC|UAS> <method> <code> <state>
                                    a final answer in a transaction of a call
    TRANSFER <target>               a REFER arrived; we accept it (202) and
                                    call the target through the proxy
    XCALL <state> <code> <reason>   the states of that new call
    AUDIO-IN <n> packets after the answer
                                    RTP keeps arriving once the call is
                                    confirmed (an echo sends ours back)
    RTP rx <packets> tx <packets>   a call's audio packet counts at its end
    DONE ok | DONE fail <why>

Exit status: 0 when the call (and a transfer call, if one was asked of us)
was confirmed and ended; 1 when refused; 3 at the --timeout deadline.

Examples:
    phone.py --proxy 127.0.0.1:5060 --user alice --password alice-secret --call pbx --talk 5
    phone.py --proxy 127.0.0.1:5060 --user alice --password alice-secret --answer
"""
import argparse
import time

import pjsua2 as pj

from trunk_emulator import MEDIA_STATUS, TSX_DONE, base_account_config, endpoint, finish, rtp_counts, say


class State:
    def __init__(self):
        self.registered = False
        self.register_final = None
        self.unregistering = False
        self.calls = []
        self.transfer = None  # the call a REFER made us place


class Call(pj.Call):
    def __init__(self, account, state, prefix="CALL", call_id=pj.PJSUA_INVALID_ID):
        super().__init__(account, call_id)
        self.state, self.prefix = state, prefix
        self.confirmed = False
        self.disconnected = None
        self.media = None
        self.rtp = None
        self.rx_base = None  # RTP received when the call was first seen confirmed
        self.audio_in = False

    def onCallState(self, prm):
        info = self.getInfo()
        say(self.prefix, info.stateText.upper(), info.lastStatusCode, info.lastReason or "-")
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED:
            self.confirmed = True
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.disconnected = (info.lastStatusCode, info.lastReason)
            if self.rtp:
                say("RTP", "rx", self.rtp[0], "tx", self.rtp[1])

    def onCallMediaState(self, prm):
        # As a softphone does: the (null) microphone to the call, the call
        # to the (null) speaker. The sound device's clock makes the stream
        # send a frame every 20 ms.
        info = self.getInfo()
        devices = pj.Endpoint.instance().audDevManager()
        for i, m in enumerate(info.media):
            if m.type == pj.PJMEDIA_TYPE_AUDIO and m.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                audio = self.getAudioMedia(i)
                devices.getCaptureDevMedia().startTransmit(audio)
                audio.startTransmit(devices.getPlaybackDevMedia())

    def watch(self):
        if self.disconnected:
            return
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
                self.audio_in_confirmed(info, counts[0])

    def audio_in_confirmed(self, info, rx):
        """Prints AUDIO-IN once RTP keeps arriving after the call was
        confirmed (early media does not count): the echo test's proof."""
        if info.state != pj.PJSIP_INV_STATE_CONFIRMED or self.audio_in:
            return
        if self.rx_base is None or rx < self.rx_base:
            self.rx_base = rx  # the first look, or a new stream after a re-offer
        elif rx >= self.rx_base + 25:
            say("AUDIO-IN", rx - self.rx_base, "packets after the answer")
            self.audio_in = True

    def onDtmfDigit(self, prm):
        method = "INFO" if prm.method == pj.PJSUA_DTMF_METHOD_SIP_INFO else "RFC2833"
        say("DTMF", prm.digit, method)

    def onCallTsxState(self, prm):
        if prm.e.type != pj.PJSIP_EVENT_TSX_STATE:
            return
        tsx = prm.e.body.tsxState.tsx
        if tsx.statusCode < 200 or tsx.state not in TSX_DONE:
            return
        role = "UAC" if tsx.role == pj.PJSIP_ROLE_UAC else "UAS"
        say("TSX", role, tsx.method, tsx.statusCode, TSX_DONE[tsx.state])

    def onCallTransferRequest(self, prm):
        # RFC 3515: accept (202), then INVITE the Refer-To target; PJSIP
        # reports its progress to the transferor in NOTIFYs.
        say("TRANSFER", prm.dstUri)
        new = Call(self.account, self.state, "XCALL")
        self.state.transfer = new
        self.state.calls.append(new)
        prm.newCall = new
        prm.statusCode = 202


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--proxy", required=True, help="IP:PORT of permit-proxy")
    p.add_argument("--domain", default="localhost")
    p.add_argument("--user", required=True)
    p.add_argument("--password")
    p.add_argument("--answer", action="store_true", help="answer one call (180, then 200), wait for its end")
    p.add_argument("--call", metavar="USER", help="call sip:USER@DOMAIN")
    p.add_argument("--talk", type=float, default=1.0, help="seconds before we hang up a confirmed call")
    p.add_argument("--keep", action="store_true", help="never hang up first: wait for the other side")
    p.add_argument("--timeout", type=float, default=40.0)
    p.add_argument("--log")
    args = p.parse_args()

    state = State()
    keep = []
    ep, _port = endpoint(args.log, "permit phone", keep)
    cfg = base_account_config(args, args.user)
    cfg.regConfig.timeoutSec = 600
    cfg.regConfig.retryIntervalSec = 0

    class Account(pj.Account):
        def onRegState(self, prm):
            if prm.code < 200:
                return
            say("UNREGISTER" if state.unregistering else "REGISTER", prm.code, prm.reason or "-")
            state.register_final = (prm.code, prm.reason)
            if 200 <= prm.code < 300 and prm.expiration > 0 and not state.registered:
                state.registered = True
                say("REGISTERED")

        def onIncomingCall(self, prm):
            call = Call(self, state, "CALL", prm.callId)
            call.account = self
            state.calls.append(call)
            say("INCOMING", call.getInfo().remoteUri)
            op = pj.CallOpParam()
            op.statusCode = 180
            call.answer(op)
            if args.answer:
                op = pj.CallOpParam()
                op.statusCode = 200
                call.answer(op)

    acc = Account()
    acc.create(cfg)
    deadline = time.monotonic() + args.timeout

    def pump(until):
        while not until():
            if time.monotonic() > deadline:
                return False
            ep.libHandleEvents(20)
            for call in list(state.calls):
                call.watch()
        return True

    def done(status, why=""):
        if state.registered:
            state.unregistering = True
            state.register_final = None
            acc.setRegistration(False)
            end = time.monotonic() + 3
            pump(lambda: state.register_final is not None or time.monotonic() > end)
        finish(status, why)

    def talk_and_end(call):
        """Talks --talk seconds (or, with --keep, waits), hangs up, waits for the end."""
        end = time.monotonic() + args.talk
        pump(lambda: call.disconnected or (not args.keep and time.monotonic() > end))
        if not call.disconnected:
            call.hangup(pj.CallOpParam(True))
        if not pump(lambda: call.disconnected):
            done(3, "timeout waiting for the hang-up")

    if not pump(lambda: state.register_final is not None):
        done(3, "timeout waiting for the REGISTER answer")
    if not state.registered:
        code, reason = state.register_final
        done(1, f"register {code} {reason}")

    if args.call:
        call = Call(acc, state)
        call.account = acc
        state.calls.append(call)
        call.makeCall(f"sip:{args.call}@{args.domain}", pj.CallOpParam(True))
        if not pump(lambda: call.confirmed or call.disconnected):
            done(3, "timeout waiting for the call")
        if not call.confirmed:
            code, reason = call.disconnected
            done(1, f"call {code} {reason}")
        talk_and_end(call)
    elif args.answer:
        if not pump(lambda: state.calls and state.calls[0].disconnected):
            done(3, "timeout waiting for a call to come and end")
        if not state.calls[0].confirmed:
            code, reason = state.calls[0].disconnected
            done(1, f"incoming call ended unconfirmed {code} {reason}")

    # A REFER made us call someone: that call must connect and end too.
    if state.transfer is not None:
        xcall = state.transfer
        if not pump(lambda: xcall.confirmed or xcall.disconnected):
            done(3, "timeout waiting for the transfer call")
        if not xcall.confirmed:
            code, reason = xcall.disconnected
            done(1, f"transfer call {code} {reason}")
        talk_and_end(xcall)
    done(0)


if __name__ == "__main__":
    main()
