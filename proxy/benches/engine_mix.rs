//! Engine shards on threads of their own, bytes in and bytes out, no sockets:
//! messages/s and calls/s of a realistic mix, per shard and together.
//!
//! ```text
//! cargo bench -p permit-proxy --bench engine_mix -- [CALLS] [REGISTERS_PER_CALL] [SHARDS]
//! ```
//!
//! With SHARDS > 1 (default 1) each shard runs on its own thread with the tables
//! shared (`Proxy::new_shard`): shard t takes the calls and REGISTERs of the phones
//! i with i mod SHARDS = t, as steering by Call-ID would give it whole calls (the
//! proxy's responses come back to the shard in their branch); callee i + 1 is another
//! shard's phone, so every call reads a binding another shard wrote. CALLS is the
//! total over all shards.
//!
//! The engine is built as the binary builds it, with the in-memory stores (their
//! writes are synchronous, so every REGISTER is answered at once), digest
//! authentication on, the gate on with its load query. USERS softphones register
//! (challenged once each, MD5 with `qop=auth`, then reusing the nonce with a rising
//! nonce count, as phones do); user i may call user i+1. Each call is authenticated
//! INVITE → 100 + load query (OPTIONS) to the callee → its 200 → INVITE forwarded with
//! the permit token → 180 → 200 → ACK → BYE → 200 (7 messages in, 8 out), and
//! REGISTERS_PER_CALL (default 1) authenticated REGISTER refreshes (1 in, 1 out) go in
//! between. Virtual time advances 1 ms per call, so transactions end at their RFC 3261
//! timers during the run and the engine works at its steady-state size (about 32,000
//! calls' transactions alive). Two rates are printed: the engine's own (the wall-clock
//! time spent inside `handle_received`, `handle_timeout` and `poll_transmit`, summed)
//! and the loop's (also writing the phones' messages, computing their digests and
//! parsing what the engine sent, which a real shard does not do).

#![allow(clippy::cast_precision_loss)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use md5::{Digest as _, Md5};
use permit_proxy::auth::{Auth, AuthSettings};
use permit_proxy::engine::{Proxy, ProxyConfig};
use permit_proxy::gate::GateSettings;
use permit_proxy::location::Location;
use permit_proxy::permits::{Aor, MemoryPermitStore, PermitEntry, Permits};
use permit_proxy::route::Identity;
use permit_proxy::store::MemoryStore;
use permit_proxy::users::{MemoryUsers, UserRecord};
use rand::SeedableRng;
use sip_core::digest::Algorithm;
use sip_core::message::{HeaderName, Message};
use sip_core::transport::{Received, Transmit, Transport};

/// The allocator of the `permit-proxy` binary (main.rs).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PROXY: &str = "127.0.0.1:5060";
const USERS: usize = 1_000;
const SDP: &str = "v=0\r\no=- 2890844526 2890844526 IN IP4 10.0.0.1\r\ns=-\r\n\
c=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 49170 RTP/AVP 111 0 101\r\na=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 useinbandfec=1\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=ptime:20\r\na=sendrecv\r\n";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn md5(data: &str) -> String {
    hex(&Md5::digest(data.as_bytes()))
}

fn user(i: usize) -> String {
    format!("u{i:05}")
}

fn ua_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250 + 1) as u8], 5060))
}

/// A softphone's digest state: the nonce it was given and its nonce count.
#[derive(Default)]
struct Phone {
    nonce: String,
    nc: u32,
    cseq: u32,
}

struct Bench {
    proxy: Proxy,
    now: Instant,
    phones: Vec<Phone>,
    /// Messages fed to and sent by the engine.
    msgs_in: u64,
    msgs_out: u64,
    /// Wall-clock time spent inside the engine.
    engine: Duration,
}

impl Bench {
    /// Another shard of the same proxy, for another thread.
    fn shard(&self, index: u8) -> Self {
        Self {
            proxy: self.proxy.new_shard(index, self.now, 7 + u64::from(index)),
            now: self.now,
            phones: (0..USERS).map(|_| Phone::default()).collect(),
            msgs_in: 0,
            msgs_out: 0,
            engine: Duration::ZERO,
        }
    }

