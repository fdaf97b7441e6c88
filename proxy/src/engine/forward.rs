//! Stage 5, forward: branches (RFC 3261 §16.6), sequential forking, best-response
//! selection (§16.7), CANCEL (§16.10), ACK for 2xx, and responses back upstream.

use std::cmp::Reverse;
use std::time::Instant;

use bytes::Bytes;
use sip_core::message::{Forward, HeaderName, Message, Method, NameAddr, ResponseBuilder, SipUri};
use sip_core::transaction::{AckAction, ClientInvite, ClientNonInvite, ServerNonInvite};
use sip_core::transport::Transport;

use super::dialog::{Parties, RouteKeys, SEAL_PARAM, route_id};
use super::{
    ClientEntry, ClientTx, Kind, Proxy, Purpose, ServerEntry, ServerTx, Target, TxKey, Wake,
};
use crate::route::{Flow, Identity, branch_for, loop_hash, received_via, resolve};

impl Proxy {
    /// Forwards the context's request to its next target (sequential forking by q).
    pub(super) fn try_next_target(&mut self, now: Instant, ctx_id: u64, hash: u64) {
        self.relay_offer(now, ctx_id);
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        let Some(target) = ctx.targets.pop_front() else {
            return self.finish(now, ctx_id);
        };
        ctx.branches += 1;
        ctx.provisional_seen = false;
        let branch = format!("{}.{}", branch_for(self.shard, hash), ctx.branches);
        let msg = &ctx.request;
        let method = msg.method().cloned().unwrap_or(Method::Options);
        let Some(local) = self.cfg.identity.local_for(target.transport, target.dest) else {
            ctx.best.get_or_insert_with(|| msg.clone());
            return self.finish(now, ctx_id);
        };
        let server_flow = self.server.get(&ctx.server).map(|e| e.flow);
        let seal = ctx.parties.as_ref().map(|p| (&self.route_keys, p));
        // The callee learns the token (and, on a TLS hop, the secret) in the INVITE.
        let mut permit: Vec<(&str, &[u8])> = Vec::new();
        if let (Some(g), Method::Invite) = (&ctx.grant, &method) {
            permit.push(("Permit-Token", g.token.as_bytes()));
            if target.transport == Transport::Tls || self.cfg.gate.insecure_keys {
                permit.push(("Permit-Key", g.secret.as_bytes()));
            }
        }
        let bytes = branch_request(
            &self.cfg.identity,
            self.auth_enabled,
            msg,
            &target,
            (local, server_flow),
            &branch,
            Stamps {
                seal,
                permit: &permit,
            },
        );
        let flow = Flow {
            transport: target.transport,
            local,
            remote: target.dest,
        };
        let key = TxKey {
            branch: Bytes::from(branch),
            kind: Kind::of(&method),
        };
        let reliable = flow.transport.is_reliable();
        if !ctx.targets.is_empty() {
            let at = now + self.cfg.branch_no_answer;
            self.heap
                .push(Reverse((at, Wake::Branch(ctx_id, ctx.branches))));
        }
        let tx = if method == Method::Invite {
            ctx.timer_c = Some(now + self.cfg.timer_c);
            self.heap
                .push(Reverse((now + self.cfg.timer_c, Wake::TimerC(ctx_id))));
            ClientTx::Invite(ClientInvite::new(
                now,
                bytes.clone(),
                reliable,
                &self.cfg.timers,
            ))
        } else {
            ClientTx::NonInvite(ClientNonInvite::new(
                now,
                bytes.clone(),
                reliable,
                &self.cfg.timers,
            ))
        };
        ctx.branch = Some(key.clone());
        self.stats.forwarded_requests += 1;
        self.client.insert(
            key.clone(),
            ClientEntry {
                tx,
                flow,
                ctx: Some(ctx_id),
                purpose: Purpose::Branch,
                sent: bytes,
                scheduled: None,
            },
        );
        self.drain_client(now, &key);
    }

