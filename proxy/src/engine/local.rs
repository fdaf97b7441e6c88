//! Requests the proxy answers itself: OPTIONS to the proxy, REGISTER (registrar,
//! RFC 3261 §10.3) and PUBLISH of a callee's own list.

use std::time::Instant;

use sip_core::message::{HeaderName, Message, Method, ResponseBuilder, SipUri};

use super::{Proxy, TxKey};
use crate::auth::Role;
use crate::location::Stored;
use crate::location::aor_key;
use crate::manage;
use crate::permits::Aor;
use crate::registrar::{Registered, handle_register};

pub(super) const ALLOW: &[u8] = b"INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, REFER, INFO, UPDATE, PRACK, PUBLISH";

impl Proxy {
    /// Writes management PUBLISHes through `writer` (off this thread) instead of on
    /// this thread; each shard gets its own handle.
    pub fn set_permit_writer(&mut self, writer: Box<dyn manage::PermitWriter>) {
        self.publisher = Some(writer);
    }

    /// PUBLISH of a callee's own list (docs/profile.md "Managing the list"): the
    /// request is authenticated as for the registrar (401) and only the owner of the
    /// AOR may change it (403 otherwise, and without authentication).
    pub(super) fn handle_manage(
        &mut self,
        now: Instant,
        key: TxKey,
        msg: &Message,
        uri: &SipUri<'_>,
    ) {
        let Some(flow) = self.server.get(&key).map(|e| e.flow) else {
            return;
        };
        let Ok(who) = self.authenticate(now, &key, msg, flow, Role::Registrar) else {
            return;
        };
        let user = uri
            .user
            .and_then(|u| std::str::from_utf8(u).ok())
            .unwrap_or_default();
        let owner = Aor::parse(&format!("{user}@{}", self.cfg.identity.domain));
        let (Some(who), Ok(owner)) = (who, owner) else {
            return self.reply(now, &key, msg, 403, "Forbidden", &[]);
        };
        if who.username != user {
            return self.reply(now, &key, msg, 403, "Forbidden", &[]);
        }
        // A change leaves this thread for the permit writer; a read (no body) is
        // answered from the table the gate uses, here and now.
        if let Some(writer) = self.publisher.as_mut()
            && !msg.body().is_empty()
        {
            self.next_id += 1;
            let id = self.next_id;
            let job = manage::PublishJob {
                id,
                owner,
                msg: msg.clone(),
            };
            if writer.submit(job).is_err() {
                return self.unavailable(now, &key, msg, b"1");
            }
            self.publishing.insert(id, (key, msg.clone()));
            return;
        }
        let r = manage::handle_publish(&mut self.permits.lock(), &owner, msg);
        self.answer_manage(now, &key, msg, &r);
    }

    /// Management PUBLISHes whose write finished on the permit writer: the table takes
    /// in what the writer committed (another connection's write), then each is answered.
    pub(super) fn settle_publishes(&mut self, now: Instant) {
        let mut done = Vec::new();
        if let Some(writer) = self.publisher.as_mut() {
            while let Some(d) = writer.poll_done() {
                done.push(d);
            }
        }
        if done.is_empty() {
            return;
        }
        self.permits.lock().refresh_now();
        for (id, r) in done {
            if let Some((key, msg)) = self.publishing.remove(&id) {
                self.answer_manage(now, &key, &msg, &r);
            }
        }
    }

    /// Sends the management reply `r` to `msg`.
    fn answer_manage(&mut self, now: Instant, key: &TxKey, msg: &Message, r: &manage::ManageReply) {
        let tag = self.tag();
        let mut b = ResponseBuilder::new(msg, r.status, r.reason).to_tag(tag.as_bytes());
        for (n, v) in &r.headers {
            if *n != "Content-Type" {
                b = b.header(n, v.as_bytes());
            }
        }
        if let Some(body) = &r.body {
            b = b.body(manage::CONTENT_TYPE.as_bytes(), body.as_bytes());
        }
        let bytes = b.to_vec();
        self.respond(now, key, r.status, bytes.into());
    }

    /// Requests addressed to the proxy itself: REGISTER and OPTIONS.
    pub(super) fn handle_local(&mut self, now: Instant, key: TxKey, msg: Message, method: &Method) {
        match method {
            Method::Options => self.reply(
                now,
                &key,
                &msg,
                200,
                "OK",
                &[
                    ("Allow", ALLOW),
                    ("Accept", b"application/sdp"),
                    ("Supported", b"path"),
                ],
            ),
            Method::Register => self.handle_register(now, key, &msg),
            _ => self.reply(
                now,
                &key,
                &msg,
                405,
                "Method Not Allowed",
                &[("Allow", ALLOW)],
            ),
        }
    }

