//! Permit mode of the callee (docs/profile.md "The UA in permit mode"): the tokens and
//! session secrets the proxy told us in its load query, and the check of an incoming
//! INVITE against them.
//!
//! The proxy tells the callee, in the load-query OPTIONS, `Permit-Token: <token>;
//! caller="<AOR>";call-id="<Call-ID>"` and (on a TLS hop) `Permit-Key: <secret>`. Only an
//! OPTIONS that comes from the proxy (its address, over our transport) seeds the book:
//! anyone else could otherwise mint tokens for itself. An INVITE is accepted only if
//! its `Permit-Token` equals a remembered token for the INVITE's caller (From AOR) and
//! Call-ID, before its expiry, and only once ([`TokenBook::accept`], constant time).
//! Tokens and secrets never reach a log.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use sip_core::message::{HeaderName, Message, NameAddr, SipUri};
use sip_core::permit::{BookError, SessionSecret, Token, TokenBook};

/// At most this many session secrets are remembered (as many as tokens).
const MAX_SECRETS: usize = sip_core::permit::DEFAULT_BOOK_CAPACITY;

/// A told token is kept at least this long after the load query, whatever its
/// expiry says by our clock: expiries are whole seconds of the proxy's clock, and a
/// UA's clock may run a little ahead of it. Bounded by the book's capacity, and each
/// token is still accepted once only.
pub const MIN_HOLD_S: u64 = 2;

/// What a `Permit-Token` header says: the token and, in a load query, whom and which
/// call it is for.
#[derive(Clone, PartialEq, Eq)]
pub struct Told {
    pub token: String,
    pub caller: Option<String>,
    pub call_id: Option<String>,
}

impl std::fmt::Debug for Told {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Told")
            .field("caller", &self.caller)
            .field("call_id", &self.call_id)
            .finish_non_exhaustive()
    }
}

/// Reads `Permit-Token = token *( SEMI token-param )` (docs/profile.md "Where the
/// token and the key travel"); parameter values may be quoted strings (RFC 3261
/// §25.1, `\` escapes). `None` for an empty or malformed value.
pub fn parse_permit_token(value: &[u8]) -> Option<Told> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (token, mut rest) = value.split_once(';').map_or((value, ""), |(t, r)| (t, r));
    let token = token.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
        return None;
    }
    let mut told = Told {
        token: token.to_string(),
        caller: None,
        call_id: None,
    };
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=')?;
        let name = name.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (val, next) = if let Some(q) = after.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => out.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => out.push(c),
                }
            }
            let rest = q[end?..].trim_start();
            (out, rest.strip_prefix(';').unwrap_or(rest))
        } else {
            let (v, r) = after.split_once(';').unwrap_or((after, ""));
            (v.trim().to_string(), r)
        };
        match name.as_str() {
            "caller" => told.caller = Some(val),
            "call-id" => told.call_id = Some(val),
            _ => {}
        }
        rest = next;
    }
    Some(told)
}

/// The `Permit-Key` of a message, if it is a well-formed session secret.
pub fn permit_key(msg: &Message) -> Option<SessionSecret> {
    let v = msg.header(HeaderName::PermitKey)?;
    SessionSecret::parse(std::str::from_utf8(v).ok()?.trim()).ok()
}

/// The AOR of a From or To value in the proxy's canonical form, `sip:user@host`
/// (scheme and host lowercased, no port, parameters or headers): what a token is
/// bound to.
pub fn aor_of(name_addr: &[u8]) -> Option<String> {
    let na = NameAddr::parse(name_addr)?;
    let u = SipUri::parse(na.uri)?;
    let user = std::str::from_utf8(u.user?).ok()?;
    let host = std::str::from_utf8(u.host).ok()?.to_ascii_lowercase();
    Some(format!("sip:{user}@{host}"))
}

/// A source address for logs at info level and above: the host's last part masked
/// and no port (STYLE.md rule 11); the full address goes to debug only.
pub fn redact(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => {
            let o = a.ip().octets();
            format!("{}.{}.{}.x", o[0], o[1], o[2])
        }
        SocketAddr::V6(a) => {
            let s = a.ip().segments();
            format!("{:x}:{:x}:{:x}::x", s[0], s[1], s[2])
        }
    }
}

/// Why an INVITE was refused in permit mode (all 403, RFC 3261 §21.4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PermitRefusal {
    #[error("no Permit-Token")]
    NoToken,
    #[error("no caller in From")]
    NoCaller,
    #[error("{0}")]
    Book(#[from] BookError),
}

/// The tokens and secrets the proxy told this callee.
#[derive(Debug, Default)]
pub struct Permits {
    book: TokenBook,
    /// Session secrets by Call-ID, with the token's expiry; oldest first in `order`.
    secrets: HashMap<String, (SessionSecret, u64)>,
    order: VecDeque<String>,
}

