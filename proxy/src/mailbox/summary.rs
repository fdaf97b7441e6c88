//! Wire formats of store-and-forward that need no I/O (docs/profile.md "Store and
//! forward"): the `Permit-Attributes` header of a deposit and the body of a NOTIFY
//! `Event: message-summary` (RFC 3842 §5.2), whose optional message-header blocks list
//! each waiting item for our UA.

use std::fmt::Write as _;

use super::{ItemMeta, Usage, hex};

/// The event package (RFC 3842 §3.1) and its body type (§3.5).
pub const EVENT: &[u8] = b"message-summary";
pub const CONTENT_TYPE: &str = "application/simple-message-summary";
/// Items listed in one NOTIFY (the summary line still counts all of them).
pub const LIST_MAX: usize = 20;
/// Attributes of one deposit, and the bytes of their normalised form.
const ATTRS_MAX: usize = 8;
const ATTRS_BYTES: usize = 256;

fn token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+'))
}

/// Normalises the values of `Permit-Attributes` header lines: comma-separated `name`
/// or `name=value` tokens, names lowercased, duplicates dropped, order kept.
/// `None` for anything else (the deposit gets 400).
pub fn parse_attributes<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<String> {
    let mut out: Vec<String> = Vec::new();
    for v in values {
        let v = std::str::from_utf8(v).ok()?;
        for a in v.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let (name, value) = match a.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (a, None),
            };
            if !token(name) || value.is_some_and(|v| !token(v)) {
                return None;
            }
            let norm = match value {
                Some(v) => format!("{}={v}", name.to_ascii_lowercase()),
                None => name.to_ascii_lowercase(),
            };
            if !out.contains(&norm) {
                out.push(norm);
            }
        }
    }
    let joined = out.join(", ");
    (out.len() <= ATTRS_MAX && joined.len() <= ATTRS_BYTES).then_some(joined)
}

/// RFC 3458 message-context-class of an item by its content type.
pub fn context_class(content_type: &str) -> &'static str {
    if content_type.to_ascii_lowercase().starts_with("text/") {
        "text-message"
    } else {
        "multimedia-message"
    }
}

/// The NOTIFY body (RFC 3842 §5.2): status line, account, one summary line per
/// message-context class (new/old; every waiting item is new), then one
/// message-header block per listed item:
///
/// ```text
/// Messages-Waiting: yes
/// Message-Account: sip:bob@example.com
/// Text-Message: 2/0
///
/// Message-ID: <32 hex>
/// From: <sip:alice@example.com>
/// Message-Context: text-message
/// Permit-Item: <32 hex>;type="text/plain";size=5;sha256=<64 hex>;stored=<unix>;expires=<unix>
/// Permit-Attributes: secret
/// ```
pub fn body(account: &str, total: Usage, items: &[ItemMeta]) -> String {
    let mut b = String::new();
    let waiting = if total.items > 0 { "yes" } else { "no" };
    let _ = write!(
        b,
        "Messages-Waiting: {waiting}\r\nMessage-Account: sip:{account}\r\n"
    );
    let text = items
        .iter()
        .filter(|i| context_class(&i.content_type) == "text-message")
        .count() as u64;
    // Items beyond the listed ones are counted as text messages when all listed are.
    let listed = items.len() as u64;
    let other = listed - text;
    let unlisted = total.items.saturating_sub(listed);
    let (text, other) = if other == 0 {
        (text + unlisted, 0)
    } else {
        (text, other + unlisted)
    };
    if text > 0 || total.items == 0 {
        let _ = write!(b, "Text-Message: {text}/0\r\n");
    }
    if other > 0 {
        let _ = write!(b, "Multimedia-Message: {other}/0\r\n");
    }
    for i in items {
        let _ = write!(
            b,
            "\r\nMessage-ID: {id}\r\nFrom: <sip:{from}>\r\nMessage-Context: {class}\r\n\
Permit-Item: {id};type=\"{ct}\";size={size};sha256={sha};stored={stored};expires={exp}\r\n",
            id = i.id,
            from = i.sender,
            class = context_class(&i.content_type),
            ct = i.content_type.replace(['"', '\\', '\r', '\n'], ""),
            size = i.size,
            sha = hex(&i.sha256),
            stored = i.stored_at,
            exp = i.expires_at,
        );
        if !i.attributes.is_empty() {
            let _ = write!(b, "Permit-Attributes: {}\r\n", i.attributes);
        }
    }
    b
}

/// The item ids a message-summary body lists (its `Permit-Item` lines), in order.
pub fn listed_ids(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("Permit-Item:"))
        .filter_map(|v| v.trim().split(';').next().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::ItemId;

    #[test]
    fn attributes_are_normalised_or_refused() {
        let v: Vec<&[u8]> = vec![b"Secret, label=Work", b"secret"];
        assert_eq!(
            parse_attributes(v.into_iter()).as_deref(),
            Some("secret, label=Work")
        );
        assert_eq!(parse_attributes(std::iter::empty()).as_deref(), Some(""));
        for bad in [&b"se cret"[..], b"a=b=c", b"x=\"q\"", b"\xff"] {
            assert_eq!(parse_attributes([bad].into_iter()), None, "{bad:?}");
        }
        let many = (0..9)
            .map(|i| format!("a{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(parse_attributes([many.as_bytes()].into_iter()), None);
    }

    #[test]
    fn body_lists_items_after_the_summary() {
        let meta = |n: u8, ct: &str, attrs: &str| ItemMeta {
            id: ItemId([n; 16]),
            sender: "alice@example.com".into(),
            content_type: ct.into(),
            attributes: attrs.into(),
            size: 5,
            sha256: [n; 32],
            stored_at: 100,
            expires_at: 200,
        };
        let items = [meta(1, "text/plain", "secret"), meta(2, "image/png", "")];
        let b = body(
            "bob@example.com",
            Usage {
                items: 3,
                bytes: 15,
            },
            &items,
        );
        let expected_head = "Messages-Waiting: yes\r\nMessage-Account: sip:bob@example.com\r\n\
Text-Message: 1/0\r\nMultimedia-Message: 2/0\r\n\r\nMessage-ID: 01010101010101010101010101010101\r\n";
        assert!(b.starts_with(expected_head), "{b}");
        assert!(b.contains(&format!(
            "Permit-Item: 01010101010101010101010101010101;type=\"text/plain\";size=5;sha256={};stored=100;expires=200\r\nPermit-Attributes: secret\r\n",
            "01".repeat(32)
        )));
        assert_eq!(
            listed_ids(&b),
            vec!["01".repeat(16), "02".repeat(16)],
            "both items listed, in order"
        );
        let empty = body("bob@example.com", Usage::default(), &[]);
        assert_eq!(
            empty,
            "Messages-Waiting: no\r\nMessage-Account: sip:bob@example.com\r\nText-Message: 0/0\r\n"
        );
    }
}
