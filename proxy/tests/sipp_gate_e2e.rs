//! End-to-end tests of the gate (docs/profile.md: permitted-terminal lists, the load
//! query, the advertised call limit) with SIPp as the real peers.
//!
//! Each test starts its own `permit-proxy` with its defaults (digest authentication and
//! the gate on) on a free loopback UDP port with a fresh data directory, adds users and
//! permitted-terminal lists with the operator CLI, registers a SIPp callee and drives
//! SIPp callers through the proxy. The proxy, the callers and the registering SIPp use
//! 127.0.0.1; every callee listens on 127.0.0.2, so that any trace of its address or
//! port in what a refused caller received can be found by searching bytes. The
//! scenarios live in `testbeds/sipp/` (see the README there). Every SIPp run is bounded
//! by `-m`, `-timeout` and `-timeout_error`, and by a kill here if it overstays.
//!
//! SIPp must be on `PATH`. Without it a test prints a note and passes, unless the
//! environment variable `CI` is set: then it fails.
//!
//! Logs, SIPp statistics and message traces of each test stay in
//! `target/tmp/sipp-gate-e2e/<test>/`; a failure names the files.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

use common::proxy::{Ports, Proxy};
use common::sipp::{RunningSipp, SCENARIOS, Sipp, Traced, sipp_available};
use common::{
    CALLEE_HOST, DOMAIN, HOST, Transport, add_permit, free_port, proxy_cli, wait_until, workdir,
};

// ---------------------------------------------------------------- message traces

/// The responses in `trace` with status `status` that SIPp received.
fn received_responses(trace: &[Traced], status: u16) -> Vec<&Traced> {
    trace
        .iter()
        .filter(|m| m.received && m.status() == Some(status))
        .collect()
}

/// The requests with `method` that SIPp received.
fn received_requests<'a>(trace: &'a [Traced], method: &str) -> Vec<&'a Traced> {
    trace
        .iter()
        .filter(|m| m.received && m.is_request(method))
        .collect()
}

/// A response with its per-request fields replaced by placeholders (RFC 3261
/// section 8.2.6.2: Via, From, Call-ID and CSeq are copied from the request, To too,
/// with the responder's tag). Everything else stays byte for byte. `callee` is the
/// user the request was addressed to, echoed in To; `nonce="…"` is per challenge.
fn normalised(msg: &Traced, callee: &str) -> String {
    let text = msg.text();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let tagless = |v: &str| match v.find(";tag=") {
        Some(i) => {
            let rest = &v[i + 5..];
            let end = rest.find(';').unwrap_or(rest.len());
            format!("{};tag=<tag>{}", &v[..i], &rest[end..])
        }
        None => v.to_string(),
    };
    let lines = head.split("\r\n").map(|line| {
        let Some((name, value)) = line.split_once(':') else {
            return line.to_string();
        };
        let value = match name.trim().to_ascii_lowercase().as_str() {
            "via" | "v" => " <via>".to_string(),
            "call-id" | "i" => " <call-id>".to_string(),
            "cseq" => " <cseq>".to_string(),
            "from" | "f" => tagless(value),
            "to" | "t" => tagless(value).replace(&format!("sip:{callee}@"), "sip:<callee>@"),
            _ => match value.find("nonce=\"") {
                Some(i) => {
                    let rest = &value[i + 7..];
                    let end = rest.find('"').unwrap_or(rest.len());
                    format!("{}nonce=\"<nonce>{}", &value[..i], &rest[end..])
                }
                None => value.to_string(),
            },
        };
        format!("{name}:{value}")
    });
    format!("{}\r\n\r\n{body}", lines.collect::<Vec<_>>().join("\r\n"))
}

