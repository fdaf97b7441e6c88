//! Store and forward, the UA's side (docs/profile.md "Store and forward", "Data with
//! attributes"): deposits (`MESSAGE` with `Request-Disposition: queue`), the
//! transfer request, the message-summary subscription, and the items the proxy
//! delivers.
//!
//! The engine part here is sans-IO like the rest of [`Ua`]: [`Ua::store_send`] starts
//! a MESSAGE or SUBSCRIBE whose final answer comes back as
//! [`StoreEvent::Answered`]; an incoming MESSAGE becomes [`StoreEvent::Message`] and
//! stays unanswered until [`Ua::store_reply`] (the item is deleted at the proxy only
//! on our 2xx, so we answer once its bytes are safe on disk); a message-summary
//! NOTIFY is answered 200 at once and reported as [`StoreEvent::Summary`].
//! The async parts (HTTP, files, the commands) are in [`fetch`], [`http`] and
//! [`crate::send`].

pub mod fetch;
pub mod http;
pub mod item;
pub mod save;
pub mod seal;

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use sip_core::message::{HeaderName, Message, ResponseBuilder, trim};

use crate::engine::{Event, Purpose, Sent, TxKey, Ua};
use crate::permit::{aor_of, redact};
use crate::request::{self, Dest, Request};

/// Incoming MESSAGEs waiting for our answer, at most this many (the proxy sends
/// one item at a time per transfer; a flood from elsewhere is refused 503).
const MAX_PENDING: usize = 64;

/// The engine's store-and-forward state.
#[derive(Debug, Default)]
pub struct StoreState {
    next: u32,
    /// Incoming MESSAGEs not yet answered: their server transaction and request.
    pending: HashMap<u32, (TxKey, Message)>,
}

/// A request of store and forward.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// `MESSAGE` or `SUBSCRIBE`.
    pub method: &'static str,
    /// Request-URI.
    pub uri: String,
    /// The To AOR (the Request-URI's AOR unless sent to a Contact).
    pub to: String,
    /// Reuse this Call-ID (a direct MESSAGE after a 302 keeps the first one's,
    /// RFC 3261 §8.1.3.4, because the permit token is bound to it).
    pub call_id: Option<String>,
    pub headers: Vec<(&'static str, String)>,
    /// Content type and body.
    pub body: Option<(String, Vec<u8>)>,
    /// Straight to the Request-URI's address (direct mode) instead of the proxy.
    pub direct: bool,
}

/// What store and forward reports to the commands. Debug prints no token, URL or
/// data (STYLE.md rule 11).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// The final answer to [`Ua::store_send`] `id` (`status: None`: none came).
    Answered {
        id: u32,
        call_id: String,
        status: Option<u16>,
        reason: String,
        /// The headers store and forward reads (name as asked, value trimmed).
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    },
    /// A MESSAGE to us: an item the proxy delivers, a live message, or a direct
    /// one. Answer it with [`Ua::store_reply`].
    Message(Incoming),
    /// A message-summary NOTIFY body (RFC 3842 §5.2), already answered 200.
    Summary { body: String },
}

/// An incoming MESSAGE. Debug prints no URL (its token) and no data.
#[derive(Clone, PartialEq, Eq)]
pub struct Incoming {
    pub id: u32,
    /// The sender's AOR, `sip:user@host` (the proxy puts the depositor there).
    pub from: Option<String>,
    pub content_type: String,
    /// `Permit-Item` (an item from the store), `Permit-Attributes`,
    /// `Permit-Download` (a large file's link), raw.
    pub item: Option<String>,
    pub attributes: Option<String>,
    pub download: Option<String>,
    pub body: Bytes,
    /// Sent by the proxy (else straight from a caller with a permit token).
    pub from_proxy: bool,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("id", &self.id)
            .field("content_type", &self.content_type)
            .field("item", &self.item)
            .field("attributes", &self.attributes)
            .field("download", &self.download.is_some())
            .field("bytes", &self.body.len())
            .field("from_proxy", &self.from_proxy)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for StoreEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Answered {
                id,
                status,
                reason,
                headers,
                ..
            } => {
                // Header names only: Permit-Upload, Contact and Permit-Token hold tokens.
                let names: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
                f.debug_struct("Answered")
                    .field("id", id)
                    .field("status", status)
                    .field("reason", reason)
                    .field("headers", &names)
                    .finish_non_exhaustive()
            }
            Self::Message(m) => f.debug_tuple("Message").field(m).finish(),
            Self::Summary { body } => f
                .debug_struct("Summary")
                .field("bytes", &body.len())
                .finish(),
        }
    }
}

