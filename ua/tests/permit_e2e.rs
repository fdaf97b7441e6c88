//! Two `permit-ua` processes call each other through the real `permit-proxy` over
//! TLS, routed and direct (`--direct`: the proxy's 302, then the INVITE straight to
//! the callee's TLS listener), with SRTP audio both ways keyed from the proxy's
//! session secret. A tshark capture of the loopback interface during the calls must
//! hold SRTP packets both ways and no plaintext of either side's tone.
//!
//! Fails (does not skip) when CI is set and tshark is missing.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    DOMAIN, HOST, Proxy, Ua, free_port, peer_missing, read_text, run_ua, signal, ua_command,
    wait_until, workdir, write_tone,
};
use permit_ua::media::{g711, wav};

const WAIT: Duration = Duration::from_secs(20);

fn have_tshark() -> bool {
    Command::new("tshark")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        || peer_missing("tshark")
}

/// A tshark capture of UDP on the loopback interface, stopped by PID.
struct Capture {
    child: std::process::Child,
    file: PathBuf,
    log: PathBuf,
}

impl Capture {
    /// Captures UDP datagrams of RTP/SRTP size (12-byte header and 160 bytes of
    /// audio, with no tag up to a 16-byte one) on loopback: other traffic on a shared
    /// machine stays out of the file.
    fn start(dir: &Path) -> Capture {
        let file = dir.join("media.pcapng");
        let log = dir.join("tshark.log");
        let filter = "udp and udp[4:2] >= 180 and udp[4:2] <= 196";
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

    /// Stops the capture; the UDP payloads captured from or to one of `ports`.
    fn stop(mut self, ports: &HashSet<u16>) -> Vec<Vec<u8>> {
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
        assert!(
            out.status.success(),
            "tshark -r: {}",
            common::tail(&self.log, 2000)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut f = l.split(',');
                let src: u16 = f.next()?.parse().ok()?;
                let dst: u16 = f.next()?.parse().ok()?;
                let hex: String = f.next()?.chars().filter(char::is_ascii_hexdigit).collect();
                (ports.contains(&src) || ports.contains(&dst)).then(|| {
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

/// Every 16-byte window of a tone's μ-law encoding: what a plaintext RTP payload of
/// that tone would contain.
fn plaintext_windows(samples: &[i16]) -> HashSet<[u8; 16]> {
    g711::encode_all(samples)
        .windows(16)
        .map(|w| w.try_into().unwrap())
        .collect()
}

fn holds_plaintext(payload: &[u8], windows: &HashSet<[u8; 16]>) -> bool {
    payload
        .windows(16)
        .any(|w| windows.contains(<&[u8; 16]>::try_from(w).unwrap()))
}

/// The dominant frequency of a recording's loud part, from zero crossings.
fn tone_hz(path: &Path) -> f64 {
    let samples = wav::read(&std::fs::read(path).unwrap()).unwrap();
    let loud: Vec<i16> = samples
        .chunks(160)
        .filter(|c| c.iter().any(|&s| s.unsigned_abs() > 2000))
        .flatten()
        .copied()
        .collect();
    assert!(loud.len() >= 8000, "{}: under 1 s of tone", path.display());
    let crossings = loud.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    let count = |n: usize| f64::from(u32::try_from(n).unwrap_or(u32::MAX));
    count(crossings) / 2.0 / (count(loud.len()) / 8000.0)
}

fn one_wav(dir: &Path) -> PathBuf {
    let files = common::wavs(dir);
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

struct Call {
    alice: Vec<serde_json::Value>,
    bob_keys: serde_json::Value,
    bob_rec: PathBuf,
    alice_rec: PathBuf,
}

fn call(dir: &Path, proxy: &Proxy, bob: &mut Ua, ca: &Path, name: &str, direct: bool) -> Call {
    let alice_rec = dir.join(format!("alice-rec-{name}"));
    // The trust anchors: the proxy's certificate and, for direct calls, bob's.
    let mut cmd = Command::new(common::ua_program());
    cmd.args(["--proxy", &proxy.addr("tls")])
        .args([
            "--user",
            "alice",
            "--password",
            "apw",
            "--domain",
            DOMAIN,
            "--json",
        ])
        .arg("--tls-ca")
        .arg(ca)
        .env("PERMIT_LOG", "debug")
        .stdin(Stdio::null());
    // PCMU: the capture check below looks for the tones' μ-law bytes and 182-byte
    // SRTP packets (Opus between the same UAs: opus_e2e).
    cmd.args(["call", "bob", "--duration", "2", "--codec", "pcmu"])
        .args(["--play", dir.join("alice.wav").to_str().unwrap()])
        .args(["--record", alice_rec.to_str().unwrap()]);
    if direct {
        cmd.arg("--direct");
    }
    let before = bob.lines().len();
    let (code, lines, alice) = run_ua(dir, &format!("alice-{name}"), cmd);
    assert_eq!(code, 0, "{name}\n{}\n{}", alice.describe(), bob.describe());
    let events: Vec<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    assert_eq!(
        events,
        ["calling", "connected", "keys", "media", "ended"],
        "{lines:?}"
    );
    wait_until(WAIT, "bob's media report", || {
        bob.lines()[before..].iter().any(|l| l["event"] == "media")
    });
    let bob_lines = bob.lines()[before..].to_vec();
    let bob_keys = bob_lines
        .iter()
        .find(|l| l["event"] == "keys")
        .cloned()
        .expect("bob's keys");
    let bob_media = bob_lines.iter().find(|l| l["event"] == "media").unwrap();
    assert!(
        bob_media["packets_received"].as_u64().unwrap() >= 50,
        "{bob_media}"
    );
    assert_eq!(bob_media["srtp"], true);
    assert_eq!(bob_media["srtp_rejected"], 0);
    let bob_rec = common::wavs(&dir.join("bob-rec"))
        .into_iter()
        .find(|p| {
            bob_media["recording"]
                .as_str()
                .is_some_and(|r| Path::new(r) == p)
        })
        .expect("bob's recording of this call");
    Call {
        alice: lines,
        bob_keys,
        bob_rec,
        alice_rec: one_wav(&alice_rec),
    }
}

#[test]
#[allow(clippy::too_many_lines)] // one story, told in order
fn two_permit_uas_over_tls_routed_and_direct_with_srtp_both_ways() {
    if !have_tshark() {
        return;
    }
    let dir = workdir("permit-tls");
    let proxy = Proxy::start_with(&dir, &[("alice", "apw"), ("bob", "bpw")], true);
    let mut add = ua_command(&proxy, "tls", "bob", "bpw");
    add.args(["permit", "add", &format!("alice@{DOMAIN}")]);
    let (code, _, ua) = run_ua(&dir, "bob-permit", add);
    assert_eq!(code, 0, "{}", ua.describe());
    let bob_tone = wav::tone(440.0, 3, 8000.0);
    let alice_tone = wav::tone(660.0, 3, 8000.0);
    write_tone(&dir.join("bob.wav"), 440.0, 3);
    write_tone(&dir.join("alice.wav"), 660.0, 3);

    // Bob listens for TLS too: a self-signed certificate is generated for it.
    let listen = free_port();
    let bob_tls = dir.join("bob-tls");
    let mut cmd = ua_command(&proxy, "tls", "bob", "bpw");
    cmd.args(["--listen", &format!("tls:{HOST}:{listen}")])
        .arg("--tls-cert")
        .arg(bob_tls.join("cert.pem"))
        .arg("--tls-key")
        .arg(bob_tls.join("key.pem"))
        .args(["answer", "--max-calls", "2"])
        .args(["--record", dir.join("bob-rec").to_str().unwrap()])
        .args(["--play", dir.join("bob.wav").to_str().unwrap()]);
    let mut bob = Ua::spawn(&dir, "bob-answer", cmd);
    let cert = bob.wait_event("certificate", WAIT);
    assert_eq!(
        Path::new(cert["certificate"].as_str().unwrap()),
        bob_tls.join("cert.pem")
    );
    bob.wait_event("registered", WAIT);
    let ca = dir.join("trusted.pem");
    std::fs::write(
        &ca,
        [
            std::fs::read(proxy.cert.as_ref().unwrap()).unwrap(),
            std::fs::read(bob_tls.join("cert.pem")).unwrap(),
        ]
        .concat(),
    )
    .unwrap();

    let capture = Capture::start(&dir);
    let routed = call(&dir, &proxy, &mut bob, &ca, "routed", false);
    let direct = call(&dir, &proxy, &mut bob, &ca, "direct", true);
    // The four media sockets of the two calls.
    let port = |v: &serde_json::Value| -> u16 {
        v.as_str()
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.port())
            .expect("a media address")
    };
    let mut ports = HashSet::new();
    for l in bob.lines().iter().filter(|l| l["event"] == "incoming") {
        ports.insert(port(&l["local_media"]));
        ports.insert(port(&l["remote_media"]));
    }
    for c in [&routed, &direct] {
        ports.insert(port(&c.alice[0]["local_media"]));
    }
    assert_eq!(ports.len(), 4, "{ports:?}");
    let payloads = capture.stop(&ports);

    for (name, c) in [("routed", &routed), ("direct", &direct)] {
        let keys = &c.alice[2];
        assert_eq!(keys["srtp"], "AES_CM_128_HMAC_SHA1_80", "{name}: {keys}");
        // Alice checked bob's key against the secret in both modes.
        assert_eq!(keys["keys_from_secret"], true, "{name}: {keys}");
        let media = &c.alice[3];
        assert!(
            media["packets_sent"].as_u64().unwrap() >= 50
                && media["packets_received"].as_u64().unwrap() >= 50,
            "{name}: {media}"
        );
        assert_eq!(media["srtp_rejected"], 0, "{name}: {media}");
        // Each recording holds the other side's tone.
        let hz = tone_hz(&c.bob_rec);
        assert!((600.0..720.0).contains(&hz), "{name}: bob heard {hz:.0} Hz");
        let hz = tone_hz(&c.alice_rec);
        assert!(
            (400.0..480.0).contains(&hz),
            "{name}: alice heard {hz:.0} Hz"
        );
    }
    // Routed: alice offered before she had the secret, so bob could not check her
    // key; direct: she had it from the 302, and bob checked it.
    assert_eq!(routed.bob_keys["keys_from_secret"], false);
    assert_eq!(direct.bob_keys["keys_from_secret"], true);

    // The capture: SRTP packets (12-byte header, 160 bytes of audio, 10-byte tag) in
    // both calls' directions, and no plaintext of either tone anywhere.
    let srtp = payloads
        .iter()
        .filter(|p| p.len() == 182 && p[0] >> 6 == 2)
        .count();
    assert!(
        srtp >= 4 * 50,
        "{srtp} SRTP packets in {} captured",
        payloads.len()
    );
    let windows: HashSet<[u8; 16]> = plaintext_windows(&bob_tone)
        .union(&plaintext_windows(&alice_tone))
        .copied()
        .collect();
    // The detector finds a plaintext packet of the tone.
    let mut sender = permit_ua::media::rtp::RtpSender::new(&mut rand::rng());
    let plain = sender.packet(&g711::encode_all(&bob_tone[800..960]));
    assert!(holds_plaintext(&plain, &windows));
    let leaks = payloads
        .iter()
        .filter(|p| holds_plaintext(p, &windows))
        .count();
    assert_eq!(leaks, 0, "plaintext audio in {leaks} captured datagrams");

    signal(bob.child.id(), "TERM");
    assert_eq!(bob.wait(Duration::from_secs(10)), 0, "{}", bob.describe());
}
