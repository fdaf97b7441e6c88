//! The UAS side of calls (RFC 3261 §13.3): the INVITE we are offered, CANCEL of it
//! (§9.2), re-INVITE, BYE (§15.1.2), the ACK of our 2xx, and the 2xx retransmissions
//! and ring timeouts that `handle_timeout` fires.

use std::time::Instant;

use rand::Rng;
use sip_core::message::{Message, ResponseBuilder};

use sip_core::permit::SessionSecret;

use super::{Call, CallState, CancelReason, Confirmed, Offered, cancel_for};
use crate::engine::{CallId, Event, Purpose, TxKey, Ua};
use crate::keys::{self, AnswerKeys, PeerCrypto};
use crate::request::{self, Dest};
use crate::{permit, policy};

impl Ua {
    pub(crate) fn on_invite(&mut self, now: Instant, key: &TxKey, msg: Message) {
        let trying = ResponseBuilder::new(&msg, 100, "Trying").to_vec();
        self.respond(now, key, 100, trying.into());
        let call_id = String::from_utf8_lossy(msg.call_id().unwrap_or_default()).into_owned();
        let Some(dest) = self.server_dest(key) else {
            return;
        };
        let from_proxy = self.is_from_proxy(&dest);
        let decision = if self.calls.contains_key(&call_id) {
            // Same Call-ID, new branch: a merged request (§8.2.2.2).
            Err(policy::Refusal {
                status: 482,
                reason: "Loop Detected",
                header: None,
            })
        } else {
            self.check_permit(now, &msg, &dest)
                .and_then(|secret| Ok((policy::accept_invite(&msg, self.load())?, secret)))
        };
        // The keys of the call: the secret the proxy told us (load query, or a routed
        // INVITE on a TLS hop) or ordinary SDES (crate::keys::answer).
        let decision = decision.and_then(|(offer, secret)| {
            let secret = secret.or_else(|| {
                from_proxy
                    .then(|| permit::permit_key(&msg))
                    .flatten()
                    .or_else(|| self.permits.secret(&call_id).cloned())
            });
            let peer = PeerCrypto::of(msg.body());
            let local = self.cfg.dtls;
            match keys::answer_offer(
                &peer,
                secret.as_ref(),
                &call_id,
                !from_proxy,
                local,
                &mut self.rng,
            ) {
                Ok(k) => Ok((offer, k, peer.savp)),
                Err(e) => {
                    tracing::info!(reason = %e, "INVITE refused (488)");
                    Err(policy::Refusal {
                        status: 488,
                        reason: "Not Acceptable Here",
                        header: None,
                    })
                }
            }
        });
        match decision {
            Err(r) => {
                let tag = request::tag(&mut self.rng);
                let mut resp =
                    ResponseBuilder::new(&msg, r.status, r.reason).to_tag(tag.as_bytes());
                if let Some((name, value)) = r.header {
                    resp = resp.header(name, value.as_bytes());
                }
                self.respond(now, key, r.status, resp.to_vec().into());
                self.emit(Event::IncomingRefused { status: r.status });
            }
            Ok((offer, keyed, savp)) => {
                let from = msg
                    .from()
                    .ok()
                    .map(|f| String::from_utf8_lossy(f.uri).into_owned())
                    .unwrap_or_default();
                let session_id = self.rng.random::<u32>().into();
                let mut call = Call::new(
                    CallState::Offered(Offered {
                        key: key.clone(),
                        request: msg,
                        offer: offer.clone(),
                    }),
                    session_id,
                    None,
                );
                match keyed {
                    AnswerKeys::Sdes(line, k) => {
                        call.crypto = vec![line];
                        call.keys = Some(k);
                    }
                    AnswerKeys::Dtls(d) => call.dtls = Some(d),
                    AnswerKeys::Plain => {}
                }
                call.savp = savp;
                call.codec = offer.codec;
                // A caller that reached us directly over a stream is answered, and
                // later asked, over its own connection (RFC 5626 §5.3 in spirit).
                if !from_proxy && dest.transport.is_reliable() {
                    call.flow = Some(dest);
                }
                self.calls.insert(call_id.clone(), call);
                self.emit(Event::IncomingCall {
                    call: call_id,
                    from,
                    offer,
                });
            }
        }
    }

    /// Permit mode: the INVITE's `Permit-Token` must be one the proxy told us for this
    /// caller and Call-ID, unexpired and unused; else 403 (RFC 3261 §21.4.4), and the
    /// refused source is logged (redacted at info level; the token never). Returns the
    /// call's session secret from the load query, if any.
    fn check_permit(
        &mut self,
        now: Instant,
        msg: &Message,
        dest: &Dest,
    ) -> Result<Option<SessionSecret>, policy::Refusal> {
        if !self.cfg.permit {
            return Ok(None);
        }
        let unix = self.unix(now);
        self.permits.accept_invite(msg, unix).map_err(|e| {
            tracing::info!(
                source = %permit::redact(dest.remote),
                reason = %e,
                "INVITE refused (403): no valid permit token"
            );
            tracing::debug!(source = %dest.remote, transport = ?dest.transport, "refused INVITE's source");
            policy::Refusal {
                status: 403,
                reason: "Forbidden",
                header: None,
            }
        })
    }