    fn new() -> Self {
        let identity = Identity {
            domain: "localhost".into(),
            listeners: vec![(Transport::Udp, PROXY.parse().expect("address"))],
        };
        let location = Location::open(Box::new(MemoryStore::default())).expect("location");
        let mut users = MemoryUsers::default();
        let mut permits = Permits::with_store(
            Box::new(MemoryPermitStore::new()),
            rand::rngs::StdRng::seed_from_u64(3),
        )
        .expect("permits");
        for i in 0..USERS {
            let name = user(i);
            users
                .users
                .insert(name.clone(), UserRecord::new(&name, "localhost", "secret"));
            let caller =
                PermitEntry::parse(&format!("{}@localhost", user((i + USERS - 1) % USERS)))
                    .expect("entry");
            let callee = Aor::parse(&format!("{name}@localhost")).expect("aor");
            permits.replace(&callee, &[caller], None).expect("list");
        }
        let settings = AuthSettings {
            algorithms: vec![Algorithm::Md5],
            ..AuthSettings::default()
        };
        let auth = Auth::new(settings, "localhost".into(), Box::new(users), [9; 32]);
        let now = Instant::now();
        let cfg = ProxyConfig {
            gate: GateSettings::default(),
            ..ProxyConfig::new(identity)
        };
        let proxy = Proxy::new(cfg, location, auth, permits, now, 1_800_000_000, 7);
        let phones = (0..USERS).map(|_| Phone::default()).collect();
        Self {
            proxy,
            now,
            phones,
            msgs_in: 0,
            msgs_out: 0,
            engine: Duration::ZERO,
        }
    }

    /// Feeds one datagram from `from`; returns what the engine sent.
    fn recv(&mut self, from: SocketAddr, data: String) -> Vec<Message> {
        self.msgs_in += 1;
        let rx = Received {
            transport: Transport::Udp,
            local: PROXY.parse().expect("address"),
            peer: from,
            data: Bytes::from(data),
        };
        let mut sent = Vec::new();
        let start = Instant::now();
        self.proxy.handle_received(self.now, rx);
        while let Some(Transmit { data, .. }) = self.proxy.poll_transmit() {
            sent.push(data);
        }
        self.engine += start.elapsed();
        self.msgs_out += sent.len() as u64;
        sent.into_iter()
            .map(|d| Message::parse(d).expect("the engine sent an unparsable message"))
            .collect()
    }

    /// Runs the timers due by `now` (retransmissions are sent and counted).
    fn tick(&mut self) {
        let start = Instant::now();
        while let Some(at) = self.proxy.poll_timeout().filter(|t| *t <= self.now) {
            self.proxy.handle_timeout(at.max(self.now));
            while self.proxy.poll_transmit().is_some() {
                self.msgs_out += 1;
            }
        }
        self.engine += start.elapsed();
    }

    /// Credentials of phone `i` for `method` `uri`, with the next nonce count.
    fn credentials(&mut self, i: usize, method: &str, uri: &str) -> String {
        let p = &mut self.phones[i];
        p.nc += 1;
        let name = user(i);
        let ha1 = md5(&format!("{name}:localhost:secret"));
        let ha2 = md5(&format!("{method}:{uri}"));
        let (nonce, nc) = (&p.nonce, p.nc);
        let response = md5(&format!("{ha1}:{nonce}:{nc:08x}:0a4f113b:auth:{ha2}"));
        format!(
            "Digest username=\"{name}\", realm=\"localhost\", nonce=\"{nonce}\", uri=\"{uri}\", \
response=\"{response}\", algorithm=MD5, qop=auth, nc={nc:08x}, cnonce=\"0a4f113b\""
        )
    }

    /// Keeps the nonce of a 401/407 for phone `i`.
    fn challenged(&mut self, i: usize, resp: &Message) {
        let name = if resp.status() == Some(401) {
            HeaderName::WwwAuthenticate
        } else {
            HeaderName::ProxyAuthenticate
        };
        let v = String::from_utf8_lossy(resp.header(name).expect("challenge")).into_owned();
        let start = v.find("nonce=\"").expect("nonce") + 7;
        let end = start + v[start..].find('"').expect("nonce end");
        v[start..end].clone_into(&mut self.phones[i].nonce);
        self.phones[i].nc = 0;
    }