    /// All targets are done: forward the best final response (§16.7 step 6) or 408/480.
    pub(super) fn finish(&mut self, now: Instant, ctx_id: u64) {
        self.relay_failed(ctx_id);
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        if ctx.answered {
            return;
        }
        // A deposit that did not reach the callee is stored instead (engine::deposit).
        let status = ctx.best.as_ref().and_then(Message::status).unwrap_or(408);
        if ctx.deposit.is_some()
            && super::deposit::stores_instead(status)
            && self.deposit_instead(now, ctx_id)
        {
            return;
        }
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        ctx.answered = true;
        let server = ctx.server.clone();
        match ctx.best.take() {
            Some(best) if best.status().is_some() => {
                let status = best.status().unwrap_or(500);
                if status == 503 {
                    // §16.7 step 6: a 503 is not passed upstream as such.
                    let req = ctx.request.clone();
                    return self.reply(now, &server, &req, 500, "Server Internal Error", &[]);
                }
                let bytes = Forward::new(&best).drop_top_via().to_vec();
                self.respond(now, &server, status, bytes.into());
            }
            _ => {
                let req = ctx.request.clone();
                self.reply(now, &server, &req, 408, "Request Timeout", &[]);
            }
        }
    }

    pub(super) fn handle_ack(&mut self, now: Instant, key: &TxKey, msg: &Message, flow: Flow) {
        if let Some(entry) = self.server.get_mut(key)
            && let ServerTx::Invite(t) = &mut entry.tx
            && let Ok(AckAction::Absorb) = t.handle_ack(now)
        {
            self.drain_server(now, key);
            return;
        }
        if self.absorb_ack(key) {
            return;
        }
        // ACK for a 2xx is its own transaction-less request (§13.2.2.4): forward statelessly.
        let _ = flow;
        let Some(uri) = msg.request_uri().and_then(SipUri::parse) else {
            return;
        };
        let routes: Vec<&[u8]> = msg.list(HeaderName::Route).collect();
        let own_routes = own_routes(&self.cfg.identity, &routes);
        let remaining = &routes[own_routes..];
        let (new_uri, hop) = if let Some(next) = remaining.first() {
            (
                None,
                NameAddr::parse(next).and_then(|n| self.resolve_hop(n.uri)),
            )
        } else if self.cfg.identity.is_us(&uri) {
            let Some(user) = uri.user.and_then(|u| std::str::from_utf8(u).ok()) else {
                return;
            };
            let aor = format!("{user}@{}", self.cfg.identity.domain.to_ascii_lowercase());
            let unix = self.unix(now);
            let Some(b) = self
                .location
                .lock()
                .lookup(&aor, unix)
                .and_then(|b| b.first().map(|b| b.contact.clone()))
            else {
                return;
            };
            let hop = self.resolve_hop(b.as_bytes());
            (Some(b), hop)
        } else {
            (
                None,
                self.resolve_hop(msg.request_uri().unwrap_or_default()),
            )
        };
        let Some((transport, dest)) = hop else { return };
        // The same dialog check as for other in-dialog requests (engine::dialog); a
        // forged ACK is dropped (an ACK gets no response, §17.1.1.3).
        let ruri_aor = self.local_aor(&uri);
        let sealed = self.open_seal(msg, &routes[..own_routes]);
        if !sealed.is_ok_and(|p| self.towards_party(&p, ruri_aor.as_deref(), [dest])) {
            self.stats.forged_dialogs += 1;
            tracing::debug!("ACK outside any sealed dialog dropped");
            return;
        }
        let Some(local) = self.cfg.identity.local_for(transport, dest) else {
            return;
        };
        let branch = format!("{}.ack", branch_for(self.shard, loop_hash(msg)));
        let via = format!(
            "SIP/2.0/{} {};branch={branch}",
            transport.via_token(),
            Identity::sent_by(local)
        );
        let mf = msg
            .max_forwards()
            .ok()
            .flatten()
            .unwrap_or(70)
            .saturating_sub(1);
        let mut fwd = Forward::new(msg).push_via(via.as_bytes()).max_forwards(mf);
        fwd = fwd.drop_routes(own_routes);
        if let Some(u) = &new_uri {
            fwd = fwd.request_uri(u.as_bytes());
        }
        let bytes = fwd.to_vec();
        self.send(
            Flow {
                transport,
                local,
                remote: dest,
            },
            bytes.into(),
        );
    }

