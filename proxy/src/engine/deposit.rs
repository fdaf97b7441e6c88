//! Store-and-forward in the engine (docs/profile.md "Store and forward"; DESIGN item 7).
//!
//! - Deposit: a MESSAGE (RFC 3428) from a permitted caller that asks to be queued
//!   (RFC 3841 §9.1 `Request-Disposition: queue`) is stored instead of failing when the
//!   callee has no live binding (404/480), when the load query says busy (486/600) or
//!   goes unanswered, or when the forwarded MESSAGE gets 486/600/480/408. The item is
//!   written and synced before the caller gets `202 Accepted`.
//! - Transfer request: the callee's UA sends MESSAGE to its own AOR with
//!   `Event: permit-transfer`, authenticated as the owner (401); the proxy answers 200
//!   and delivers each item as a MESSAGE over the same flow, carrying `Permit-Item`,
//!   and deletes it only on the UA's 2xx to that MESSAGE.
//!
//! The storage write is synchronous, like the registrar's binding write, behind the
//! [`crate::mailbox::StoredItems`] trait.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::time::Instant;

use bytes::Bytes;
use rand::Rng;
use serde::Deserialize;
use sip_core::message::{HeaderName, Message, Method, NameAddr, SipUri, trim};
use sip_core::transaction::ClientNonInvite;

use super::admit::Admitted;
use super::mwi::Subscriptions;
use super::{ClientEntry, ClientTx, Kind, Proxy, Purpose, Shared, Target, TxKey};
use crate::auth::Role;
use crate::location::aor_key;
use crate::mailbox::{
    DepositError, DepositJob, DepositWriter, Item, ItemId, Mailbox, Slot, hex, summary,
};
use crate::route::{Flow, Identity, own_branch_for};
use crate::upload::{ANNOUNCE_TYPE, Announce, FILE_TYPE, Purpose as UrlPurpose, Tokens};

/// The event package of a transfer request.
pub const TRANSFER_EVENT: &[u8] = b"permit-transfer";
/// The body type of a transfer request and of its 200.
pub const TRANSFER_TYPE: &str = "application/permit-transfer+json";
/// Largest transfer-request body.
const TRANSFER_BODY_MAX: usize = 16 * 1024;
/// Items one transfer request delivers at most.
const TRANSFER_MAX: usize = 100;
/// Longest stored Content-Type.
const CONTENT_TYPE_MAX: usize = 128;

/// What the engine keeps for store-and-forward.
#[derive(Default)]
pub(super) struct StoreForward {
    pub(super) mailbox: Shared<Mailbox>,
    pub(super) subs: Subscriptions,
    /// Requests the proxy sent on its own (NOTIFY, delivering MESSAGE).
    pub(super) outgoing: HashMap<TxKey, Outgoing>,
    /// Items whose delivering MESSAGE is under way.
    in_flight: HashMap<ItemId, TxKey>,
    /// Off: `Request-Disposition: queue` is ignored (config `[store] enabled`).
    pub(super) disabled: bool,
    /// Large files over HTTP (crate::upload): URL signing, and how long an announced
    /// upload may take. `None`: announcements get 501.
    upload: Option<(Tokens, u64)>,
    /// Announced uploads whose owner is told once they complete (checked each purge).
    pending_uploads: HashMap<ItemId, String>,
    /// Where deposits are written when not on this thread (each shard its own handle).
    writer: Option<Box<dyn DepositWriter>>,
    /// Deposits handed to `writer`, by ticket, waiting for their outcome.
    writing: HashMap<u64, HeldDeposit>,
}

/// A deposit whose write is under way: what its answer needs.
struct HeldDeposit {
    key: TxKey,
    msg: Message,
    owner: String,
    id: ItemId,
    expires_at: u64,
    size: usize,
}

impl StoreForward {
    /// Another shard's part: the same mailbox and settings; subscriptions and the
    /// proxy's own requests stay with the shard that has their transactions.
    pub(super) fn for_shard(&self) -> Self {
        Self {
            mailbox: self.mailbox.clone(),
            disabled: self.disabled,
            upload: self.upload.clone(),
            ..Self::default()
        }
    }
}

