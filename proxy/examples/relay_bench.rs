//! Load and latency through a media relay on loopback: permit-proxy's relay (the same
//! `relay::shell` the binary runs, on its own thread, calls allocated through the
//! engine's `MediaRelay` interface and latched with the documented datagram), or a
//! running rtpengine (calls set up over its ng control protocol), or no relay at all
//! (`direct`, the floor).
//!
//! ```text
//! cargo run --release -p permit-proxy --example relay_bench -- permit [--ports FIRST]
//! cargo run --release -p permit-proxy --example relay_bench -- rtpengine --ng 127.0.0.1:22230 --pid PID
//! cargo run --release -p permit-proxy --example relay_bench -- direct
//!   common: [--streams 8] [--size 172] [--latency-rate 5000] [--secs 5] [--loads 20000,50000,100000,0]
//! ```
//!
//! Two sockets play the UAs: the caller sends RTP (payload: the send time in ns) to
//! each stream's relay port, the callee receives. Phase `latency`: one stream paced at
//! `--latency-rate` packets/s; one-way delay percentiles (send → receive, same clock).
//! Phases `load`: all streams at each offered rate (0: as fast as the sender goes);
//! received packets/s, and the relay's CPU time over the phase (its thread for permit,
//! the whole process for rtpengine) → packets/s per core. One JSON object per phase on
//! stdout. Every phase is bounded in time; only loopback addresses are used.

// Rates and percentiles are printed as floats; counts far below 2^52 lose nothing.
#![allow(clippy::cast_precision_loss, clippy::cast_sign_loss)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use permit_proxy::relay::shell::{self, SharedRelay};
use permit_proxy::relay::{MediaRelay, RelaySettings, RelayTable};
use sha2::Sha256;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const TOKEN: &str = "v1.1.1800000000.bench-nonce-000000.bench-mac";

struct Args {
    target: String,
    ports: u16,
    ng: Option<SocketAddr>,
    pid: Option<u32>,
    streams: usize,
    size: usize,
    latency_rate: u64,
    secs: u64,
    loads: Vec<u64>,
}

fn args() -> Args {
    let mut a = Args {
        target: String::new(),
        ports: 45_000,
        ng: None,
        pid: None,
        streams: 8,
        size: 172,
        latency_rate: 5000,
        secs: 5,
        loads: vec![20_000, 50_000, 100_000, 0],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().expect("a value after the flag");
        match arg.as_str() {
            "--ports" => a.ports = val().parse().expect("--ports FIRST"),
            "--ng" => a.ng = Some(val().parse().expect("--ng IP:PORT")),
            "--pid" => a.pid = Some(val().parse().expect("--pid PID")),
            "--streams" => a.streams = val().parse().expect("--streams N"),
            "--size" => a.size = val().parse().expect("--size BYTES"),
            "--latency-rate" => a.latency_rate = val().parse().expect("--latency-rate PPS"),
            "--secs" => a.secs = val().parse::<u64>().expect("--secs S").clamp(1, 60),
            "--loads" => {
                a.loads = val()
                    .split(',')
                    .map(|s| s.parse().expect("--loads PPS,PPS,..."))
                    .collect();
            }
            t if a.target.is_empty() => t.clone_into(&mut a.target),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(a.size >= 20, "--size of at least 20 bytes");
    a
}

/// CPU seconds of the threads of a /proc task directory whose name `keep` accepts,
/// from `schedstat` (time on CPU in ns, exact; `stat`'s ticks are sampled at 100 Hz).
fn tasks_cpu(tasks: &str, keep: impl Fn(&str) -> bool) -> f64 {
    let Ok(dir) = std::fs::read_dir(tasks) else {
        return 0.0;
    };
    dir.flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| keep(c.trim())))
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map(|ns| ns as f64 / 1e9)
        .sum()
}

/// CPU seconds of this process's thread named `name`.
fn thread_cpu(name: &str) -> f64 {
    tasks_cpu("/proc/self/task", |c| c == name)
}

/// CPU seconds of every thread of process `pid`.
fn process_cpu(pid: u32) -> f64 {
    tasks_cpu(&format!("/proc/{pid}/task"), |_| true)
}

fn latch(token: &str, kind: u8, leg: u8, port: u16) -> Vec<u8> {
    let mut d = vec![0x0B, b'P', b'R', b'L', kind, leg];
    d.extend_from_slice(&port.to_be_bytes());
    d.extend_from_slice(&1u64.to_be_bytes());
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(b"permit relay latch v1");
    mac.update(&d);
    d.extend_from_slice(&mac.finalize().into_bytes());
    d
}

