//! The callee's own permitted-terminal list, managed over SIP: PUBLISH to our AOR with
//! `Event: permit-list` (RFC 3903 semantics, docs/profile.md "Managing the list"):
//! `SIP-ETag` in every 200, `SIP-If-Match` for a change that must not overwrite a
//! newer list (412 when stale).

use std::time::Instant;

use sip_core::message::{Message, trim};

use crate::auth::Realm;
use crate::engine::{Event, Purpose, Sent, Ua};
use crate::request::{self, Request};

/// The body format of list management.
pub const CONTENT_TYPE: &str = "application/permit-list+json";

/// What to do with the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PermitChange {
    /// Read it (a PUBLISH without body).
    Read,
    Add(Vec<String>),
    Remove(Vec<String>),
    /// Set the whole list.
    Replace(Vec<String>),
}

impl PermitChange {
    /// The JSON body (`{"add": [...]}`, `{"remove": [...]}`, `{"replace": [...]}`), or
    /// none to read.
    pub fn body(&self) -> Option<String> {
        let (key, entries) = match self {
            Self::Read => return None,
            Self::Add(e) => ("add", e),
            Self::Remove(e) => ("remove", e),
            Self::Replace(e) => ("replace", e),
        };
        Some(serde_json::json!({ key: entries }).to_string())
    }
}

/// The entries of a list body `{"entries": [...]}`; empty if there is none.
pub fn entries(body: &str) -> Vec<String> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("entries")?
                .as_array()?
                .iter()
                .map(|e| e.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl Ua {
    /// Sends the PUBLISH for `change`; with `if_match`, only if the list's tag is still
    /// that one. Outcome: [`Event::PermitList`] or [`Event::PermitNoResponse`].
    pub fn publish_permits(&mut self, now: Instant, change: &PermitChange, if_match: Option<&str>) {
        let local = self.cfg.local.clone();
        let aor = local.aor();
        let branch = self.new_branch();
        let mut headers = vec![("Event", "permit-list".to_string())];
        if let Some(tag) = if_match {
            headers.push(("SIP-If-Match", tag.to_string()));
        }
        let mut req = Request {
            method: "PUBLISH",
            uri: aor.clone(),
            via: local.via(&branch),
            from: format!("<{aor}>;tag={}", request::tag(&mut self.rng)),
            to: format!("<{aor}>"),
            call_id: request::call_id(&mut self.rng),
            cseq: 1,
            headers,
            body: change.body().map(|b| (CONTENT_TYPE, b.into_bytes())),
        };
        let tries = u8::from(self.preauthorize(&mut req, Realm::Server));
        let dest = self.proxy_dest();
        self.send_request(now, branch, req, dest, Purpose::Publish, tries);
    }

    pub(crate) fn on_publish_response(
        &mut self,
        now: Instant,
        sent: &Sent,
        msg: &Message,
        status: u16,
    ) {
        if status < 200 {
            return;
        }
        if matches!(status, 401 | 407) && self.retry_with_auth(now, sent, msg, status).is_some() {
            return;
        }
        let etag = msg
            .other_headers(b"SIP-ETag")
            .next()
            .map(|v| String::from_utf8_lossy(trim(v)).into_owned());
        self.emit(Event::PermitList {
            status,
            etag,
            body: String::from_utf8_lossy(msg.body()).into_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_documented_shape() {
        let add = PermitChange::Add(vec!["alice@example.org".into()]);
        assert_eq!(add.body().unwrap(), r#"{"add":["alice@example.org"]}"#);
        let set = PermitChange::Replace(vec!["*@partner.example".into(), "a@b".into()]);
        assert_eq!(
            set.body().unwrap(),
            r#"{"replace":["*@partner.example","a@b"]}"#
        );
        assert_eq!(PermitChange::Read.body(), None);
        assert_eq!(entries(r#"{"entries": ["a@b", "*@c"]}"#), ["a@b", "*@c"]);
        assert!(entries("not json").is_empty());
    }
}