    pub(super) fn handle_register(&mut self, now: Instant, key: TxKey, msg: &Message) {
        self.stats.registrations += 1;
        // RFC 3261 §10.3 step 3: unknown extensions in Require get 420.
        if let Some(req) = msg
            .list(HeaderName::Require)
            .find(|t| !t.eq_ignore_ascii_case(b"path"))
        {
            let unsupported = req.to_vec();
            return self.reply(
                now,
                &key,
                msg,
                420,
                "Bad Extension",
                &[("Unsupported", &unsupported)],
            );
        }
        let flow = self.server.get(&key).map(|e| e.flow);
        let Some(flow) = flow else { return };
        // §10.3 step 3: authenticate before looking at the AOR, so that nothing about
        // which AORs exist is told to an unauthenticated sender.
        let Ok(who) = self.authenticate(now, &key, msg, flow, Role::Registrar) else {
            return;
        };
        // §10.3 step 5: the AOR in To must be one of this domain.
        let to = msg.to().ok().and_then(|t| SipUri::parse(t.uri));
        let Some(to) = to.filter(|u| self.cfg.identity.is_us(u)) else {
            return self.reply(now, &key, msg, 404, "Not Found", &[]);
        };
        let Some(user) = to.user.and_then(|u| std::str::from_utf8(u).ok()) else {
            return self.reply(now, &key, msg, 400, "Missing User In To", &[]);
        };
        let aor = format!("{user}@{}", self.cfg.identity.domain.to_ascii_lowercase());
        debug_assert!(aor_key(&to).is_some());
        // §10.3 step 4 and §26.1.1: only the owner of an AOR changes its bindings.
        if who.is_some_and(|w| w.username != user) {
            return self.reply(now, &key, msg, 403, "Forbidden", &[]);
        }
        let unix = self.unix(now);
        let registered = handle_register(
            &self.cfg.registrar,
            &mut self.location.lock(),
            &aor,
            msg,
            (flow.transport, flow.remote),
            unix,
        );
        match registered {
            Registered::Ok(contacts, Stored::Now) => {
                self.answer_register(now, &key, msg, &aor, contacts);
            }
            Registered::Ok(contacts, Stored::Pending(seq)) => {
                self.held.push_back(HeldRegister {
                    seq,
                    key,
                    msg: msg.clone(),
                    aor,
                    contacts,
                });
            }
            Registered::Reject {
                status,
                reason,
                min_expires,
            } => {
                let me = min_expires.map(|m| m.to_string());
                let mut headers: Vec<(&str, &[u8])> =
                    me.iter().map(|m| ("Min-Expires", m.as_bytes())).collect();
                // RFC 3261 §21.5.4: a 503 may say when to try again.
                if status == 503 {
                    headers.push(("Retry-After", b"1"));
                }
                self.reply(now, &key, msg, status, reason, &headers);
            }
        }
    }

    /// The 200 of a REGISTER whose bindings are stored (§10.3 step 8: every current
    /// binding with its remaining time).
    fn answer_register(
        &mut self,
        now: Instant,
        key: &TxKey,
        msg: &Message,
        aor: &str,
        contacts: Vec<(String, u64)>,
    ) {
        let lines: Vec<Vec<u8>> = contacts
            .into_iter()
            .map(|(c, left)| {
                let mut v = Vec::with_capacity(c.len() + 22);
                v.push(b'<');
                v.extend_from_slice(c.as_bytes());
                v.extend_from_slice(b">;expires=");
                v.extend_from_slice(itoa::Buffer::new().format(left).as_bytes());
                v
            })
            .collect();
        let headers: Vec<(&str, &[u8])> = lines.iter().map(|v| ("Contact", v.as_slice())).collect();
        self.reply(now, key, msg, 200, "OK", &headers);
        self.after_register(now, aor, msg);
    }

    /// Answers the REGISTERs whose writes the store worker settled: 200 once
    /// committed, 500 when the group failed (never a 200 for a binding not stored).
    pub(super) fn settle_writes(&mut self, now: Instant) {
        let mut ready = Vec::new();
        {
            let mut location = self.location.lock();
            location.settle();
            while let Some(h) = self.held.front() {
                let Some(ok) = location.outcome(h.seq) else {
                    break;
                };
                ready.extend(self.held.pop_front().map(|h| (h, ok)));
            }
        }
        for (h, ok) in ready {
            if ok {
                self.answer_register(now, &h.key, &h.msg, &h.aor, h.contacts);
            } else {
                self.reply(now, &h.key, &h.msg, 500, "Storage Failure", &[]);
            }
        }
    }
}

/// A REGISTER whose 200 waits for its bindings' write to commit.
pub(super) struct HeldRegister {
    seq: u64,
    key: TxKey,
    msg: Message,
    aor: String,
    contacts: Vec<(String, u64)>,
}