/// Asserts that no message a refused caller received (its SIPp trace) carries
/// anything of the callee: not its address, not its port, no Contact, no
/// registration fact (`expires`, the advertised `max-calls`, `load-query`). The only
/// addresses allowed are 127.0.0.1 with the proxy's and the caller's own ports.
fn assert_nothing_of_callee(trace: &[Traced], callee_port: u16, allowed_ports: &[u16]) {
    // A number the caller sent itself (its PID in tags and Call-ID, say) may come back
    // in the copied fields; it can only be checked when it is not one of those.
    let port = callee_port.to_string();
    let echoed = trace.iter().filter(|m| !m.received).any(|m| {
        m.text()
            .split(|c: char| !c.is_ascii_digit())
            .any(|t| t == port)
    });
    let received: Vec<&Traced> = trace.iter().filter(|m| m.received).collect();
    assert!(!received.is_empty(), "the caller received nothing");
    for msg in received {
        let text = msg.text();
        let lower = text.to_ascii_lowercase();
        let fail = |what: &str| panic!("{what} in a response to a refused caller:\n{text}");
        assert!(
            msg.status().is_some(),
            "a refused caller got a request:\n{text}"
        );
        if msg
            .bytes
            .windows(CALLEE_HOST.len())
            .any(|w| w == CALLEE_HOST.as_bytes())
        {
            fail("the callee's address");
        }
        let numbers: Vec<&str> = text
            .split(|c: char| !c.is_ascii_digit() && c != '.')
            .collect();
        for n in &numbers {
            let parts: Vec<&str> = n.split('.').collect();
            if parts.len() == 4 && parts.iter().all(|p| p.parse::<u8>().is_ok()) && *n != HOST {
                fail(&format!("the address {n}"));
            }
        }
        if !echoed && text.split(|c: char| !c.is_ascii_digit()).any(|t| t == port) {
            fail("the callee's port");
        }
        for (i, _) in text.match_indices(&format!("{HOST}:")) {
            let port: String = text[i + HOST.len() + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if !allowed_ports.iter().any(|p| p.to_string() == port) {
                fail(&format!("the port {port}"));
            }
        }
        if msg.header("Contact").is_some() || msg.header("m").is_some() {
            fail("a Contact header");
        }
        for fact in ["expires", "max-calls", "load-query"] {
            if lower.contains(fact) {
                fail(fact);
            }
        }
    }
}

// ---------------------------------------------------------------- test bed

/// One test's directory, data directory and proxy port.
struct Bed {
    dir: PathBuf,
    data: PathBuf,
    udp: u16,
}

/// Each user's password in these tests.
fn password(user: &str) -> String {
    format!("{user}-secret")
}

impl Bed {
    /// A fresh bed with `users` added (password: [`password`]).
    fn new(test: &str, users: &[&str]) -> Bed {
        let dir = workdir(test);
        let bed = Bed {
            data: dir.join("data"),
            dir,
            udp: free_port(),
        };
        for user in users {
            bed.cli(&["user", "add", user, "--password", &password(user)]);
        }
        bed
    }

    /// The proxy with its defaults (authentication and the gate on), on UDP only.
    fn start_proxy(&self, name: &str) -> Proxy {
        self.start_proxy_with(name, &[])
    }

    fn start_proxy_with(&self, name: &str, flags: &[&str]) -> Proxy {
        let ports = Ports {
            udp: self.udp,
            tcp: None,
            tls: None,
        };
        Proxy::start(&self.dir, name, &self.data, ports, flags)
    }

    /// `permit-proxy --data DIR --domain localhost ARGS…` (the operator's CLI);
    /// asserts success and returns its standard output.
    fn cli(&self, args: &[&str]) -> String {
        proxy_cli(&self.data, args)
    }

    /// `permit add CALLEE CALLER` for users of our domain.
    fn permit(&self, callee: &str, caller: &str) {
        add_permit(&self.data, callee, caller);
    }

    fn list(&self, callee: &str) -> String {
        self.cli(&["permit", "list", &format!("{callee}@{DOMAIN}")])
    }

    /// A listening callee on 127.0.0.2 that ends after `calls` SIPp calls.
    fn callee(&self, name: &str, scenario: &str, calls: u64) -> RunningSipp {
        Sipp::new(&self.dir, name, scenario, Transport::Udp, None)
            .bind(CALLEE_HOST)
            .arg(&["-m", &calls.to_string()])
            .timeout(50)
            .spawn()
            .wait_listening()
    }

    /// REGISTERs `user` (with its password) with a Contact at `uas`, plus the Contact
    /// header parameters `params` (`register_params.xml`; `register.xml` when empty).
    fn register(&self, user: &str, uas: &RunningSipp, params: &str) {
        let scenario = if params.is_empty() {
            "register.xml"
        } else {
            "register_params.xml"
        };
        let mut sipp = Sipp::new(
            &self.dir,
            &format!("register-{user}"),
            scenario,
            Transport::Udp,
            Some(self.udp),
        )
        .arg(&["-s", user, "-au", user, "-ap", &password(user)])
        .arg(&["-m", "1", "-auth_uri", DOMAIN])
        .key("contact_host", uas.sipp.host)
        .key("contact_port", &uas.sipp.port.to_string())
        .key("contact_transport", "udp")
        .key("expires", "3600");
        if !params.is_empty() {
            sipp = sipp.key("contact_params", params);
        }
        sipp.run_ok(1);
    }

    /// `uac_auth.xml`: `caller` calls `callee` `calls` times (5 per second, each call
    /// `hold_ms` long).
    fn calls(&self, name: &str, caller: &str, callee: &str, calls: u64, hold_ms: u64) -> Sipp {
        Sipp::new(
            &self.dir,
            name,
            "uac_auth.xml",
            Transport::Udp,
            Some(self.udp),
        )
        .arg(&["-s", callee, "-au", caller, "-ap", &password(caller)])
        .arg(&["-auth_uri", &format!("{callee}@{DOMAIN}")])
        .arg(&["-m", &calls.to_string(), "-r", "5", "-l", "10"])
        .arg(&["-d", &hold_ms.to_string(), "-pause_msg_ign"])
        .timeout(50)
    }

    /// `uac_auth_expect.xml`: one authenticated INVITE from `caller` to `callee` that
    /// must end in `status`; returns the caller's message trace and SIP port.
    fn refused(&self, name: &str, caller: &str, callee: &str, status: u16) -> (Vec<Traced>, u16) {
        let sipp = Sipp::new(
            &self.dir,
            name,
            "uac_auth_expect.xml",
            Transport::Udp,
            Some(self.udp),
        )
        .arg(&["-s", callee, "-au", caller, "-ap", &password(caller)])
        .arg(&["-auth_uri", &format!("{callee}@{DOMAIN}"), "-m", "1"])
        .key("expect", &status.to_string())
        .timeout(20);
        let port = sipp.port;
        (sipp.run_ok(1).trace(), port)
    }
}

/// The entity-tag in `permit list` output (`# AOR etag TAG`).
fn etag_of(list: &str) -> String {
    list.lines()
        .next()
        .and_then(|l| l.split_once(" etag "))
        .map_or_else(
            || panic!("no etag in `permit list` output:\n{list}"),
            |(_, t)| t.trim().to_string(),
        )
}

// ---------------------------------------------------------------- tests

/// A permitted caller reaches the callee: the callee's UAS is first asked with
/// OPTIONS (RFC 3261 section 11.2), a transaction of its own that says nothing about
/// the caller, then gets the INVITE; every call rings (180) and completes (200).
#[test]
fn permitted_caller_gets_180_and_200_after_the_load_query() {
    const CALLS: u64 = 10;
    if !sipp_available() {
        return;
    }
    let bed = Bed::new("permitted", &["alice", "bob"]);
    bed.permit("bob", "alice");
    let _proxy = bed.start_proxy("proxy");
    let uas = bed.callee("uas", "uas_options.xml", 2 * CALLS);
    bed.register("bob", &uas, "");
    let uac = bed.calls("uac", "alice", "bob", CALLS, 200);
    let uac_port = uac.port;
    let caller = uac.run_ok(CALLS).trace();
    let callee = uas.finish_ok(2 * CALLS).trace();

    assert_eq!(received_responses(&caller, 180).len() as u64, CALLS, "180s");
    let ok_to_invite = received_responses(&caller, 200)
        .into_iter()
        .filter(|m| m.header("CSeq").is_some_and(|c| c.ends_with("INVITE")))
        .count() as u64;
    assert_eq!(ok_to_invite, CALLS, "200s to INVITE");

    let invites = received_requests(&callee, "INVITE");
    let options = received_requests(&callee, "OPTIONS");
    assert_eq!(
        (options.len() as u64, invites.len() as u64),
        (CALLS, CALLS),
        "one OPTIONS per call"
    );
    let invite_ids: Vec<String> = invites.iter().filter_map(|m| m.header("Call-ID")).collect();
    for q in &options {
        let text = q.text();
        let from = q.header("From").unwrap_or_default();
        assert!(
            from.contains(&format!("sip:permit@{DOMAIN}")),
            "OPTIONS From:\n{text}"
        );
        let id = q.header("Call-ID").unwrap_or_default();
        assert!(
            !invite_ids.contains(&id),
            "OPTIONS reuses an INVITE Call-ID:\n{text}"
        );
        // Only the Permit-Token header names the caller (docs/profile.md: the
        // callee's UA checks the INVITE with it); nothing else of the caller's
        // request is in the query.
        let without_token: String = text
            .split("\r\n")
            .filter(|l| !l.to_ascii_lowercase().starts_with("permit-token:"))
            .collect::<Vec<_>>()
            .join("\r\n");
        for caller_fact in ["alice", "sipp@", &format!(":{uac_port}")] {
            assert!(
                !without_token.contains(caller_fact),
                "OPTIONS names the caller ({caller_fact}) outside Permit-Token:\n{text}"
            );
        }
    }
    // Each INVITE comes after its load query.
    let mut asked = 0;
    let mut invited = 0;
    for m in callee.iter().filter(|m| m.received) {
        asked += usize::from(m.is_request("OPTIONS"));
        if m.is_request("INVITE") {
            invited += 1;
            assert!(invited <= asked, "INVITE #{invited} before its OPTIONS");
        }
    }
}

/// With two engine shards, authenticated calls through the gate: the load query
/// (the proxy's own Call-ID) is answered back to the shard that asked, through the
/// branch, and every call completes; a stranger still gets 403.
#[test]
fn gated_calls_through_two_engine_shards() {
    const CALLS: u64 = 30;
    if !sipp_available() {
        return;
    }
    let bed = Bed::new("two_shards", &["alice", "bob", "mallory"]);
    bed.permit("bob", "alice");
    let _proxy = bed.start_proxy_with("proxy", &["--shards", "2"]);
    let uas = bed.callee("uas", "uas_options.xml", 2 * CALLS);
    bed.register("bob", &uas, "");
    let caller = bed
        .calls("uac", "alice", "bob", CALLS, 50)
        .run_ok(CALLS)
        .trace();
    let callee = uas.finish_ok(2 * CALLS).trace();
    assert_eq!(received_responses(&caller, 180).len() as u64, CALLS, "180s");
    assert_eq!(
        (
            received_requests(&callee, "OPTIONS").len() as u64,
            received_requests(&callee, "INVITE").len() as u64
        ),
        (CALLS, CALLS),
        "one load query per call"
    );
    let (stranger, _) = bed.refused("stranger", "mallory", "bob", 403);
    assert_eq!(
        received_responses(&stranger, 403).len(),
        1,
        "the stranger's 403"
    );
}

/// A caller who is not on the callee's list gets 403, the callee (registered and
/// online) hears nothing, and nothing the caller received names the callee's address
/// or port. A permitted caller then reaches the same callee.
#[test]
fn stranger_gets_403_and_callee_hears_nothing() {
    if !sipp_available() {
        return;
    }
    let bed = Bed::new("stranger", &["alice", "bob", "mallory"]);
    bed.permit("bob", "alice");
    let _proxy = bed.start_proxy("proxy");
    let uas = bed.callee("uas", "uas_options.xml", 2);
    bed.register("bob", &uas, "");
    let (caller, port) = bed.refused("mallory-bob", "mallory", "bob", 403);
    assert_eq!(received_responses(&caller, 403).len(), 1, "one 403");
    assert_nothing_of_callee(&caller, uas.sipp.port, &[bed.udp, port]);
    sleep(Duration::from_millis(300));
    let heard: Vec<String> = uas.trace().iter().map(Traced::text).collect();
    assert!(
        heard.is_empty(),
        "the callee was contacted for a refused caller:\n{heard:#?}"
    );

    bed.calls("alice-bob", "alice", "bob", 1, 100).run_ok(1);
    uas.finish_ok(2);
}

/// The 403 for an unknown callee is the 403 for a refused one, byte for byte apart
/// from the fields copied from the request (Via, From/To tags, Call-ID, CSeq; To
/// echoes the callee's user), and so is every answer before it (100 Trying, the 407
/// apart from its fresh nonce).
/// Refused: a registered callee with a list, a user with a list but no binding, a
/// user without a list; unknown: no such user, from a stranger and from a caller who
/// is on other lists. None of them reveals anything of the registered callee.
#[test]
fn unknown_callee_gets_the_same_403_as_a_refused_caller() {
    if !sipp_available() {
        return;
    }
    let bed = Bed::new("same_403", &["alice", "bob", "dave", "erin", "mallory"]);
    bed.permit("bob", "alice");
    bed.permit("dave", "alice");
    let _proxy = bed.start_proxy("proxy");
    let uas = bed.callee("uas", "uas_options.xml", 1);
    bed.register("bob", &uas, "");

    let cases = [
        ("mallory", "bob"),
        ("mallory", "dave"),
        ("mallory", "erin"),
        ("mallory", "nobody"),
        ("alice", "nobody"),
    ];
    let mut seen: Vec<(String, Vec<String>)> = Vec::new();
    for (caller, callee) in cases {
        let (trace, port) = bed.refused(&format!("{caller}-{callee}"), caller, callee, 403);
        assert_nothing_of_callee(&trace, uas.sipp.port, &[bed.udp, port]);
        for status in [407, 403] {
            let n = received_responses(&trace, status).len();
            assert_eq!(n, 1, "{caller} -> {callee}: one {status}");
        }
        // Everything the caller received (100s, 407, 403), in order.
        let answers = trace
            .iter()
            .filter(|m| m.received)
            .map(|m| normalised(m, callee))
            .collect();
        seen.push((format!("{caller} -> {callee}"), answers));
    }
    let (first, expected) = &seen[0];
    for (case, answers) in &seen[1..] {
        assert_eq!(answers, expected, "{case} got other answers than {first}");
    }
    sleep(Duration::from_millis(300));
    assert!(uas.trace().is_empty(), "the callee was contacted");
}

/// A callee whose UA answers the load query 486 is busy: the permitted caller gets
/// 486 and no INVITE reaches the callee. A stranger calling the same busy callee
/// still gets 403, not 486 (it never learns whether the callee is busy), and causes
/// no OPTIONS.
#[test]
fn busy_callee_gives_486_and_stranger_still_403() {
    if !sipp_available() {
        return;
    }
    let bed = Bed::new("busy", &["alice", "bob", "mallory"]);
    bed.permit("bob", "alice");
    let _proxy = bed.start_proxy("proxy");
    let uas = bed.callee("uas", "uas_busy.xml", 1);
    bed.register("bob", &uas, "");
    let (stranger, port) = bed.refused("mallory-bob", "mallory", "bob", 403);
    assert_nothing_of_callee(&stranger, uas.sipp.port, &[bed.udp, port]);
    sleep(Duration::from_millis(300));
    assert!(uas.trace().is_empty(), "OPTIONS sent for a refused caller");

    let (caller, _) = bed.refused("alice-bob", "alice", "bob", 486);
    assert!(
        received_responses(&caller, 180).is_empty(),
        "a 180 before the 486"
    );
    let callee = uas.finish_ok(1).trace();
    assert_eq!(
        received_requests(&callee, "OPTIONS").len(),
        1,
        "one OPTIONS"
    );
    assert!(
        received_requests(&callee, "INVITE").is_empty(),
        "INVITE to a busy callee"
    );
}

/// A callee registered with `max-calls=1` and one call up: the next INVITE gets 486
/// at once and the callee is not asked (no second OPTIONS). After the first call's
/// BYE the limit is free again and a call passes.
#[test]
fn over_limit_callee_gives_486_without_options() {
    if !sipp_available() {
        return;
    }
    let bed = Bed::new("over_limit", &["alice", "bob", "carol"]);
    bed.permit("bob", "alice");
    bed.permit("bob", "carol");
    let _proxy = bed.start_proxy("proxy");
    let uas = bed.callee("uas", "uas_options.xml", 4);
    bed.register("bob", &uas, ";max-calls=1");

    let held = bed.calls("alice-held", "alice", "bob", 1, 6000).spawn();
    wait_until(
        Duration::from_secs(10),
        "the first call is established",
        || !received_requests(&uas.trace(), "ACK").is_empty(),
    );
    let (caller, _) = bed.refused("carol-over", "carol", "bob", 486);
    assert!(
        received_responses(&caller, 180).is_empty(),
        "a 180 before the 486"
    );
    sleep(Duration::from_millis(300));
    let during = uas.trace();
    assert_eq!(
        (
            received_requests(&during, "OPTIONS").len(),
            received_requests(&during, "INVITE").len()
        ),
        (1, 1),
        "the over-limit INVITE caused an OPTIONS or an INVITE at the callee"
    );
    held.finish_ok(1);

    bed.calls("carol-after", "carol", "bob", 1, 100).run_ok(1);
    let callee = uas.finish_ok(4).trace();
    assert_eq!(
        received_requests(&callee, "OPTIONS").len(),
        2,
        "OPTIONS in all"
    );
}

/// Permit lists and their entity-tags survive kill -9: a list added by the CLI before
/// the proxy runs, one imported by the CLI while it runs, and a change the callee
/// PUBLISHed whose 200 came just before the kill (its SIP-ETag is the list's tag
/// afterwards). After the restart the gate still lets the permitted callers through
/// (alice from the CLI, carol from the PUBLISH, and alice to dave from the import gets
/// past the gate to the location service: 404, dave never registered) and refuses a
/// stranger.
#[test]
fn permit_lists_and_etags_survive_sigkill() {
    if !sipp_available() {
        return;
    }
    let bed = Bed::new(
        "lists_sigkill",
        &["alice", "bob", "carol", "dave", "mallory"],
    );
    bed.permit("bob", "alice");
    let bob_before = bed.list("bob");
    let first_tag = etag_of(&bob_before);
    assert_eq!(
        bob_before.lines().nth(1),
        Some("alice@localhost"),
        "{bob_before}"
    );

    let proxy = bed.start_proxy("proxy-1");
    let csv = bed.dir.join("permits.csv");
    fs::write(
        &csv,
        "# callee,caller\ndave@localhost,alice@localhost\ndave@localhost,*@example.org\n",
    )
    .unwrap();
    let imported = bed.cli(&["permit", "import", csv.to_str().unwrap()]);
    assert!(
        imported.starts_with("imported 2 entries for 1 callees"),
        "{imported}"
    );
    let dave_before = bed.list("dave");

    let publish = Sipp::new(
        &bed.dir,
        "publish-bob",
        "publish_permits.xml",
        Transport::Udp,
        Some(bed.udp),
    )
    .arg(&["-s", "bob", "-au", "bob", "-ap", &password("bob")])
    .arg(&["-auth_uri", &format!("bob@{DOMAIN}"), "-m", "1"])
    .key("body", r#"{"add":["carol@localhost"]}"#)
    .timeout(20)
    .run_ok(1)
    .trace();
    proxy.kill_hard();
    let ok = received_responses(&publish, 200);
    let published_tag = ok
        .last()
        .and_then(|m| m.header("SIP-ETag"))
        .expect("SIP-ETag in the 200 to PUBLISH");
    assert_ne!(
        published_tag, first_tag,
        "the PUBLISH made a new entity-tag"
    );

    let bob_after_kill = bed.list("bob");
    assert_eq!(etag_of(&bob_after_kill), published_tag, "{bob_after_kill}");
    let mut entries: Vec<&str> = bob_after_kill.lines().skip(1).collect();
    entries.sort_unstable();
    assert_eq!(
        entries,
        ["alice@localhost", "carol@localhost"],
        "{bob_after_kill}"
    );
    assert_eq!(bed.list("dave"), dave_before, "the imported list");

    let _proxy = bed.start_proxy("proxy-2");
    assert_eq!(bed.list("bob"), bob_after_kill, "a restart changes no list");
    assert_eq!(bed.list("dave"), dave_before, "a restart changes no list");
    let uas = bed.callee("uas", "uas_options.xml", 4);
    bed.register("bob", &uas, "");
    bed.calls("alice-bob", "alice", "bob", 1, 100).run_ok(1);
    bed.calls("carol-bob", "carol", "bob", 1, 100).run_ok(1);
    bed.refused("alice-dave", "alice", "dave", 404);
    let (stranger, port) = bed.refused("mallory-bob", "mallory", "bob", 403);
    assert_nothing_of_callee(&stranger, uas.sipp.port, &[bed.udp, port]);
    uas.finish_ok(4);
}

// ------------------------------------------------------- the checks themselves

fn response(text: &str) -> Traced {
    Traced {
        received: true,
        bytes: text.replace('\n', "\r\n").into_bytes(),
    }
}

const FORBIDDEN: &str = "SIP/2.0 403 Forbidden\nVia: SIP/2.0/UDP 127.0.0.1:40001;branch=z9hG4bK-1\n\
From: <sip:sipp@localhost>;tag=1\nTo: <sip:bob@localhost>;tag=a1\nCall-ID: 1-1@127.0.0.1\n\
CSeq: 2 INVITE\nContent-Length: 0\n\n";

/// The leak check finds the callee's address, its port, and a Contact; it accepts
/// the proxy's and the caller's own addresses.
#[test]
fn leak_check_finds_callee_facts() {
    let ok = [response(FORBIDDEN)];
    assert_nothing_of_callee(&ok, 40999, &[5060, 40001]);
    let leaks = [
        FORBIDDEN.replace(
            "Content-Length",
            "Warning: 399 127.0.0.2 \"x\"\nContent-Length",
        ),
        FORBIDDEN.replace(
            "Content-Length",
            "Contact: <sip:bob@10.0.0.1>\nContent-Length",
        ),
        FORBIDDEN.replace("branch=z9hG4bK-1", "branch=z9hG4bK-1;x=40999"),
        FORBIDDEN.replace("40001", "40002"),
        FORBIDDEN.replace("Content-Length", "X: max-calls=1\nContent-Length"),
    ];
    for leak in leaks {
        let trace = [response(&leak)];
        let caught = std::panic::catch_unwind(|| {
            assert_nothing_of_callee(&trace, 40999, &[5060, 40001]);
        });
        assert!(caught.is_err(), "not caught:\n{leak}");
    }
}

/// Normalising removes exactly the per-request fields: two 403s to different
/// requests compare equal, a 403 with one more header or another reason does not.
#[test]
fn normalising_keeps_all_but_per_request_fields() {
    let other = FORBIDDEN
        .replace(
            "40001;branch=z9hG4bK-1",
            "40007;branch=z9hG4bK-9;rport=40007",
        )
        .replace("tag=1", "tag=77")
        .replace("bob@localhost>;tag=a1", "nobody@localhost>;tag=b2")
        .replace("1-1@", "9-9@")
        .replace("CSeq: 2", "CSeq: 7");
    let base = normalised(&response(FORBIDDEN), "bob");
    assert_eq!(base, normalised(&response(&other), "nobody"));
    for changed in [
        FORBIDDEN.replace("Forbidden", "Not Permitted"),
        FORBIDDEN.replace("Content-Length", "Server: x\nContent-Length"),
        FORBIDDEN.replace("sipp@", "eve@"),
    ] {
        assert_ne!(base, normalised(&response(&changed), "bob"), "{changed}");
    }
}

// ------------------------------------------- every method, forged in-dialog requests

/// Out-of-dialog methods a refused caller tries besides INVITE: each is gated like
/// INVITE (RFC 3261 section 8.2.2 gives every method the same path; the gate is no
/// list of methods). `FROBNICATE` is a method the proxy does not know (section 8.2.1:
/// a proxy forwards unknown methods, so it must gate them too).
const OUT_OF_DIALOG: [&str; 7] = [
    "OPTIONS",
    "INFO",
    "FROBNICATE",
    "MESSAGE",
    "NOTIFY",
    "REFER",
    "PUBLISH",
];

/// A copy, in `dir`, of the scenario `file` whose requests (request line and CSeq)
/// have the method `to` instead of `from`: SIPp 3.6 takes no keyword as a method.
fn with_method(dir: &Path, file: &str, from: &str, to: &str) -> PathBuf {
    let text = fs::read_to_string(format!("{SCENARIOS}/{file}")).expect("read the scenario");
    let (line_start, cseq_end) = (format!("{from} [ruri] "), format!(" {from}"));
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let body = line.trim_start();
            let indent = &line[..line.len() - body.len()];
            if let Some(rest) = body.strip_prefix(&line_start) {
                format!("{indent}{to} [ruri] {rest}")
            } else if body.starts_with("CSeq: ") && body.ends_with(&cseq_end) {
                format!("{indent}{}{to}", &body[..body.len() - from.len()])
            } else {
                line.to_string()
            }
        })
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.trim_start().starts_with(&format!("{to} [ruri] "))),
        "{file} has no request line `{from} [ruri]`"
    );
    let path = dir.join(format!("{}-{to}.xml", file.trim_end_matches(".xml")));
    fs::write(&path, lines.join("\n") + "\n").expect("write the scenario copy");
    path
}

