//! The values a permit list is made of: the canonical address-of-record, the entry that
//! names one caller or a whole domain, and the entity-tag of a list.

use std::borrow::Cow;
use std::fmt;

use super::PermitError;

/// An address-of-record in canonical form `user@host`: the user part is kept as given
/// (case-sensitive), the host is lowercased (RFC 3261 §19.1.4 compares user parts
/// case-sensitively and hosts case-insensitively; §10.3 step 5 compares AORs as URIs).
/// This is the key [`crate::location::aor_key`] produces for a request URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Aor(String);

/// The longest AOR accepted (user and host together); RFC 3261 sets no limit, the
/// bound keeps a hostile list small.
pub const MAX_AOR_LEN: usize = 256;

impl Aor {
    /// Parses `user@host`, `sip:user@host` or `sips:user@host` (the scheme is dropped:
    /// an AOR names a user, not a transport). Rejects URI parameters, headers, display
    /// names and the reserved user part `*`.
    pub fn parse(input: &str) -> Result<Self, PermitError> {
        let (user, host) = split(input).map_err(|reason| PermitError::BadAor {
            input: input.to_owned(),
            reason,
        })?;
        if user == "*" {
            return Err(PermitError::BadAor {
                input: input.to_owned(),
                reason: "`*` names a domain, not a user",
            });
        }
        Ok(Self(format!("{user}@{}", host.to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The user part (before the last `@`).
    pub fn user(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(u, _)| u)
    }

    /// The host part, lowercase.
    pub fn host(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, h)| h)
    }
}

impl fmt::Display for Aor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Splits an AOR into user and host after dropping an optional scheme; checks the
/// characters without allocating.
fn split(input: &str) -> Result<(&str, &str), &'static str> {
    let s = input.trim();
    let s = strip_scheme(s);
    if s.len() > MAX_AOR_LEN {
        return Err("longer than 256 bytes");
    }
    let (user, host) = s.rsplit_once('@').ok_or("no `@`")?;
    if user.is_empty() {
        return Err("empty user part");
    }
    if host.is_empty() {
        return Err("empty host");
    }
    // Forbidden everywhere: separators of URIs, headers, CSV and the JSON/SIP bodies
    // that carry lists (RFC 3261 §25.1: `;` starts parameters, `?` headers).
    let bad = |c: char| {
        c.is_whitespace() || c.is_control() || matches!(c, ',' | ';' | '?' | '<' | '>' | '"')
    };
    if user.contains(bad) || user.contains('@') {
        return Err("forbidden character in the user part");
    }
    if host.contains(bad) || host.contains('/') || host.contains('*') {
        return Err("forbidden character in the host");
    }
    Ok((user, host))
}

fn strip_scheme(s: &str) -> &str {
    for scheme in ["sip:", "sips:"] {
        if s.len() >= scheme.len() && s[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return &s[scheme.len()..];
        }
    }
    s
}

/// The canonical key of an AOR for a lookup on the hot path: borrows when the input is
/// already canonical (the engine passes [`crate::location::aor_key`] output), allocates
/// only to drop a scheme-less uppercase host. Does not validate: a malformed key
/// simply matches nothing.
pub(crate) fn lookup_key(input: &str) -> Cow<'_, str> {
    let s = strip_scheme(input);
    match s.rsplit_once('@') {
        Some((user, host)) if host.bytes().any(|b| b.is_ascii_uppercase()) => {
            Cow::Owned(format!("{user}@{}", host.to_ascii_lowercase()))
        }
        _ => Cow::Borrowed(s),
    }
}

/// One line of a permit list: a single caller, or every caller of a domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PermitEntry {
    /// A caller AOR in canonical form (`alice@example.com`).
    Exact(String),
    /// Every user of a host (`*@example.com` holds `example.com`, lowercase).
    Domain(String),
}

