//! Calls: the INVITE we send (RFC 3261 §13.2, with CANCEL §9.1 and the 2xx ACK
//! §13.2.2.4) and the INVITE we answer (§13.3, the 2xx retransmitted until its ACK,
//! §13.3.1.4), BYE both ways (§15). Each call is in exactly one [`CallState`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use sip_core::message::{HeaderName, Message, NameAddr, ResponseBuilder};

use sip_core::permit::{CryptoAttr, SessionSecret};
use sip_core::transport::Transport;

use crate::auth::Realm;
use crate::dialog::Dialog;
use crate::engine::{ALLOW, CallId, Event, Purpose, Sent, TxKey, Ua};
use crate::keys::{self, KeyRefusal, MediaKeys, Offer, PeerCrypto};
use crate::media::codec::{self, Codec};
use crate::media::dtls::{DtlsCall, Fingerprint};
use crate::outcome::CallOutcome;
use crate::permit;
use crate::request::{self, Dest, Request};
use crate::sdp::{self, AudioOffer};

mod redirect;

mod uas;

impl Ua {
    /// The SRTP keys of a call (known once it is connected); `None` for plain RTP.
    pub fn media_keys(&self, call_id: &str) -> Option<&MediaKeys> {
        self.calls.get(call_id)?.keys.as_ref()
    }

    /// The DTLS-SRTP parameters of a call keyed on the media path (RFC 5763).
    pub fn media_dtls(&self, call_id: &str) -> Option<&DtlsCall> {
        self.calls.get(call_id)?.dtls.as_ref()
    }

    /// The call's audio codec: the first of the offer's codecs we have (RFC 3264
    /// §6.1), read from the offer (UAS) or the answer (UAC); PCMU until it is known.
    pub fn audio_codec(&self, call_id: &str) -> Codec {
        self.calls
            .get(call_id)
            .and_then(|c| c.codec)
            .unwrap_or(Codec::Pcmu)
    }

    /// Offer DTLS-SRTP instead of SDES from now on (`call --dtls`), when we have a
    /// certificate ([`crate::engine::UaConfig::dtls`]).
    pub fn set_offer_dtls(&mut self, on: bool) {
        self.cfg.offer_dtls = on;
    }

    /// Offer only `codecs`, in this order, from now on (`call --codec`).
    pub fn set_audio_offer(&mut self, codecs: Vec<Codec>) {
        self.cfg.audio_offer = codecs;
    }

    /// The peer's session description and the call's permit token (for the media
    /// relay's latch, docs/profile.md "Media relay"): the offer while a call is offered
    /// to us, the answer once our call is connected.
    pub fn remote_description(&self, call_id: &str) -> Option<(Bytes, Option<String>)> {
        let call = self.calls.get(call_id)?;
        if let CallState::Offered(o) = &call.state {
            let token = o
                .request
                .header(HeaderName::PermitToken)
                .and_then(permit::parse_permit_token)
                .map(|t| t.token);
            return Some((o.request.bytes().slice_ref(o.request.body()), token));
        }
        call.remote.clone()
    }
}

/// Why we cancel an outgoing call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The user hung up (Ctrl-C).
    User,
    /// It rang for longer than the ring timeout.
    RingTimeout,
}

/// UAC: our INVITE is out, no final response yet.
#[derive(Debug)]
pub struct Inviting {
    req: Request,
    key: TxKey,
    dest: Dest,
    local_tag: String,
    /// A provisional arrived: a CANCEL may be sent (§9.1).
    provisional: bool,
    cancel: Option<CancelReason>,
    cancel_sent: bool,
    ring_deadline: Instant,
    /// Direct mode asked (`Request-Disposition: redirect`), and whether the 302 was
    /// followed already.
    direct: bool,
    redirected: bool,
    /// Our a=crypto offer and, once the proxy told it, the call's session secret.
    offer: Offer,
    secret: Option<SessionSecret>,
    /// We offered DTLS-SRTP with this certificate (`call --dtls`).
    dtls_offer: Option<Fingerprint>,
}

