//! Stage "relay": for a permitted INVITE (a grant, routed mode) whose offer has active
//! video, the engine allocates a media relay call and tells each UA where to send
//! (docs/profile.md "Media relay"): `a=permit-relay:<ip> <port>` is added to every
//! relayed media section of the forwarded INVITE (the callee's port) and of each 18x
//! and 2xx with SDP going back to the caller (the caller's port). The call is freed at
//! the 2xx of a BYE, at a final failure of the INVITE (CANCEL, 4xx–6xx, timeouts), or
//! by the relay itself after inactivity.
//!
//! The engine stays sans-IO: it holds the relay through [`MediaRelay`]. Only the proxy
//! writes `a=permit-relay`: on a granted INVITE and its responses, any such line that
//! a UA put there is removed, relay on or off. Calls without a grant or without video
//! are untouched. Offers in later requests (re-INVITE, UPDATE) are not edited: the
//! allocation lives for the dialog.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use bytes::Bytes;
use sip_core::message::{Forward, Message, Method};

use super::Proxy;
use crate::relay::{MediaRelay, RelayCallId, RelayStats, sdp};

/// A dialog as the relay hook knows it: Call-ID and the caller's From tag.
type CallKey = (Bytes, Bytes);

/// What the engine remembers of one relayed call.
#[derive(Debug, Clone)]
struct Relayed {
    id: RelayCallId,
    address: IpAddr,
    /// Media section index → ports `[caller's, callee's]`.
    sections: Vec<(usize, [u16; 2])>,
}

/// What the hook counted (beside the relay's own [`RelayStats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookStats {
    /// Calls given a relay.
    pub relayed: u64,
    /// Calls with video that got no relay (range exhausted, or too large to edit).
    pub unrelayed: u64,
    /// Bodies from which a UA's own `a=permit-relay` lines were removed.
    pub foreign_attrs: u64,
    /// Relay calls freed by the engine (BYE 2xx, failed INVITE).
    pub freed: u64,
    /// Relay calls the engine holds now (until their end or the purge after the
    /// relay expired them).
    pub tracked: usize,
}

/// The engine's side of the media relay.
pub(super) struct RelayHook {
    relay: Box<dyn MediaRelay>,
    /// Relay `m=audio` sections too (video is always relayed).
    audio: bool,
    /// Bounded by the relay's capacity; calls the relay expired are dropped at purge.
    calls: HashMap<CallKey, Relayed>,
    stats: HookStats,
}

fn call_key(request: &Message) -> Option<CallKey> {
    // Copies: a slice would keep the whole INVITE alive as long as the relay call.
    let cid = Bytes::copy_from_slice(request.call_id()?);
    let tag = request
        .from_tag()
        .map_or_else(Bytes::new, Bytes::copy_from_slice);
    Some((cid, tag))
}

/// `msg` with `body` in place of its own (Content-Length fixed).
fn with_body(msg: &Message, body: &[u8]) -> Option<Message> {
    Message::parse(Forward::new(msg).body(body).to_vec().into()).ok()
}

impl RelayHook {
    /// The offer of a granted INVITE: allocate and write the callee's ports.
    fn offer(&mut self, now: Instant, token: &str, request: &Message) -> Option<Message> {
        let body = request.body();
        let foreign = sdp::has_attr(body);
        let key = call_key(request)?;
        let sections = sdp::relayed_sections(body, self.audio)
            .filter(|s| !s.is_empty() && !self.calls.contains_key(&key));
        let Some(mut sections) = sections else {
            return foreign.then(|| self.strip(request)).flatten();
        };
        sections.truncate(crate::relay::MAX_STREAMS);
        let alloc = match self.relay.allocate(now, token, sections.len()) {
            Ok(a) => a,
            Err(e) => {
                self.stats.unrelayed += 1;
                tracing::debug!(error = %e, "call not relayed");
                return foreign.then(|| self.strip(request)).flatten();
            }
        };
        let relayed = Relayed {
            id: alloc.id,
            address: alloc.address,
            sections: sections.into_iter().zip(alloc.streams).collect(),
        };
        let ports: Vec<(usize, u16)> = relayed.sections.iter().map(|(i, p)| (*i, p[1])).collect();
        let Some(edited) = with_body(request, &sdp::set_relay(body, alloc.address, &ports)) else {
            // Too large once edited (the parser's size limit): no relay.
            self.relay.free(alloc.id);
            self.stats.unrelayed += 1;
            return None;
        };
        self.stats.relayed += 1;
        self.stats.foreign_attrs += u64::from(foreign);
        self.calls.insert(key, relayed);
        Some(edited)
    }

    fn strip(&mut self, msg: &Message) -> Option<Message> {
        self.stats.foreign_attrs += 1;
        strip(msg)
    }