fn expect_answer(s: &UdpSocket, what: &str) -> Vec<u8> {
    let mut buf = [0u8; 4096];
    let (n, _) = s
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    buf[..n].to_vec()
}

/// The permit relay in this process; each stream's caller-side port.
fn setup_permit(a: &Args, tx: &UdpSocket, rx: &UdpSocket) -> (Vec<SocketAddr>, SharedRelay) {
    let settings = RelaySettings {
        address: LOCAL,
        ports: (a.ports, a.ports + 2 * a.streams as u16 - 1),
        inactivity: Duration::from_mins(10),
    };
    let sockets = shell::bind(&settings).expect("bind the relay range");
    let table = SharedRelay::new(RelayTable::new(settings, 1));
    shell::spawn(table.clone(), sockets).expect("relay thread");
    let mut engine_side = table.clone();
    let mut sends = Vec::new();
    for _ in 0..a.streams {
        let alloc = engine_side
            .allocate(Instant::now(), TOKEN, 1)
            .expect("allocate");
        let [pa, pb] = alloc.streams[0];
        rx.send_to(&latch(TOKEN, 1, 1, pb), (LOCAL, pb)).unwrap();
        assert_eq!(
            expect_answer(rx, "callee latch"),
            latch(TOKEN, 2, 1, pb),
            "callee latched"
        );
        tx.send_to(&latch(TOKEN, 1, 0, pa), (LOCAL, pa)).unwrap();
        assert_eq!(
            expect_answer(tx, "caller latch"),
            latch(TOKEN, 2, 0, pa),
            "caller latched"
        );
        sends.push(SocketAddr::new(LOCAL, pa));
    }
    (sends, table)
}

fn bstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(format!("{}:", s.len()).as_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// One ng command (bencoded dict, keys in order) and the `sdp` of its answer.
fn ng(sock: &UdpSocket, ng: SocketAddr, cookie: &str, pairs: &[(&str, &str)]) -> String {
    let mut msg = format!("{cookie} d").into_bytes();
    let mut sorted = pairs.to_vec();
    sorted.sort_by_key(|(k, _)| *k);
    for (k, v) in sorted {
        bstr(&mut msg, k);
        bstr(&mut msg, v);
    }
    msg.push(b'e');
    sock.send_to(&msg, ng).unwrap();
    let reply = expect_answer(sock, "rtpengine ng reply");
    let text = String::from_utf8_lossy(&reply).into_owned();
    assert!(text.contains("6:result2:ok"), "rtpengine: {text}");
    let at = text.find("3:sdp").expect("sdp in the reply") + 5;
    let (len, rest) = text[at..].split_once(':').unwrap();
    rest[..len.parse::<usize>().unwrap()].to_owned()
}

fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=video {port} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=sendrecv\r\n"
    )
}

fn media_port(sdp: &str) -> u16 {
    let m = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=video "))
        .expect("m=video");
    m.split(' ').next().unwrap().parse().unwrap()
}

/// Calls set up in a running rtpengine; each stream's caller-side port.
fn setup_rtpengine(a: &Args, tx: &UdpSocket, rx: &UdpSocket) -> Vec<SocketAddr> {
    let addr = a.ng.expect("--ng IP:PORT");
    let sock = UdpSocket::bind((LOCAL, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut sends = Vec::new();
    for i in 0..a.streams {
        let call = format!("bench-{}-{i}", std::process::id());
        let caller = sdp(tx.local_addr().unwrap().port());
        let callee = sdp(rx.local_addr().unwrap().port());
        ng(
            &sock,
            addr,
            &format!("o{}-{i}", std::process::id()),
            &[
                ("command", "offer"),
                ("call-id", &call),
                ("from-tag", "caller"),
                ("sdp", &caller),
            ],
        );
        let answer = ng(
            &sock,
            addr,
            &format!("a{}-{i}", std::process::id()),
            &[
                ("command", "answer"),
                ("call-id", &call),
                ("from-tag", "caller"),
                ("to-tag", "callee"),
                ("sdp", &callee),
            ],
        );
        sends.push(SocketAddr::new(LOCAL, media_port(&answer)));
    }
    sends
}

fn packet(size: usize, seq: u16, ssrc: u32, t0: Instant) -> Vec<u8> {
    let mut p = vec![0u8; size];
    p[0] = 0x80;
    p[1] = 96;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    let ns = t0.elapsed().as_nanos() as u64;
    p[12..20].copy_from_slice(&ns.to_be_bytes());
    p
}

/// The callee's receive loop: counts, and keeps one-way delays when `keep`.
fn receiver(
    rx: UdpSocket,
    t0: Instant,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    keep: bool,
) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        rx.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let mut delays = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let Ok(n) = rx.recv(&mut buf) else { continue };
            if n < 20 {
                continue;
            }
            count.fetch_add(1, Ordering::Relaxed);
            if keep && delays.len() < 10_000_000 {
                let mut ns = [0u8; 8];
                ns.copy_from_slice(&buf[12..20]);
                let sent = u64::from_be_bytes(ns);
                delays.push((t0.elapsed().as_nanos() as u64).saturating_sub(sent));
            }
        }
        delays
    })
}