    /// CANCEL (§16.10): answered 200 here, then the pending branch is cancelled.
    pub(super) fn handle_cancel(&mut self, now: Instant, key: TxKey, msg: &Message, flow: Flow) {
        let invite_key = TxKey {
            branch: key.branch.clone(),
            kind: Kind::Invite,
        };
        let ctx_id = self.server.get(&invite_key).and_then(|e| e.ctx);
        if !self.server.contains_key(&invite_key) && !self.absorbs(&invite_key) {
            return self.reply_stateless(msg, flow, 481, "Call/Transaction Does Not Exist");
        }
        if let Some(entry) = self.server.get_mut(&key) {
            if let ServerTx::NonInvite(t) = &mut entry.tx {
                let _ = t.handle_request_retransmission(now);
            }
            return self.drain_server(now, &key);
        }
        if self.absorb_request(&key, msg.bytes()) {
            return;
        }
        let tx = ServerTx::NonInvite(ServerNonInvite::new(
            now,
            flow.transport.is_reliable(),
            &self.cfg.timers,
        ));
        self.server.insert(
            key.clone(),
            ServerEntry {
                tx,
                flow,
                reply: super::validate::reply_flow(msg, flow, self.cfg.symmetric_responses),
                ctx: None,
                request: Some(msg.bytes().clone()),
                scheduled: None,
            },
        );
        self.reply(now, &key, msg, 200, "OK", &[]);
        let Some(ctx_id) = ctx_id else { return };
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        if ctx.answered {
            return;
        }
        ctx.cancelled = true;
        ctx.targets.clear();
        if ctx.provisional_seen {
            self.cancel_branch(now, ctx_id);
        } else {
            // §9.1: CANCEL only after a provisional response arrived on the branch.
            ctx.cancel_pending = true;
        }
    }

    /// Sends CANCEL for the context's current INVITE branch (§9.1).
    pub(super) fn cancel_branch(&mut self, now: Instant, ctx_id: u64) {
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        ctx.cancel_pending = false;
        let Some(branch) = ctx.branch.clone() else {
            return;
        };
        let Some(entry) = self.client.get(&branch) else {
            return;
        };
        let flow = entry.flow;
        let Ok(sent) = Message::parse(entry.sent.clone()) else {
            return;
        };
        let cancel = build_cancel_or_ack(&sent, b"CANCEL", None);
        let key = TxKey {
            branch: branch.branch.clone(),
            kind: Kind::Cancel,
        };
        if self.client.contains_key(&key) {
            return;
        }
        let tx = ClientTx::NonInvite(ClientNonInvite::new(
            now,
            cancel.clone(),
            flow.transport.is_reliable(),
            &self.cfg.timers,
        ));
        self.client.insert(
            key.clone(),
            ClientEntry {
                tx,
                flow,
                ctx: None,
                purpose: Purpose::Cancel,
                sent: cancel,
                scheduled: None,
            },
        );
        self.drain_client(now, &key);
    }