    /// A response with SDP going to the caller: the caller's ports.
    fn answer(&self, request: &Message, response: &Message) -> Option<Message> {
        let body = response.body();
        let relayed = call_key(request).and_then(|k| self.calls.get(&k));
        match relayed {
            Some(r) if body.starts_with(b"v=") => {
                let ports: Vec<(usize, u16)> = r.sections.iter().map(|(i, p)| (*i, p[0])).collect();
                with_body(response, &sdp::set_relay(body, r.address, &ports))
            }
            _ => sdp::has_attr(body).then(|| strip(response)).flatten(),
        }
    }

    /// Frees the relay call of the dialog `key`, if any.
    fn free(&mut self, key: &CallKey) {
        if let Some(r) = self.calls.remove(key) {
            self.stats.freed += 1;
            if let Some(c) = self.relay.free(r.id) {
                tracing::debug!(
                    packets = ?c.packets,
                    bytes = ?c.bytes,
                    dropped = c.dropped,
                    "relay call freed"
                );
            }
        }
    }

    /// The 2xx of a BYE: either party may have sent it.
    fn bye(&mut self, bye: &Message) {
        let b = bye.bytes();
        let Some(cid) = bye.call_id().map(|c| b.slice_ref(c)) else {
            return;
        };
        for tag in [bye.from_tag(), bye.to_tag()].into_iter().flatten() {
            self.free(&(cid.clone(), b.slice_ref(tag)));
        }
    }

    fn purge(&mut self) {
        let relay = &self.relay;
        self.calls.retain(|_, r| relay.alive(r.id));
    }
}

/// `msg` without any `a=permit-relay` line.
fn strip(msg: &Message) -> Option<Message> {
    with_body(
        msg,
        &sdp::set_relay(msg.body(), IpAddr::from([0, 0, 0, 0]), &[]),
    )
}

impl Proxy {
    /// Relays the media of permitted video calls through `relay` (`audio`: their audio
    /// sections too).
    pub fn set_relay(&mut self, relay: Box<dyn MediaRelay>, audio: bool) {
        self.relay = Some(RelayHook {
            relay,
            audio,
            calls: HashMap::new(),
            stats: HookStats::default(),
        });
    }

    /// The relay's counters and the hook's, when a relay is set.
    pub fn relay_stats(&self) -> Option<(RelayStats, HookStats)> {
        self.relay.as_ref().map(|h| {
            let hook = HookStats {
                tracked: h.calls.len(),
                ..h.stats
            };
            (h.relay.stats(), hook)
        })
    }

    /// Before the first branch of a context: a granted INVITE's offer gets the relay.
    pub(super) fn relay_offer(&mut self, now: Instant, ctx_id: u64) {
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        let Some(grant) = ctx.grant.as_ref().filter(|g| !g.direct) else {
            return;
        };
        if ctx.branches != 0 || ctx.request.method() != Some(&Method::Invite) {
            return;
        }
        let edited = match self.relay.as_mut() {
            Some(hook) => hook.offer(now, &grant.token, &ctx.request),
            None => sdp::has_attr(ctx.request.body())
                .then(|| strip(&ctx.request))
                .flatten(),
        };
        if let Some(m) = edited {
            ctx.request = m;
        }
    }

    /// A response of a granted INVITE on its way to the caller, edited when it carries
    /// SDP (`None`: forward it as it is).
    pub(super) fn relay_answer(&self, ctx_id: u64, response: &Message) -> Option<Message> {
        let ctx = self.contexts.get(&ctx_id)?;
        ctx.grant.as_ref()?;
        if ctx.request.method() != Some(&Method::Invite) || response.body().is_empty() {
            return None;
        }
        match &self.relay {
            Some(hook) => hook.answer(&ctx.request, response),
            None => sdp::has_attr(response.body())
                .then(|| strip(response))
                .flatten(),
        }
    }

    /// The INVITE of `ctx_id` ends without a 2xx: its relay call is freed.
    pub(super) fn relay_failed(&mut self, ctx_id: u64) {
        let Some(ctx) = self.contexts.get(&ctx_id) else {
            return;
        };
        if ctx.answered || ctx.request.method() != Some(&Method::Invite) {
            return;
        }
        if let (Some(hook), Some(key)) = (self.relay.as_mut(), call_key(&ctx.request)) {
            hook.free(&key);
        }
    }

    /// A BYE of a dialog got its 2xx.
    pub(super) fn relay_bye(hook: Option<&mut RelayHook>, bye: &Message) {
        if let Some(h) = hook {
            h.bye(bye);
        }
    }

    /// Forgets relay calls the relay expired on its own.
    pub(super) fn relay_purge(&mut self) {
        if let Some(h) = self.relay.as_mut() {
            h.purge();
        }
    }
}
