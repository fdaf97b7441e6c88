//! Stage 3, admit: authentication (RFC 3261 §22), the permitted-terminal gate, the call
//! limit and the load query (OPTIONS, §11) — before anything about the callee leaves.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use rand::Rng;
use sip_core::message::{Message, Method, SipUri};
use sip_core::transaction::ClientNonInvite;

use super::dialog::Parties;
use super::permit;
use super::{Answered, ClientEntry, ClientTx, Kind, Proxy, Purpose, Target, TxKey, Wake};
use crate::auth::{Decision, Role};
use crate::gate::QueryOutcome;
use crate::location::{AtAddress, aor_key};
use crate::route::{Flow, Identity, loop_hash, own_branch_for, resolve};

/// What the admit stage lets through: the local callee (for dialog counting and the
/// load query) and the parties the dialog's seal names.
#[derive(Debug)]
pub(super) struct Admitted {
    pub(super) callee: Option<String>,
    pub(super) parties: Parties,
    /// The authenticated caller (`user@domain`); `None` when authentication is off.
    pub(super) caller: Option<String>,
}

impl Proxy {
    /// Runs the authentication policy: `Err(Answered)` when it answered the request
    /// itself, `Ok(None)` when authentication is off, `Ok(Some(proof))` otherwise.
    pub(super) fn authenticate(
        &mut self,
        now: Instant,
        key: &TxKey,
        msg: &Message,
        flow: Flow,
        role: Role,
    ) -> Result<Option<sip_core::digest::Authenticated>, Answered> {
        let unix = self.unix(now);
        let salt = self.rng.random::<u64>();
        let decision = self
            .auth
            .lock()
            .check(now, unix, salt, flow.remote.ip(), role, msg);
        match decision {
            Decision::Open => Ok(None),
            Decision::Authenticated(who) => Ok(Some(who)),
            Decision::Reply(r) => {
                let headers: Vec<(&str, &[u8])> =
                    r.headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
                self.reply(now, key, msg, r.status, r.reason, &headers);
                Err(Answered)
            }
        }
    }

    /// Authentication and the gate for an out-of-dialog request that would be routed,
    /// before anything about the callee is looked up. Every method is authenticated
    /// (§22.3; the proxy is no open relay), and every one addressed to a user passes only
    /// for a permitted caller: 403 otherwise, the same for an unknown callee. A request
    /// aimed at a registered address rather than at an AOR (`sip:bob@192.0.2.7:5062`)
    /// is gated as a request to every AOR bound at that address, so there is no "dial
    /// the IP" way around the lists. `next_hop` is the URI the request would go to
    /// when it is not for a local callee (the next Route, or the Request-URI).
    pub(super) fn admit(
        &mut self,
        now: Instant,
        key: &TxKey,
        msg: &Message,
        uri: &SipUri<'_>,
        local_callee: bool,
        next_hop: &[u8],
    ) -> Result<Admitted, Answered> {
        let flow = self.server.get(key).map(|e| e.flow).ok_or(Answered)?;
        let who = self.authenticate(now, key, msg, flow, Role::Proxy)?;
        let domain = self.cfg.identity.domain.to_ascii_lowercase();
        let caller = match &who {
            Some(w) => format!("{}@{domain}", w.username),
            // Authentication off (labs): the From AOR names the caller of the dialog.
            None => msg
                .from()
                .ok()
                .and_then(|f| SipUri::parse(f.uri))
                .and_then(|u| aor_key(&u))
                .unwrap_or_default(),
        };
        let callee = uri
            .user
            .and_then(|u| std::str::from_utf8(u).ok())
            .filter(|_| local_callee)
            .map(|u| format!("{u}@{domain}"));
        let at = match (&callee, resolve(next_hop)) {
            (None, Some((_, addr))) => self.location.lock().at_address(addr),
            _ => AtAddress::Nobody,
        };
        let addressed: Vec<String> = match &at {
            AtAddress::Aors(v) => v.iter().map(ToString::to_string).collect(),
            AtAddress::Nobody | AtAddress::Shared => Vec::new(),
        };
        if who.is_some() && self.cfg.gate.enabled {
            let permitted = |callee: &str| {
                // The owner of an AOR may always reach its own devices.
                callee == caller || self.permits.lock().is_permitted(callee, &caller)
            };
            let allowed = match &callee {
                Some(c) => permitted(c),
                // An address shared by many AORs (an SBC, a PBX) is never dialled
                // as such: callers address the AOR.
                None if at == AtAddress::Shared => false,
                None => addressed.iter().all(|a| permitted(a)),
            };
            if !allowed {
                self.stats.gate_refused += 1;
                tracing::debug!("gate: caller not permitted (or unknown callee)");
                self.reply(now, key, msg, 403, "Forbidden", &[]);
                return Err(Answered);
            }
        }
        let other = callee
            .clone()
            .or_else(|| addressed.first().cloned())
            .or_else(|| aor_key(uri))
            .unwrap_or_else(|| String::from_utf8_lossy(next_hop).into_owned());
        let parties = Parties::of(&caller, &other);
        let caller = who.is_some().then_some(caller);
        Ok(Admitted {
            callee,
            parties,
            caller,
        })
    }

