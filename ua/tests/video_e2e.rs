//! Video with the I-frame split, end to end: `permit-proxy` with the media relay on,
//! two `permit-ua` over TLS. Alice sends an H.264 clip (10 s, GOP 30, made with ffmpeg
//! here) twice — default mode (both paths SRTP) and `--selective` (the direct path
//! plain RTP) — and an MPEG-2 clip; bob (`answer --record`) writes what arrived.
//!
//! - Each received file is byte-identical to the sent one (SHA-256) and decodes
//!   (`ffmpeg -v error -i FILE -f null -`).
//! - The relay carried every I-packet and nothing else: its per-call counters (the
//!   proxy's debug log at the call's end) equal the I-packets of the clip as classified
//!   here from the file, caller → callee, and nothing callee → caller.
//! - A tshark capture of the direct path holds no IDR NAL unit in `--selective`
//!   mode, and no plaintext payload at all in the default mode.
//!
//! Fails (does not skip) when CI is set and ffmpeg or tshark is missing.

mod common;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    DOMAIN, HOST, Proxy, Ua, peer_missing, read_text, run_ua, signal, ua_command, wait_until,
    workdir,
};
use sha2::{Digest, Sha256};
use sip_core::media::h264::H264Classifier;
use sip_core::media::rfc6184::Payload;
use sip_core::media::{Class, mpeg2, rfc2250, rfc6184};

const WAIT: Duration = Duration::from_secs(30);
const RELAY_PORTS: u16 = 8;
/// The UA's payload size (`permit_ua::video::PAYLOAD_MTU`).
const MTU: usize = permit_ua::video::PAYLOAD_MTU;

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        || peer_missing(tool)
}

fn ffmpeg(args: &[&str], out: &Path) {
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .arg(out)
        .output()
        .expect("run ffmpeg");
    assert!(o.status.success(), "ffmpeg {args:?}: {o:?}");
}

/// `ffmpeg -v error -i FILE -f null -`: exit 0 and nothing on stderr.
fn decodes(file: &Path) {
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args(["-f", "null", "-"])
        .output()
        .expect("run ffmpeg");
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "{} does not decode cleanly: {}",
        file.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data).iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A range of free UDP ports for the relay.
fn free_range() -> u16 {
    let start = 20_000 + (std::process::id() % 4000) as u16 * 4 + 3000;
    for i in 0..200u16 {
        let base = 20_000 + (start - 20_000 + i * RELAY_PORTS * 2) % 40_000;
        let held: Vec<_> = (base..base + RELAY_PORTS)
            .map(|p| std::net::UdpSocket::bind((HOST, p)))
            .collect();
        if held.iter().all(Result::is_ok) {
            return base;
        }
    }
    panic!("no free range of {RELAY_PORTS} UDP ports");
}

/// The clip's payloads as the UA packetizes them, and which are I-packets.
fn classified(file: &Path) -> Vec<(Payload, bool)> {
    let data = std::fs::read(file).unwrap();
    if file.extension().is_some_and(|e| e == "m2v") {
        rfc2250::packetize(&data, MTU)
            .into_iter()
            .map(|p| {
                let i = mpeg2::classify(&p.data) == Class::Intra;
                (p, i)
            })
            .collect()
    } else {
        let mut c = H264Classifier::new();
        rfc6184::packetize(&data, MTU)
            .into_iter()
            .map(|p| {
                let i = c.classify(&p.data) == Class::Intra;
                (p, i)
            })
            .collect()
    }
}

/// A tshark capture of RTP-looking video datagrams on loopback (version 2, no CSRC,
/// payload type 96 or 32): other traffic on a shared machine stays out of the file.
struct Capture {
    child: std::process::Child,
    file: PathBuf,
    log: PathBuf,
}