/// Response headers kept for [`StoreEvent::Answered`].
const KEPT: [&str; 8] = [
    "Permit-Item",
    "Permit-Upload",
    "Permit-Items",
    "Retry-After",
    "Contact",
    "Permit-Token",
    "Content-Type",
    "Accept",
];

/// The first value of header `name` (known or not), trimmed.
pub(crate) fn header(msg: &Message, name: &str) -> Option<String> {
    let v = match HeaderName::from_bytes(name.as_bytes()) {
        HeaderName::Other => msg.other_headers(name.as_bytes()).next(),
        known => msg.header(known),
    }?;
    Some(String::from_utf8_lossy(trim(v)).into_owned())
}

/// A kept header of an answer.
pub fn answered_header<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl Ua {
    /// Sends a MESSAGE or SUBSCRIBE of store and forward; its final answer (after
    /// one digest round, 401 or 407, RFC 3261 §22.2) comes as
    /// [`StoreEvent::Answered`] with the returned id.
    pub fn store_send(&mut self, now: Instant, out: Outgoing) -> u32 {
        self.store.next = self.store.next.wrapping_add(1);
        let id = self.store.next;
        let local = self.cfg.local.clone();
        let branch = self.new_branch();
        let mut headers = out.headers;
        if out.method == "SUBSCRIBE" || out.to == local.aor() {
            headers.push(("Contact", format!("<{}>", local.contact_uri())));
        }
        let body = out.body.map(|(ct, b)| {
            headers.push(("Content-Type", ct));
            ("", b)
        });
        let req = Request {
            method: out.method,
            uri: out.uri.clone(),
            via: local.via(&branch),
            from: format!("<{}>;tag={}", local.aor(), request::tag(&mut self.rng)),
            to: format!("<{}>", out.to),
            call_id: out
                .call_id
                .unwrap_or_else(|| request::call_id(&mut self.rng)),
            cseq: 1,
            headers,
            body,
        };
        let dest = if out.direct {
            self.dest_to(request::resolve(&out.uri, local.transport))
        } else {
            self.proxy_dest()
        };
        self.send_request(now, branch, req, dest, Purpose::Store(id), 0);
        id
    }

    pub(crate) fn on_store_timeout(&mut self, id: u32) {
        self.emit(Event::Store(StoreEvent::Answered {
            id,
            call_id: String::new(),
            status: None,
            reason: String::new(),
            headers: vec![],
            body: vec![],
        }));
    }

    pub(crate) fn on_store_response(
        &mut self,
        now: Instant,
        sent: &Sent,
        msg: &Message,
        status: u16,
        id: u32,
    ) {
        if status < 200 {
            return;
        }
        if matches!(status, 401 | 407) && self.retry_with_auth(now, sent, msg, status).is_some() {
            return;
        }
        let headers = KEPT
            .iter()
            .filter_map(|n| header(msg, n).map(|v| (*n, v)))
            .collect();
        self.emit(Event::Store(StoreEvent::Answered {
            id,
            call_id: sent.req.call_id.clone(),
            status: Some(status),
            reason: String::from_utf8_lossy(msg.reason().unwrap_or_default()).into_owned(),
            headers,
            body: msg.body().to_vec(),
        }));
    }

    /// An incoming MESSAGE or NOTIFY (RFC 3428, RFC 6665 §4.1.3).
    pub(crate) fn on_store_request(&mut self, now: Instant, key: &TxKey, msg: Message, dest: Dest) {
        let simple = |ua: &mut Ua, status: u16, reason: &str| {
            let resp = ResponseBuilder::new(&msg, status, reason).to_vec();
            ua.respond(now, key, status, resp.into());
        };
        if msg.method() == Some(&sip_core::message::Method::Notify) {
            let event = header(&msg, "Event").unwrap_or_default();
            let package = event.split(';').next().unwrap_or_default().trim();
            if !package.eq_ignore_ascii_case("message-summary") {
                // RFC 6665 §8.2.1: an event package we do not take.
                return simple(self, 489, "Bad Event");
            }
            simple(self, 200, "OK");
            let body = String::from_utf8_lossy(msg.body()).into_owned();
            self.emit(Event::Store(StoreEvent::Summary { body }));
            return;
        }
        let from_proxy = self.is_from_proxy(&dest);
        // Permit mode: only the proxy, or a caller holding the token the proxy told us
        // in its load query (direct mode), may send us data.
        if !from_proxy && self.cfg.permit {
            let unix = self.unix(now);
            if let Err(e) = self.permits.accept_invite(&msg, unix) {
                tracing::info!(source = %redact(dest.remote), reason = %e, "MESSAGE refused");
                return simple(self, 403, "Forbidden");
            }
        }
        if self.store.pending.len() >= MAX_PENDING {
            return simple(self, 503, "Service Unavailable");
        }
        self.store.next = self.store.next.wrapping_add(1);
        let id = self.store.next;
        let incoming = Incoming {
            id,
            from: msg.header(HeaderName::From).and_then(aor_of),
            content_type: header(&msg, "Content-Type").unwrap_or_else(|| "text/plain".into()),
            item: header(&msg, "Permit-Item"),
            attributes: header(&msg, "Permit-Attributes"),
            download: header(&msg, "Permit-Download")
                .map(|d| d.trim_start_matches('<').trim_end_matches('>').to_string()),
            body: Bytes::copy_from_slice(msg.body()),
            from_proxy,
        };
        self.store.pending.insert(id, (key.clone(), msg));
        self.emit(Event::Store(StoreEvent::Message(incoming)));
    }

    /// Answers the incoming MESSAGE `id` (2xx: the item is safe with us, RFC 3428
    /// §7; anything else: the proxy keeps it).
    pub fn store_reply(&mut self, now: Instant, id: u32, status: u16, reason: &str) {
        let Some((key, msg)) = self.store.pending.remove(&id) else {
            return;
        };
        let resp = ResponseBuilder::new(&msg, status, reason).to_vec();
        self.respond(now, &key, status, resp.into());
    }

    /// Incoming MESSAGEs not answered yet.
    pub fn store_pending(&self) -> usize {
        self.store.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_no_token_url_or_data() {
        let e = StoreEvent::Answered {
            id: 1,
            call_id: "c".into(),
            status: Some(202),
            reason: "Accepted".into(),
            headers: vec![("Permit-Upload", "<http://h/upload/x?t=SECRET1>".into())],
            body: b"SECRET2".to_vec(),
        };
        let m = StoreEvent::Message(Incoming {
            id: 2,
            from: None,
            content_type: "text/plain".into(),
            item: None,
            attributes: None,
            download: Some("http://h/files/x?t=SECRET3".into()),
            body: Bytes::from_static(b"SECRET4"),
            from_proxy: true,
        });
        let text = format!("{e:?} {m:?}");
        assert!(!text.contains("SECRET"), "{text}");
        assert!(
            text.contains("Permit-Upload") && text.contains("202"),
            "{text}"
        );
    }
}