/// Sends to `sends` round robin at `rate` packets/s (0: as fast as possible) for `secs`.
fn sender(
    tx: &UdpSocket,
    sends: &[SocketAddr],
    rate: u64,
    secs: u64,
    size: usize,
    t0: Instant,
) -> u64 {
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut sent = 0u64;
    let mut seq = 0u16;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if rate > 0 {
            // Due by now: sent so far vs. the rate × elapsed; sleep in 100 µs steps.
            let due = (now - start).as_nanos() as u64 * rate / 1_000_000_000;
            if sent >= due {
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
        }
        let i = (sent % sends.len() as u64) as usize;
        seq = seq.wrapping_add(1);
        let p = packet(size, seq, i as u32, t0);
        if tx.send_to(&p, sends[i]).is_ok() {
            sent += 1;
        }
    }
    sent
}

/// A UA's socket with a large receive buffer, so that what the bench measures is the
/// relay's loss, not the receiving thread's.
fn ua_socket() -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let size = 8usize << 20;
    if nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBufForce, &size).is_err() {
        let _ = s.set_recv_buffer_size(size);
    }
    s.bind(&SocketAddr::new(LOCAL, 0).into()).unwrap();
    s.into()
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // p in 0..=1: the index is within the slice.
    let i = (((sorted.len() - 1) as f64 * p).round() as usize).min(sorted.len() - 1);
    sorted[i] as f64 / 1000.0
}

fn main() {
    let a = args();
    let (tx, rx) = (ua_socket(), ua_socket());
    for s in [&tx, &rx] {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    }
    let mut relay = None;
    let (sends, cpu): (Vec<SocketAddr>, Box<dyn Fn() -> f64>) = match a.target.as_str() {
        "permit" => {
            let (s, table) = setup_permit(&a, &tx, &rx);
            relay = Some(table);
            (s, Box::new(|| thread_cpu("relay")))
        }
        "rtpengine" => {
            let pid = a.pid.expect("--pid of rtpengine");
            (
                setup_rtpengine(&a, &tx, &rx),
                Box::new(move || process_cpu(pid)),
            )
        }
        "direct" => (vec![rx.local_addr().unwrap(); a.streams], Box::new(|| 0.0)),
        t => panic!("target permit, rtpengine or direct, not {t:?}"),
    };
    let t0 = Instant::now();
    let phases: Vec<(&str, u64, usize)> = std::iter::once(("latency", a.latency_rate, 1))
        .chain(a.loads.iter().map(|&r| ("load", r, a.streams)))
        .collect();
    for (phase, rate, streams) in phases {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let handle = receiver(
            rx.try_clone().unwrap(),
            t0,
            stop.clone(),
            count.clone(),
            phase == "latency",
        );
        let (cpu0, w0) = (cpu(), Instant::now());
        let sent = sender(&tx, &sends[..streams], rate, a.secs, a.size, t0);
        std::thread::sleep(Duration::from_millis(300)); // the last packets arrive
        let (cpu1, wall) = (cpu(), w0.elapsed().as_secs_f64());
        stop.store(true, Ordering::Relaxed);
        let mut delays = handle.join().unwrap();
        let received = count.load(Ordering::Relaxed);
        let busy = (cpu1 - cpu0) / wall;
        let rx_pps = received as f64 / a.secs as f64;
        // Warm-up: the first tenth of the samples is left out.
        let skip = delays.len() / 10;
        let mut kept = delays.split_off(skip);
        kept.sort_unstable();
        println!(
            "{{\"target\":\"{}\",\"phase\":\"{phase}\",\"offered_pps\":{rate},\"streams\":{streams},\"size\":{},\
\"sent\":{sent},\"received\":{received},\"loss\":{:.5},\"rx_pps\":{rx_pps:.0},\"relay_cpu\":{busy:.3},\
\"pps_per_core\":{:.0},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1}}}",
            a.target,
            a.size,
            1.0 - received as f64 / sent.max(1) as f64,
            if busy > 0.0 { rx_pps / busy } else { 0.0 },
            percentile(&kept, 0.5),
            percentile(&kept, 0.99),
            percentile(&kept, 0.999),
        );
    }
    if let Some(r) = relay {
        eprintln!("permit relay counters: {:?}", r.stats());
    }
}