    /// A response on a branch, passed up by its client transaction (§16.7).
    pub(super) fn handle_branch_response(
        &mut self,
        now: Instant,
        ctx_id: u64,
        branch: &TxKey,
        msg: &Message,
        status: u16,
    ) {
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        // §16.7 step 3: a response with no Via left after ours is not forwarded. A final
        // one still ends the branch, as if we had generated it from the request.
        let local;
        let msg = if msg.vias().nth(1).is_some() {
            msg
        } else if status >= 300 {
            let reason = String::from_utf8_lossy(msg.reason().unwrap_or_default()).into_owned();
            let built = ResponseBuilder::new(&ctx.request, status, &reason).to_vec();
            // Stand-in for our own Via, which forwarding removes again.
            let line_end = built.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
            let mut bytes = built[..line_end].to_vec();
            bytes.extend_from_slice(b"Via: SIP/2.0/UDP 0.0.0.0;branch=z9hG4bK-pm-local\r\n");
            bytes.extend_from_slice(&built[line_end..]);
            let Ok(m) = Message::parse(bytes.into()) else {
                return;
            };
            local = m;
            &local
        } else {
            self.stats.stray_responses += 1;
            return;
        };
        let server = ctx.server.clone();
        if status < 200 {
            ctx.provisional_seen = true;
            if ctx.timer_c.is_some() {
                ctx.timer_c = Some(now + self.cfg.timer_c);
                self.heap
                    .push(Reverse((now + self.cfg.timer_c, Wake::TimerC(ctx_id))));
            }
            let cancel = ctx.cancel_pending;
            let answered = ctx.answered;
            if cancel {
                self.cancel_branch(now, ctx_id);
            }
            if status > 100 && !answered {
                let bytes = self.upstream(ctx_id, msg);
                self.respond(now, &server, status, bytes.into());
            }
            return;
        }
        ctx.timer_c = None;
        if (200..300).contains(&status) {
            ctx.answered = true;
            // Dialog accounting for the callee's call limit: a gated INVITE's 2xx
            // opens a dialog, a BYE's 2xx closes it.
            match (ctx.request.method(), &ctx.callee, ctx.request.call_id()) {
                (Some(Method::Invite), Some(callee), Some(cid)) => {
                    // Copied: a slice would keep the whole INVITE alive with the dialog.
                    let cid = Bytes::copy_from_slice(cid);
                    self.dialogs.lock().established(cid, callee, now);
                }
                (Some(Method::Bye), _, Some(cid)) => {
                    self.dialogs.lock().ended(cid);
                    self.remembered.lock().ended(cid);
                    Self::relay_bye(self.relay.as_mut(), &ctx.request);
                }
                _ => {}
            }
            if let (Some(Method::Invite), Some(p), Some(cid), Some(ft), Some(tt)) = (
                ctx.request.method(),
                ctx.parties,
                ctx.request.call_id(),
                ctx.request.from_tag(),
                msg.to_tag(),
            ) {
                // Copies, not slices of the INVITE, which would live as long as the dialog.
                let tags = (Bytes::copy_from_slice(ft), Bytes::copy_from_slice(tt));
                let cid = Bytes::copy_from_slice(cid);
                self.remembered.lock().established(cid, tags, p, now);
            }
            let bytes = self.upstream(ctx_id, msg);
            return self.respond(now, &server, status, bytes.into());
        }
        if ctx.branch.as_ref() != Some(branch) || ctx.answered {
            return;
        }
        let better = ctx
            .best
            .as_ref()
            .and_then(Message::status)
            .is_none_or(|b| rank(status) < rank(b));
        if better {
            ctx.best = Some(msg.clone());
        }
        if status >= 600 || ctx.cancelled {
            ctx.targets.clear();
        }
        let hash = loop_hash(&ctx.request);
        self.try_next_target(now, ctx_id, hash);
    }

    /// A response of a branch as it goes upstream: our Via removed; for a permitted
    /// INVITE, the caller learns the token and (on a TLS hop) the session secret in
    /// every provisional and 2xx response (docs/profile.md), and whatever the callee
    /// put in those headers is dropped.
    fn upstream(&self, ctx_id: u64, msg: &Message) -> Vec<u8> {
        let edited = self.relay_answer(ctx_id, msg);
        let msg = edited.as_ref().unwrap_or(msg);
        let fwd = Forward::new(msg).drop_top_via();
        let Some(g) = self.contexts.get(&ctx_id).and_then(|c| c.grant.as_ref()) else {
            return fwd.to_vec();
        };
        let ctx_server = self.contexts.get(&ctx_id).map(|c| &c.server);
        let caller_hop = ctx_server.and_then(|k| {
            self.server
                .get(k)
                .map(|e| e.flow.transport)
                .or_else(|| self.absorbed_transport(k))
        });
        let mut fwd = fwd
            .drop_header(HeaderName::PermitToken)
            .drop_header(HeaderName::PermitKey)
            .header("Permit-Token", g.token.as_bytes());
        if caller_hop.is_some_and(|t| self.key_allowed(t)) {
            fwd = fwd.header("Permit-Key", g.secret.as_bytes());
        }
        fwd.to_vec()
    }