/// A request of the proxy's own, awaiting its final response.
pub(super) enum Outgoing {
    Delivery { id: ItemId, owner: String },
    Notify(Option<super::mwi::SubKey>),
}

/// Whether the request asks to be queued when the callee is unavailable (RFC 3841 §9.1:
/// `queue`, comma-separated directives, case-insensitive).
pub(super) fn wants_queue(msg: &Message) -> bool {
    msg.list(HeaderName::RequestDisposition)
        .any(|d| d.trim_ascii().eq_ignore_ascii_case(b"queue"))
}

/// Whether `msg` names the event package `package` in its Event header.
pub(super) fn has_event(msg: &Message, package: &[u8]) -> bool {
    msg.header(HeaderName::Event).is_some_and(|e| {
        let p = e.split(|&b| b == b';').next().unwrap_or_default();
        trim(p).eq_ignore_ascii_case(package)
    })
}

/// Whether the deposit announces a large file (`application/permit-upload+json`).
fn is_announcement(msg: &Message) -> bool {
    msg.header(HeaderName::ContentType).is_some_and(|v| {
        let v = v.split(|&b| b == b';').next().unwrap_or_default();
        trim(v).eq_ignore_ascii_case(ANNOUNCE_TYPE.as_bytes())
    })
}

/// A final status after which a deposit is stored rather than answered: busy, not
/// available, or no answer (RFC 3261 §21.4.9, §21.4.18, §21.6.1).
pub(super) fn stores_instead(status: u16) -> bool {
    matches!(status, 404 | 408 | 480 | 486 | 600)
}

