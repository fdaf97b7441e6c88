//! `/metrics` in the Prometheus text exposition format (version 0.0.4), rendered at
//! scrape time from one [`EngineSnapshot`] and the sockets' counters.
//!
//! The engine keeps plain integers (`engine::Stats`) on its own thread; a scrape asks
//! for a copy through the control queue. There is no global recorder: nothing on the
//! SIP path touches an atomic, a lock or a label map, and engine tests that run many
//! engines in one process do not share counters. Names follow Prometheus conventions
//! (`permit_` prefix, `_total` for counters); the RFC 7501 §3.4 benchmarking metrics
//! (registration rate, session establishment rate and its failures) are `rate()` of
//! `permit_sip_registrations_total`, `permit_sip_sessions_established_total` and
//! `permit_sip_session_failures_total`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::control::{EngineSnapshot, METHODS};

/// Text being rendered; each family is written once with its HELP and TYPE lines.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family of one unlabelled sample.
    fn one(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A family of samples that differ in one label.
    fn by(&mut self, name: &str, kind: &str, help: &str, label: &str, values: &[(&str, u64)]) {
        self.family(name, kind, help);
        for (v, n) in values {
            self.sample(name, &[(label, v)], *n);
        }
    }
}

/// Label values escape `\`, `"` and newlines (exposition format).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn n(v: usize) -> u64 {
    v as u64
}

/// The exposition for one scrape; `engine` is `None` when the engine did not answer
/// (then only `permit_engine_up 0`, the socket counters and the store are given);
/// `store` is the stored items and their bytes, when the store could be read.
pub fn render(
    engine: Option<&EngineSnapshot>,
    net: Option<&sip_net::NetStats>,
    store: Option<(u64, u64)>,
) -> String {
    let mut x = Exposition(String::with_capacity(8 * 1024));
    x.one(
        "permit_engine_up",
        "gauge",
        "1 when the engine answered this scrape.",
        u64::from(engine.is_some()),
    );
    if let Some(net) = net {
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        x.by(
            "permit_net_errors_total",
            "counter",
            "Socket-level drops and errors, by kind.",
            "kind",
            &[
                ("dropped_input", get(&net.dropped_input)),
                ("framing", get(&net.framing_errors)),
                ("send", get(&net.send_errors)),
                ("tls_handshake", get(&net.handshake_errors)),
            ],
        );
    }
    if let Some((items, bytes)) = store {
        x.one(
            "permit_store_items",
            "gauge",
            "Stored items waiting for their callee (unexpired).",
            items,
        );
        x.one(
            "permit_store_bytes",
            "gauge",
            "Bytes of the stored items (uploaded files by their size).",
            bytes,
        );
    }
    if let Some(e) = engine {
        render_engine(&mut x, e);
    }
    x.0
}

fn render_engine(x: &mut Exposition, e: &EngineSnapshot) {
    render_sip(x, e);
    render_overload(x, e);
    render_state(x, e);
    if let Some(r) = &e.relay {
        render_relay(x, e, r);
    }
}