    /// A response matching no transaction (e.g. a 2xx retransmission after ours ended):
    /// forwarded statelessly to the next Via if the top Via is ours (§16.7 / §16.11).
    pub(super) fn forward_stateless_response(&mut self, msg: &Message) {
        let mut vias = msg.vias();
        let (Some(Ok(top)), Some(Ok(next))) = (vias.next(), vias.next()) else {
            return;
        };
        if !self.cfg.identity.is_own_sent_by(top.host, top.port) {
            self.stats.stray_responses += 1;
            return;
        }
        let transport = Transport::from_token(next.transport).unwrap_or(Transport::Udp);
        let host = next.received().unwrap_or(next.host);
        let port = next.rport().flatten().or(next.port).unwrap_or(5060);
        let uri = [b"sip:", host, b":", port.to_string().as_bytes()].concat();
        let Some((_, dest)) = resolve(&uri) else {
            return;
        };
        let Some(local) = self.cfg.identity.local_for(transport, dest) else {
            return;
        };
        let bytes = Forward::new(msg).drop_top_via().to_vec();
        self.send(
            Flow {
                transport,
                local,
                remote: dest,
            },
            bytes.into(),
        );
    }
}

/// What the proxy stamps on a branch request besides the §16.6 edits: the dialog seal
/// in its Record-Route and the permit headers for the callee.
pub(super) struct Stamps<'a> {
    pub(super) seal: Option<(&'a RouteKeys, &'a Parties)>,
    pub(super) permit: &'a [(&'a str, &'a [u8])],
}

/// The request of one branch (§16.6): the received bytes plus our Via (with the
/// client's `received`/`rport`), Max-Forwards − 1, the target's Request-URI and Path
/// routes, our own Route values removed, our credentials consumed (§22.3), and
/// Record-Route on dialog-creating requests (twice across transports, RFC 5658).
pub(super) fn branch_request(
    identity: &Identity,
    consume_credentials: bool,
    msg: &Message,
    target: &Target,
    (local, server_flow): (std::net::SocketAddr, Option<Flow>),
    branch: &str,
    Stamps { seal, permit }: Stamps<'_>,
) -> Bytes {
    let method = msg.method().cloned().unwrap_or(Method::Options);
    let sent_by = Identity::sent_by(local);
    let via = format!(
        "SIP/2.0/{} {sent_by};branch={branch}",
        target.transport.via_token()
    );
    let dialog_creating = matches!(method, Method::Invite | Method::Subscribe | Method::Refer)
        && msg.to_tag().is_none();
    let mf = msg
        .max_forwards()
        .ok()
        .flatten()
        .unwrap_or(70)
        .saturating_sub(1);
    let received = server_flow.and_then(|f| received_via(msg, f.remote));
    let mut fwd = Forward::new(msg).push_via(via.as_bytes()).max_forwards(mf);
    if let Some(v) = &received {
        fwd = fwd.replace_top_via(v.as_bytes());
    }
    if consume_credentials {
        // Our credentials are consumed here (RFC 3261 §22.3); none go downstream.
        fwd = fwd.drop_header(HeaderName::ProxyAuthorization);
    }
    // Only the proxy issues tokens and secrets: whatever the sender put is dropped.
    fwd = fwd
        .drop_header(HeaderName::PermitToken)
        .drop_header(HeaderName::PermitKey);
    for (name, value) in permit {
        fwd = fwd.header(name, value);
    }
    if let Some(uri) = &target.uri {
        fwd = fwd.request_uri(uri.as_bytes());
    }
    let routes: Vec<&[u8]> = msg.list(HeaderName::Route).collect();
    fwd = fwd.drop_routes(own_routes(identity, &routes));
    let rr;
    if dialog_creating {
        let inbound = server_flow.map_or((target.transport, local), |f| (f.transport, f.local));
        let outbound = (target.transport, local);
        // RFC 5658 §3.2: when the two sides differ in transport or interface, one
        // Record-Route per side; the callee's side on top.
        let call_id = msg.call_id().unwrap_or_default();
        let caller_tag = msg.from_tag().unwrap_or_default();
        let rr_of = |side| record_route(side, seal, call_id, caller_tag);
        rr = if inbound == outbound {
            rr_of(inbound)
        } else {
            format!("{}, {}", rr_of(outbound), rr_of(inbound))
        };
        fwd = fwd.record_route(rr.as_bytes());
    }
    for r in &target.route {
        fwd = fwd.header("Route", r.as_bytes());
    }
    fwd.to_vec().into()
}