    /// An authenticated REGISTER of phone `i` (challenged first when it has no nonce).
    fn register(&mut self, i: usize) {
        for _ in 0..2 {
            self.phones[i].cseq += 1;
            let auth = if self.phones[i].nonce.is_empty() {
                String::new()
            } else {
                format!(
                    "Authorization: {}\r\n",
                    self.credentials(i, "REGISTER", "sip:localhost")
                )
            };
            let (name, addr, cseq) = (user(i), ua_addr(i), self.phones[i].cseq);
            let msg = format!(
                "REGISTER sip:localhost SIP/2.0\r\n\
Via: SIP/2.0/UDP {addr};rport;branch=z9hG4bK-reg-{cseq}-{name}\r\n\
Max-Forwards: 70\r\nFrom: <sip:{name}@localhost>;tag=9fxced76sl\r\n\
To: <sip:{name}@localhost>\r\nCall-ID: 843817637684230@998sdasdh09-{name}\r\n\
CSeq: {cseq} REGISTER\r\nContact: <sip:{name}@{addr};transport=udp>\r\n{auth}\
Expires: 3600\r\nUser-Agent: softphone/1.0\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n\
Content-Length: 0\r\n\r\n"
            );
            let out = self.recv(addr, msg);
            match out.first().and_then(Message::status) {
                Some(200) => return,
                Some(401) => self.challenged(i, &out[0]),
                other => panic!("REGISTER answered {other:?}"),
            }
        }
        panic!("REGISTER not accepted after a challenge");
    }

    /// A call from phone `i` to phone `i + 1`, through the gate and the load query.
    fn call(&mut self, n: usize) {
        let i = n % USERS;
        let j = (i + 1) % USERS;
        let (caller, callee) = (user(i), user(j));
        let (from, to) = (ua_addr(i), ua_addr(j));
        let call_id = format!("{n:08x}-5f1c-4e2a-9d3b-2c1a7e6f0b9d");
        let uri = format!("sip:{callee}@localhost");
        let mut out = Vec::new();
        for attempt in 0..2 {
            let auth = if self.phones[i].nonce.is_empty() {
                String::new()
            } else {
                format!(
                    "Proxy-Authorization: {}\r\n",
                    self.credentials(i, "INVITE", &uri)
                )
            };
            let invite = format!(
                "INVITE {uri} SIP/2.0\r\n\
Via: SIP/2.0/UDP {from};rport;branch=z9hG4bK-inv-{n:08x}-{attempt}\r\n\
Max-Forwards: 70\r\nFrom: \"{caller}\" <sip:{caller}@localhost>;tag=a-{n:08x}\r\n\
To: <{uri}>\r\nCall-ID: {call_id}\r\nCSeq: {} INVITE\r\n\
Contact: <sip:{caller}@{from};transport=udp>\r\n{auth}\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE\r\nSupported: replaces, timer\r\n\
User-Agent: softphone/1.0\r\nContent-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{SDP}",
                attempt + 1,
                SDP.len()
            );
            out = self.recv(from, invite);
            match out.get(1).and_then(Message::status) {
                Some(407) => {
                    self.challenged(i, &out[1]);
                    // The caller's ACK for the 407 (§17.1.1.3), absorbed by the proxy.
                    let ack = ack_for(&out[1], &uri, from, &format!("{n:08x}-{attempt}"));
                    self.recv(from, ack);
                }
                _ => break,
            }
        }
        // 100 Trying, then the load query to the callee.
        let query = out.pop().expect("load query");
        assert!(query.is_request(), "expected the load query, got {query:?}");
        let out = self.recv(to, answer(&query, 200, "OK", ""));
        let fwd = out.into_iter().next().expect("forwarded INVITE");
        let out = self.recv(to, answer(&fwd, 180, "Ringing", ""));
        assert_eq!(out.first().and_then(Message::status), Some(180));
        let out = self.recv(to, answer(&fwd, 200, "OK", SDP));
        assert_eq!(out.first().and_then(Message::status), Some(200));
        let rr = String::from_utf8_lossy(fwd.header(HeaderName::RecordRoute).expect("RR"));
        let in_dialog = |method: &str, cseq: u32| {
            format!(
                "{method} sip:{callee}@{to};transport=udp SIP/2.0\r\n\
Via: SIP/2.0/UDP {from};rport;branch=z9hG4bK-{method}-{n:08x}\r\n\
Max-Forwards: 70\r\nRoute: {rr}\r\nFrom: \"{caller}\" <sip:{caller}@localhost>;tag=a-{n:08x}\r\n\
To: <{uri}>;tag=b-{n:08x}\r\nCall-ID: {call_id}\r\n\
CSeq: {cseq} {method}\r\nUser-Agent: softphone/1.0\r\nContent-Length: 0\r\n\r\n"
            )
        };
        let (ack, bye) = (in_dialog("ACK", 2), in_dialog("BYE", 3));
        assert_eq!(self.recv(from, ack).len(), 1, "the ACK is forwarded");
        let out = self.recv(from, bye);
        assert_eq!(out.len(), 1, "the BYE is forwarded");
        let out = self.recv(to, answer(&out[0], 200, "OK", ""));
        assert_eq!(
            out.first().and_then(Message::status),
            Some(200),
            "BYE's 200"
        );
    }
}

