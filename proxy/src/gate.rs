//! The gate (docs/profile.md "Gate"): a request that would reveal or reach a callee
//! (INVITE, MESSAGE, SUBSCRIBE out of dialog) goes on only when the authenticated
//! caller is on the callee's permitted-terminal list, else 403 — the same 403 for an
//! unknown callee. Before a permitted INVITE is routed, the callee is asked whether it
//! can take a call (OPTIONS, RFC 3261 §11.2: a busy UA answers 486), unless its
//! advertised call limit is already reached (486 without asking). The lists themselves
//! are [`crate::permits::Permits`], which the engine holds.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Gate settings.
#[derive(Debug, Clone)]
pub struct GateSettings {
    /// Off: every authenticated caller reaches every callee (no permit lists).
    pub enabled: bool,
    /// Ask the callee with OPTIONS before routing a permitted INVITE.
    pub load_query: bool,
    /// How long the callee has to answer the load query (then 480).
    pub query_timeout: Duration,
    /// Dialogs not ended by a BYE seen here are forgotten after this long.
    pub dialog_max_age: Duration,
    /// Lifetime of a permit token (the direct INVITE must follow the 302 within it).
    pub token_ttl: Duration,
    /// Send session secrets on hops that are not TLS (labs only; warned at start and
    /// on every call).
    pub insecure_keys: bool,
    /// Answer every permitted INVITE in direct mode (302), not only those that ask
    /// with `Request-Disposition: redirect`.
    pub force_direct: bool,
}

impl Default for GateSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            load_query: true,
            query_timeout: Duration::from_secs(2),
            dialog_max_age: Duration::from_hours(12),
            token_ttl: Duration::from_mins(1),
            insecure_keys: false,
            force_direct: false,
        }
    }
}

/// The Contact header parameter with which a UA advertises how many simultaneous
/// calls it takes (docs/profile.md): `Contact: <sip:bob@192.0.2.7>;max-calls=2`.
pub const MAX_CALLS_PARAM: &[u8] = b"max-calls";
/// The Contact header parameter with which a UA turns the load query off for itself.
pub const LOAD_QUERY_PARAM: &[u8] = b"load-query";

/// Established INVITE dialogs per callee, counted from the 2xx we forwarded to the
/// BYE we saw (both directions); entries older than the maximum age are dropped.
#[derive(Debug, Default)]
pub struct Dialogs {
    by_call_id: HashMap<Bytes, (String, Instant)>,
    per_callee: HashMap<String, u32>,
}

impl Dialogs {
    pub fn active(&self, callee: &str) -> u32 {
        self.per_callee.get(callee).copied().unwrap_or(0)
    }

    /// A 2xx to an INVITE for `callee` went upstream.
    pub fn established(&mut self, call_id: Bytes, callee: &str, now: Instant) {
        if self
            .by_call_id
            .insert(call_id, (callee.to_owned(), now))
            .is_none()
        {
            *self.per_callee.entry(callee.to_owned()).or_default() += 1;
        }
    }

    /// A BYE for `call_id` was answered 2xx (or the dialog is otherwise over).
    pub fn ended(&mut self, call_id: &[u8]) {
        if let Some((callee, _)) = self.by_call_id.remove(call_id) {
            self.decrement(&callee);
        }
    }

    fn decrement(&mut self, callee: &str) {
        if let Some(n) = self.per_callee.get_mut(callee) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_callee.remove(callee);
            }
        }
    }

    /// Forgets dialogs older than `max_age` (a BYE that never passed here).
    pub fn expire(&mut self, now: Instant, max_age: Duration) {
        let old: Vec<Bytes> = self
            .by_call_id
            .iter()
            .filter(|(_, (_, since))| now.saturating_duration_since(*since) > max_age)
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            self.ended(&k);
        }
    }

    pub fn len(&self) -> usize {
        self.by_call_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_call_id.is_empty()
    }
}

/// What the load query's answers mean for the call (RFC 3261 §11.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryOutcome {
    /// A 2xx: the callee can take the call.
    Available,
    /// 486 or 600: busy everywhere.
    Busy,
    /// Any other final (e.g. 405 from a UA that does not answer OPTIONS): not busy.
    Unknown,
}

impl QueryOutcome {
    pub fn of(status: u16) -> Self {
        match status {
            200..=299 => Self::Available,
            486 | 600 => Self::Busy,
            _ => Self::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialog_counts() {
        let t0 = Instant::now();
        let mut d = Dialogs::default();
        d.established(Bytes::from_static(b"c1"), "bob@x", t0);
        d.established(Bytes::from_static(b"c1"), "bob@x", t0); // 2xx retransmission
        d.established(Bytes::from_static(b"c2"), "bob@x", t0);
        assert_eq!(d.active("bob@x"), 2);
        d.ended(b"c1");
        d.ended(b"c1");
        assert_eq!(d.active("bob@x"), 1);
        d.expire(t0 + Duration::from_secs(10), Duration::from_secs(5));
        assert_eq!(d.active("bob@x"), 0);
        assert!(d.is_empty());
    }

    #[test]
    fn query_outcomes() {
        assert_eq!(QueryOutcome::of(200), QueryOutcome::Available);
        assert_eq!(QueryOutcome::of(600), QueryOutcome::Busy);
        assert_eq!(QueryOutcome::of(405), QueryOutcome::Unknown);
    }
}
