//! linphone (a stock phone with DTLS-SRTP mandatory: `media_encryption=dtls`,
//! `media_encryption_mandatory=1`) calls `permit-ua answer` through the real
//! `permit-proxy` over UDP. linphone offers `UDP/TLS/RTP/SAVP` with `a=fingerprint`
//! and no `a=crypto`; the UA answers DTLS-SRTP (RFC 5763 §5), runs the handshake on
//! its media port (RFC 5764) and sends and receives SRTP with the exported keys.
//!
//! Asserted: the call connects; the UA keyed the call with DTLS, received linphone's
//! 440 Hz tone (its recording holds it) with no packet refused by SRTP, and sent its
//! own; linphone's recording of the UA's tone is not silent; a tshark capture of
//! linphone's media port shows DTLS handshake records, then SRTP only (no RTP
//! packet before the handshake, no plaintext μ-law of the UA's tone).
//!
//! The other way, `permit-ua call --dtls` offers DTLS-SRTP (`a=setup:actpass`) to
//! linphone (auto-answer) through the proxy: the call connects, the UA's keys come
//! from the handshake, and each side hears the other's tone.
//!
//! linphonec is configured from `testbeds/linphone/linphonerc.template` and driven
//! on its standard input. Fails (does not skip) when CI is set and linphonec or
//! tshark is missing.

mod common;

use std::collections::HashSet;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use common::{
    DOMAIN, HOST, Proxy, Ua, free_port, peer_missing, read_text, run_ua, signal, tail, ua_command,
    wait_until, workdir,
};
use permit_ua::media::{g711, wav};

const WAIT: Duration = Duration::from_secs(30);
const TESTBED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testbeds/linphone");

fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
        || peer_missing(program)
}

/// One linphonec, driven on stdin, killed by PID when dropped.
struct Linphone {
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl Linphone {
    /// Registered as `user`; answers calls by itself when `auto_answer` (`-a`).
    fn start(dir: &Path, proxy: &Proxy, user: &str, password: &str, auto_answer: bool) -> Self {
        let home = dir.join(format!("linphone-{user}"));
        fs::create_dir_all(home.join(".local/share/linphone")).unwrap();
        let rc = home.join("linphonerc");
        let config = fs::read_to_string(format!("{TESTBED}/linphonerc.template"))
            .unwrap()
            .replace("@SIP_PORT@", &free_port().to_string())
            // Its own RTP port: two linphonec at once must not share the default 7078.
            .replace("@AUDIO_PORT@", &free_port().to_string())
            .replace("@PROXY@", &format!("{HOST}:{}", proxy.port))
            .replace("@USER@", user)
            .replace("@DOMAIN@", DOMAIN)
            .replace("@PASSWORD@", password);
        fs::write(&rc, config).unwrap();
        let log = dir.join(format!("linphone-{user}.log"));
        let mut child = Command::new("linphonec")
            .arg("-c")
            .arg(&rc)
            .args(["-d", "5"])
            .args(auto_answer.then_some("-a"))
            // Its database and other state go under the test directory.
            .env("HOME", &home)
            .stdin(Stdio::piped())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn linphonec");
        let stdin = child.stdin.take();
        let l = Self { child, stdin, log };
        wait_until(WAIT, "linphonec registered", || {
            read_text(&l.log).contains("to [LinphoneRegistrationOk]")
        });
        l
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("linphonec's stdin");
        writeln!(stdin, "{line}").expect("write to linphonec");
        stdin.flush().unwrap();
    }

    fn log(&self) -> String {
        read_text(&self.log)
    }

    fn describe(&self) -> String {
        tail(&self.log, 8000)
    }
}

impl Drop for Linphone {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A tshark capture of UDP on loopback but the proxy's port, stopped by PID.
struct Capture {
    child: Child,
    file: PathBuf,
    log: PathBuf,
}

/// One captured datagram of the media port: whether it left it, its UDP payload,
/// and the DTLS handshake types tshark decoded in it.
struct Datagram {
    from_port: bool,
    payload: Vec<u8>,
    dtls_handshake: String,
}

impl Capture {
    fn start(dir: &Path, proxy_port: u16) -> Self {
        let file = dir.join("media.pcapng");
        let log = dir.join("tshark.log");
        let child = Command::new("tshark")
            .args([
                "-i",
                "lo",
                "-q",
                "-f",
                &format!("udp and not port {proxy_port}"),
                "-w",
            ])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn tshark");
        wait_until(WAIT, "tshark capturing", || {
            read_text(&log).contains("Capturing on")
        });
        Self { child, file, log }
    }