/// How many messages `uas` received so far.
fn heard(uas: &RunningSipp) -> usize {
    uas.trace().iter().filter(|m| m.received).count()
}

/// The messages `uas` received after its first `before` ones, as text.
fn heard_since(uas: &RunningSipp, before: usize) -> Vec<String> {
    uas.trace()
        .iter()
        .filter(|m| m.received)
        .skip(before)
        .map(Traced::text)
        .collect()
}

/// The tag parameter of a From or To header value.
fn tag_of(value: &str) -> String {
    let at = value
        .find(";tag=")
        .unwrap_or_else(|| panic!("no tag in {value:?}"));
    let rest = &value[at + 5..];
    rest.split([';', '>', ' ']).next().unwrap().to_string()
}

/// What a legitimate call left in its caller's trace: the dialog's Call-ID, the
/// caller's From tag, the callee's To tag and the route set (the Record-Route of
/// the 2xx, RFC 3261 section 12.1.2).
struct Dialog {
    call_id: String,
    caller_tag: String,
    callee_tag: String,
    record_route: String,
}

impl Dialog {
    fn of(caller: &[Traced]) -> Dialog {
        let ok = received_responses(caller, 200)
            .into_iter()
            .find(|m| m.header("CSeq").is_some_and(|c| c.ends_with("INVITE")))
            .expect("a 200 to INVITE in the caller's trace");
        let text = ok.text();
        let record_route: Vec<String> = text
            .split("\r\n")
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case("Record-Route"))
            .map(|(_, v)| v.trim().to_string())
            .collect();
        assert!(
            !record_route.is_empty(),
            "no Record-Route in the 200:\n{text}"
        );
        let header = |name: &str| {
            ok.header(name)
                .unwrap_or_else(|| panic!("no {name} in the 200:\n{text}"))
        };
        Dialog {
            call_id: header("Call-ID"),
            caller_tag: tag_of(&header("From")),
            callee_tag: tag_of(&header("To")),
            record_route: record_route.join(", "),
        }
    }
}

