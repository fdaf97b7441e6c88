//! The registrar (RFC 3261 §10.3): adds, refreshes and removes bindings of an AOR and
//! answers with the complete current set. Path (RFC 3327) is stored with each binding.

use std::mem::take;
use std::net::SocketAddr;

use sip_core::message::{HeaderName, Message, NameAddr, trim};
use sip_core::transport::Transport;

use crate::location::{Binding, CallIdHash, Location, ReplaceError, Stored};

/// Registrar limits (seconds).
#[derive(Debug, Clone)]
pub struct RegistrarConfig {
    /// Shorter non-zero expiries get 423 Interval Too Brief (§10.3 step 7).
    pub min_expires: u32,
    /// Longer expiries are shortened to this.
    pub max_expires: u32,
    /// Used when neither the Contact nor the request says.
    pub default_expires: u32,
    /// Most bindings one AOR may hold.
    pub max_contacts: usize,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        Self {
            min_expires: 60,
            max_expires: 7200,
            default_expires: 3600,
            max_contacts: 16,
        }
    }
}

/// The registrar's decision, turned into a response by the engine.
#[derive(Debug, PartialEq, Eq)]
pub enum Registered {
    /// 200 OK listing every live binding with its remaining seconds, to be sent once
    /// the change is stored (at once, or when the pending write settles).
    Ok(Vec<(String, u64)>, Stored),
    /// An error status; `min_expires` goes into the 423's Min-Expires header.
    Reject {
        status: u16,
        reason: &'static str,
        min_expires: Option<u32>,
    },
}

fn reject(status: u16, reason: &'static str) -> Registered {
    Registered::Reject {
        status,
        reason,
        min_expires: None,
    }
}

/// Applies a REGISTER for `aor` (already authorised to change it).
pub fn handle_register(
    cfg: &RegistrarConfig,
    location: &mut Location,
    aor: &str,
    req: &Message,
    source: (Transport, SocketAddr),
    unix_now: u64,
) -> Registered {
    let Ok(cseq) = req.cseq() else {
        return reject(400, "Bad CSeq");
    };
    let Some(call_id) = req.call_id().and_then(|c| std::str::from_utf8(c).ok()) else {
        return reject(400, "Bad Call-ID");
    };
    let call_hash = CallIdHash::of(call_id);
    let Ok(header_expires) = req.expires() else {
        return reject(400, "Bad Expires");
    };
    let contacts: Vec<&[u8]> = req
        .list(HeaderName::Contact)
        .filter(|c| !c.is_empty())
        .collect();
    let mut bindings = location.bindings(aor).to_vec();
    bindings.retain(|b| b.expires_at > unix_now);

    // `Contact: *` removes every binding; only with Expires: 0 and alone (§10.3 step 6).
    if contacts.iter().any(|c| *c == b"*") {
        if contacts.len() != 1 || header_expires != Some(0) {
            return reject(400, "Bad Wildcard Contact");
        }
        if bindings
            .iter()
            .any(|b| b.call_id == call_hash && b.cseq >= cseq.seq)
        {
            return reject(500, "Out Of Order CSeq");
        }
        bindings.clear();
        return store(location, aor, bindings, unix_now);
    }

    let path: Vec<String> = req
        .list(HeaderName::Path)
        .filter_map(|p| std::str::from_utf8(p).ok().map(str::to_owned))
        .collect();
    for raw in contacts {
        let Some(c) = NameAddr::parse(raw) else {
            return reject(400, "Bad Contact");
        };
        let Ok(uri) = std::str::from_utf8(c.uri) else {
            return reject(400, "Bad Contact");
        };
        let expires = match c.param(b"expires") {
            Some(v) => match std::str::from_utf8(trim(v))
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
            {
                Some(e) => e,
                None => return reject(400, "Bad Contact Expires"),
            },
            None => header_expires.unwrap_or(cfg.default_expires),
        };
        if expires != 0 && expires < cfg.min_expires {
            return Registered::Reject {
                status: 423,
                reason: "Interval Too Brief",
                min_expires: Some(cfg.min_expires),
            };
        }
        let Some(q) = c.param(b"q").map_or(Some(1000), parse_q) else {
            return reject(400, "Bad Contact q");
        };
        let existing = bindings.iter().position(|b| *b.contact == *uri);
        if let Some(i) = existing {
            let b = &bindings[i];
            if b.call_id == call_hash && b.cseq >= cseq.seq {
                return reject(500, "Out Of Order CSeq");
            }
        }
        if expires == 0 {
            if let Some(i) = existing {
                bindings.remove(i);
            }
            continue;
        }
        // A refresh keeps the stored Contact's text (the same bytes): no new copy.
        let contact = existing.map_or_else(|| uri.into(), |i| take(&mut bindings[i].contact));
        let binding = Binding {
            contact,
            expires_at: unix_now + u64::from(expires.min(cfg.max_expires)),
            q,
            call_id: call_hash,
            cseq: cseq.seq,
            path: path.clone().into(),
            source: Some(source.into()),
            max_calls: c
                .param(crate::gate::MAX_CALLS_PARAM)
                .and_then(|v| std::str::from_utf8(trim(v)).ok()?.parse().ok()),
            load_query: c
                .param(crate::gate::LOAD_QUERY_PARAM)
                .is_none_or(|v| !matches!(trim(v), b"0" | b"off" | b"no")),
        };
        match existing {
            Some(i) => bindings[i] = binding,
            None => bindings.push(binding),
        }
    }
    if bindings.len() > cfg.max_contacts {
        return reject(403, "Too Many Contacts");
    }
    store(location, aor, bindings, unix_now)
}

fn store(location: &mut Location, aor: &str, bindings: Vec<Binding>, unix_now: u64) -> Registered {
    let listed = bindings
        .iter()
        .map(|b| (b.contact.to_string(), b.expires_at - unix_now))
        .collect();
    match location.replace(aor, bindings) {
        Ok(stored) => Registered::Ok(listed, stored),
        // The store worker is behind: try again shortly (the engine adds Retry-After).
        Err(ReplaceError::Backlog) => reject(503, "Storage Busy"),
        Err(ReplaceError::Store(e)) => {
            tracing::error!(error = %e, "registration not stored");
            reject(500, "Storage Failure")
        }
    }
}

/// `q` as thousandths: `0`, `0.5`, `1.000` (RFC 3261 §20.10 qvalue).
fn parse_q(v: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(trim(v)).ok()?;
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_val: u16 = format!("{frac:0<3}").parse().ok()?;
    match int {
        "0" => Some(frac_val),
        "1" if frac_val == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
