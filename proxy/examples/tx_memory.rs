//! Heap bytes per live transaction in the proxy engine, by phase.
//!
//! ```text
//! cargo run --release -p permit-proxy --example tx_memory -- [N]
//! ```
//!
//! Drives the sans-IO engine (`engine::Proxy`, in-memory stores, no sockets, the clock
//! held still) with N calls or N REGISTERs, one after the other, and reports the growth
//! of the resident set (VmRSS) divided by N. Each phase runs in a process of its own
//! (this program starts itself once per phase), so a phase's figure holds only what that
//! phase leaves alive:
//!
//! - `ringing`: INVITE → 100 → forwarded → 180 from the callee → 180 upstream. Alive per
//!   call: the INVITE server and client transactions (Proceeding) and the proxy's
//!   response context.
//! - `call`: INVITE → 100 → 180 → 200 → ACK → BYE → 200. Alive per call: the INVITE
//!   transactions in Accepted (Timer L and M, 32 s, RFC 6026 §7.1/§7.2) with their
//!   context, the BYE server transaction in Completed (Timer J, 32 s over UDP; kept
//!   compact, `engine::absorb`) and the BYE client transaction in Completed (Timer K,
//!   5 s).
//! - `register`: a REGISTER refresh answered 200 (1,000 AORs registered before the
//!   measurement, so no binding is added). Alive per REGISTER: its server transaction in
//!   Completed (Timer J, 32 s over UDP, RFC 3261 §17.2.2), kept compact: the key, the
//!   reply flow and the 200 in one allocation, a table slot and an expiry-queue entry.
//!
//! After the measurement every phase advances the clock by 64 s and checks that the
//! engine holds no transaction any more. Calls are sequential, so the transient
//! allocations of one message (parsing, edits, transmits) are reused by the next and
//! only what outlives a message grows the resident set; the figure includes the hash
//! tables' spare capacity, the timer heap and the allocator's overhead (the workspace
//! forbids `unsafe`, so no counting allocator). Messages are a softphone's: an INVITE of
//! about 900 bytes with SDP, a 200 with SDP, a 430-byte REGISTER.

#![allow(clippy::cast_precision_loss)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use permit_proxy::auth::{Auth, AuthSettings};
use permit_proxy::engine::{Proxy, ProxyConfig};
use permit_proxy::gate::GateSettings;
use permit_proxy::location::Location;
use permit_proxy::permits::{MemoryPermitStore, Permits};
use permit_proxy::route::Identity;
use permit_proxy::store::MemoryStore;
use permit_proxy::users::MemoryUsers;
use rand::SeedableRng;
use sip_core::message::{HeaderName, Message};
use sip_core::transport::{Received, Transmit, Transport};

/// The allocator of the `permit-proxy` binary (main.rs), so that the figure is the one
/// the running proxy has.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PROXY: &str = "127.0.0.1:5060";
const ALICE: &str = "127.0.0.1:5070";
const BOB: &str = "127.0.0.1:5080";
/// AORs registered before a `register` phase; its REGISTERs refresh them in turn.
const AORS: usize = 1_000;
const SDP: &str = "v=0\r\no=- 2890844526 2890844526 IN IP4 127.0.0.1\r\ns=-\r\n\
c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 49170 RTP/AVP 111 0 101\r\na=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 useinbandfec=1\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=ptime:20\r\na=sendrecv\r\n";

/// Resident set in KiB (VmRSS from /proc/self/status).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

/// The engine as the binary builds it, with in-memory stores, authentication and the
/// gate off (their state is not per transaction).
struct Bench {
    proxy: Proxy,
    now: Instant,
}

impl Bench {
    fn new() -> Self {
        let identity = Identity {
            domain: "localhost".into(),
            listeners: vec![(Transport::Udp, addr(PROXY))],
        };
        let location = Location::open(Box::new(MemoryStore::default())).expect("location");
        let settings = AuthSettings {
            enabled: false,
            ..AuthSettings::default()
        };
        let auth = Auth::new(
            settings,
            "localhost".into(),
            Box::new(MemoryUsers::default()),
            [9; 32],
        );
        let permits = Permits::with_store(
            Box::new(MemoryPermitStore::new()),
            rand::rngs::StdRng::seed_from_u64(3),
        )
        .expect("permits");
        let gate = GateSettings {
            enabled: false,
            ..GateSettings::default()
        };
        let now = Instant::now();
        let cfg = ProxyConfig {
            gate,
            ..ProxyConfig::new(identity)
        };
        let proxy = Proxy::new(cfg, location, auth, permits, now, 1_800_000_000, 7);
        Self { proxy, now }
    }