/// One forged in-dialog request (`forged_in_dialog.xml`).
struct Forged<'a> {
    method: &'a str,
    ruri: &'a str,
    route: &'a str,
    from_tag: &'a str,
    to_tag: &'a str,
    /// The Call-ID to use (`-cid_str`), SIPp's own when `None`.
    call_id: Option<&'a str>,
}

impl Bed {
    /// `request_auth.xml`: `caller` sends an authenticated `method` to `ruri` (To:
    /// `callee`) that must be refused with 403; returns its trace and SIP port.
    fn refused_request(
        &self,
        name: &str,
        caller: &str,
        callee: &str,
        method: &str,
        ruri: &str,
    ) -> (Vec<Traced>, u16) {
        let sipp = Sipp::new(
            &self.dir,
            name,
            "request_auth.xml",
            Transport::Udp,
            Some(self.udp),
        )
        .arg(&["-s", callee, "-au", caller, "-ap", &password(caller)])
        .scenario_at(&with_method(
            &self.dir,
            "request_auth.xml",
            "OPTIONS",
            method,
        ))
        .arg(&["-auth_uri", ruri.trim_start_matches("sip:"), "-m", "1"])
        .key("ruri", ruri)
        .timeout(20);
        let port = sipp.port;
        (sipp.run_ok(1).trace(), port)
    }