/// How many leading Route values name us (§16.4; two after double record-routing).
pub(super) fn own_routes(identity: &Identity, routes: &[&[u8]]) -> usize {
    routes
        .iter()
        .take_while(|r| {
            NameAddr::parse(r)
                .and_then(|n| SipUri::parse(n.uri))
                .is_some_and(|u| identity.is_us(&u))
        })
        .count()
}

/// Our Record-Route value for one side (RFC 3261 §16.6 item 4; `lr`, RFC 3261 §19.1.1).
pub(super) fn record_route(
    (transport, addr): (Transport, std::net::SocketAddr),
    seal: Option<(&RouteKeys, &Parties)>,
    call_id: &[u8],
    caller_tag: &[u8],
) -> String {
    let param = match transport {
        Transport::Udp => "",
        Transport::Tcp => ";transport=tcp",
        Transport::Tls => ";transport=tls",
    };
    let uri = format!("sip:{}{param};lr", Identity::sent_by(addr));
    // The dialog seal (engine::dialog) over this very route, as the UAs will copy it.
    let sealed = seal.and_then(|(keys, parties)| {
        let route = route_id(&SipUri::parse(uri.as_bytes())?);
        let pm = keys.seal(&route, call_id, caller_tag, parties);
        Some(format!(
            "{uri};{}={pm}",
            String::from_utf8_lossy(SEAL_PARAM)
        ))
    });
    format!("<{}>", sealed.unwrap_or(uri))
}

/// §16.7 step 6 preference: 6xx first, then the lowest class; 503 counts as 5xx.
pub(super) fn rank(status: u16) -> u16 {
    if status >= 600 { 0 } else { status / 100 * 100 }
}

/// CANCEL (§9.1) or ACK for a non-2xx (§17.1.1.3) from the request as sent: same
/// Request-URI, top Via, Route, From, Call-ID and CSeq number; the ACK takes the
/// response's To (with its tag).
pub(super) fn build_cancel_or_ack(
    sent: &Message,
    method: &[u8],
    response: Option<&Message>,
) -> Bytes {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(sent.request_uri().unwrap_or_default());
    out.extend_from_slice(b" SIP/2.0\r\n");
    let line = |out: &mut Vec<u8>, name: &str, v: &[u8]| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    };
    if let Some(v) = sent.list(HeaderName::Via).next() {
        line(&mut out, "Via", v);
    }
    for r in sent.headers(HeaderName::Route) {
        line(&mut out, "Route", r);
    }
    line(&mut out, "Max-Forwards", b"70");
    line(
        &mut out,
        "From",
        sent.header(HeaderName::From).unwrap_or_default(),
    );
    let to = response
        .and_then(|r| r.header(HeaderName::To))
        .or_else(|| sent.header(HeaderName::To));
    line(&mut out, "To", to.unwrap_or_default());
    line(&mut out, "Call-ID", sent.call_id().unwrap_or_default());
    let seq = sent.cseq().map_or(1, |c| c.seq);
    line(
        &mut out,
        "CSeq",
        format!("{seq} {}", String::from_utf8_lossy(method)).as_bytes(),
    );
    line(&mut out, "Content-Length", b"0");
    out.extend_from_slice(b"\r\n");
    out.into()
}
