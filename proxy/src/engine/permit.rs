//! Stage "grant": for a caller the gate let through to a local callee, the proxy issues
//! a one-time permit token and a session secret for the call (docs/profile.md "Permit
//! token and session key", "Where the token and the key travel") and tells both sides:
//! the callee in the load query and in the INVITE, the caller in the responses that
//! route it, or in a 302 whose Contact carries the token (direct mode, RFC 3841
//! `Request-Disposition: redirect`; RFC 3261 §19.1.5 embedded headers).
//!
//! The secret travels only on TLS hops unless the operator set `insecure_keys`. Neither
//! value is ever logged.

use sip_core::message::{HeaderName, Message};
use sip_core::permit::{SessionSecret, Token, TokenClaims};
use sip_core::transport::Transport;

use super::Proxy;

/// What the proxy issued for one permitted call.
#[derive(Clone)]
pub(super) struct Grant {
    /// The permit token's wire form (`v1.<kid>.<exp>.<nonce>.<mac>`).
    pub(super) token: String,
    /// The caller's canonical AOR the token is bound to (`sip:user@domain`).
    pub(super) caller: String,
    /// The session secret's wire form (43 base64url characters).
    pub(super) secret: String,
    /// Direct mode: answer 302 towards the callee instead of forwarding the INVITE.
    pub(super) direct: bool,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token or the secret.
        f.debug_struct("Grant")
            .field("direct", &self.direct)
            .finish_non_exhaustive()
    }
}

/// Whether the caller asked for direct mode (RFC 3841 §9.1: `Request-Disposition`
/// directives, comma-separated, case-insensitive).
pub(super) fn wants_redirect(msg: &Message) -> bool {
    msg.list(HeaderName::RequestDisposition)
        .any(|d| d.trim_ascii().eq_ignore_ascii_case(b"redirect"))
}

/// A quoted-string (RFC 3261 §25.1) holding `v`: `"` and `\` escaped.
pub(super) fn quoted(v: &[u8]) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for &b in v {
        if b == b'"' || b == b'\\' {
            out.push('\\');
        }
        out.push(char::from(b));
    }
    out.push('"');
    out
}

impl Proxy {
    /// Issues the token and the secret for `caller` → `callee` (both `user@domain`) in
    /// the call `call_id`.
    pub(super) fn grant(
        &mut self,
        now: std::time::Instant,
        (caller, callee): (&str, &str),
        call_id: &[u8],
        direct: bool,
    ) -> Grant {
        let caller = format!("sip:{caller}");
        let callee = format!("sip:{callee}");
        let call_id = String::from_utf8_lossy(call_id);
        let claims = TokenClaims::new(&caller, &callee, &call_id);
        let ttl = self.cfg.gate.token_ttl.as_secs();
        let token = Token::issue(
            &self.token_ring,
            &claims,
            self.unix(now),
            ttl,
            &mut self.rng,
        );
        let secret = SessionSecret::generate(&mut self.rng);
        self.stats.grants += 1;
        if self.cfg.gate.insecure_keys {
            tracing::warn!(
                "insecure_keys: this call's session secret may cross a hop that is not TLS"
            );
        }
        Grant {
            token: token.encode(),
            secret: secret.encode(),
            caller,
            direct,
        }
    }

    /// Direct mode (the seed's flow): `302 Moved Temporarily` whose Contact is the
    /// callee's current address (its best binding) with the token as an embedded
    /// header (RFC 3261 §19.1.5), so the caller's next INVITE goes straight to the
    /// callee and carries it; the secret in `Permit-Key` (TLS hops only).
    pub(super) fn redirect(&mut self, now: std::time::Instant, ctx_id: u64) {
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else {
            return;
        };
        let (Some(g), Some(target)) = (ctx.grant.clone(), ctx.targets.front().cloned()) else {
            return;
        };
        ctx.answered = true;
        let (server, req) = (ctx.server.clone(), ctx.request.clone());
        let contact_uri = target
            .uri
            .unwrap_or_else(|| format!("sip:{}", super::Identity::sent_by(target.dest)));
        let sep = if contact_uri.contains('?') { '&' } else { '?' };
        let contact = format!("<{contact_uri}{sep}Permit-Token={}>", g.token);
        let caller_hop = self.server.get(&server).map(|e| e.flow.transport);
        let with_key = caller_hop.is_some_and(|t| self.key_allowed(t));
        let mut headers: Vec<(&str, &[u8])> = vec![
            ("Contact", contact.as_bytes()),
            ("Permit-Token", g.token.as_bytes()),
        ];
        if with_key {
            headers.push(("Permit-Key", g.secret.as_bytes()));
        }
        self.stats.redirects += 1;
        self.reply(now, &server, &req, 302, "Moved Temporarily", &headers);
    }