    /// `forged_in_dialog.xml`: sends `forged` (To: `callee`); it must get 403 or no
    /// answer at all. Returns the sender's trace and SIP port.
    fn forged(&self, name: &str, callee: &str, forged: &Forged) -> (Vec<Traced>, u16) {
        let mut sipp = Sipp::new(
            &self.dir,
            name,
            "forged_in_dialog.xml",
            Transport::Udp,
            Some(self.udp),
        )
        .scenario_at(&with_method(
            &self.dir,
            "forged_in_dialog.xml",
            "INVITE",
            forged.method,
        ))
        .arg(&["-s", callee, "-m", "1"])
        .key("ruri", forged.ruri)
        .key("route", forged.route)
        .key("from_tag", forged.from_tag)
        .key("to_tag", forged.to_tag)
        .timeout(20);
        if let Some(id) = forged.call_id {
            assert!(!id.contains('%'), "-cid_str reads % as a format: {id}");
            sipp = sipp.arg(&["-cid_str", id]);
        }
        let port = sipp.port;
        (sipp.run_ok(1).trace(), port)
    }
}

/// What a forged in-dialog request got: exactly one 403 (and perhaps a 100 before
/// it), nothing for an ACK; never anything of the callee.
fn assert_refused_in_dialog(case: &str, trace: &[Traced], callee_port: u16, allowed: &[u16]) {
    let sent = trace.iter().find(|m| !m.received).map(Traced::text);
    let answers: Vec<u16> = trace
        .iter()
        .filter(|m| m.received)
        .filter_map(Traced::status)
        .filter(|s| *s != 100)
        .collect();
    let is_ack = sent.as_deref().is_some_and(|t| t.starts_with("ACK "));
    let expected: &[u16] = if is_ack { &[] } else { &[403] };
    assert_eq!(answers, expected, "{case}: answers to\n{sent:?}");
    if !answers.is_empty() {
        assert_nothing_of_callee(trace, callee_port, allowed);
    }
}