    /// Feeds one datagram from `from`; returns what the engine sent.
    fn recv(&mut self, from: &str, data: String) -> Vec<Message> {
        self.proxy.handle_received(
            self.now,
            Received {
                transport: Transport::Udp,
                local: addr(PROXY),
                peer: addr(from),
                data: Bytes::from(data),
            },
        );
        let mut out = Vec::new();
        while let Some(Transmit { data, .. }) = self.proxy.poll_transmit() {
            out.push(Message::parse(data).expect("the engine sent an unparsable message"));
        }
        out
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(at) = self.proxy.poll_timeout().filter(|t| *t <= end) {
            self.now = at.max(self.now);
            self.proxy.handle_timeout(self.now);
            while self.proxy.poll_transmit().is_some() {}
        }
        self.now = end;
    }

    fn register(&mut self, user: &str, contact: &str, cseq: usize) {
        let msg = format!(
            "REGISTER sip:localhost SIP/2.0\r\n\
Via: SIP/2.0/UDP {contact};rport;branch=z9hG4bK-reg-{user}-{cseq}\r\n\
Max-Forwards: 70\r\nFrom: <sip:{user}@localhost>;tag=9fxced76sl\r\n\
To: <sip:{user}@localhost>\r\nCall-ID: 843817637684230@998sdasdh09-{user}\r\n\
CSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{contact};transport=udp>\r\n\
Expires: 3600\r\nUser-Agent: softphone/1.0\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n\
Content-Length: 0\r\n\r\n"
        );
        let out = self.recv(contact, msg);
        assert_eq!(out.first().and_then(Message::status), Some(200), "REGISTER");
    }

    /// INVITE → 100 + forwarded INVITE → 180: returns the forwarded INVITE.
    fn ring(&mut self, i: usize) -> Message {
        let invite = format!(
            "INVITE sip:bob@localhost SIP/2.0\r\n\
Via: SIP/2.0/UDP {ALICE};rport;branch=z9hG4bK-inv-{i:08x}\r\n\
Max-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@localhost>;tag=a-{i:08x}\r\n\
To: <sip:bob@localhost>\r\nCall-ID: {i:08x}-5f1c-4e2a-9d3b-2c1a7e6f0b9d\r\n\
CSeq: 1 INVITE\r\nContact: <sip:alice@{ALICE};transport=udp>\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE\r\nSupported: replaces, timer\r\n\
User-Agent: softphone/1.0\r\nContent-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{SDP}",
            SDP.len()
        );
        let out = self.recv(ALICE, invite);
        assert_eq!(out.len(), 2, "100 and the forwarded INVITE");
        let fwd = out[1].clone();
        let out = self.recv(BOB, answer(&fwd, 180, "Ringing", ""));
        assert_eq!(out.first().and_then(Message::status), Some(180));
        fwd
    }

    /// A whole call: ringing, 200, ACK, BYE, 200.
    fn call(&mut self, i: usize) {
        let fwd = self.ring(i);
        let out = self.recv(BOB, answer(&fwd, 200, "OK", SDP));
        assert_eq!(out.first().and_then(Message::status), Some(200));
        let rr = String::from_utf8_lossy(fwd.header(HeaderName::RecordRoute).expect("RR"));
        let in_dialog = |method: &str, cseq: u32, branch: &str| {
            format!(
                "{method} sip:bob@{BOB};transport=udp SIP/2.0\r\n\
Via: SIP/2.0/UDP {ALICE};rport;branch=z9hG4bK-{branch}-{i:08x}\r\n\
Max-Forwards: 70\r\nRoute: {rr}\r\nFrom: \"Alice\" <sip:alice@localhost>;tag=a-{i:08x}\r\n\
To: <sip:bob@localhost>;tag=b-{i:08x}\r\nCall-ID: {i:08x}-5f1c-4e2a-9d3b-2c1a7e6f0b9d\r\n\
CSeq: {cseq} {method}\r\nUser-Agent: softphone/1.0\r\nContent-Length: 0\r\n\r\n"
            )
        };
        let out = self.recv(ALICE, in_dialog("ACK", 1, "ack"));
        assert_eq!(out.len(), 1, "the ACK is forwarded");
        let out = self.recv(ALICE, in_dialog("BYE", 2, "bye"));
        assert_eq!(out.len(), 1, "the BYE is forwarded");
        let out = self.recv(BOB, answer(&out[0], 200, "OK", ""));
        assert_eq!(
            out.first().and_then(Message::status),
            Some(200),
            "BYE's 200"
        );
    }
}