    /// Stops the capture and reads back, in order, the datagrams from or to `port`
    /// (UDP of `port` decoded as DTLS where it is DTLS).
    fn stop(mut self, port: u16) -> Vec<Datagram> {
        signal(self.child.id(), "INT");
        common::wait_bounded(&mut self.child, WAIT, "tshark");
        let out = Command::new("tshark")
            .arg("-r")
            .arg(&self.file)
            .args(["-d", &format!("udp.port=={port},dtls")])
            .args(["-T", "fields", "-E", "separator=;"])
            .args([
                "-e",
                "udp.srcport",
                "-e",
                "udp.payload",
                "-e",
                "udp.dstport",
            ])
            .args(["-e", "dtls.handshake.type"])
            .output()
            .expect("tshark -r");
        assert!(out.status.success(), "tshark -r: {}", tail(&self.log, 2000));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut f = l.split(';');
                let src: u16 = f.next()?.parse().ok()?;
                let hex: String = f.next()?.chars().filter(char::is_ascii_hexdigit).collect();
                let payload: Vec<u8> = (0..hex.len() / 2)
                    .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                    .collect();
                let dst: u16 = f.next()?.parse().ok()?;
                let dtls_handshake = f.next().unwrap_or_default().to_string();
                (src == port || dst == port).then_some(Datagram {
                    from_port: src == port,
                    payload,
                    dtls_handshake,
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

/// A 16-bit PCM WAV at any rate (linphone records at its codec's): the rate and the
/// first channel's samples.
fn read_pcm16(path: &Path) -> (u32, Vec<i16>) {
    let b = fs::read(path).unwrap();
    assert!(
        b.len() > 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WAVE",
        "not a WAV"
    );
    let (mut at, mut rate, mut channels) = (12, 0u32, 1usize);
    while at + 8 <= b.len() {
        let id = &b[at..at + 4];
        let len = u32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize;
        let body = &b[at + 8..(at + 8 + len).min(b.len())];
        if id == b"fmt " {
            channels = usize::from(u16::from_le_bytes([body[2], body[3]]));
            rate = u32::from_le_bytes(body[4..8].try_into().unwrap());
        } else if id == b"data" {
            let samples = body
                .chunks_exact(2 * channels)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
            return (rate, samples);
        }
        at += 8 + len + (len & 1);
    }
    panic!("no data chunk");
}

/// The dominant frequency of a recording's loud part (8 kHz), from zero crossings.
fn tone_hz(samples: &[i16]) -> f64 {
    tone_hz_at(samples, 8000)
}

fn tone_hz_at(samples: &[i16], rate: u32) -> f64 {
    let frame = rate as usize / 50;
    let loud: Vec<i16> = samples
        .chunks(frame)
        .filter(|c| c.iter().any(|&s| s.unsigned_abs() > 1000))
        .flatten()
        .copied()
        .collect();
    assert!(loud.len() >= rate as usize, "under 1 s of tone recorded");
    let crossings = loud.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    let count = |n: usize| f64::from(u32::try_from(n).unwrap_or(u32::MAX));
    count(crossings) / 2.0 / (count(loud.len()) / f64::from(rate))
}

fn is_rtp(p: &[u8]) -> bool {
    p.len() >= 12 && matches!(p[0], 128..=191)
}

/// The wire: DTLS handshake records first, then SRTP only (no RTP before the
/// handshake; what the UA sent holds no plaintext μ-law of its tone).
fn assert_dtls_then_srtp(datagrams: &[Datagram], why: &dyn Fn() -> String) {
    let first_handshake = datagrams
        .iter()
        .position(|d| !d.dtls_handshake.is_empty())
        .unwrap_or_else(|| panic!("no DTLS handshake captured\n{}", why()));
    let first_rtp = datagrams
        .iter()
        .position(|d| is_rtp(&d.payload))
        .expect("no media captured");
    assert!(first_handshake < first_rtp, "RTP before the DTLS handshake");
    let handshake_types: HashSet<&str> = datagrams
        .iter()
        .flat_map(|d| d.dtls_handshake.split(','))
        .filter(|t| !t.is_empty())
        .collect();
    // ClientHello (1) and ServerHello (2) at least.
    assert!(
        handshake_types.contains("1") && handshake_types.contains("2"),
        "{handshake_types:?}"
    );
    let to_linphone: Vec<&Datagram> = datagrams
        .iter()
        .filter(|d| d.from_port && is_rtp(&d.payload))
        .collect();
    let from_linphone = datagrams
        .iter()
        .filter(|d| !d.from_port && is_rtp(&d.payload))
        .count();
    assert!(
        to_linphone.len() >= 100 && from_linphone >= 100,
        "{} / {from_linphone}",
        to_linphone.len()
    );
    // What the UA sent (PCMU) carries no 16-byte run of its tone's μ-law encoding.
    let plain: HashSet<[u8; 16]> = g711::encode_all(&permit_ua::media::wav::tone(660.0, 6, 8000.0))
        .windows(16)
        .map(|w| w.try_into().unwrap())
        .collect();
    assert!(
        !to_linphone.iter().any(|d| d
            .payload
            .windows(16)
            .any(|w| plain.contains(<&[u8; 16]>::try_from(w).unwrap()))),
        "plaintext μ-law of the UA's tone on the wire"
    );
}

#[test]
fn linphone_with_dtls_srtp_mandatory_calls_permit_ua_through_the_proxy() {
    if !have("linphonec", "-v") || !have("tshark", "--version") {
        return;
    }
    let dir = workdir("linphone-to-ua");
    let proxy = Proxy::start(&dir, &[("alice", "apw"), ("bob", "bpw")]);
    let mut add = ua_command(&proxy, "udp", "bob", "bpw");
    add.args(["permit", "add", &format!("alice@{DOMAIN}")]);
    let (code, _, ua) = run_ua(&dir, "bob-permit", add);
    assert_eq!(code, 0, "{}", ua.describe());

    let rec = dir.join("bob-rec");
    let bob_tone = dir.join("bob.wav");
    common::write_tone(&bob_tone, 660.0, 6);
    let mut cmd = ua_command(&proxy, "udp", "bob", "bpw");
    cmd.args(["answer", "--record", rec.to_str().unwrap()])
        .args(["--play", bob_tone.to_str().unwrap()]);
    let mut bob = Ua::spawn(&dir, "bob-answer", cmd);
    bob.wait_event("registered", WAIT);

    let capture = Capture::start(&dir, proxy.port);
    let mut alice = Linphone::start(&dir, &proxy, "alice", "apw", false);
    let alice_tone = dir.join("alice.wav");
    common::write_tone(&alice_tone, 440.0, 8);
    let alice_rec = dir.join("alice-rec.wav");
    alice.send("soundcard use files");
    alice.send(&format!("play {}", alice_tone.display()));
    alice.send(&format!("record {}", alice_rec.display()));
    alice.send(&format!("call sip:bob@{DOMAIN}"));
    let incoming = bob.wait_event("incoming", WAIT);
    let media_port: u16 = incoming["local_media"]
        .as_str()
        .and_then(|a| a.rsplit(':').next()?.parse().ok())
        .expect("the UA's media port");
    let connected = bob.wait_event("connected", WAIT);
    assert_eq!(connected["from"], "alice", "{connected}");
    let keys = bob.wait_event("keys", WAIT);
    assert_eq!(keys["dtls"], true, "{keys}");
    std::thread::sleep(Duration::from_secs(5));
    alice.send("terminate");
    let media = bob.wait_event("media", WAIT);
    alice.send("quit");
    let datagrams = capture.stop(media_port);
    let why = || format!("{}\n{}", bob.describe(), alice.describe());

    // The UA: DTLS gave the keys, SRTP both ways, nothing refused.
    assert!(media["dtls"].is_string(), "{media}\n{}", why());
    assert_eq!(media["srtp"], true, "{media}");
    // Opus is off in the template: PCMU, so the capture can be searched for μ-law.
    assert_eq!(media["codec"], "pcmu", "{media}");
    assert_eq!(media["srtp_rejected"], 0, "{media}");
    assert!(media["packets_sent"].as_u64().unwrap() >= 100, "{media}");
    assert!(
        media["packets_received"].as_u64().unwrap() >= 100,
        "{media}"
    );
    let files = common::wavs(&rec);
    assert_eq!(files.len(), 1, "{files:?}");
    let heard = wav::read(&fs::read(&files[0]).unwrap()).unwrap();
    let hz = tone_hz(&heard);
    assert!((400.0..480.0).contains(&hz), "bob heard {hz:.0} Hz");

    // linphone: DTLS-SRTP, and it heard the UA's 660 Hz tone.
    let log = alice.log();
    assert!(log.contains("DTLS"), "{}", why());
    wait_until(WAIT, "linphone's recording", || alice_rec.exists());
    let (rate, samples) = read_pcm16(&alice_rec);
    let hz = tone_hz_at(&samples, rate);
    assert!(
        (620.0..700.0).contains(&hz),
        "linphone heard {hz:.0} Hz\n{}",
        why()
    );

    assert_dtls_then_srtp(&datagrams, &why);

    signal(bob.child.id(), "TERM");
    assert_eq!(bob.wait(Duration::from_secs(10)), 0, "{}", bob.describe());
}

#[test]
fn permit_ua_offers_dtls_srtp_to_linphone_through_the_proxy() {
    if !have("linphonec", "-v") {
        return;
    }
    let dir = workdir("ua-to-linphone");
    let proxy = Proxy::start(&dir, &[("alice", "apw"), ("bob", "bpw")]);
    let mut add = ua_command(&proxy, "udp", "bob", "bpw");
    add.args(["permit", "add", &format!("alice@{DOMAIN}")]);
    let (code, _, ua) = run_ua(&dir, "bob-permit", add);
    assert_eq!(code, 0, "{}", ua.describe());
    let mut bob = Linphone::start(&dir, &proxy, "bob", "bpw", true);
    let bob_tone = dir.join("bob.wav");
    common::write_tone(&bob_tone, 440.0, 8);
    let bob_rec = dir.join("bob-rec.wav");
    bob.send("soundcard use files");
    bob.send(&format!("play {}", bob_tone.display()));
    bob.send(&format!("record {}", bob_rec.display()));

    let rec = dir.join("alice-rec");
    let tone = dir.join("alice.wav");
    common::write_tone(&tone, 660.0, 4);
    let mut call = ua_command(&proxy, "udp", "alice", "apw");
    call.args(["call", "bob", "--dtls", "--duration", "4"])
        .args(["--record", rec.to_str().unwrap()])
        .args(["--play", tone.to_str().unwrap()]);
    let (code, lines, alice) = run_ua(&dir, "alice-call", call);
    let why = || format!("{}\n{}", alice.describe(), bob.describe());
    assert_eq!(code, 0, "{}", why());
    let keys = lines
        .iter()
        .find(|l| l["event"] == "keys")
        .expect("keys event");
    assert_eq!(keys["dtls"], true, "{keys}");
    let media = lines
        .iter()
        .find(|l| l["event"] == "media")
        .expect("media event");
    assert!(media["dtls"].is_string(), "{media}\n{}", why());
    assert_eq!(media["srtp"], true, "{media}");
    assert_eq!(media["srtp_rejected"], 0, "{media}");
    assert!(media["packets_sent"].as_u64().unwrap() >= 100, "{media}");
    assert!(
        media["packets_received"].as_u64().unwrap() >= 100,
        "{media}"
    );
    let files = common::wavs(&rec);
    assert_eq!(files.len(), 1, "{files:?}");
    let hz = tone_hz(&wav::read(&fs::read(&files[0]).unwrap()).unwrap());
    assert!((400.0..480.0).contains(&hz), "alice heard {hz:.0} Hz");
    wait_until(WAIT, "linphone's recording", || bob_rec.exists());
    let (rate, samples) = read_pcm16(&bob_rec);
    let hz = tone_hz_at(&samples, rate);
    assert!(
        (620.0..700.0).contains(&hz),
        "linphone heard {hz:.0} Hz\n{}",
        why()
    );
    bob.send("quit");
}