impl Permits {
    /// Tokens remembered (for tests and counters).
    pub fn len(&self) -> usize {
        self.book.len()
    }

    pub fn is_empty(&self) -> bool {
        self.book.is_empty()
    }

    /// A load query from the proxy: remember its token (and secret) for the call it
    /// names. Returns whether a token was remembered. The caller of this function
    /// checked that `msg` came from the proxy.
    pub fn handle_load_query(&mut self, msg: &Message, unix_now: u64) -> bool {
        let Some(told) = msg
            .header(HeaderName::PermitToken)
            .and_then(parse_permit_token)
        else {
            return false;
        };
        let (Some(caller), Some(call_id)) = (&told.caller, &told.call_id) else {
            tracing::debug!("load query's Permit-Token names no caller or Call-ID: ignored");
            return false;
        };
        let Ok(token) = Token::parse(&told.token) else {
            tracing::debug!("load query's Permit-Token is malformed: ignored");
            return false;
        };
        let caller = aor_of(caller.as_bytes()).unwrap_or_else(|| caller.clone());
        let expires = token.expires().max(unix_now + MIN_HOLD_S);
        if let Err(e) = self
            .book
            .insert(&told.token, &caller, call_id, expires, unix_now)
        {
            tracing::debug!(error = %e, "load query's Permit-Token not remembered");
            return false;
        }
        if let Some(secret) = permit_key(msg) {
            self.remember_secret(call_id, secret, expires, unix_now);
        }
        true
    }

    fn remember_secret(&mut self, call_id: &str, secret: SessionSecret, exp: u64, now: u64) {
        self.secrets.retain(|_, (_, e)| *e > now);
        let secrets = &self.secrets;
        self.order.retain(|c| secrets.contains_key(c));
        while self.secrets.len() >= MAX_SECRETS {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.secrets.remove(&old);
        }
        if self
            .secrets
            .insert(call_id.to_string(), (secret, exp))
            .is_none()
        {
            self.order.push_back(call_id.to_string());
        }
    }

    /// Checks an incoming INVITE's `Permit-Token` for its caller (From AOR) and
    /// Call-ID; on success the token is used up and the call's session secret (if the
    /// proxy told one) is handed out once.
    pub fn accept_invite(
        &mut self,
        msg: &Message,
        unix_now: u64,
    ) -> Result<Option<SessionSecret>, PermitRefusal> {
        let presented = msg
            .header(HeaderName::PermitToken)
            .and_then(parse_permit_token)
            .ok_or(PermitRefusal::NoToken)?;
        let caller = msg
            .header(HeaderName::From)
            .and_then(aor_of)
            .ok_or(PermitRefusal::NoCaller)?;
        let call_id = std::str::from_utf8(msg.call_id().unwrap_or_default()).unwrap_or_default();
        self.book
            .accept(&presented.token, &caller, call_id, unix_now)?;
        Ok(self.secrets.remove(call_id).map(|(s, _)| s))
    }

    /// The secret the proxy told for `call_id` (a routed INVITE may carry it too).
    pub fn secret(&self, call_id: &str) -> Option<&SessionSecret> {
        self.secrets.get(call_id).map(|(s, _)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_proxy_header_forms() {
        let t = parse_permit_token(
            br#"v1.1.17.AAAA;caller="sip:alice@example.org";call-id="a\"b;c@h""#,
        )
        .unwrap();
        assert_eq!(t.token, "v1.1.17.AAAA");
        assert_eq!(t.caller.as_deref(), Some("sip:alice@example.org"));
        assert_eq!(t.call_id.as_deref(), Some("a\"b;c@h"));
        let bare = parse_permit_token(b" v1.2.3.x ").unwrap();
        assert_eq!((bare.token.as_str(), bare.caller), ("v1.2.3.x", None));
        assert!(parse_permit_token(b"").is_none());
        assert!(parse_permit_token(b"v1;caller=\"unterminated").is_none());
        assert!(
            !format!("{t:?}").contains("v1.1.17"),
            "Debug hides the token"
        );
    }

    #[test]
    fn aors_are_canonical() {
        assert_eq!(
            aor_of(b"\"Alice\" <sip:alice@Example.ORG:5070;transport=tls>;tag=1").as_deref(),
            Some("sip:alice@example.org")
        );
        assert_eq!(aor_of(b"<tel:+1>"), None);
    }

    #[test]
    fn redaction_hides_the_host_and_port() {
        assert_eq!(redact("198.51.100.7:5062".parse().unwrap()), "198.51.100.x");
        assert_eq!(
            redact("[2001:db8:1:2::9]:5060".parse().unwrap()),
            "2001:db8:1::x"
        );
    }
}