    /// The load check of a gated INVITE: 486 at once when the callee's advertised call
    /// limit is reached; otherwise whether to ask it with OPTIONS first.
    pub(super) fn load_check(
        &mut self,
        now: Instant,
        key: &TxKey,
        msg: &Message,
        callee: Option<&str>,
        targets: &VecDeque<Target>,
    ) -> Result<bool, Answered> {
        let (Some(callee), true) = (callee, self.cfg.gate.enabled) else {
            return Ok(false);
        };
        match msg.method() {
            Some(Method::Invite) => {}
            // A deposit asks first too: busy or silent means stored (engine::deposit).
            Some(Method::Message) if super::deposit::wants_queue(msg) => {
                return Ok(self.cfg.gate.load_query && targets.iter().all(|t| t.load_query));
            }
            _ => return Ok(false),
        }
        let limit = targets.iter().filter_map(|t| t.max_calls).min();
        if limit.is_some_and(|l| self.dialogs.lock().active(callee) >= l) {
            self.stats.busy += 1;
            self.reply(now, key, msg, 486, "Busy Here", &[]);
            return Err(Answered);
        }
        Ok(self.cfg.gate.load_query && targets.iter().all(|t| t.load_query))
    }

    /// Sends OPTIONS (RFC 3261 §11) to every target of the context: its own Call-ID,
    /// tag and branch, and nothing about the caller. The INVITE waits for the answers
    /// until the query deadline.
    pub(super) fn start_load_query(&mut self, now: Instant, ctx_id: u64) {
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        let targets: Vec<Target> = ctx.targets.iter().cloned().collect();
        let grant = ctx.grant.clone();
        let invite_call_id = ctx.request.call_id().map(<[u8]>::to_vec);
        ctx.querying = Some(u32::try_from(targets.len()).unwrap_or(u32::MAX));
        let deadline = now + self.cfg.gate.query_timeout;
        self.heap.push(Reverse((deadline, Wake::Query(ctx_id))));
        for t in targets {
            let Some(local) = self.cfg.identity.local_for(t.transport, t.dest) else {
                continue;
            };
            let branch = own_branch_for(self.shard, 'q', self.rng.random::<u64>());
            let tag = self.tag();
            let call_id = format!("{:032x}@permit", self.rng.random::<u128>());
            let uri = t
                .uri
                .clone()
                .unwrap_or_else(|| format!("sip:{}", Identity::sent_by(t.dest)));
            let domain = &self.cfg.identity.domain;
            let mut req = format!(
                "OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/{} {};branch={branch}\r\nMax-Forwards: 70\r\n\
From: <sip:permit@{domain}>;tag={tag}\r\nTo: <{uri}>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n",
                t.transport.via_token(),
                Identity::sent_by(local)
            );
            for r in &t.route {
                req.push_str("Route: ");
                req.push_str(r);
                req.push_str("\r\n");
            }
            if let Some(g) = &grant {
                let call_id = invite_call_id.as_deref().unwrap_or_default();
                let with_key = self.key_allowed(t.transport);
                req.push_str(&permit::query_headers(g, call_id, with_key));
            }
            req.push_str("Accept: application/sdp\r\nContent-Length: 0\r\n\r\n");
            let bytes = Bytes::from(req);
            let flow = Flow {
                transport: t.transport,
                local,
                remote: t.dest,
            };
            let key = TxKey {
                branch: Bytes::from(branch),
                kind: Kind::Other,
            };
            let tx = ClientTx::NonInvite(ClientNonInvite::new(
                now,
                bytes.clone(),
                flow.transport.is_reliable(),
                &self.cfg.timers,
            ));
            self.client.insert(
                key.clone(),
                ClientEntry {
                    tx,
                    flow,
                    ctx: Some(ctx_id),
                    purpose: Purpose::LoadQuery,
                    sent: bytes,
                    scheduled: None,
                },
            );
            self.drain_client(now, &key);
        }
    }

    /// A final answer to a load query (RFC 3261 §11.2).
    pub(super) fn handle_query_response(&mut self, now: Instant, ctx_id: u64, status: u16) {
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        let Some(pending) = ctx.querying else { return };
        match QueryOutcome::of(status) {
            QueryOutcome::Available if ctx.grant.as_ref().is_some_and(|g| g.direct) => {
                ctx.querying = None;
                self.redirect(now, ctx_id);
            }
            QueryOutcome::Available | QueryOutcome::Unknown => {
                ctx.querying = None;
                let hash = loop_hash(&ctx.request);
                self.try_next_target(now, ctx_id, hash);
            }
            QueryOutcome::Busy if pending > 1 => ctx.querying = Some(pending - 1),
            QueryOutcome::Busy => {
                ctx.querying = None;
                if self.deposit_instead(now, ctx_id) {
                    return;
                }
                let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
                    return;
                };
                ctx.answered = true;
                let (server, req) = (ctx.server.clone(), ctx.request.clone());
                self.stats.busy += 1;
                self.reply(now, &server, &req, 486, "Busy Here", &[]);
            }
        }
    }
}