/// An authenticated caller who is not on the callee's list gets 403 for every
/// method, not only INVITE: OPTIONS, INFO, a method the proxy does not know,
/// MESSAGE, NOTIFY, REFER and PUBLISH, addressed to the callee's AOR or to the
/// address the callee registered (no "dial the IP" way around the list). The
/// callee, registered and online, receives nothing, and nothing the caller receives
/// carries its address or port. A permitted caller then reaches it.
#[test]
fn stranger_gets_403_for_every_method_and_callee_hears_nothing() {
    if !sipp_available() {
        return;
    }
    let bed = Bed::new("every_method", &["alice", "bob", "carol"]);
    bed.permit("bob", "alice");
    let _proxy = bed.start_proxy("proxy");
    let uas = bed.callee("uas", "uas_options.xml", 2);
    bed.register("bob", &uas, "");
    let contact = format!("sip:bob@{CALLEE_HOST}:{}", uas.sipp.port);
    let aor = format!("sip:bob@{DOMAIN}");
    let mut cases: Vec<(&str, &str)> = OUT_OF_DIALOG.iter().map(|m| (*m, aor.as_str())).collect();
    cases.extend([("OPTIONS", contact.as_str()), ("MESSAGE", contact.as_str())]);
    for (method, ruri) in cases {
        let name = format!(
            "carol-{}-{}",
            method.to_ascii_lowercase(),
            if ruri == aor { "aor" } else { "contact" }
        );
        let (trace, port) = bed.refused_request(&name, "carol", "bob", method, ruri);
        assert_eq!(
            received_responses(&trace, 403).len(),
            1,
            "{method} {ruri}: one 403"
        );
        assert_nothing_of_callee(&trace, uas.sipp.port, &[bed.udp, port]);
    }
    sleep(Duration::from_millis(300));
    assert_eq!(
        heard_since(&uas, 0),
        Vec::<String>::new(),
        "the callee was contacted for a refused caller"
    );

    bed.calls("alice-bob", "alice", "bob", 1, 100).run_ok(1);
    let callee = uas.finish_ok(2).trace();
    assert_eq!(
        received_requests(&callee, "INVITE").len(),
        1,
        "alice's INVITE"
    );
}