/// Traffic, outcomes and policy decisions (counters).
fn render_sip(x: &mut Exposition, e: &EngineSnapshot) {
    let s = &e.stats;
    let t = &s.traffic;
    let methods: Vec<(&str, u64)> = METHODS
        .iter()
        .copied()
        .chain(["other"])
        .zip(t.requests.iter().copied())
        .collect();
    x.by(
        "permit_sip_requests_total",
        "counter",
        "SIP requests received, by method (retransmissions included).",
        "method",
        &methods,
    );
    x.family(
        "permit_sip_responses_total",
        "counter",
        "SIP responses sent (own and forwarded), by status code; codes never sent are absent.",
    );
    for (i, &count) in t.responses.iter().enumerate().filter(|(_, c)| **c > 0) {
        let code = (100 + i).to_string();
        x.sample("permit_sip_responses_total", &[("code", &code)], count);
    }
    x.one(
        "permit_sip_received_total",
        "counter",
        "SIP messages received (requests, responses, keep-alives).",
        s.received,
    );
    x.by(
        "permit_sip_dropped_total",
        "counter",
        "Messages refused or dropped, by reason.",
        "reason",
        &[
            ("unparsable", s.unparsable),
            ("bad_request", s.bad_requests),
            ("stray_response", s.stray_responses),
            ("forged_dialog", s.forged_dialogs),
            ("branch_reused", s.branch_reused),
        ],
    );
    x.one(
        "permit_sip_forwarded_requests_total",
        "counter",
        "Requests forwarded downstream.",
        s.forwarded_requests,
    );
    x.one(
        "permit_sip_registrations_total",
        "counter",
        "REGISTERs accepted (RFC 7501 registration rate: rate() of this).",
        s.registrations,
    );
    x.one(
        "permit_sip_sessions_established_total",
        "counter",
        "2xx answers to INVITEs sent to callers (RFC 7501 session establishment rate: rate() of this).",
        t.sessions_established,
    );
    x.one(
        "permit_sip_session_failures_total",
        "counter",
        "Final answers 300-699 to INVITEs sent to callers (failed session attempts).",
        t.session_failures,
    );
    x.by(
        "permit_gate_decisions_total",
        "counter",
        "Gate decisions on calls: permitted (token issued), refused (403), busy (486), query_timeout (no load-query answer in time), redirected (302, direct mode).",
        "decision",
        &[
            ("permitted", s.grants),
            ("refused", s.gate_refused),
            ("busy", s.busy),
            ("query_timeout", t.query_timeouts),
            ("redirected", s.redirects),
        ],
    );
    x.one(
        "permit_auth_failures_total",
        "counter",
        "Digest authentications that failed (unknown user or wrong response).",
        e.auth_failures,
    );
    x.one(
        "permit_auth_limiter_refusals_total",
        "counter",
        "Requests answered 503 because their source was over its authentication failure budget.",
        e.limiter_refused,
    );
}

/// Overload control (engine::overload): refusals, episodes, the state and its signal.
fn render_overload(x: &mut Exposition, e: &EngineSnapshot) {
    x.one(
        "permit_overload_refusals_total",
        "counter",
        "New INVITEs and REGISTERs answered 503 with Retry-After because the proxy was over capacity.",
        e.stats.overload_refused,
    );
    x.one(
        "permit_overload_episodes_total",
        "counter",
        "Times the proxy went over capacity (input waited past the [overload] high mark).",
        e.stats.overload_episodes,
    );
    x.one(
        "permit_overloaded",
        "gauge",
        "1 while the proxy refuses new INVITEs and REGISTERs for load, else 0.",
        u64::from(e.overload.over),
    );
    x.one(
        "permit_overload_admitted_per_mille",
        "gauge",
        "Share of new INVITEs and REGISTERs admitted, per 1,000: 0 while over capacity, climbing back to 1,000 after an episode.",
        u64::from(e.overload.admitted_per_mille),
    );
    x.one(
        "permit_input_wait_microseconds",
        "gauge",
        "How long the last UDP datagram read had waited in its socket's receive queue.",
        u64::try_from(e.overload.waited.as_micros()).unwrap_or(u64::MAX),
    );
}

/// What the engine holds now (gauges) and store-and-forward.
fn render_state(x: &mut Exposition, e: &EngineSnapshot) {
    let s = &e.stats;
    x.by(
        "permit_transactions_active",
        "gauge",
        "Transactions alive, by side; contexts are proxied requests awaiting a final answer.",
        "kind",
        &[
            ("server", n(e.server_transactions)),
            ("client", n(e.client_transactions)),
            ("context", n(e.contexts)),
        ],
    );
    x.one(
        "permit_registered_aors",
        "gauge",
        "Addresses-of-record with bindings.",
        n(e.aors),
    );
    x.one(
        "permit_registered_bindings",
        "gauge",
        "Contact bindings held by the location service.",
        n(e.bindings),
    );
    x.by(
        "permit_queue_depth",
        "gauge",
        "Engine queues: timers, transmits not yet sent, REGISTERs awaiting their write, unsettled location writes.",
        "queue",
        &[
            ("timers", n(e.timers)),
            ("outbound", n(e.outbound_queue)),
            ("held_registers", n(e.held_registers)),
            ("pending_writes", n(e.pending_writes)),
        ],
    );
    x.by(
        "permit_store_items_total",
        "counter",
        "Store and forward: items deposited, delivered, and message-summary NOTIFYs sent.",
        "event",
        &[
            ("deposited", s.deposits),
            ("delivered", s.delivered),
            ("notified", s.notifies),
        ],
    );
}