/// The callee's response to the forwarded request `req`.
fn answer(req: &Message, code: u16, reason: &str, body: &str) -> String {
    let mut s = format!("SIP/2.0 {code} {reason}\r\n");
    for v in req.headers(HeaderName::Via) {
        let _ = write!(s, "Via: {}\r\n", String::from_utf8_lossy(v));
    }
    for rr in req.headers(HeaderName::RecordRoute) {
        let _ = write!(s, "Record-Route: {}\r\n", String::from_utf8_lossy(rr));
    }
    let h = |n| String::from_utf8_lossy(req.header(n).unwrap_or_default()).into_owned();
    let call_id = h(HeaderName::CallId);
    let tag = call_id.get(..8).unwrap_or("0");
    let _ = write!(
        s,
        "From: {}\r\nTo: <sip:bob@localhost>;tag=b-{tag}\r\nCall-ID: {call_id}\r\nCSeq: {}\r\n\
Contact: <sip:bob@{BOB};transport=udp>\r\nUser-Agent: softphone/1.0\r\n",
        h(HeaderName::From),
        h(HeaderName::CSeq),
    );
    if body.is_empty() {
        s.push_str("Content-Length: 0\r\n\r\n");
    } else {
        let _ = write!(
            s,
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }
    s
}

/// Runs one phase in this process: prints `phase n live bytes_per`.
fn run_phase(phase: &str, n: usize) {
    let mut b = Bench::new();
    b.register("bob", BOB, 1);
    let aors: Vec<(String, String)> = (0..AORS)
        .map(|i| {
            (
                format!("u{i:05}"),
                format!("10.0.{}.{}:5060", i / 250, i % 250 + 1),
            )
        })
        .collect();
    if phase == "register" {
        for (user, contact) in &aors {
            b.register(user, contact, 1);
        }
        // Let the first round's transactions end, so only the measured ones are alive.
        b.advance(Duration::from_secs(64));
    }
    let before = rss_kib();
    for i in 0..n {
        match phase {
            "ringing" => {
                b.ring(i);
            }
            "call" => b.call(i),
            "register" => {
                let (user, contact) = &aors[i % AORS];
                b.register(user, contact, 2 + i / AORS);
            }
            other => panic!("unknown phase {other}"),
        }
    }
    let after = rss_kib();
    let live = b.proxy.live();
    let timers = b.proxy.timers_pending();
    let per = after.saturating_sub(before) as f64 * 1024.0 / n as f64;
    println!(
        "{phase:<9} n={n} live(server,client,contexts)={live:?} timers={timers} \
rss_growth_kib={} bytes_per={per:.0}",
        after.saturating_sub(before)
    );
    b.advance(Duration::from_secs(64));
    if phase != "ringing" {
        assert_eq!(
            b.proxy.live(),
            (0, 0, 0),
            "transactions freed at their timers"
        );
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("--phase") {
        let phase = args.next().expect("phase name");
        let n = args.next().and_then(|a| a.parse().ok()).expect("N");
        return run_phase(&phase, n);
    }
    let n: usize = first.and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let exe = std::env::current_exe().expect("own path");
    for phase in ["ringing", "call", "register"] {
        let status = std::process::Command::new(&exe)
            .args(["--phase", phase, &n.to_string()])
            .status()
            .expect("run a phase");
        assert!(status.success(), "phase {phase} failed");
    }
}
