//! `permit-ua` processes against the real `permit-proxy` binary over loopback:
//! registration with digest, the callee's list managed over SIP (PUBLISH with
//! ETags), a call with G.711 audio both ways (each side's recording holds the
//! other's tone), 403 for a caller not on the list (exit 10), 486 from the callee's
//! load answer at its call limit (exit 11), and the CLI's settings handling.
//!
//! Logs and recordings stay in `target/tmp/permit-ua/<test>/`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{DOMAIN, Proxy, Ua, rms, run_ua, signal, ua_command, wavs, workdir, write_tone};

const WAIT: Duration = Duration::from_secs(20);

/// `bob` adds `entry` to his list over SIP and checks it reads back.
fn permit_over_sip(dir: &Path, proxy: &Proxy, transport: &str, entry: &str) {
    let mut add = ua_command(proxy, transport, "bob", "bpw");
    add.args(["permit", "add", entry]);
    let (code, lines, ua) = run_ua(dir, "bob-permit-add", add);
    assert_eq!(code, 0, "permit add\n{}", ua.describe());
    let etag = lines[0]["etag"].as_str().expect("an etag").to_string();
    assert_eq!(etag.len(), 16);

    let mut list = ua_command(proxy, transport, "bob", "bpw");
    list.args(["permit", "list"]);
    let (code, lines, ua) = run_ua(dir, "bob-permit-list", list);
    assert_eq!(code, 0, "permit list\n{}", ua.describe());
    let entries: Vec<&str> = lines[0]["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert!(entries.contains(&entry), "{entries:?}");
    assert_eq!(lines[0]["etag"], etag.as_str());
}

fn start_answer(dir: &Path, proxy: &Proxy, transport: &str, extra: &[&str]) -> Ua {
    let mut cmd = ua_command(proxy, transport, "bob", "bpw");
    cmd.arg("answer").args(extra);
    let mut bob = Ua::spawn(dir, "bob-answer", cmd);
    let reg = bob.wait_event("registered", WAIT);
    assert_eq!(reg["aor"], format!("bob@{DOMAIN}"));
    bob
}

fn stop_answer(mut bob: Ua) {
    signal(bob.child.id(), "TERM");
    let code = bob.wait(Duration::from_secs(10));
    assert_eq!(code, 0, "answer after SIGTERM\n{}", bob.describe());
    bob.wait_event("unregistered", WAIT);
}

/// The one recording in `dir` holds a tone (RMS well above the μ-law noise floor)
/// of at least one second.
fn assert_tone_recorded(dir: &Path, who: &str) {
    let files = wavs(dir);
    assert_eq!(files.len(), 1, "{who}: recordings {files:?}");
    let (level, samples) = rms(&files[0]);
    assert!(samples >= 8000, "{who}: only {samples} samples recorded");
    assert!(
        level > 1000.0,
        "{who}: recording is silent (RMS {level:.0})"
    );
}

fn call_with_audio_both_ways(test: &str, transport: &str) {
    let dir = workdir(test);
    let proxy = Proxy::start_with(
        &dir,
        &[("alice", "apw"), ("bob", "bpw")],
        transport == "tls",
    );
    permit_over_sip(&dir, &proxy, transport, &format!("alice@{DOMAIN}"));
    write_tone(&dir.join("bob.wav"), 440.0, 3);
    write_tone(&dir.join("alice.wav"), 660.0, 3);
    let (bob_rec, alice_rec) = (dir.join("bob-rec"), dir.join("alice-rec"));

    let bob = start_answer(
        &dir,
        &proxy,
        transport,
        &[
            "--record",
            bob_rec.to_str().unwrap(),
            "--play",
            dir.join("bob.wav").to_str().unwrap(),
        ],
    );
    let mut call = ua_command(&proxy, transport, "alice", "apw");
    call.args(["call", "bob", "--duration", "2"])
        .args(["--play", dir.join("alice.wav").to_str().unwrap()])
        .args(["--record", alice_rec.to_str().unwrap()]);
    let (code, lines, alice) = run_ua(&dir, "alice-call", call);
    assert_eq!(code, 0, "call\n{}\n{}", alice.describe(), bob.describe());
    let events: Vec<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    assert_eq!(
        events,
        ["calling", "connected", "keys", "media", "ended"],
        "{lines:?}"
    );
    // Keys only on TLS (RFC 4568 §8.3); there the callee's key is the derivation of
    // the session secret the proxy gave both sides, and the caller checked it.
    let keys = &lines[2];
    if transport == "tls" {
        assert_eq!(keys["srtp"], "AES_CM_128_HMAC_SHA1_80", "{keys}");
        assert_eq!(keys["keys_from_secret"], true, "{keys}");
    } else {
        assert!(keys["srtp"].is_null(), "{keys}");
    }
    let media = &lines[3];
    assert_eq!(media["srtp"], transport == "tls", "{media}");
    assert!(media["packets_sent"].as_u64().unwrap() >= 50, "{media}");
    assert!(media["packets_received"].as_u64().unwrap() >= 50, "{media}");

    let mut bob = bob;
    bob.wait_event("ended", WAIT);
    let bob_media = bob.wait_event("media", WAIT);
    assert!(
        bob_media["packets_received"].as_u64().unwrap() >= 50,
        "{bob_media}"
    );
    stop_answer(bob);
    assert_tone_recorded(&bob_rec, "bob");
    assert_tone_recorded(&alice_rec, "alice");
}

#[test]
fn udp_register_permit_and_call_with_audio_both_ways() {
    call_with_audio_both_ways("udp-call", "udp");
}

#[test]
fn tcp_register_permit_and_call_with_audio_both_ways() {
    call_with_audio_both_ways("tcp-call", "tcp");
}

/// Over TLS the UAs have no listener: the proxy reaches each over its own connection.
#[test]
fn tls_register_permit_and_call_with_audio_both_ways() {
    call_with_audio_both_ways("tls-call", "tls");
}

#[test]
fn caller_not_on_the_list_gets_403_and_exit_10() {
    let dir = workdir("refused");
    let proxy = Proxy::start(&dir, &[("alice", "apw"), ("bob", "bpw"), ("carol", "cpw")]);
    permit_over_sip(&dir, &proxy, "udp", &format!("alice@{DOMAIN}"));
    let bob = start_answer(&dir, &proxy, "udp", &[]);
    let mut call = ua_command(&proxy, "udp", "carol", "cpw");
    call.args(["call", "bob"]);
    let (code, lines, carol) = run_ua(&dir, "carol-call", call);
    assert_eq!(code, 10, "{}", carol.describe());
    let last = lines.last().unwrap();
    assert_eq!(last["status"], 403);
    assert_eq!(
        last["message"],
        "you are not on bob's list, or bob does not exist (403)"
    );
    // The same words without --json.
    let mut plain = ua_command(&proxy, "udp", "carol", "cpw");
    plain.args(["call", "bob"]);
    let args: Vec<_> = plain
        .get_args()
        .filter(|a| *a != "--json")
        .map(ToOwned::to_owned)
        .collect();
    let mut plain = std::process::Command::new(common::ua_program());
    plain.args(args);
    let (code, _, carol) = run_ua(&dir, "carol-call-plain", plain);
    assert_eq!(code, 10);
    assert!(
        common::read_text(&carol.stdout)
            .contains("you are not on bob's list, or bob does not exist (403)"),
        "{}",
        carol.describe()
    );
    // Bob's UA never saw the refused call.
    assert!(bob.lines().iter().all(|l| l["event"] != "incoming"));
    stop_answer(bob);
}

#[test]
fn callee_at_max_calls_answers_the_load_query_busy_and_caller_exits_11() {
    let dir = workdir("busy");
    let proxy = Proxy::start(&dir, &[("alice", "apw"), ("bob", "bpw")]);
    permit_over_sip(&dir, &proxy, "udp", &format!("alice@{DOMAIN}"));
    let mut bob = start_answer(&dir, &proxy, "udp", &["--max-calls", "1"]);
    let mut first = ua_command(&proxy, "udp", "alice", "apw");
    first.args(["call", "bob", "--duration", "6"]);
    let mut first = Ua::spawn(&dir, "alice-first", first);
    first.wait_event("connected", WAIT);

    let mut second = ua_command(&proxy, "udp", "alice", "apw");
    second.args(["call", "bob"]);
    let (code, lines, ua) = run_ua(&dir, "alice-second", second);
    assert_eq!(code, 11, "{}", ua.describe());
    let last = lines.last().unwrap();
    assert_eq!(
        (last["status"].as_u64(), last["message"].as_str()),
        (Some(486), Some("bob is busy (486)"))
    );
    // The 486 came from bob's own answer to the proxy's load query.
    let busy = bob.wait_event("load-query", WAIT);
    let answers: Vec<u64> = bob
        .lines()
        .iter()
        .filter(|l| l["event"] == "load-query")
        .filter_map(|l| l["status"].as_u64())
        .collect();
    assert!(answers.contains(&486), "{busy} {answers:?}");

    assert_eq!(
        first.wait(Duration::from_secs(20)),
        0,
        "{}",
        first.describe()
    );
    stop_answer(bob);
}

#[test]
fn list_management_with_etags_and_a_stale_tag_refused() {
    let dir = workdir("etags");
    let proxy = Proxy::start(&dir, &[("bob", "bpw")]);
    let mut set = ua_command(&proxy, "udp", "bob", "bpw");
    set.args(["permit", "set", "alice@localhost", "*@partner.example"]);
    let (code, lines, ua) = run_ua(&dir, "set", set);
    assert_eq!(code, 0, "{}", ua.describe());
    let etag = lines[0]["etag"].as_str().unwrap().to_string();

    let mut remove = ua_command(&proxy, "udp", "bob", "bpw");
    remove.args(["permit", "remove", "alice@localhost", "--if-match", &etag]);
    let (code, lines, ua) = run_ua(&dir, "remove", remove);
    assert_eq!(code, 0, "{}", ua.describe());
    assert_ne!(
        lines[0]["etag"],
        etag.as_str(),
        "a fresh tag on every change"
    );

    // The first tag is stale now.
    let mut stale = ua_command(&proxy, "udp", "bob", "bpw");
    stale.args(["permit", "add", "carol@localhost", "--if-match", &etag]);
    let (code, lines, ua) = run_ua(&dir, "stale", stale);
    assert_eq!(code, 1, "{}", ua.describe());
    assert_eq!(lines[0]["status"], 412);

    let mut list = ua_command(&proxy, "udp", "bob", "bpw");
    list.args(["permit", "list"]);
    let (code, lines, _) = run_ua(&dir, "list", list);
    assert_eq!(code, 0);
    assert_eq!(
        lines[0]["entries"],
        serde_json::json!(["*@partner.example"])
    );

    let mut wrong = ua_command(&proxy, "udp", "bob", "guess");
    wrong.args(["permit", "list"]);
    let (code, _, ua) = run_ua(&dir, "wrong-password", wrong);
    assert_eq!(code, 10, "{}", ua.describe());
}

#[test]
fn settings_from_a_config_file_with_flags_over_it_and_usage_errors() {
    let dir = workdir("config");
    let proxy = Proxy::start(&dir, &[("bob", "bpw")]);
    let config = dir.join("ua.toml");
    std::fs::write(
        &config,
        format!(
            "proxy = \"{}\"\nuser = \"nobody\"\ndomain = \"{DOMAIN}\"\n",
            proxy.addr("udp")
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(common::ua_program());
    cmd.arg("--config")
        .arg(&config)
        .args(["--user", "bob", "--json", "permit", "list"])
        .env("PERMIT_UA_PASSWORD", "bpw");
    let (code, lines, ua) = run_ua(&dir, "from-config", cmd);
    assert_eq!(code, 0, "{}", ua.describe());
    assert_eq!(lines[0]["event"], "list");

    for (name, args) in [
        ("no-proxy", vec!["--user", "bob", "permit", "list"]),
        (
            "bad-proxy",
            vec![
                "--proxy",
                "sctp:127.0.0.1:5060",
                "--user",
                "bob",
                "permit",
                "list",
            ],
        ),
        (
            "bad-config",
            vec!["--config", "/nonexistent/ua.toml", "permit", "list"],
        ),
        (
            "bad-wav",
            vec![
                "--proxy",
                "udp:127.0.0.1:9",
                "--user",
                "b",
                "call",
                "x",
                "--play",
                "/nonexistent.wav",
            ],
        ),
    ] {
        let mut cmd = std::process::Command::new(common::ua_program());
        cmd.args(&args);
        let (code, _, ua) = run_ua(&dir, name, cmd);
        assert_eq!(code, 2, "{name}: {}", ua.describe());
    }
}