/// UAS: an INVITE passed the policy; waiting for [`Ua::answer`].
#[derive(Debug)]
pub struct Offered {
    key: TxKey,
    request: Message,
    offer: AudioOffer,
}

/// UAS: our 2xx is out, waiting for the ACK.
#[derive(Debug)]
pub struct Answered {
    dialog: Dialog,
    response: Bytes,
    dest: Dest,
    retransmit_at: Option<Instant>,
    interval: Duration,
    give_up_at: Instant,
    remote_media: SocketAddr,
}

/// Both sides: the call is up.
#[derive(Debug)]
pub struct Confirmed {
    dialog: Dialog,
    /// UAC: the ACK, re-sent for each 2xx retransmission (§13.2.2.4).
    ack: Option<(Dest, Bytes)>,
}

/// The states of a call; a transition consumes the old state.
#[derive(Debug)]
pub enum CallState {
    Inviting(Inviting),
    Offered(Offered),
    Answered(Answered),
    Confirmed(Confirmed),
    /// Our BYE is out.
    Ending,
}

#[derive(Debug)]
pub struct Call {
    pub state: CallState,
    session_id: u64,
    local_media: Option<SocketAddr>,
    /// Our `a=crypto` lines and SDP profile (RTP/SAVP or RTP/AVP).
    crypto: Vec<CryptoAttr>,
    savp: bool,
    /// The call's SRTP keys, once both sides' keys are known.
    keys: Option<MediaKeys>,
    /// DTLS-SRTP instead of `a=crypto` (RFC 5763): keys from the media path.
    pub(crate) dtls: Option<DtlsCall>,
    /// UAS of a direct call over a stream: in-dialog requests go back over the
    /// caller's connection (its Contact names no listener we could reach).
    flow: Option<Dest>,
    /// Our video media section, appended to our SDP (`crate::video`).
    video: Option<String>,
    /// UAC: the answer's SDP and the permit token of the 2xx.
    remote: Option<(Bytes, Option<String>)>,
    /// The negotiated audio codec; `None` while we offer ([`codec::OFFER`]).
    pub(crate) codec: Option<Codec>,
}

impl Call {
    pub(crate) fn timer(&self) -> Option<Instant> {
        match &self.state {
            CallState::Inviting(i) if i.cancel.is_none() => Some(i.ring_deadline),
            CallState::Answered(a) => Some(
                a.retransmit_at
                    .map_or(a.give_up_at, |r| r.min(a.give_up_at)),
            ),
            _ => None,
        }
    }

    fn dialog(&self) -> Option<&Dialog> {
        match &self.state {
            CallState::Answered(a) => Some(&a.dialog),
            CallState::Confirmed(c) => Some(&c.dialog),
            _ => None,
        }
    }

    fn sdp(&self) -> Option<String> {
        self.local_media.map(|m| {
            let codecs = self
                .codec
                .as_ref()
                .map_or(&codec::OFFER[..], std::slice::from_ref);
            let mut s = sdp::build(self.session_id, 1, m, &self.crypto, self.savp, codecs);
            if let Some(d) = &self.dtls {
                s = sdp::with_dtls(&s, d);
            }
            s.push_str(self.video.as_deref().unwrap_or_default());
            s
        })
    }

    pub(crate) fn new(state: CallState, session_id: u64, local_media: Option<SocketAddr>) -> Self {
        Self {
            state,
            session_id,
            local_media,
            crypto: Vec::new(),
            savp: false,
            keys: None,
            dtls: None,
            flow: None,
            video: None,
            remote: None,
            codec: None,
        }
    }
}

impl Ua {
    /// Calls `target` (`bob`, `bob@host` or a URI) with an SDP offer for audio at
    /// `media` (RFC 3261 §13.2.1). Outcome: [`Event::CallConnected`] or
    /// [`Event::CallFailed`].
    pub fn call(&mut self, now: Instant, target: &str, media: SocketAddr) -> CallId {
        self.call_with(now, target, media, false)
    }