/// The ACK for a non-2xx final (same branch as the INVITE, §17.1.1.3).
fn ack_for(resp: &Message, uri: &str, from: SocketAddr, branch: &str) -> String {
    let h = |n| String::from_utf8_lossy(resp.header(n).unwrap_or_default()).into_owned();
    format!(
        "ACK {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {from};rport;branch=z9hG4bK-inv-{branch}\r\n\
Max-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} ACK\r\n\
Content-Length: 0\r\n\r\n",
        h(HeaderName::From),
        h(HeaderName::To),
        h(HeaderName::CallId),
        h(HeaderName::CSeq).split(' ').next().unwrap_or("1")
    )
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
        "From: {}\r\nTo: {};tag=b-{tag}\r\nCall-ID: {call_id}\r\nCSeq: {}\r\n\
Contact: <sip:callee@10.0.0.1:5060;transport=udp>\r\nUser-Agent: softphone/1.0\r\n",
        h(HeaderName::From),
        h(HeaderName::To),
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

/// What one shard's thread did in the timed part.
struct ShardRun {
    calls: usize,
    registers: usize,
    msgs: u64,
    engine: f64,
    wall: f64,
    live: (usize, usize, usize),
}

/// Shard `t` of `shards`: registers its phones, waits for every shard to have done
/// so, then runs its share of the calls (phone i calls i + 1, `i mod shards = t`).
fn drive(
    mut b: Bench,
    (t, shards): (usize, usize),
    calls: usize,
    registers_per_call: usize,
    ready: &std::sync::Barrier,
) -> ShardRun {
    let mine: Vec<usize> = (0..USERS).filter(|i| i % shards == t).collect();
    for &i in &mine {
        b.register(i);
    }
    ready.wait();
    let (in0, out0) = (b.msgs_in, b.msgs_out);
    b.engine = Duration::ZERO;
    let start = Instant::now();
    let (mut r, mut done) = (0, 0);
    // Call numbers n with n mod USERS among this shard's phones.
    for n in (t..calls).step_by(shards) {
        b.call(n);
        done += 1;
        for _ in 0..registers_per_call {
            b.register(mine[r % mine.len()]);
            r += 1;
        }
        b.now += Duration::from_millis(1);
        b.tick();
    }
    ShardRun {
        calls: done,
        registers: r,
        msgs: b.msgs_in - in0 + b.msgs_out - out0,
        engine: b.engine.as_secs_f64(),
        wall: start.elapsed().as_secs_f64(),
        live: b.proxy.live(),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; numbers are the positional arguments.
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let calls = args.first().copied().unwrap_or(100_000);
    let registers_per_call = args.get(1).copied().unwrap_or(1);
    let shards = args.get(2).copied().unwrap_or(1).clamp(1, 64);
    // USERS is a multiple of every shard count used (1, 2, 4, 5, 8...): phone i's
    // calls stay with shard i mod shards.
    assert_eq!(USERS % shards, 0, "shards must divide {USERS}");
    let first = Bench::new();
    let others: Vec<Bench> = (1..shards)
        .map(|k| first.shard(u8::try_from(k).expect("shard")))
        .collect();
    let ready = std::sync::Barrier::new(shards);
    let runs: Vec<ShardRun> = std::thread::scope(|s| {
        let handles: Vec<_> = std::iter::once(first)
            .chain(others)
            .enumerate()
            .map(|(t, b)| {
                let ready = &ready;
                s.spawn(move || drive(b, (t, shards), calls, registers_per_call, ready))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("shard thread"))
            .collect()
    });
    let mut total_rate = 0.0;
    for (t, run) in runs.iter().enumerate() {
        let rate = run.calls as f64 / run.engine;
        total_rate += rate;
        println!(
            "shard {t}: calls={} registers={} msgs={} live_at_end(server,client,contexts)={:?}",
            run.calls, run.registers, run.msgs, run.live
        );
        println!(
            "shard {t} engine: {:.2} s, {:.0} messages/s, {rate:.0} calls/s with \
{registers_per_call} REGISTER per call, {:.1} us per call with its REGISTERs",
            run.engine,
            run.msgs as f64 / run.engine,
            run.engine * 1e6 / run.calls as f64
        );
    }
    let wall = runs.iter().map(|r| r.wall).fold(0.0, f64::max);
    let done: usize = runs.iter().map(|r| r.calls).sum();
    println!(
        "{shards} shard(s): engines together {total_rate:.0} calls/s (sum of each shard's \
calls per second inside its engine)"
    );
    println!(
        "loop (engines + the phones' side, all threads): {wall:.2} s, {:.0} calls/s",
        done as f64 / wall
    );
}
