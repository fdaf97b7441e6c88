//! baresip (a stock phone, with its own SDES keys: `mediaenc=srtp`) and `permit-ua`
//! in permit mode call each other through the real `permit-proxy`: baresip → proxy →
//! `permit-ua answer` over UDP (baresip offers `a=crypto`, the UA answers in kind with
//! its own random key), and `permit-ua call` → proxy → baresip over TLS (the UA offers
//! SDES; baresip answers with its own key, which is not the session-key derivation:
//! ordinary SDES). SRTP audio both ways: the UA decrypts every packet of baresip's
//! 440 Hz tone (its recording holds it), and baresip's RTP statistics show our
//! packets received.
//!
//! baresip is configured from `testbeds/baresip/config.template` with the `srtp`
//! module added, and driven with `testbeds/baresip/ctrl.py`. Fails (does not skip)
//! when CI is set and baresip is missing.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    DOMAIN, HOST, Proxy, Ua, free_port, peer_missing, read_text, run_ua, signal, tail, ua_command,
    wait_until, workdir,
};

const WAIT: Duration = Duration::from_secs(20);
/// baresip 1.0 answers MD5 digest challenges only.
const MD5: Option<&str> = Some("[auth]\nalgorithms = [\"MD5\"]\n");
const TESTBED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testbeds/baresip");

fn have_baresip() -> bool {
    Command::new("baresip")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
        || peer_missing("baresip")
}

/// One baresip with one account, killed by PID when dropped.
struct Baresip {
    child: Child,
    ctrl: u16,
    log: PathBuf,
}

impl Baresip {
    fn start(dir: &Path, proxy: &Proxy, user: &str, password: &str, transport: &str) -> Baresip {
        let home = dir.join(format!("baresip-{user}"));
        fs::create_dir_all(&home).unwrap();
        let (sip, ctrl) = (free_port(), free_port());
        let tls = proxy
            .cert
            .as_ref()
            .map_or(String::new(), |c| format!("sip_cafile\t\t{}", c.display()));
        let config = fs::read_to_string(format!("{TESTBED}/config.template"))
            .unwrap()
            .replace("@SIP_PORT@", &sip.to_string())
            .replace("@CTRL_PORT@", &ctrl.to_string())
            .replace("@TLS@", &tls)
            // SDES-SRTP (RFC 4568), baresip's own keys.
            + "module\t\t\tsrtp.so\nrtp_stats\t\tyes\n";
        fs::write(home.join("config"), config).unwrap();
        let port = if transport == "tls" {
            proxy.tls_port.unwrap()
        } else {
            proxy.port
        };
        fs::write(
            home.join("accounts"),
            format!(
                "<sip:{user}@{DOMAIN}>;auth_pass={password};\
outbound=\"sip:{HOST}:{port};transport={transport}\";regint=600;answermode=auto;\
mediaenc=srtp\n"
            ),
        )
        .unwrap();
        let log = dir.join(format!("baresip-{user}.log"));
        let child = Command::new("baresip")
            .arg("-f")
            .arg(&home)
            .arg("-s")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn baresip");
        let b = Baresip { child, ctrl, log };
        wait_until(WAIT, "baresip registered", || {
            read_text(&b.log).contains("200 OK")
        });
        b
    }

