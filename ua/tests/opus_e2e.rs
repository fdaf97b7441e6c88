//! Opus between two `permit-ua` processes through the real `permit-proxy` over TLS
//! (docs/profile.md "The UA in permit mode"): alice's offer lists Opus then PCMU, bob
//! answers Opus (the offer's first codec), SRTP both ways keyed from the proxy's
//! session secret, and each recording holds the other side's tone. The two files
//! are at different rates (alice 16 kHz, bob 48 kHz), so both go through the
//! resampler before the encoder. A second call with `call --codec pcmu` falls back to
//! PCMU, so the codec reported is the one negotiated, not a constant.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::{DOMAIN, Proxy, Ua, run_ua, signal, ua_command, wait_until, workdir};
use permit_ua::media::wav;

const WAIT: Duration = Duration::from_secs(20);

/// The frequency of the loud part of the 8 kHz recording `path`, from zero
/// crossings.
fn recorded_hz(path: &Path) -> f64 {
    let samples = wav::read(&fs::read(path).unwrap()).expect("an 8 kHz WAV we wrote");
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

fn within_5_percent(hz: f64, want: f64) -> bool {
    (hz - want).abs() <= want * 0.05
}

/// One call from alice to bob; returns alice's JSON lines, bob's media line and the
/// two recordings.
fn call(
    dir: &Path,
    proxy: &Proxy,
    bob: &mut Ua,
    name: &str,
    extra: &[&str],
) -> (Vec<serde_json::Value>, serde_json::Value, String, String) {
    let alice_rec = dir.join(format!("alice-rec-{name}"));
    let mut cmd = ua_command(proxy, "tls", "alice", "apw");
    cmd.args(["call", "bob", "--duration", "3"])
        .args(["--play", dir.join("alice.wav").to_str().unwrap()])
        .args(["--record", alice_rec.to_str().unwrap()])
        .args(extra);
    let before = bob.lines().len();
    let (code, lines, alice) = run_ua(dir, &format!("alice-{name}"), cmd);
    assert_eq!(code, 0, "{name}\n{}\n{}", alice.describe(), bob.describe());
    wait_until(WAIT, "bob's media report", || {
        bob.lines()[before..].iter().any(|l| l["event"] == "media")
    });
    let bob_media = bob.lines()[before..]
        .iter()
        .find(|l| l["event"] == "media")
        .cloned()
        .unwrap();
    let alice_media = lines
        .iter()
        .find(|l| l["event"] == "media")
        .cloned()
        .unwrap_or_else(|| panic!("{name}: no media line: {lines:?}"));
    let alice_wav = alice_media["recording"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let bob_wav = bob_media["recording"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (lines, bob_media, alice_wav, bob_wav)
}

#[test]
fn two_permit_uas_negotiate_opus_with_srtp_both_ways() {
    let dir = workdir("opus-tls");
    let proxy = Proxy::start_with(&dir, &[("alice", "apw"), ("bob", "bpw")], true);
    let mut add = ua_command(&proxy, "tls", "bob", "bpw");
    add.args(["permit", "add", &format!("alice@{DOMAIN}")]);
    let (code, _, ua) = run_ua(&dir, "bob-permit", add);
    assert_eq!(code, 0, "{}", ua.describe());
    // Alice: 660 Hz at 16 kHz; bob: 440 Hz at 48 kHz.
    fs::write(
        dir.join("alice.wav"),
        wav::write_at(16_000, &wav::tone_at(660.0, 3, 8000.0, 16_000)),
    )
    .unwrap();
    fs::write(
        dir.join("bob.wav"),
        wav::write_at(48_000, &wav::tone_at(440.0, 3, 8000.0, 48_000)),
    )
    .unwrap();

    let mut cmd = ua_command(&proxy, "tls", "bob", "bpw");
    cmd.args(["answer", "--max-calls", "1"])
        .args(["--record", dir.join("bob-rec").to_str().unwrap()])
        .args(["--play", dir.join("bob.wav").to_str().unwrap()]);
    let mut bob = Ua::spawn(&dir, "bob-answer", cmd);
    bob.wait_event("registered", WAIT);

    for (name, extra, codec) in [
        ("opus", &[][..], "opus"),
        ("pcmu", &["--codec", "pcmu"][..], "pcmu"),
    ] {
        let (alice, bob_media, alice_wav, bob_wav) = call(&dir, &proxy, &mut bob, name, extra);
        let keys = alice.iter().find(|l| l["event"] == "keys").unwrap();
        assert_eq!(keys["srtp"], "AES_CM_128_HMAC_SHA1_80", "{name}: {keys}");
        let alice_media = alice.iter().find(|l| l["event"] == "media").unwrap();
        for (who, m) in [("alice", alice_media), ("bob", &bob_media)] {
            assert_eq!(m["codec"], codec, "{name}: {who}: {m}");
            assert_eq!(m["srtp"], true, "{name}: {who}: {m}");
            assert_eq!(m["srtp_rejected"], 0, "{name}: {who}: {m}");
            assert!(
                m["packets_sent"].as_u64().unwrap() >= 100
                    && m["packets_received"].as_u64().unwrap() >= 100,
                "{name}: {who}: {m}"
            );
            assert_eq!(m["dropped"], 0, "{name}: {who}: {m}");
        }
        // Each recording holds the other side's tone (zero crossings, ±5 %).
        let hz = recorded_hz(Path::new(&bob_wav));
        assert!(within_5_percent(hz, 660.0), "{name}: bob heard {hz:.1} Hz");
        let hz = recorded_hz(Path::new(&alice_wav));
        assert!(
            within_5_percent(hz, 440.0),
            "{name}: alice heard {hz:.1} Hz"
        );
    }

    signal(bob.child.id(), "TERM");
    assert_eq!(bob.wait(Duration::from_secs(10)), 0, "{}", bob.describe());
}
