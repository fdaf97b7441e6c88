//! A callee manages its own permitted-terminal list from its UA (docs/profile.md
//! "Managing the list"): PUBLISH to its own AOR with `Event: permit-list` and a JSON
//! body, RFC 3903 style — `SIP-ETag` in every 200, `SIP-If-Match` for conditional
//! updates (412 when stale). The request is authenticated by the engine; this module
//! turns an authorised request into a change of the list and a response.

use serde::Deserialize;
use sip_core::message::{HeaderName, Message, trim};

use crate::location::QueueFull;
use crate::permits::{Aor, PermitEntry, PermitError, Permits};

/// The event package of list management (RFC 3903 §4: PUBLISH names a package).
pub const EVENT_PACKAGE: &[u8] = b"permit-list";
/// The body format of list management.
pub const CONTENT_TYPE: &str = "application/permit-list+json";

/// A change of the list. `replace` sets the whole list; `add` and `remove` edit it
/// (both may be given; the result is written in one transaction).
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Change {
    replace: Option<Vec<String>>,
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

/// The answer to a management request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManageReply {
    pub status: u16,
    pub reason: &'static str,
    pub headers: Vec<(&'static str, String)>,
    /// A JSON body (the current list, for a PUBLISH without body).
    pub body: Option<String>,
}

fn reply(status: u16, reason: &'static str) -> ManageReply {
    ManageReply {
        status,
        reason,
        headers: vec![],
        body: None,
    }
}

/// An authorised management PUBLISH, handed to a [`PermitWriter`].
#[derive(Debug)]
pub struct PublishJob {
    /// The engine's number for the request (returned with its reply).
    pub id: u64,
    /// The list's owner, authenticated.
    pub owner: Aor,
    pub msg: Message,
}

/// Where the engine sends management PUBLISHes, so that a list's write (a committed
/// transaction, an fsync with `durability = "full"`) runs off the engine's thread. The
/// engine answers a PUBLISH only with the reply for it, which comes after the write
/// committed (or failed): an answered change survives kill -9, as before.
pub trait PermitWriter: Send {
    /// Queues `job`; [`QueueFull`] when too many wait (the engine answers 503).
    fn submit(&mut self, job: PublishJob) -> Result<(), QueueFull>;
    /// A finished job's reply, if any (in no particular order).
    fn poll_done(&mut self) -> Option<(u64, ManageReply)>;
}

/// Whether `msg` is a list-management request (by its Event header).
pub fn is_management(msg: &Message) -> bool {
    msg.header(HeaderName::Event).is_some_and(|e| {
        let package = e.split(|&b| b == b';').next().unwrap_or_default();
        trim(package).eq_ignore_ascii_case(EVENT_PACKAGE)
    })
}

fn parse_entries(list: &[String]) -> Result<Vec<PermitEntry>, PermitError> {
    list.iter().map(|e| PermitEntry::parse(e)).collect()
}

fn failure(e: &PermitError) -> ManageReply {
    let (status, reason) = match e.status() {
        400 => (400, "Bad Permit List"),
        412 => (412, "Conditional Request Failed"),
        413 => (413, "Request Entity Too Large"),
        _ => (500, "Server Internal Error"),
    };
    if status == 500 {
        tracing::error!(error = %e, "permit list not written");
    }
    reply(status, reason)
}

/// Applies a PUBLISH from `owner` (already authenticated as the list's owner) to the
/// owner's own list.
pub fn handle_publish(permits: &mut Permits, owner: &Aor, msg: &Message) -> ManageReply {
    let if_match = msg
        .other_headers(b"SIP-If-Match")
        .next()
        .and_then(|v| std::str::from_utf8(trim(v)).ok());
    let body = msg.body();
    if body.is_empty() {
        // A PUBLISH without body reads the list (and, with SIP-If-Match, checks the tag).
        let etag = permits.etag(owner.as_str());
        if let Some(m) = if_match
            && etag.is_none_or(|t| !t.matches(m))
        {
            return reply(412, "Conditional Request Failed");
        }
        let entries: Vec<String> = permits
            .list(owner.as_str())
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect();
        let mut r = reply(200, "OK");
        if let Some(t) = etag {
            r.headers.push(("SIP-ETag", t.to_string()));
        }
        r.headers.push(("Expires", "3600".into()));
        r.headers.push(("Content-Type", CONTENT_TYPE.into()));
        r.body = Some(serde_json::json!({ "entries": entries }).to_string());
        return r;
    }
    let content_type = msg.header(HeaderName::ContentType).map(|v| {
        let v = v.split(|&b| b == b';').next().unwrap_or_default();
        trim(v).to_ascii_lowercase()
    });
    if content_type.as_deref() != Some(CONTENT_TYPE.as_bytes()) {
        let mut r = reply(415, "Unsupported Media Type");
        r.headers.push(("Accept", CONTENT_TYPE.into()));
        return r;
    }
    let Ok(change) = serde_json::from_slice::<Change>(body) else {
        return reply(400, "Bad Permit List");
    };
    let result = match change.replace {
        Some(list) if change.add.is_empty() && change.remove.is_empty() => {
            parse_entries(&list).and_then(|entries| permits.replace(owner, &entries, if_match))
        }
        Some(_) => return reply(400, "Bad Permit List"),
        None => parse_entries(&change.add).and_then(|add| {
            let remove = parse_entries(&change.remove)?;
            permits.edit(owner, &add, &remove, if_match).map(|w| w.etag)
        }),
    };
    match result {
        Ok(etag) => {
            let mut r = reply(200, "OK");
            r.headers.push(("SIP-ETag", etag.to_string()));
            // RFC 3903 §6 step 8 wants Expires; the list itself does not expire.
            r.headers.push(("Expires", "3600".into()));
            r
        }
        Err(e) => failure(&e),
    }
}