/// In-dialog requests pass only for dialogs the proxy set up through the gate (the
/// seal in its Record-Route). alice, who is permitted, calls bob; carol, who is not,
/// takes that call's Record-Route and sends INVITE, BYE, MESSAGE, INFO and ACK with
/// it as Route and an invented To tag: under a Call-ID of her own, and under the
/// real dialog's Call-ID with her own From tag. Each gets 403 (the ACK: nothing),
/// bob hears none of them, and nothing carol receives carries bob's address or port.
#[test]
fn forged_in_dialog_requests_reach_nobody() {
    if !sipp_available() {
        return;
    }
    let bed = Bed::new("forged_in_dialog", &["alice", "bob", "carol"]);
    bed.permit("bob", "alice");
    let _proxy = bed.start_proxy("proxy");
    let uas = bed.callee("uas", "uas_options.xml", 4);
    bed.register("bob", &uas, "");
    let alice = bed.calls("alice-bob", "alice", "bob", 1, 100).run_ok(1);
    let dialog = Dialog::of(&alice.trace());
    assert!(
        dialog.record_route.contains(";pm="),
        "the Record-Route carries no dialog seal: {}",
        dialog.record_route
    );
    // The real dialog's ACK and BYE passed with this route.
    let before = heard(&uas);
    let callee = uas.trace();
    for method in ["ACK", "BYE"] {
        assert_eq!(
            received_requests(&callee, method).len(),
            1,
            "alice's {method}"
        );
    }

    let aor = format!("sip:bob@{DOMAIN}");
    for method in ["INVITE", "BYE", "MESSAGE", "INFO", "ACK"] {
        for (variant, call_id) in [("own", None), ("copied", Some(dialog.call_id.as_str()))] {
            let name = format!("carol-{}-{variant}-call-id", method.to_ascii_lowercase());
            let forged = Forged {
                method,
                ruri: &aor,
                route: &dialog.record_route,
                from_tag: "carol-forged",
                to_tag: "invented-42",
                call_id,
            };
            let (trace, port) = bed.forged(&name, "bob", &forged);
            assert_refused_in_dialog(&name, &trace, uas.sipp.port, &[bed.udp, port]);
        }
    }
    sleep(Duration::from_millis(300));
    assert_eq!(
        heard_since(&uas, before),
        Vec::<String>::new(),
        "a forged in-dialog request reached the callee"
    );

    // The proxy still serves the permitted caller.
    bed.calls("alice-bob-again", "alice", "bob", 1, 100)
        .run_ok(1);
    uas.finish_ok(4);
}