    /// `ctrl.py` commands; returns its output (JSON lines) and whether `until` came.
    fn ctrl(&self, until: Option<&str>, wait: f64, commands: &[&str]) -> (String, bool) {
        let mut cmd = Command::new("python3");
        cmd.arg(format!("{TESTBED}/ctrl.py"))
            .arg(self.ctrl.to_string())
            .args(["--wait", &wait.to_string()]);
        if let Some(u) = until {
            cmd.args(["--until", u]);
        }
        let out = cmd.args(commands).output().expect("run ctrl.py");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.success(),
        )
    }

    fn describe(&self) -> String {
        tail(&self.log, 6000)
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn permit(dir: &Path, proxy: &Proxy, transport: &str, user: &str, pw: &str, who: &str) {
    let mut add = ua_command(proxy, transport, user, pw);
    add.args(["permit", "add", &format!("{who}@{DOMAIN}")]);
    let (code, _, ua) = run_ua(dir, &format!("{user}-permit"), add);
    assert_eq!(code, 0, "{}", ua.describe());
}

/// The dominant frequency of the loud part of the one recording in `dir`.
fn recorded_hz(dir: &Path) -> f64 {
    let files = common::wavs(dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let samples =
        permit_ua::media::wav::read(&fs::read(&files[0]).unwrap()).expect("a WAV we wrote");
    let loud: Vec<i16> = samples
        .chunks(160)
        .filter(|c| c.iter().any(|&s| s.unsigned_abs() > 1000))
        .flatten()
        .copied()
        .collect();
    assert!(loud.len() >= 8000, "under 1 s of audio recorded");
    let crossings = loud.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    let count = |n: usize| f64::from(u32::try_from(n).unwrap_or(u32::MAX));
    count(crossings) / 2.0 / (count(loud.len()) / 8000.0)
}

/// What the UA's `keys` and `media` events say about SRTP, asserted.
fn assert_sdes_audio(lines: &[serde_json::Value], who: &str) {
    let keys = lines
        .iter()
        .find(|l| l["event"] == "keys")
        .unwrap_or_else(|| panic!("{who}: no keys event in {lines:?}"));
    assert!(keys["srtp"].is_string(), "{who}: {keys}");
    // baresip's key is its own, not the session secret's derivation.
    assert_eq!(keys["keys_from_secret"], false, "{who}: {keys}");
    let media = lines.iter().find(|l| l["event"] == "media").unwrap();
    assert_eq!(media["srtp"], true, "{who}: {media}");
    assert_eq!(media["srtp_rejected"], 0, "{who}: {media}");
    assert!(
        media["packets_sent"].as_u64().unwrap() >= 50,
        "{who}: {media}"
    );
    assert!(
        media["packets_received"].as_u64().unwrap() >= 50,
        "{who}: {media}"
    );
}

/// baresip keyed the call with SDES (its srtp module says so) and received our
/// audio: the RTP statistics it prints at the end of the call (`rtp_stats yes`; its
/// srtp module drops what fails authentication before the RTP stack counts it).
fn assert_baresip_sdes(b: &Baresip) {
    wait_until(WAIT, "baresip's RTP statistics", || {
        read_text(&b.log).contains("Receive:")
    });
    let log = read_text(&b.log);
    assert!(
        log.contains("SRTP is Enabled (cryptosuite=AES_CM_128_HMAC_SHA1_80)"),
        "{}",
        b.describe()
    );
    let stats = &log[log.find("Receive:").unwrap()..];
    let numbers = |label: &str| -> Vec<u64> {
        stats
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let packets = numbers("packets:");
    assert!(
        packets.len() == 2 && packets[1] >= 50,
        "baresip received {packets:?}\n{}",
        b.describe()
    );
    assert_eq!(numbers("errors:"), [0, 0], "{}", b.describe());
}

#[test]
fn baresip_calls_permit_ua_through_the_proxy_with_its_own_sdes() {
    if !have_baresip() {
        return;
    }
    let dir = workdir("baresip-to-ua");
    let proxy = Proxy::start_config(&dir, &[("alice", "apw"), ("bob", "bpw")], false, MD5);
    permit(&dir, &proxy, "udp", "bob", "bpw", "alice");
    let rec = dir.join("bob-rec");
    let mut cmd = ua_command(&proxy, "udp", "bob", "bpw");
    cmd.args(["answer", "--record", rec.to_str().unwrap()]);
    let mut bob = Ua::spawn(&dir, "bob-answer", cmd);
    bob.wait_event("registered", WAIT);
    let alice = Baresip::start(&dir, &proxy, "alice", "apw", "udp");
    let (out, ok) = alice.ctrl(
        Some("CALL_ESTABLISHED"),
        15.0,
        &[&format!("dial sip:bob@{DOMAIN}")],
    );
    assert!(ok, "{out}\n{}\n{}", alice.describe(), bob.describe());
    std::thread::sleep(Duration::from_secs(3));
    alice.ctrl(None, 1.0, &["hangup"]);
    bob.wait_event("media", WAIT);
    assert_sdes_audio(&bob.lines(), "bob");
    let hz = recorded_hz(&rec);
    assert!((400.0..480.0).contains(&hz), "bob heard {hz:.0} Hz");
    assert_baresip_sdes(&alice);
    signal(bob.child.id(), "TERM");
    assert_eq!(bob.wait(Duration::from_secs(10)), 0, "{}", bob.describe());
}

#[test]
fn permit_ua_calls_baresip_over_tls_with_sdes_both_ways() {
    if !have_baresip() {
        return;
    }
    let dir = workdir("ua-to-baresip");
    let proxy = Proxy::start_config(&dir, &[("alice", "apw"), ("bob", "bpw")], true, MD5);
    permit(&dir, &proxy, "tls", "bob", "bpw", "alice");
    let bob = Baresip::start(&dir, &proxy, "bob", "bpw", "tls");
    let rec = dir.join("alice-rec");
    let tone = dir.join("alice.wav");
    common::write_tone(&tone, 660.0, 3);
    let mut call = ua_command(&proxy, "tls", "alice", "apw");
    call.args(["call", "bob", "--duration", "3"])
        .args(["--record", rec.to_str().unwrap()])
        .args(["--play", tone.to_str().unwrap()]);
    let (code, lines, alice) = run_ua(&dir, "alice-call", call);
    assert_eq!(code, 0, "{}\n{}", alice.describe(), bob.describe());
    assert_sdes_audio(&lines, "alice");
    let hz = recorded_hz(&rec);
    assert!((400.0..480.0).contains(&hz), "alice heard {hz:.0} Hz");
    assert_baresip_sdes(&bob);
}