/// Whether a request to one of our users is answered by this stage itself: SUBSCRIBE
/// `Event: message-summary` (engine::mwi), and out of dialog a transfer request.
pub(super) fn answered_here(msg: &Message, uri: &SipUri<'_>) -> bool {
    uri.user.is_some()
        && match msg.method() {
            Some(Method::Subscribe) => has_event(msg, summary::EVENT),
            Some(Method::Message) => msg.to_tag().is_none() && has_event(msg, TRANSFER_EVENT),
            _ => false,
        }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferAsk {
    items: Option<Vec<String>>,
    max: Option<usize>,
}

impl Proxy {
    /// Replaces the in-memory item store (the binary opens the SQLite one).
    pub fn set_mailbox(&mut self, mut mailbox: Mailbox, enabled: bool) {
        self.sf.upload = mailbox.uploads.take();
        self.sf.mailbox = Shared::new(mailbox);
        self.sf.disabled = !enabled;
    }

    /// Writes deposits through `writer` (off this thread) instead of on this thread;
    /// each shard gets its own handle.
    pub fn set_deposit_writer(&mut self, writer: Box<dyn DepositWriter>) {
        self.sf.writer = Some(writer);
    }

    /// Deposits whose write finished on the deposit writer, answered.
    pub(super) fn settle_deposits(&mut self, now: Instant) {
        let mut done = Vec::new();
        if let Some(writer) = self.sf.writer.as_mut() {
            while let Some(d) = writer.poll_done() {
                done.push(d);
            }
        }
        for (ticket, outcome) in done {
            if let Some(h) = self.sf.writing.remove(&ticket) {
                if outcome.is_ok() {
                    // Stored through the writer's connection: this one's summary
                    // (asked for every REGISTER) learns of it now.
                    self.sf.mailbox.lock().learn_owner(&h.owner);
                }
                self.deposited(now, &h, outcome);
            }
        }
    }

    /// Deposits handed to the deposit writer and not answered yet.
    pub(super) fn deposits_writing(&self) -> bool {
        !self.sf.writing.is_empty()
    }

    /// Turns on large uploads: the listener's URL signer and the upload window.
    pub fn set_uploads(&mut self, tokens: Tokens, window_secs: u64) {
        self.sf.upload = Some((tokens, window_secs));
    }

    /// A request [`answered_here`].
    pub(super) fn handle_store_request(
        &mut self,
        now: Instant,
        key: TxKey,
        msg: &Message,
        uri: &SipUri<'_>,
    ) {
        if msg.method() == Some(&Method::Subscribe) {
            self.handle_summary_subscribe(now, key, msg, uri);
        } else {
            self.handle_transfer(now, key, msg, uri);
        }
    }

    /// The targets of a request (engine::target), or its answer when there are none:
    /// a deposit (`deposit`: sender and callee) for an offline callee is stored.
    pub(super) fn targets_or_answer(
        &mut self,
        now: Instant,
        key: &TxKey,
        msg: &Message,
        (uri, ruri, ruri_is_us, remaining): (&SipUri<'_>, &[u8], bool, &[&[u8]]),
        deposit: Option<(&str, &str)>,
    ) -> Option<VecDeque<Target>> {
        // An upload announcement is taken by the store whatever the callee's state.
        if let Some((sender, owner)) = deposit
            && is_announcement(msg)
        {
            self.open_upload(now, key, msg, owner, sender);
            return None;
        }
        let (status, reason) = match self.targets(now, uri, ruri, ruri_is_us, remaining) {
            Ok(t) if !t.is_empty() => return Some(t),
            Ok(_) => (480, "Temporarily Unavailable"),
            Err(e) => e,
        };
        match deposit {
            Some((sender, owner)) if stores_instead(status) => {
                self.deposit(now, key, msg, owner, sender);
            }
            _ => self.reply(now, key, msg, status, reason, &[]),
        }
        None
    }

    /// The depositing caller (`user@domain`) when the admitted request is a deposit:
    /// an out-of-dialog MESSAGE to a local callee that asks to be queued.
    pub(super) fn depositor(&self, msg: &Message, a: &Admitted) -> Option<String> {
        if self.sf.disabled
            || msg.method() != Some(&Method::Message)
            || msg.to_tag().is_some()
            || a.callee.is_none()
            || !wants_queue(msg)
        {
            return None;
        }
        a.caller.clone().or_else(|| {
            // Authentication off (labs): the From AOR.
            let from = msg.from().ok()?;
            aor_key(&SipUri::parse(from.uri)?)
        })
    }

    /// The context's request is a deposit that failed to reach the callee: store it
    /// and answer 202 (or the storage refusal). `false` when it is no deposit.
    pub(super) fn deposit_instead(&mut self, now: Instant, ctx_id: u64) -> bool {
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return false;
        };
        let (Some(sender), Some(owner)) = (ctx.deposit.clone(), ctx.callee.clone()) else {
            return false;
        };
        ctx.answered = true;
        ctx.querying = None;
        let (server, req) = (ctx.server.clone(), ctx.request.clone());
        self.deposit(now, &server, &req, &owner, &sender);
        true
    }

    /// Stores `msg` for `owner` and answers: 202 once synced; 413, 400, 486
    /// ("Mailbox Full"), 507 ("Sender Quota Exceeded", or a full store with
    /// Retry-After) or 503 + Retry-After otherwise — a refusal stores nothing.
    pub(super) fn deposit(
        &mut self,
        now: Instant,
        key: &TxKey,
        msg: &Message,
        owner: &str,
        sender: &str,
    ) {
        let unix = self.unix(now);
        let q = self.sf.mailbox.lock().quotas;
        let body = msg.body();
        if body.len() as u64 > q.max_item_bytes {
            return self.reply(now, key, msg, 413, "Request Entity Too Large", &[]);
        }
        let Some(attributes) = summary::parse_attributes(msg.other_headers(b"Permit-Attributes"))
        else {
            return self.reply(now, key, msg, 400, "Bad Permit-Attributes", &[]);
        };
        let content_type = match msg.header(HeaderName::ContentType) {
            Some(ct) => String::from_utf8_lossy(trim(ct)).into_owned(),
            None if body.is_empty() => "text/plain".to_owned(),
            // RFC 3428 §7: a body always has a type; an untyped one is opaque bytes.
            None => "application/octet-stream".to_owned(),
        };
        if content_type.len() > CONTENT_TYPE_MAX || content_type.contains(['\r', '\n']) {
            return self.reply(now, key, msg, 400, "Bad Content-Type", &[]);
        }
        let id = ItemId(self.rng.random());
        let expires_at = unix.saturating_add(q.expiry_secs);
        let item = Item::new(
            id,
            owner,
            sender,
            &content_type,
            &attributes,
            body.to_vec(),
            unix,
            expires_at,
        );
        let held = HeldDeposit {
            key: key.clone(),
            msg: msg.clone(),
            owner: owner.to_owned(),
            id,
            expires_at,
            size: body.len(),
        };
        // The write leaves this thread when a writer is set (the running proxy); the
        // answer waits for its outcome.
        if let Some(writer) = self.sf.writer.as_mut() {
            self.next_id += 1;
            let ticket = self.next_id;
            let job = DepositJob {
                ticket,
                item,
                unix_now: unix,
            };
            if writer.submit(job).is_err() {
                return self.unavailable(now, key, msg, b"1");
            }
            self.sf.writing.insert(ticket, held);
            return;
        }
        let outcome = self.sf.mailbox.lock().deposit(&item, unix);
        self.deposited(now, &held, outcome);
    }

    /// Answers a deposit by the outcome of its write: 202 once stored (and the owner's
    /// subscriptions told), the refusal or the storage failure otherwise.
    fn deposited(&mut self, now: Instant, h: &HeldDeposit, outcome: Result<(), DepositError>) {
        let (key, msg) = (&h.key, &h.msg);
        match outcome {
            Ok(()) => {
                self.stats.deposits += 1;
                tracing::debug!(item = %h.id, size = h.size, "deposit stored");
                let value = format!("{};expires={}", h.id, h.expires_at);
                self.reply(
                    now,
                    key,
                    msg,
                    202,
                    "Accepted",
                    &[("Permit-Item", value.as_bytes())],
                );
                self.notify_owner(now, &h.owner);
            }
            Err(DepositError::Refused(r)) => {
                let (status, reason) = r.status();
                self.reply(now, key, msg, status, reason, &[]);
            }
            Err(DepositError::Store(e)) => {
                tracing::error!(error = %e, "deposit not stored");
                let (status, reason, retry) = e.status();
                let retry = retry.to_string();
                self.reply(
                    now,
                    key,
                    msg,
                    status,
                    reason,
                    &[("Retry-After", retry.as_bytes())],
                );
            }
        }
    }

    /// An upload announcement (crate::upload): a slot within the quotas, synced, then
    /// `202` with `Permit-Upload: <URL>`; refusals as for a deposit, `501` when the
    /// proxy has no upload listener, `400` for a bad announcement.
    fn open_upload(&mut self, now: Instant, key: &TxKey, msg: &Message, owner: &str, sender: &str) {
        let Some((tokens, window)) = self.sf.upload.clone() else {
            return self.reply(now, key, msg, 501, "Uploads Not Enabled", &[]);
        };
        let Some((ask, sha256)) = Announce::parse(msg.body()).filter(|(a, _)| a.size > 0) else {
            return self.reply(now, key, msg, 400, "Bad Upload Announcement", &[]);
        };
        let Some(attributes) = summary::parse_attributes(msg.other_headers(b"Permit-Attributes"))
        else {
            return self.reply(now, key, msg, 400, "Bad Permit-Attributes", &[]);
        };
        let unix = self.unix(now);
        let slot = Slot {
            id: ItemId(self.rng.random()),
            owner: owner.to_owned(),
            sender: sender.to_owned(),
            content_type: ask
                .content_type
                .unwrap_or_else(|| "application/octet-stream".into()),
            attributes,
            name: ask.name,
            size: ask.size,
            sha256,
            created_at: unix,
            expires_at: unix.saturating_add(window),
        };
        let outcome = self.sf.mailbox.lock().open_slot(&slot, unix);
        match outcome {
            Ok(()) => {
                let url = tokens.url(UrlPurpose::Upload, &slot.id, slot.expires_at);
                let item = format!("{};expires={}", slot.id, slot.expires_at);
                let url = format!("<{url}>");
                self.reply(
                    now,
                    key,
                    msg,
                    202,
                    "Accepted",
                    &[
                        ("Permit-Item", item.as_bytes()),
                        ("Permit-Upload", url.as_bytes()),
                    ],
                );
                if self.sf.pending_uploads.len() < 100_000 {
                    self.sf.pending_uploads.insert(slot.id, slot.owner);
                }
            }
            Err(DepositError::Refused(r)) => {
                let (status, reason) = r.status();
                self.reply(now, key, msg, status, reason, &[]);
            }
            Err(DepositError::Store(e)) => {
                tracing::error!(error = %e, "upload slot not stored");
                let (status, reason, retry) = e.status();
                let retry = retry.to_string();
                self.reply(
                    now,
                    key,
                    msg,
                    status,
                    reason,
                    &[("Retry-After", retry.as_bytes())],
                );
            }
        }
    }

    /// A transfer request (MESSAGE to the own AOR, `Event: permit-transfer`): checked
    /// completely before anything is sent, so that bad input changes nothing.
    pub(super) fn handle_transfer(
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
        if who.is_none_or(|w| w.username != user) {
            return self.reply(now, &key, msg, 403, "Forbidden", &[]);
        }
        let owner = format!("{user}@{}", self.cfg.identity.domain.to_ascii_lowercase());
        let body = msg.body();
        if body.len() > TRANSFER_BODY_MAX {
            return self.reply(now, &key, msg, 413, "Request Entity Too Large", &[]);
        }
        let ask = if body.is_empty() {
            TransferAsk {
                items: None,
                max: None,
            }
        } else {
            let ct = msg.header(HeaderName::ContentType).map(|v| {
                let v = v.split(|&b| b == b';').next().unwrap_or_default();
                trim(v).to_ascii_lowercase()
            });
            if ct.as_deref() != Some(TRANSFER_TYPE.as_bytes()) {
                let accept = TRANSFER_TYPE.as_bytes();
                return self.reply(
                    now,
                    &key,
                    msg,
                    415,
                    "Unsupported Media Type",
                    &[("Accept", accept)],
                );
            }
            match serde_json::from_slice::<TransferAsk>(body) {
                Ok(a) if a.items.as_ref().is_none_or(|i| i.len() <= TRANSFER_MAX) => a,
                _ => return self.reply(now, &key, msg, 400, "Bad Transfer Request", &[]),
            }
        };
        let items = match self.transfer_items(&owner, &ask, self.unix(now)) {
            Ok(items) => items,
            Err((status, reason)) => {
                let retry: &[(&str, &[u8])] = if status == 503 {
                    &[("Retry-After", b"30")]
                } else {
                    &[]
                };
                return self.reply(now, &key, msg, status, reason, retry);
            }
        };
        self.start_transfer(now, (&key, flow), msg, user, items);
    }

    /// The items a transfer request names (all checked: none is delivered unless
    /// every one is the asker's), or all of the owner's up to `max`.
    fn transfer_items(
        &mut self,
        owner: &str,
        ask: &TransferAsk,
        unix: u64,
    ) -> Result<Vec<Item>, (u16, &'static str)> {
        let mut items = Vec::new();
        let fault = if let Some(ids) = &ask.items {
            let mut fault = None;
            for s in ids {
                let Some(id) = ItemId::parse(s) else {
                    fault = Some((400, "Bad Item Id"));
                    break;
                };
                let outcome = self.sf.mailbox.lock().get(&id, unix);
                match outcome {
                    Ok(Some(i)) if i.owner == owner => items.push(i),
                    Ok(Some(_)) => {
                        fault = Some((403, "Not Your Item"));
                        break;
                    }
                    Ok(None) => {
                        fault = Some((404, "Unknown Item"));
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "mailbox read failed");
                        fault = Some((503, "Service Unavailable"));
                        break;
                    }
                }
            }
            fault
        } else {
            let max = ask.max.unwrap_or(TRANSFER_MAX).clamp(1, TRANSFER_MAX);
            let read = {
                let mut mailbox = self.sf.mailbox.lock();
                mailbox.list(owner, unix, max).and_then(|metas| {
                    metas
                        .iter()
                        .filter_map(|m| mailbox.get(&m.id, unix).transpose())
                        .collect::<Result<Vec<_>, _>>()
                })
            };
            match read {
                Ok(v) => {
                    items = v;
                    None
                }
                Err(e) => {
                    tracing::error!(error = %e, "mailbox read failed");
                    Some((503, "Service Unavailable"))
                }
            }
        };
        fault.map_or(Ok(items), Err)
    }

    /// Answers a valid transfer request (200, what is delivered and what is already
    /// under way) and sends the items.
    fn start_transfer(
        &mut self,
        now: Instant,
        (key, flow): (&TxKey, Flow),
        msg: &Message,
        user: &str,
        items: Vec<Item>,
    ) {
        // The UA that asked gets the items, over the flow it asked on.
        let target = msg
            .header(HeaderName::Contact)
            .and_then(NameAddr::parse)
            .map_or_else(
                || format!("sip:{user}@{}", Identity::sent_by(flow.remote)),
                |n| String::from_utf8_lossy(n.uri).into_owned(),
            );
        let (mut delivering, mut pending) = (Vec::new(), Vec::new());
        for item in &items {
            let busy = self
                .sf
                .in_flight
                .get(&item.id)
                .is_some_and(|k| self.client.contains_key(k));
            if busy {
                pending.push(item.id.to_string());
            } else {
                delivering.push(item.id.to_string());
            }
        }
        let answer =
            serde_json::json!({ "delivering": delivering, "pending": pending }).to_string();
        let count = (delivering.len() + pending.len()).to_string();
        let tag = self.tag();
        let via = received_via_of(self, key, msg);
        let mut b = sip_core::message::ResponseBuilder::new(msg, 200, "OK").to_tag(tag.as_bytes());
        if let Some(v) = &via {
            b = b.top_via(v.as_bytes());
        }
        let bytes = b
            .header("Permit-Items", count.as_bytes())
            .body(TRANSFER_TYPE.as_bytes(), answer.as_bytes())
            .to_vec();
        self.respond(now, key, 200, bytes.into());
        for item in items {
            if delivering.contains(&item.id.to_string()) {
                self.deliver(now, flow, &target, &item);
            }
        }
    }

    /// Sends one item to the owner's UA as a MESSAGE (RFC 3428) from its sender.
    fn deliver(&mut self, now: Instant, flow: Flow, target: &str, item: &Item) {
        let branch = self.own_branch();
        let tag = self.tag();
        let call_id = format!("{:032x}@permit", self.rng.random::<u128>());
        let mut head = String::with_capacity(512);
        let _ = write!(
            head,
            "MESSAGE {target} SIP/2.0\r\nVia: SIP/2.0/{} {};branch={branch};rport\r\nMax-Forwards: 70\r\n\
From: <sip:{}>;tag={tag}\r\nTo: <sip:{}>\r\nCall-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\n\
Permit-Item: {};sha256={};stored={};expires={}\r\n",
            flow.transport.via_token(),
            Identity::sent_by(flow.local),
            item.sender,
            item.owner,
            item.id,
            hex(&item.sha256),
            item.stored_at,
            item.expires_at,
        );
        if !item.attributes.is_empty() {
            let _ = write!(head, "Permit-Attributes: {}\r\n", item.attributes);
        }
        if item.content_type == FILE_TYPE
            && let Some((tokens, _)) = &self.sf.upload
        {
            let url = tokens.url(UrlPurpose::Download, &item.id, item.expires_at);
            let _ = write!(head, "Permit-Download: <{url}>\r\n");
        }
        let _ = write!(
            head,
            "Content-Type: {}\r\nContent-Length: {}\r\n\r\n",
            item.content_type,
            item.body.len()
        );
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&item.body);
        let key = self.send_own(
            now,
            flow,
            branch,
            bytes.into(),
            Outgoing::Delivery {
                id: item.id,
                owner: item.owner.clone(),
            },
        );
        self.sf.in_flight.insert(item.id, key);
    }

    /// A branch for a request of our own (its responses match our prefix).
    pub(super) fn own_branch(&mut self) -> String {
        own_branch_for(self.shard, 's', self.rng.random::<u64>())
    }

    /// Starts a client transaction for a request of our own.
    pub(super) fn send_own(
        &mut self,
        now: Instant,
        flow: Flow,
        branch: String,
        bytes: Bytes,
        what: Outgoing,
    ) -> TxKey {
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
                ctx: None,
                purpose: Purpose::Own,
                sent: bytes,
                scheduled: None,
            },
        );
        self.sf.outgoing.insert(key.clone(), what);
        self.drain_client(now, &key);
        key
    }

    /// A final response to a request of our own: a delivered item is deleted on 2xx
    /// only; a NOTIFY answered 481 ends its subscription (RFC 6665 §4.1.3).
    pub(super) fn handle_own_response(&mut self, now: Instant, key: &TxKey, status: u16) {
        if status < 200 {
            return;
        }
        match self.sf.outgoing.remove(key) {
            Some(Outgoing::Delivery { id, owner }) => {
                self.sf.in_flight.remove(&id);
                if !(200..300).contains(&status) {
                    tracing::debug!(item = %id, status, "delivery refused; item kept");
                    return;
                }
                let outcome = self.sf.mailbox.lock().delete(&id);
                match outcome {
                    Ok(true) => {
                        self.stats.delivered += 1;
                        self.notify_subscribers(now, &owner);
                    }
                    Ok(false) => {}
                    // Kept: the next transfer delivers it again, the UA deduplicates.
                    Err(e) => tracing::error!(error = %e, "delivered item not deleted"),
                }
            }
            Some(Outgoing::Notify(Some(sub))) if status == 481 => {
                self.sf.subs.remove(&sub);
            }
            Some(Outgoing::Notify(_)) | None => {}
        }
    }

    /// Expired items go from the mailbox (a shared table: the first shard purges it).
    pub(super) fn purge_mailbox(&mut self, now: Instant) {
        let unix = self.unix(now);
        let outcome = self.sf.mailbox.lock().purge_expired(unix);
        match outcome {
            Ok(0) => {}
            Ok(n) => tracing::info!(items = n, "expired items deleted"),
            Err(e) => tracing::warn!(error = %e, "purging expired items failed"),
        }
    }

    /// This shard's expired subscriptions go; bookkeeping of finished transactions too.
    pub(super) fn purge_store(&mut self, now: Instant) {
        self.sf.subs.expire(now);
        self.check_uploads(now);
        let client = &self.client;
        self.sf.outgoing.retain(|k, _| client.contains_key(k));
        self.sf.in_flight.retain(|_, k| client.contains_key(k));
    }
}

impl Proxy {
    /// Owners of uploads that completed since the last look get their NOTIFY; slots
    /// that expired are forgotten.
    fn check_uploads(&mut self, now: Instant) {
        let unix = self.unix(now);
        let pending: Vec<(ItemId, String)> = self
            .sf
            .pending_uploads
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (id, owner) in pending {
            let done = matches!(self.sf.mailbox.lock().get(&id, unix), Ok(Some(_)));
            let open = matches!(self.sf.mailbox.lock().get_slot(&id, unix), Ok(Some(_)));
            if done || !open {
                self.sf.pending_uploads.remove(&id);
            }
            if done {
                self.notify_owner(now, &owner);
            }
        }
    }
}

/// The top Via of `msg` as the server transaction `key` saw it.
pub(super) fn received_via_of(p: &Proxy, key: &TxKey, msg: &Message) -> Option<String> {
    p.server
        .get(key)
        .and_then(|e| crate::route::received_via(msg, e.flow.remote))
}