impl Capture {
    fn start(dir: &Path) -> Capture {
        let file = dir.join("video.pcapng");
        let log = dir.join("tshark.log");
        let filter = "udp and udp[8] & 0xcf = 0x80 and (udp[9] & 0x7f = 96 or udp[9] & 0x7f = 32)";
        let child = Command::new("tshark")
            .args(["-i", "lo", "-q", "-f", filter, "-w"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn tshark");
        wait_until(WAIT, "tshark capturing", || {
            read_text(&log).contains("Capturing on")
        });
        Capture { child, file, log }
    }

    /// Stops; the UDP payloads sent from port `from` to a port outside `relay`.
    fn stop(mut self, from: u16, relay: std::ops::Range<u16>) -> Vec<Vec<u8>> {
        signal(self.child.id(), "INT");
        common::wait_bounded(&mut self.child, WAIT, "tshark");
        let out = Command::new("tshark")
            .arg("-r")
            .arg(&self.file)
            .args(["-T", "fields", "-E", "separator=,"])
            .args([
                "-e",
                "udp.srcport",
                "-e",
                "udp.dstport",
                "-e",
                "udp.payload",
            ])
            .output()
            .expect("tshark -r");
        assert!(out.status.success(), "{}", common::tail(&self.log, 2000));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut f = l.split(',');
                let src: u16 = f.next()?.parse().ok()?;
                let dst: u16 = f.next()?.parse().ok()?;
                let hex: String = f.next()?.chars().filter(char::is_ascii_hexdigit).collect();
                (src == from && !relay.contains(&dst)).then(|| {
                    (0..hex.len() / 2)
                        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                        .collect()
                })
            })
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether an H.264 RTP payload carries (part of) an IDR NAL unit.
fn holds_idr(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1f {
        5 => true,
        28 => payload.get(1).is_some_and(|b| b & 0x1f == 5),
        24 => {
            let mut rest = &payload[1..];
            while rest.len() > 2 {
                let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                if rest.get(2).is_some_and(|b| b & 0x1f == 5) {
                    return true;
                }
                rest = rest.get(2 + n..).unwrap_or_default();
            }
            false
        }
        _ => false,
    }
}

/// A log line without its terminal colour codes (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

struct Sent {
    alice: Vec<serde_json::Value>,
    bob_video: serde_json::Value,
    relay_packets: (u64, u64),
    received: Vec<u8>,
}

/// One call from alice with `clip`; bob's report and the relay's counters of it.
fn call(
    dir: &Path,
    proxy: &Proxy,
    bob: &mut Ua,
    name: &str,
    clip: &Path,
    extra: &[&str],
    freed_before: usize,
) -> Sent {
    let mut cmd = ua_command(proxy, "tls", "alice", "apw");
    cmd.args(["call", "bob", "--video"]).arg(clip).args(extra);
    let before = bob.lines().len();
    let (code, alice, ua) = run_ua(dir, &format!("alice-{name}"), cmd);
    assert_eq!(code, 0, "{name}\n{}\n{}", ua.describe(), bob.describe());
    wait_until(WAIT, "bob's video report", || {
        bob.lines()[before..].iter().any(|l| l["event"] == "video")
    });
    let bob_video = bob.lines()[before..]
        .iter()
        .find(|l| l["event"] == "video")
        .cloned()
        .unwrap();
    let received = std::fs::read(bob_video["recording"].as_str().expect("a recording")).unwrap();
    // The relay call is freed at the BYE's 2xx, and its counters logged.
    let freed = || -> Vec<String> {
        read_text(&proxy.log)
            .lines()
            .filter(|l| l.contains("relay call freed"))
            .map(str::to_string)
            .collect()
    };
    wait_until(WAIT, "the relay call freed", || {
        freed().len() > freed_before
    });
    let line = strip_ansi(&freed()[freed_before]);
    let packets = line
        .split("packets=[")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .expect("packets=[..] in the log line");
    let mut n = packets.split(',').map(|x| x.trim().parse::<u64>().unwrap());
    let relay_packets = (n.next().unwrap(), n.next().unwrap());
    Sent {
        alice,
        bob_video,
        relay_packets,
        received,
    }
}

fn event<'a>(lines: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["event"] == name)
        .unwrap_or_else(|| panic!("no {name} event in {lines:?}"))
}

/// The sent file arrived byte for byte and decodes; the relay carried exactly the
/// I-packets; alice's report says the same.
fn check(name: &str, clip: &Path, sent: &Sent) {
    let original = std::fs::read(clip).unwrap();
    assert_eq!(
        sha256(&sent.received),
        sha256(&original),
        "{name}: received {} bytes of {}; bob: {}",
        sent.received.len(),
        original.len(),
        sent.bob_video
    );
    let path = PathBuf::from(sent.bob_video["recording"].as_str().unwrap());
    assert_eq!(path.extension(), clip.extension(), "{name}: same container");
    decodes(&path);
    let packets = classified(clip);
    let intra = packets.iter().filter(|(_, i)| *i).count() as u64;
    assert!(intra > 0 && intra < packets.len() as u64, "{name}: {intra}");
    assert_eq!(
        sent.relay_packets,
        (intra, 0),
        "{name}: the relay carried every I-packet and nothing else"
    );
    let v = event(&sent.alice, "video");
    assert_eq!(v["packets"], packets.len() as u64, "{name}: {v}");
    assert_eq!(v["relay"], intra, "{name}: {v}");
    assert_eq!(v["direct"], packets.len() as u64 - intra, "{name}: {v}");
    assert_eq!(v["latched"], true, "{name}: {v}");
    assert_eq!(v["srtp"], true, "{name}: {v}");
    let b = &sent.bob_video;
    assert_eq!(b["from_relay"], intra, "{name}: {b}");
    assert_eq!(b["latched"], true, "{name}: {b}");
    assert_eq!(b["refused"], 0, "{name}: {b}");
    assert_eq!(b["lost"], 0, "{name}: {b}");
    // The per-path report (RFC 3550 §6.4.1): the relay path took exactly the
    // I-packets, the direct path the others, nothing lost or repeated on loopback.
    let r = &b["reception"];
    assert_eq!(r["relay"]["packets"], intra, "{name}: {r}");
    assert_eq!(
        r["direct"]["packets"],
        packets.len() as u64 - intra,
        "{name}: {r}"
    );
    assert_eq!(r["expected"], packets.len() as u64, "{name}: {r}");
    assert_eq!(r["received"], packets.len() as u64, "{name}: {r}");
    assert_eq!(r["lost"], 0, "{name}: {r}");
    for path in ["relay", "direct"] {
        assert_eq!(r[path]["duplicates"], 0, "{name}: {r}");
        let jitter = r[path]["jitter_ms"].as_f64().expect("jitter_ms");
        assert!(jitter.is_finite() && jitter >= 0.0, "{name}: {r}");
    }
}

#[test]
#[allow(clippy::too_many_lines)] // one story, told in order
fn video_split_through_the_relay_arrives_byte_identical_and_the_direct_path_leaks_nothing() {
    if !(have("ffmpeg") && have("tshark")) {
        return;
    }
    let dir = workdir("video");
    // The clips: H.264 10 s with a GOP of 30 (an IDR each second), MPEG-2 3 s GOP 25.
    let h264 = dir.join("clip.h264");
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=176x144:rate=30",
            "-t",
            "10",
            "-c:v",
            "libx264",
            "-profile:v",
            "main",
            "-g",
            "30",
            "-keyint_min",
            "30",
            "-sc_threshold",
            "0",
            "-bf",
            "2",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "h264",
        ],
        &h264,
    );
    let m2v = dir.join("clip.m2v");
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=176x144:rate=25",
            "-t",
            "3",
            "-c:v",
            "mpeg2video",
            "-g",
            "25",
            "-bf",
            "2",
            "-f",
            "mpeg2video",
        ],
        &m2v,
    );
    let base = free_range();
    let relay = base..base + RELAY_PORTS;
    let config = format!(
        "[relay]\nenabled = true\nports = \"{base}-{}\"\naddress = \"{HOST}\"\n",
        base + RELAY_PORTS - 1
    );
    let proxy = Proxy::start_config(
        &dir,
        &[("alice", "apw"), ("bob", "bpw")],
        true,
        Some(&config),
    );
    let mut add = ua_command(&proxy, "tls", "bob", "bpw");
    add.args(["permit", "add", &format!("alice@{DOMAIN}")]);
    let (code, _, ua) = run_ua(&dir, "bob-permit", add);
    assert_eq!(code, 0, "{}", ua.describe());
    let mut cmd = ua_command(&proxy, "tls", "bob", "bpw");
    cmd.args(["answer", "--record", dir.join("bob-rec").to_str().unwrap()]);
    let mut bob = Ua::spawn(&dir, "bob-answer", cmd);
    bob.wait_event("registered", WAIT);

    // Default mode: both paths SRTP.
    let capture = Capture::start(&dir);
    let srtp = call(&dir, &proxy, &mut bob, "h264-srtp", &h264, &["--fast"], 0);
    let alice_port = |s: &Sent| -> u16 {
        event(&s.alice, "calling")["local_video"]
            .as_str()
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .expect("alice's video address")
            .port()
    };
    let direct = capture.stop(alice_port(&srtp), relay.clone());
    check("h264-srtp", &h264, &srtp);
    let packets = classified(&h264);
    let mut windows: HashSet<&[u8]> = HashSet::new();
    for (p, _) in &packets {
        windows.extend(p.data.windows(16));
    }
    let plaintext = |d: &[u8]| {
        d.get(12..)
            .is_some_and(|p| p.windows(16).any(|w| windows.contains(w)))
    };
    assert!(
        direct.len() as u64 >= (packets.len() as u64 - srtp.relay_packets.0) / 2,
        "the capture holds the direct path ({} datagrams)",
        direct.len()
    );
    let leaks = direct.iter().filter(|d| plaintext(d)).count();
    assert_eq!(leaks, 0, "plaintext video in {leaks} direct datagrams");

    // --selective: the direct path is plain RTP, but holds no IDR.
    let capture = Capture::start(&dir);
    let sel = call(
        &dir,
        &proxy,
        &mut bob,
        "h264-selective",
        &h264,
        &["--fast", "--selective"],
        1,
    );
    let direct = capture.stop(alice_port(&sel), relay.clone());
    check("h264-selective", &h264, &sel);
    assert_eq!(
        event(&sel.alice, "video")["plain"],
        event(&sel.alice, "video")["direct"]
    );
    // The detectors see what the direct path carries: plaintext P/B slices...
    let plain = direct.iter().filter(|d| plaintext(d)).count();
    assert!(
        plain * 2 >= direct.len() && plain > 0,
        "{plain} of {}",
        direct.len()
    );
    // ...and would see an IDR: the clip's own I-packets hold some.
    assert!(packets.iter().any(|(p, i)| *i && holds_idr(&p.data)));
    let idr = direct
        .iter()
        .filter(|d| d.len() > 12 && holds_idr(&d[12..]))
        .count();
    assert_eq!(idr, 0, "IDR NAL units on the direct path");

    // MPEG-2 at its own pace (25 fps).
    let mpv = call(&dir, &proxy, &mut bob, "m2v", &m2v, &[], 2);
    check("m2v", &m2v, &mpv);

    signal(bob.child.id(), "TERM");
    assert_eq!(bob.wait(Duration::from_secs(10)), 0, "{}", bob.describe());
}