    /// [`Ua::call`], in direct mode when `direct`: the INVITE asks the proxy for a
    /// redirect (RFC 3841 §9.1 `Request-Disposition: redirect`), and the 302's Contact
    /// is called straight with the token it carries (docs/profile.md "Where the token
    /// and the key travel").
    pub fn call_with(
        &mut self,
        now: Instant,
        target: &str,
        media: SocketAddr,
        direct: bool,
    ) -> CallId {
        self.call_with_video(now, target, media, direct, None)
    }

    /// [`Ua::call_with`] with a video media section after the audio one (`crate::video`).
    pub fn call_with_video(
        &mut self,
        now: Instant,
        target: &str,
        media: SocketAddr,
        direct: bool,
        video: Option<String>,
    ) -> CallId {
        let local = self.cfg.local.clone();
        let uri = local.target_uri(target);
        let call_id = request::call_id(&mut self.rng);
        let local_tag = request::tag(&mut self.rng);
        let branch = self.new_branch();
        let session_id = self.rng.random::<u32>().into();
        // RFC 4568 §8.3: keys only in signalling that is protected (TLS to the proxy).
        // DTLS-SRTP puts no key in signalling (RFC 5763 §5).
        let dtls_offer = self.cfg.dtls.filter(|_| self.cfg.offer_dtls);
        let offer = if dtls_offer.is_some() {
            Offer::plain()
        } else if local.transport == Transport::Tls {
            Offer::new(None, &call_id, &mut self.rng)
        } else {
            Offer::plain()
        };
        let mut headers = vec![
            ("Contact", format!("<{}>", local.contact_uri())),
            ("Allow", ALLOW.to_string()),
        ];
        if direct {
            headers.push(("Request-Disposition", "redirect".to_string()));
        }
        let mut req = Request {
            method: "INVITE",
            uri: uri.clone(),
            via: local.via(&branch),
            from: format!("<{}>;tag={local_tag}", local.aor()),
            to: format!("<{uri}>"),
            call_id: call_id.clone(),
            cseq: 1,
            headers,
            body: Some((
                "application/sdp",
                (sdp::with_dtls_offer(
                    sdp::build(
                        session_id,
                        1,
                        media,
                        &offer.attrs,
                        offer.savp,
                        &self.cfg.audio_offer,
                    ),
                    dtls_offer,
                ) + video.as_deref().unwrap_or_default())
                .into_bytes(),
            )),
        };
        let tries = u8::from(self.preauthorize(&mut req, Realm::Proxy));
        let dest = self.proxy_dest();
        let key = self.send_request(
            now,
            branch,
            req.clone(),
            dest,
            Purpose::Invite(call_id.clone()),
            tries,
        );
        let inviting = Inviting {
            req,
            key,
            dest,
            local_tag,
            provisional: false,
            cancel: None,
            cancel_sent: false,
            ring_deadline: now + self.cfg.ring_timeout,
            direct,
            redirected: false,
            offer: offer.clone(),
            secret: None,
            dtls_offer,
        };
        let mut call = Call::new(CallState::Inviting(inviting), session_id, Some(media));
        call.crypto = offer.attrs;
        call.savp = offer.savp;
        call.video = video;
        self.calls.insert(call_id.clone(), call);
        call_id
    }

    /// Answers an offered call with 200 and our SDP for audio at `media`
    /// (RFC 3261 §13.3.1.4), copying Record-Route (§12.1.1).
    pub fn answer(&mut self, now: Instant, call_id: &str, media: SocketAddr) {
        self.answer_with_video(now, call_id, media, None);
    }