/// The media relay's counters.
fn render_relay(x: &mut Exposition, e: &EngineSnapshot, r: &crate::relay::RelayStats) {
    {
        x.one(
            "permit_relay_packets_total",
            "counter",
            "Media packets forwarded by the relay.",
            r.forwarded_packets,
        );
        x.one(
            "permit_relay_bytes_total",
            "counter",
            "Media bytes forwarded by the relay.",
            r.forwarded_bytes,
        );
        x.one(
            "permit_relay_calls_active",
            "gauge",
            "Calls holding relay ports.",
            r.live_calls,
        );
        x.by(
            "permit_relay_dropped_total",
            "counter",
            "Relay datagrams dropped, by reason.",
            "reason",
            &[
                ("unallocated", r.dropped_unallocated),
                ("stranger", r.dropped_stranger),
                ("unlatched", r.dropped_unlatched),
                ("send_failed", r.send_failed),
                ("oversize", r.oversize),
            ],
        );
        x.by(
            "permit_relay_calls_total",
            "counter",
            "Calls given a relay, and video calls that got none.",
            "outcome",
            &[
                ("relayed", e.relayed_calls),
                ("unrelayed", e.unrelayed_calls),
            ],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lines_and_values() {
        let mut e = EngineSnapshot::default();
        e.stats.registrations = 7;
        e.stats.traffic.request(&sip_core::message::Method::Invite);
        e.stats.traffic.response(200, true);
        e.stats.traffic.response(486, true);
        e.stats.traffic.response(100, true);
        e.aors = 3;
        let text = render(Some(&e), None, Some((2, 300)));
        for line in [
            "permit_engine_up 1",
            "permit_sip_registrations_total 7",
            "permit_sip_requests_total{method=\"INVITE\"} 1",
            "permit_sip_requests_total{method=\"other\"} 0",
            "permit_sip_responses_total{code=\"200\"} 1",
            "permit_sip_responses_total{code=\"486\"} 1",
            "permit_sip_sessions_established_total 1",
            "permit_sip_session_failures_total 1",
            "permit_registered_aors 3",
            "permit_store_items 2",
            "permit_store_bytes 300",
            "permit_gate_decisions_total{decision=\"query_timeout\"} 0",
            "# TYPE permit_sip_requests_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("code=\"404\""));
        assert!(!text.contains("permit_relay_"), "no relay configured");
        // Every sample line is `name{labels} value` or `name value`.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = l.rsplit_once(' ').unwrap();
            assert!(v.parse::<u64>().is_ok(), "bad sample {l:?}");
        }
        let down = render(None, None, None);
        assert_eq!(down.lines().last(), Some("permit_engine_up 0"));
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn overload_counters_and_state_are_rendered() {
        let mut e = EngineSnapshot::default();
        e.stats.overload_refused = 7;
        e.stats.overload_episodes = 2;
        e.overload = crate::engine::OverloadState {
            over: false,
            admitted_per_mille: 375,
            waited: std::time::Duration::from_millis(42),
        };
        let text = render(Some(&e), None, None);
        for line in [
            "permit_overload_refusals_total 7",
            "permit_overload_episodes_total 2",
            "permit_overloaded 0",
            "permit_overload_admitted_per_mille 375",
            "permit_input_wait_microseconds 42000",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing");
        }
    }
}