    /// A permitted INVITE to a local callee (authenticated caller, gate on) gets its
    /// token and session secret; `query`: the load query will run, which direct mode
    /// needs (it is how the callee learns the token before the direct INVITE).
    pub(super) fn grant_for(
        &mut self,
        now: std::time::Instant,
        (caller, callee): (Option<&str>, Option<&str>),
        msg: &Message,
        query: bool,
    ) -> Option<Grant> {
        use sip_core::message::Method;
        let (Some(caller), Some(callee), Some(method)) = (caller, callee, msg.method()) else {
            return None;
        };
        if !self.cfg.gate.enabled {
            return None;
        }
        // A MESSAGE gets a grant only in direct mode, and only when its sender asked
        // for it (`redirect, queue`: straight to a free callee, stored for a busy one;
        // docs/profile.md "Data with attributes"); `force_direct` is for calls.
        let direct = match method {
            Method::Invite => query && (self.cfg.gate.force_direct || wants_redirect(msg)),
            Method::Message if query && wants_redirect(msg) => true,
            _ => return None,
        };
        let call_id = msg.call_id().unwrap_or_default();
        Some(self.grant(now, (caller, callee), call_id, direct))
    }

    /// Whether the session secret may be sent on a hop over `transport`.
    pub(super) fn key_allowed(&self, transport: Transport) -> bool {
        transport == Transport::Tls || self.cfg.gate.insecure_keys
    }
}

/// The headers that tell the callee about a call before it arrives (load query):
/// `Permit-Token: <token>;caller="<AOR>";call-id="<Call-ID>"` and, on a TLS hop,
/// `Permit-Key: <secret>`.
pub(super) fn query_headers(g: &Grant, call_id: &[u8], with_key: bool) -> String {
    let mut h = format!(
        "Permit-Token: {};caller={};call-id={}\r\n",
        g.token,
        quoted(g.caller.as_bytes()),
        quoted(call_id)
    );
    if with_key {
        h.push_str("Permit-Key: ");
        h.push_str(&g.secret);
        h.push_str("\r\n");
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_quotes_and_backslashes() {
        assert_eq!(quoted(b"a@b"), "\"a@b\"");
        assert_eq!(quoted(br#"x"y\z"#), r#""x\"y\\z""#);
    }

    #[test]
    fn redirect_is_found_among_directives() {
        let m = |d: &str| {
            Message::parse(
                format!(
                    "INVITE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\n\
To: <sip:b@x>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n{d}Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
                )
                .into_bytes()
                .into(),
            )
            .unwrap()
        };
        assert!(wants_redirect(&m("Request-Disposition: redirect\r\n")));
        assert!(wants_redirect(&m("d: no-fork, Redirect\r\n")));
        assert!(!wants_redirect(&m("Request-Disposition: proxy\r\n")));
        assert!(!wants_redirect(&m("")));
    }

    #[test]
    fn query_headers_carry_the_key_only_when_allowed() {
        let g = Grant {
            token: "v1.1.9.n.m".into(),
            caller: "sip:alice@localhost".into(),
            secret: "S".repeat(43),
            direct: false,
        };
        let h = query_headers(&g, b"cid@host", false);
        assert_eq!(
            h,
            "Permit-Token: v1.1.9.n.m;caller=\"sip:alice@localhost\";call-id=\"cid@host\"\r\n"
        );
        assert!(
            query_headers(&g, b"c", true).contains(&format!("Permit-Key: {}\r\n", "S".repeat(43)))
        );
        assert!(!format!("{g:?}").contains("v1."));
    }
}