impl PermitEntry {
    /// Parses `alice@example.com`, `sip:alice@example.com` or `*@example.com`.
    pub fn parse(input: &str) -> Result<Self, PermitError> {
        let (user, host) = split(input).map_err(|reason| PermitError::BadAor {
            input: input.to_owned(),
            reason,
        })?;
        let host = host.to_ascii_lowercase();
        if user == "*" {
            Ok(Self::Domain(host))
        } else {
            Ok(Self::Exact(format!("{user}@{host}")))
        }
    }

    /// An entry for exactly this caller.
    pub fn exact(aor: &Aor) -> Self {
        Self::Exact(aor.as_str().to_owned())
    }
}

impl fmt::Display for PermitEntry {
    /// The text form `parse` accepts: `alice@example.com` or `*@example.com`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(aor) => f.write_str(aor),
            Self::Domain(host) => write!(f, "*@{host}"),
        }
    }
}

/// The entity-tag of one callee's list (RFC 3903 §4.1 `SIP-ETag`, checked against
/// `SIP-If-Match`, §6 step 2). Opaque to clients: 16 lowercase hex digits of a random
/// 64-bit value, fresh on every successful change (RFC 3903 §6 step 6: different from
/// every entity-tag the list had before, which 64 random bits make certain in practice,
/// and the current one is excluded explicitly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ETag(u64);

impl ETag {
    pub const fn from_u64(v: u64) -> Self {
        Self(v)
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Parses the text form; `None` for anything this server cannot have issued.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(Self)
    }

    /// Whether a `SIP-If-Match` value names this tag (case-insensitive hex).
    pub fn matches(self, if_match: &str) -> bool {
        Self::parse(if_match) == Some(self)
    }
}

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aor_lowercases_the_host_only_and_drops_the_scheme() {
        let a = Aor::parse("sip:Alice@Example.COM").unwrap();
        assert_eq!(a.as_str(), "Alice@example.com");
        assert_eq!(a.user(), "Alice");
        assert_eq!(a.host(), "example.com");
        assert_eq!(Aor::parse("SIPS:bob@h").unwrap().as_str(), "bob@h");
        assert_eq!(Aor::parse(" bob@[::1] ").unwrap().as_str(), "bob@[::1]");
        assert_ne!(
            Aor::parse("alice@example.com").unwrap(),
            Aor::parse("ALICE@example.com").unwrap()
        );
    }

    #[test]
    fn aor_rejects_what_is_not_an_aor() {
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "*@example.com",
            "alice@example.com;transport=tcp",
            "alice@exa mple.com",
            "<sip:alice@example.com>",
            "a,b@example.com",
            "alice@example.com?subject=x",
        ] {
            assert!(Aor::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Aor::parse(&format!("{}@h", "u".repeat(300))).is_err());
    }

    #[test]
    fn entries_parse_and_print() {
        assert_eq!(
            PermitEntry::parse("*@Example.com").unwrap(),
            PermitEntry::Domain("example.com".into())
        );
        assert_eq!(
            PermitEntry::parse("sip:Bob@EXAMPLE.com").unwrap(),
            PermitEntry::Exact("Bob@example.com".into())
        );
        for text in ["*@example.com", "bob@example.com"] {
            assert_eq!(PermitEntry::parse(text).unwrap().to_string(), text);
        }
        assert!(PermitEntry::parse("*@").is_err());
        assert!(PermitEntry::parse("*@*.com").is_err());
    }

    #[test]
    fn lookup_key_borrows_canonical_input() {
        assert!(matches!(lookup_key("a@b.c"), Cow::Borrowed("a@b.c")));
        assert!(matches!(lookup_key("sip:a@b.c"), Cow::Borrowed("a@b.c")));
        assert_eq!(lookup_key("sip:A@B.c"), "A@b.c");
    }

    #[test]
    fn etag_prints_and_parses() {
        let t = ETag::from_u64(0x00ab_cdef_0123_4567);
        assert_eq!(t.to_string(), "00abcdef01234567");
        assert!(t.matches("00ABCDEF01234567"));
        assert!(!t.matches("abcdef01234567"));
        assert!(!t.matches("00abcdef01234568"));
        assert_eq!(ETag::parse("zz00000000000000"), None);
    }
}