    /// A re-INVITE in a confirmed dialog: answered with our unchanged description
    /// (RFC 3264 §8: same version, nothing changes).
    pub(crate) fn on_reinvite(&mut self, now: Instant, key: &TxKey, msg: &Message) {
        let found = self.call_of(msg).and_then(|c| match &c.state {
            CallState::Confirmed(_) => c.sdp(),
            _ => None,
        });
        let resp = match &found {
            Some(body) => {
                let contact = format!("<{}>", self.cfg.local.contact_uri());
                ResponseBuilder::new(msg, 200, "OK")
                    .header("Contact", contact.as_bytes())
                    .body(b"application/sdp", body.as_bytes())
                    .to_vec()
            }
            None => ResponseBuilder::new(msg, 481, "Call/Transaction Does Not Exist").to_vec(),
        };
        let status = if found.is_some() { 200 } else { 481 };
        self.respond(now, key, status, resp.into());
    }

    /// The call an in-dialog request belongs to (§12.2.2).
    pub(crate) fn call_of(&self, msg: &Message) -> Option<&Call> {
        let call_id = std::str::from_utf8(msg.call_id()?).ok()?;
        let call = self.calls.get(call_id)?;
        call.dialog()
            .is_some_and(|d| d.matches_request(msg))
            .then_some(call)
    }

    pub(crate) fn on_bye(&mut self, now: Instant, key: &TxKey, msg: &Message) {
        let known = self.call_of(msg).is_some();
        let call_id = String::from_utf8_lossy(msg.call_id().unwrap_or_default()).into_owned();
        if known {
            let resp = ResponseBuilder::new(msg, 200, "OK").to_vec();
            self.respond(now, key, 200, resp.into());
            self.calls.remove(&call_id);
            self.emit(Event::CallEnded {
                call: call_id,
                by_peer: true,
            });
        } else {
            let resp = ResponseBuilder::new(msg, 481, "Call/Transaction Does Not Exist").to_vec();
            self.respond(now, key, 481, resp.into());
        }
    }

    /// CANCEL (§9.2): 200 if it matches an INVITE server transaction, and 487 for that
    /// INVITE if we have not answered it yet; 481 otherwise.
    pub(crate) fn on_cancel(&mut self, now: Instant, key: &TxKey, msg: &Message) {
        let invite_key: TxKey = (key.0.clone(), "INVITE");
        if !self.has_server(&invite_key) {
            let resp = ResponseBuilder::new(msg, 481, "Call/Transaction Does Not Exist").to_vec();
            self.respond(now, key, 481, resp.into());
            return;
        }
        let resp = ResponseBuilder::new(msg, 200, "OK").to_vec();
        self.respond(now, key, 200, resp.into());
        let call_id = String::from_utf8_lossy(msg.call_id().unwrap_or_default()).into_owned();
        if let Some(Call {
            state: CallState::Offered(o),
            ..
        }) = self.calls.get(&call_id)
        {
            let tag = request::tag(&mut self.rng);
            let resp = ResponseBuilder::new(&o.request, 487, "Request Terminated")
                .to_tag(tag.as_bytes())
                .to_vec();
            self.respond(now, &invite_key, 487, resp.into());
            self.calls.remove(&call_id);
            self.emit(Event::CallEnded {
                call: call_id,
                by_peer: true,
            });
        }
    }

    /// The ACK of our 2xx (§13.3.1.4): the call is up.
    pub(crate) fn on_dialog_ack(&mut self, msg: &Message) {
        let Some(call_id) = msg.call_id().and_then(|c| std::str::from_utf8(c).ok()) else {
            return;
        };
        let call_id = call_id.to_string();
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        let CallState::Answered(a) = &call.state else {
            return; // an ACK for a re-INVITE, or late: nothing to do
        };
        if !a.dialog.matches_request(msg) {
            return;
        }
        let CallState::Answered(a) = std::mem::replace(&mut call.state, CallState::Ending) else {
            return;
        };
        let remote_media = Some(a.remote_media);
        call.state = CallState::Confirmed(Confirmed {
            dialog: a.dialog,
            ack: None,
        });
        self.emit(Event::CallConnected {
            call: call_id,
            remote_media,
        });
    }

    /// Ring timeouts (UAC) and 2xx retransmissions (UAS, §13.3.1.4: T1 doubling up to
    /// T2; no ACK within 64·T1 ends the call with a BYE).
    pub(crate) fn handle_call_timers(&mut self, now: Instant) {
        let ids: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, c)| c.timer().is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        let t2 = self.cfg.timers.t2;
        for id in ids {
            let Some(call) = self.calls.get_mut(&id) else {
                continue;
            };
            match &mut call.state {
                CallState::Inviting(inv) => {
                    inv.cancel = Some(CancelReason::RingTimeout);
                    if inv.provisional && !inv.cancel_sent {
                        inv.cancel_sent = true;
                        let (req, dest, branch) =
                            (cancel_for(&inv.req), inv.dest, inv.key.0.clone());
                        self.send_request(now, branch, req, dest, Purpose::Cancel, 0);
                    }
                }
                CallState::Answered(a) if a.give_up_at <= now => {
                    let CallState::Answered(a) =
                        std::mem::replace(&mut call.state, CallState::Ending)
                    else {
                        continue;
                    };
                    self.send_bye(now, &id, a.dialog);
                }
                CallState::Answered(a) => {
                    a.interval = (a.interval * 2).min(t2);
                    a.retransmit_at = Some(now + a.interval);
                    let (dest, resp) = (a.dest, a.response.clone());
                    self.transmit(dest, resp);
                }
                _ => {}
            }
        }
    }
}
