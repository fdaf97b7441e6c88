//! What the proxy says about stored items: the `Permit-Item` header value, the
//! `Permit-Attributes` list and the message-summary body (RFC 3842 §5.2) with one
//! message-header block per item (docs/profile.md "Notification").

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// `Permit-Item: <id>;type="..";size=N;sha256=<hex>;stored=..;expires=..`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemInfo {
    /// 32 lowercase hex digits.
    pub id: String,
    pub content_type: Option<String>,
    pub size: Option<u64>,
    pub sha256: Option<String>,
    pub stored: Option<u64>,
    pub expires: Option<u64>,
}

/// Whether `id` is an item id: 32 lowercase hex digits.
pub fn is_item_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl ItemInfo {
    /// Parses a `Permit-Item` value; `None` without a valid id.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split(';');
        let id = parts.next()?.trim().to_string();
        if !is_item_id(&id) {
            return None;
        }
        let mut info = ItemInfo {
            id,
            ..Self::default()
        };
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            match k.trim().to_ascii_lowercase().as_str() {
                "type" => info.content_type = Some(v.to_string()),
                "size" => info.size = v.parse().ok(),
                "sha256" => info.sha256 = Some(v.to_ascii_lowercase()),
                "stored" => info.stored = v.parse().ok(),
                "expires" => info.expires = v.parse().ok(),
                _ => {}
            }
        }
        Some(info)
    }
}

/// `Permit-Attributes`: comma-separated `name` or `name=value`, names lowercased.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes(pub Vec<(String, Option<String>)>);

impl Attributes {
    pub fn parse(value: Option<&str>) -> Self {
        let Some(v) = value else {
            return Self::default();
        };
        Self(
            v.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| match t.split_once('=') {
                    Some((n, v)) => (n.trim().to_ascii_lowercase(), Some(v.trim().to_string())),
                    None => (t.to_ascii_lowercase(), None),
                })
                .collect(),
        )
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    pub fn secret(&self) -> bool {
        self.has("secret")
    }

    /// The header value, `None` when empty.
    pub fn header(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(n, v)| match v {
                Some(v) => format!("{n}={v}"),
                None => n.clone(),
            })
            .collect();
        Some(parts.join(","))
    }
}

/// One waiting item of a message-summary body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub info: ItemInfo,
    pub from: Option<String>,
    pub attributes: Attributes,
}

/// A message-summary body: whether messages wait, and the listed items.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub waiting: bool,
    /// New messages counted by the summary lines (all, not only the listed ones).
    pub count: u64,
    pub items: Vec<Waiting>,
}

/// Reads a message-summary body (RFC 3842 §5.2): the message-summary lines, then
/// blocks separated by blank lines whose `Permit-Item` lines name our items.
pub fn parse_summary(body: &str) -> Summary {
    let mut s = Summary::default();
    let mut current: Option<Waiting> = None;
    let mut from = None;
    let mut attributes = Attributes::default();
    let flush = |s: &mut Summary, w: Option<Waiting>| {
        if let Some(w) = w {
            s.items.push(w);
        }
    };
    for line in body.lines().map(str::trim_end) {
        if line.is_empty() {
            flush(&mut s, current.take());
            from = None;
            attributes = Attributes::default();
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "messages-waiting" => s.waiting = value.eq_ignore_ascii_case("yes"),
            n if n.ends_with("-message") => {
                // `new/old`, optionally `(urgent-new/urgent-old)` (§5.2).
                let new = value.split('/').next().unwrap_or_default().trim();
                s.count += new.parse::<u64>().unwrap_or(0);
            }
            "from" => {
                from = Some(value.to_string());
                if let Some(w) = current.as_mut() {
                    w.from.clone_from(&from);
                }
            }
            "permit-attributes" => {
                attributes = Attributes::parse(Some(value));
                if let Some(w) = current.as_mut() {
                    w.attributes = attributes.clone();
                }
            }
            "permit-item" => {
                if let Some(info) = ItemInfo::parse(value) {
                    flush(&mut s, current.take());
                    current = Some(Waiting {
                        info,
                        from: from.clone(),
                        attributes: attributes.clone(),
                    });
                }
            }
            _ => {}
        }
    }
    flush(&mut s, current);
    s
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "5be3c7e1a0d94a9f8e1f0c2b3a4d5e6f";

    #[test]
    fn permit_item_values() {
        let v = format!(
            "{ID};type=\"text/plain\";size=5;sha256=AB{};stored=1800000000;expires=1800604800",
            "0".repeat(62)
        );
        let i = ItemInfo::parse(&v).unwrap();
        assert_eq!(i.id, ID);
        assert_eq!(i.content_type.as_deref(), Some("text/plain"));
        assert_eq!(i.size, Some(5));
        assert_eq!(i.sha256.unwrap(), format!("ab{}", "0".repeat(62)));
        assert_eq!(
            (i.stored, i.expires),
            (Some(1_800_000_000), Some(1_800_604_800))
        );
        assert!(ItemInfo::parse("XYZ;size=1").is_none());
        assert!(ItemInfo::parse(&ID.to_uppercase()).is_none());
        assert_eq!(
            ItemInfo::parse(&format!("{ID};expires=9")).unwrap().expires,
            Some(9)
        );
    }

    #[test]
    fn attributes_round_trip() {
        let a = Attributes::parse(Some(" Secret , kind=photo"));
        assert!(a.secret());
        assert!(!Attributes::parse(Some("secretive")).secret());
        assert_eq!(a.header().unwrap(), "secret,kind=photo");
        assert_eq!(Attributes::default().header(), None);
    }

    #[test]
    fn summary_lists_items_with_their_blocks() {
        let body = format!(
            "Messages-Waiting: yes\r\nMessage-Account: sip:bob@example.org\r\n\
Text-Message: 1/0\r\nMultimedia-Message: 1/0\r\n\r\n\
Message-ID: {ID}\r\nFrom: <sip:alice@example.org>\r\nMessage-Context: text-message\r\n\
Permit-Item: {ID};type=\"text/plain\";size=5;sha256={z};stored=1;expires=2\r\n\r\n\
Message-ID: {ID2}\r\nFrom: <sip:carol@example.org>\r\n\
Permit-Item: {ID2};type=\"application/permit-sealed\";size=99;sha256={z};stored=1;expires=2\r\n\
Permit-Attributes: secret\r\n",
            z = "0".repeat(64),
            ID2 = "f".repeat(32)
        );
        let s = parse_summary(&body);
        assert!(s.waiting);
        assert_eq!(s.count, 2);
        assert_eq!(s.items.len(), 2);
        assert_eq!(s.items[0].info.id, ID);
        assert_eq!(s.items[0].from.as_deref(), Some("<sip:alice@example.org>"));
        assert!(!s.items[0].attributes.secret());
        assert_eq!(s.items[1].info.size, Some(99));
        assert!(s.items[1].attributes.secret());
        let none = parse_summary("Messages-Waiting: no\r\nText-Message: 0/0\r\n");
        assert!(!none.waiting && none.items.is_empty() && none.count == 0);
    }

    #[test]
    fn sha256_is_the_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