    /// [`Ua::answer`] with a video media section after the audio one (`crate::video`);
    /// it must answer the offer's video section (RFC 3264 §6).
    pub fn answer_with_video(
        &mut self,
        now: Instant,
        call_id: &str,
        media: SocketAddr,
        video: Option<String>,
    ) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        if video.is_some() {
            call.video = video;
        }
        let CallState::Offered(offered) = std::mem::replace(&mut call.state, CallState::Ending)
        else {
            return;
        };
        call.local_media = Some(media);
        let body = call.sdp().unwrap_or_default();
        let tag = request::tag(&mut self.rng);
        let Offered {
            key,
            request,
            offer,
        } = offered;
        let dialog = match Dialog::uas(&request, &tag, 0) {
            Ok(d) => d,
            Err(e) => {
                let resp =
                    ResponseBuilder::new(&request, 400, "Bad Request").to_tag(tag.as_bytes());
                self.respond(now, &key, 400, resp.to_vec().into());
                self.calls.remove(call_id);
                tracing::debug!(error = %e, "INVITE refused: no dialog");
                return;
            }
        };
        let contact = format!("<{}>", self.cfg.local.contact_uri());
        let mut builder = ResponseBuilder::new(&request, 200, "OK")
            .to_tag(tag.as_bytes())
            .header("Contact", contact.as_bytes());
        for rr in request.headers(HeaderName::RecordRoute) {
            builder = builder.header("Record-Route", rr);
        }
        let response: Bytes = builder
            .header("Allow", ALLOW.as_bytes())
            .body(b"application/sdp", body.as_bytes())
            .to_vec()
            .into();
        let Some(dest) = self.server_dest(&key) else {
            self.calls.remove(call_id);
            return;
        };
        self.respond(now, &key, 200, response.clone());
        let t1 = self.cfg.timers.t1;
        let answered = Answered {
            dialog,
            response,
            dest,
            retransmit_at: (!dest.transport.is_reliable()).then(|| now + t1),
            interval: t1,
            give_up_at: now + 64 * t1,
            remote_media: offer.addr,
        };
        if let Some(call) = self.calls.get_mut(call_id) {
            call.state = CallState::Answered(answered);
        }
    }

    /// Ends a call in any state: CANCEL before an answer (§9.1), BYE after (§15.1.1),
    /// 603 Decline for an offer not yet answered.
    pub fn hangup(&mut self, now: Instant, call_id: &str) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        match std::mem::replace(&mut call.state, CallState::Ending) {
            CallState::Inviting(mut inv) => {
                if inv.cancel.is_none() {
                    inv.cancel = Some(CancelReason::User);
                }
                let send = inv.provisional && !inv.cancel_sent;
                inv.cancel_sent |= send;
                let cancel = send.then(|| cancel_for(&inv.req));
                let (dest, branch) = (inv.dest, inv.key.0.clone());
                call.state = CallState::Inviting(inv);
                if let Some(req) = cancel {
                    self.send_request(now, branch, req, dest, Purpose::Cancel, 0);
                }
            }
            CallState::Offered(o) => {
                let tag = request::tag(&mut self.rng);
                let resp = ResponseBuilder::new(&o.request, 603, "Decline").to_tag(tag.as_bytes());
                self.respond(now, &o.key, 603, resp.to_vec().into());
                self.calls.remove(call_id);
                self.emit(Event::CallEnded {
                    call: call_id.to_string(),
                    by_peer: false,
                });
            }
            CallState::Answered(Answered { dialog, .. })
            | CallState::Confirmed(Confirmed { dialog, .. }) => {
                self.send_bye(now, call_id, dialog);
            }
            CallState::Ending => {}
        }
    }

    /// Hangs up every call.
    pub fn hangup_all(&mut self, now: Instant) {
        let ids: Vec<CallId> = self.calls.keys().cloned().collect();
        for id in ids {
            self.hangup(now, &id);
        }
    }

    fn send_bye(&mut self, now: Instant, call_id: &str, mut dialog: Dialog) {
        let local = self.cfg.local.clone();
        let branch = self.new_branch();
        let req = dialog.request("BYE", &local, &branch, None);
        let flow = self.calls.get(call_id).and_then(|c| c.flow);
        let dest = flow.unwrap_or_else(|| self.dest_to(dialog.next_hop(local.transport)));
        self.send_request(now, branch, req, dest, Purpose::Bye(call_id.to_string()), 0);
        if let Some(call) = self.calls.get_mut(call_id) {
            call.state = CallState::Ending;
        }
    }

    pub(crate) fn on_bye_done(&mut self, call_id: &str) {
        if self.calls.remove(call_id).is_some() {
            self.emit(Event::CallEnded {
                call: call_id.to_string(),
                by_peer: false,
            });
        }
    }

    fn fail_call(&mut self, call_id: &str, outcome: CallOutcome) {
        self.calls.remove(call_id);
        self.emit(Event::CallFailed {
            call: call_id.to_string(),
            outcome,
        });
    }

    pub(crate) fn on_invite_response(
        &mut self,
        now: Instant,
        call_id: &str,
        key: &TxKey,
        sent: &Sent,
        msg: &Message,
        status: u16,
    ) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let inv = match &mut call.state {
            CallState::Inviting(inv) if inv.key == *key => inv,
            CallState::Confirmed(Confirmed {
                ack: Some((dest, ack)),
                ..
            }) if status < 300 => {
                // A 2xx retransmission: ACK it again (§13.2.2.4).
                let (dest, ack) = (*dest, ack.clone());
                self.transmit(dest, ack);
                return;
            }
            _ => return,
        };
        // The proxy tells the caller the session secret in 18x and 2xx (routed mode);
        // a callee reached directly cannot (RFC 3261 §8.1.3.4: its answer is not the
        // proxy's).
        if (101..300).contains(&status)
            && !inv.redirected
            && let Some(secret) = permit::permit_key(msg)
        {
            inv.secret = Some(secret);
        }
        match status {
            300..=399 if inv.direct && !inv.redirected => {
                if !self.follow_redirect(now, call_id, msg) {
                    self.fail_call(call_id, CallOutcome::Failed(status));
                }
            }
            100..=199 => {
                inv.provisional = true;
                let cancel =
                    (inv.cancel.is_some() && !inv.cancel_sent).then(|| cancel_for(&inv.req));
                inv.cancel_sent |= cancel.is_some();
                let (dest, branch) = (inv.dest, inv.key.0.clone());
                if let Some(req) = cancel {
                    self.send_request(now, branch, req, dest, Purpose::Cancel, 0);
                }
                if status > 100 {
                    self.emit(Event::CallProgress {
                        call: call_id.to_string(),
                        status,
                    });
                }
            }
            200..=299 => self.on_invite_2xx(now, call_id, msg),
            401 | 407 => match self.retry_with_auth(now, sent, msg, status) {
                Some((key, req)) => {
                    if let Some(Call {
                        state: CallState::Inviting(inv),
                        ..
                    }) = self.calls.get_mut(call_id)
                    {
                        inv.key = key;
                        inv.req = req;
                        inv.provisional = false;
                    }
                }
                None => self.fail_call(call_id, CallOutcome::of_status(status)),
            },
            _ => {
                let outcome = match inv.cancel {
                    Some(CancelReason::User) => CallOutcome::Cancelled,
                    Some(CancelReason::RingTimeout) => CallOutcome::Unavailable(408),
                    None => CallOutcome::of_status(status),
                };
                self.fail_call(call_id, outcome);
            }
        }
    }

    /// The 2xx to our INVITE: dialog, ACK straight to the next hop (§13.2.2.4), then
    /// connected — or BYE at once if the user already hung up.
    fn on_invite_2xx(&mut self, now: Instant, call_id: &str, msg: &Message) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let CallState::Inviting(inv) = std::mem::replace(&mut call.state, CallState::Ending) else {
            return;
        };
        let mut dialog = match Dialog::uac(inv.req.cseq, &inv.local_tag, msg) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "2xx without a usable dialog");
                self.fail_call(call_id, CallOutcome::Failed(502));
                return;
            }
        };
        let local = self.cfg.local.clone();
        let branch = self.new_branch();
        let ack = dialog
            .request("ACK", &local, &branch, Some(inv.req.cseq))
            .to_bytes();
        let dest = self.dest_to(dialog.next_hop(local.transport));
        self.transmit(dest, ack.clone());
        let answer = sdp::parse_audio(msg.body()).ok();
        let remote_media = answer.as_ref().map(|a| a.addr);
        // An answer must pick from our offer (RFC 3264 §6.1); one that names none of
        // our codecs gets PCMU, what this UA always sent before it offered Opus.
        let answered_codec = answer.and_then(|a| a.codec).unwrap_or(Codec::Pcmu);
        if inv.cancel.is_some() {
            // Hung up while it rang, answered anyway: end it (§15).
            self.send_bye(now, call_id, dialog);
            return;
        }
        // The answer's key: the callee → caller derivation when we hold the secret
        // (required in direct mode, where no proxy vouches for the peer).
        let peer = PeerCrypto::of(msg.body());
        let checked = keys::check_answer(
            &peer,
            &inv.offer,
            inv.secret.as_ref(),
            call_id,
            inv.redirected,
        );
        // Our DTLS-SRTP offer: the answer must take it (RFC 5763 §5).
        let dtls = inv
            .dtls_offer
            .map(|local| DtlsCall::answered(msg.body(), local).ok_or(KeyRefusal::NoDtlsAnswer));
        let checked = match &dtls {
            Some(Err(e)) => Err(*e),
            _ => checked,
        };
        let media_keys = match checked {
            Ok(k) => k,
            Err(e) => {
                tracing::info!(reason = %e, "the answer's keys are refused: hanging up");
                self.send_bye(now, call_id, dialog);
                self.emit(Event::CallFailed {
                    call: call_id.to_string(),
                    outcome: CallOutcome::Failed(488),
                });
                return;
            }
        };
        if let Some(call) = self.calls.get_mut(call_id) {
            if let Some(k) = &media_keys {
                call.crypto.retain(|a| a.suite == *k.suite());
            } else {
                call.crypto.clear();
            }
            call.keys = media_keys;
            if let Some(Ok(d)) = dtls {
                call.dtls = Some(d);
            }
            let token = msg
                .header(HeaderName::PermitToken)
                .and_then(permit::parse_permit_token)
                .map(|t| t.token);
            call.remote = Some((msg.bytes().slice_ref(msg.body()), token));
            call.codec = Some(answered_codec);
            call.state = CallState::Confirmed(Confirmed {
                dialog,
                ack: Some((dest, ack)),
            });
        }
        self.emit(Event::CallConnected {
            call: call_id.to_string(),
            remote_media,
        });
    }

    pub(crate) fn on_invite_timeout(&mut self, call_id: &str) {
        let Some(Call {
            state: CallState::Inviting(inv),
            ..
        }) = self.calls.get(call_id)
        else {
            return;
        };
        let outcome = match (inv.cancel, inv.provisional) {
            (Some(CancelReason::User), _) => CallOutcome::Cancelled,
            (_, true) => CallOutcome::Unavailable(408),
            (_, false) => CallOutcome::NoResponse,
        };
        self.fail_call(call_id, outcome);
    }

    /// A 2xx whose transaction is gone (Timer M passed): ACK it if we know the call.
    pub(crate) fn on_stray_2xx(&mut self, msg: &Message) {
        let call_id = String::from_utf8_lossy(msg.call_id().unwrap_or_default()).into_owned();
        if let Some(Call {
            state:
                CallState::Confirmed(Confirmed {
                    ack: Some((dest, ack)),
                    ..
                }),
            ..
        }) = self.calls.get(&call_id)
        {
            let (dest, ack) = (*dest, ack.clone());
            self.transmit(dest, ack);
        }
    }
}

/// The CANCEL of an INVITE (§9.1): same Request-URI, Call-ID, From, To, CSeq number,
/// Route and top Via (so the same branch) as the request it cancels.
fn cancel_for(invite: &Request) -> Request {
    Request {
        method: "CANCEL",
        uri: invite.uri.clone(),
        via: invite.via.clone(),
        from: invite.from.clone(),
        to: invite.to.clone(),
        call_id: invite.call_id.clone(),
        cseq: invite.cseq,
        headers: invite
            .headers
            .iter()
            .filter(|(n, _)| *n == "Route")
            .cloned()
            .collect(),
        body: None,
    }
}

/// The display user of a URI, for messages (`sip:bob@h` → `bob`).
pub fn user_of(uri: &str) -> String {
    let addr = NameAddr::parse(uri.as_bytes()).map_or(uri.as_bytes(), |na| na.uri);
    sip_core::message::SipUri::parse(addr)
        .and_then(|u| u.user)
        .map_or_else(
            || uri.to_string(),
            |u| String::from_utf8_lossy(u).into_owned(),
        )
}