/// A dialog carol really has, with dave who lets her call him, cannot be turned
/// towards bob: her in-dialog BYE with that dialog's valid seal, Call-ID and tags, but
/// addressed to bob's AOR or to the address bob registered, gets 403 and reaches
/// neither bob nor dave (the seal names the dialog's two parties, and bob is not one).
#[test]
fn a_real_dialog_cannot_be_aimed_at_a_third_party() {
    if !sipp_available() {
        return;
    }
    let bed = Bed::new("third_party", &["bob", "carol", "dave"]);
    bed.permit("dave", "carol");
    let _proxy = bed.start_proxy("proxy");
    let bob = bed.callee("uas-bob", "uas_options.xml", 1);
    bed.register("bob", &bob, "");
    let dave = bed.callee("uas-dave", "uas_options.xml", 4);
    bed.register("dave", &dave, "");
    let carol = bed.calls("carol-dave", "carol", "dave", 1, 100).run_ok(1);
    let dialog = Dialog::of(&carol.trace());
    let dave_before = heard(&dave);

    let bob_contact = format!("sip:bob@{CALLEE_HOST}:{}", bob.sipp.port);
    let bob_aor = format!("sip:bob@{DOMAIN}");
    for (what, ruri) in [("aor", &bob_aor), ("contact", &bob_contact)] {
        for method in ["BYE", "INVITE"] {
            let name = format!("carol-{}-to-bob-{what}", method.to_ascii_lowercase());
            let forged = Forged {
                method,
                ruri,
                route: &dialog.record_route,
                from_tag: &dialog.caller_tag,
                to_tag: &dialog.callee_tag,
                call_id: Some(&dialog.call_id),
            };
            let (trace, port) = bed.forged(&name, "bob", &forged);
            assert_refused_in_dialog(&name, &trace, bob.sipp.port, &[bed.udp, port]);
        }
    }
    sleep(Duration::from_millis(300));
    assert_eq!(
        heard_since(&bob, 0),
        Vec::<String>::new(),
        "carol's dialog reached bob"
    );
    assert_eq!(
        heard_since(&dave, dave_before),
        Vec::<String>::new(),
        "the re-aimed requests reached dave"
    );
    bed.calls("carol-dave-again", "carol", "dave", 1, 100)
        .run_ok(1);
    dave.finish_ok(4);
}
