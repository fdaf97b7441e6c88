//! A real softphone stack against `permit-ua`: PJSIP (pjsua2, driven by
//! `testbeds/pjsua/pjsua_ua.py`) calls a `permit-ua answer` through the real
//! `permit-proxy`, and `permit-ua call` calls a PJSIP phone the same way. The caller
//! is on the callee's list; the proxy's load query reaches the callee first.
//!
//! pjsua2 must be importable by `python3` (`pip install -r
//! testbeds/pjsua/requirements.txt`). Without it a test prints a note and passes,
//! unless `CI` is set: then it fails. Logs stay in `target/tmp/permit-ua/<test>/`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{DOMAIN, HOST, Proxy, Ua, read_text, run_ua, signal, ua_command, workdir};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testbeds/pjsua/pjsua_ua.py");
const WAIT: Duration = Duration::from_secs(20);

fn pjsua_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import pjsua2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok || common::peer_missing("pjsua2 (python3 -c 'import pjsua2')")
}

/// `pjsua_ua.py` as `user` with `args`; stdout and PJSIP's log in `dir`.
fn pjsua(dir: &Path, proxy: &Proxy, name: &str, user: &str, args: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg(SCRIPT)
        .args(["--proxy", &format!("{HOST}:{}", proxy.port)])
        .args(["--domain", DOMAIN, "--user", user, "--password", "apw"])
        .args(["--timeout", "30", "--log"])
        .arg(dir.join(format!("{name}.pjsip.log")))
        .args(args)
        .stdin(Stdio::null());
    c
}

fn pjsua_lines(ua: &Ua) -> String {
    read_text(&ua.stdout)
}

#[test]
fn pjsua_calls_permit_ua_answer_through_the_proxy() {
    if !pjsua_available() {
        return;
    }
    let dir = workdir("pjsua-calls-ua");
    let proxy = Proxy::start(&dir, &[("alice", "apw"), ("bob", "bpw")]);
    let mut add = ua_command(&proxy, "udp", "bob", "bpw");
    add.args(["permit", "add", &format!("alice@{DOMAIN}")]);
    let (code, _, ua) = run_ua(&dir, "bob-permit-add", add);
    assert_eq!(code, 0, "{}", ua.describe());

    let rec = dir.join("bob-rec");
    let mut bob = ua_command(&proxy, "udp", "bob", "bpw");
    bob.args(["answer", "--record", rec.to_str().unwrap()]);
    let mut bob = Ua::spawn(&dir, "bob-answer", bob);
    bob.wait_event("registered", WAIT);

    let cmd = pjsua(
        &dir,
        &proxy,
        "alice",
        "alice",
        &["--call", "bob", "--talk", "2"],
    );
    let mut alice = Ua::spawn(&dir, "alice-pjsua", cmd);
    let code = alice.wait(Duration::from_secs(40));
    let out = pjsua_lines(&alice);
    assert_eq!(
        code,
        0,
        "pjsua\n{out}\n{}\n{}",
        alice.describe(),
        bob.describe()
    );
    assert!(out.contains("CALL CONFIRMED"), "{out}");

    let incoming = bob.wait_event("incoming", WAIT);
    assert_eq!(incoming["from"], format!("sip:alice@{DOMAIN}"));
    bob.wait_event("connected", WAIT);
    let ended = bob.wait_event("ended", WAIT);
    assert_eq!(ended["by_peer"], true, "PJSIP hung up: {ended}");
    let media = bob.wait_event("media", WAIT);
    assert!(media["packets_sent"].as_u64().unwrap() >= 50, "{media}");
    // The proxy asked bob's UA before routing the INVITE.
    assert!(
        bob.lines()
            .iter()
            .any(|l| l["event"] == "load-query" && l["status"] == 200)
    );

    signal(bob.child.id(), "TERM");
    assert_eq!(bob.wait(Duration::from_secs(10)), 0, "{}", bob.describe());
}

#[test]
fn permit_ua_calls_a_pjsua_phone_through_the_proxy() {
    if !pjsua_available() {
        return;
    }
    let dir = workdir("ua-calls-pjsua");
    let proxy = Proxy::start(&dir, &[("alice", "apw"), ("bob", "bpw")]);
    // alice (PJSIP) lets bob call her; she manages her list with permit-ua.
    let mut add = ua_command(&proxy, "udp", "alice", "apw");
    add.args(["permit", "add", &format!("bob@{DOMAIN}")]);
    let (code, _, ua) = run_ua(&dir, "alice-permit-add", add);
    assert_eq!(code, 0, "{}", ua.describe());

    let cmd = pjsua(&dir, &proxy, "alice", "alice", &["--answer"]);
    let mut alice = Ua::spawn(&dir, "alice-pjsua", cmd);
    common::wait_until(WAIT, "PJSIP registered", || {
        pjsua_lines(&alice).contains("REGISTERED")
    });

    let mut call = ua_command(&proxy, "udp", "bob", "bpw");
    call.args(["call", "alice", "--duration", "2"]);
    let (code, lines, bob) = run_ua(&dir, "bob-call", call);
    assert_eq!(code, 0, "{}\n{}", bob.describe(), pjsua_lines(&alice));
    let events: Vec<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    assert!(events.contains(&"connected"), "{lines:?}");
    let media = lines
        .iter()
        .find(|l| l["event"] == "media")
        .expect("media report");
    assert!(
        media["packets_received"].as_u64().unwrap() >= 10,
        "PJSIP's RTP: {media}"
    );

    let code = alice.wait(Duration::from_secs(30));
    let out = pjsua_lines(&alice);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("CALL CONFIRMED"), "{out}");
}

/// PJSIP's log shows SDES-SRTP in use and no packet of ours refused.
fn assert_pjsip_srtp(log: &Path) {
    let text = read_text(log);
    assert!(
        text.matches("a=crypto:").count() >= 2,
        "no a=crypto in PJSIP's SDP: {}",
        common::tail(log, 4000)
    );
    assert!(
        !text.contains("Failed to unprotect SRTP"),
        "PJSIP refused our SRTP: {}",
        common::tail(log, 4000)
    );
}

/// The permit-ua side of a PJSIP call with SDES: SRTP both ways, all packets good.
fn assert_sdes_media(lines: &[serde_json::Value]) {
    let keys = lines.iter().find(|l| l["event"] == "keys").expect("keys");
    assert!(keys["srtp"].is_string(), "{keys}");
    assert_eq!(keys["keys_from_secret"], false, "PJSIP's own key: {keys}");
    let media = lines.iter().find(|l| l["event"] == "media").expect("media");
    assert_eq!(media["srtp"], true, "{media}");
    assert_eq!(media["srtp_rejected"], 0, "{media}");
    assert!(media["packets_sent"].as_u64().unwrap() >= 50, "{media}");
    assert!(
        media["packets_received"].as_u64().unwrap() >= 10,
        "PJSIP's SRTP: {media}"
    );
}

/// PJSIP with optional SDES-SRTP calls a permit-mode `permit-ua answer` over UDP: it
/// offers `a=crypto` under RTP/AVP, the UA answers in kind with its own key.
#[test]
fn pjsua_with_sdes_calls_permit_ua_answer() {
    if !pjsua_available() {
        return;
    }
    let dir = workdir("pjsua-sdes-calls-ua");
    let proxy = Proxy::start(&dir, &[("alice", "apw"), ("bob", "bpw")]);
    let mut add = ua_command(&proxy, "udp", "bob", "bpw");
    add.args(["permit", "add", &format!("alice@{DOMAIN}")]);
    let (code, _, ua) = run_ua(&dir, "bob-permit-add", add);
    assert_eq!(code, 0, "{}", ua.describe());
    let mut bob = ua_command(&proxy, "udp", "bob", "bpw");
    bob.arg("answer");
    let mut bob = Ua::spawn(&dir, "bob-answer", bob);
    bob.wait_event("registered", WAIT);
    let cmd = pjsua(
        &dir,
        &proxy,
        "alice",
        "alice",
        &["--srtp", "--call", "bob", "--talk", "3"],
    );
    let mut alice = Ua::spawn(&dir, "alice-pjsua", cmd);
    let code = alice.wait(Duration::from_secs(40));
    let out = pjsua_lines(&alice);
    assert_eq!(code, 0, "pjsua\n{out}\n{}", bob.describe());
    bob.wait_event("media", WAIT);
    assert_sdes_media(&bob.lines());
    assert_pjsip_srtp(&dir.join("alice.pjsip.log"));
    signal(bob.child.id(), "TERM");
    assert_eq!(bob.wait(Duration::from_secs(10)), 0, "{}", bob.describe());
}

/// `permit-ua call` over TLS offers SDES; PJSIP (optional SRTP, registered over TLS)
/// answers with its own key.
#[test]
fn permit_ua_calls_pjsua_with_sdes_over_tls() {
    if !pjsua_available() {
        return;
    }
    let dir = workdir("ua-calls-pjsua-sdes-tls");
    let proxy = Proxy::start_with(&dir, &[("alice", "apw"), ("bob", "bpw")], true);
    let mut add = ua_command(&proxy, "tls", "alice", "apw");
    add.args(["permit", "add", &format!("bob@{DOMAIN}")]);
    let (code, _, ua) = run_ua(&dir, "alice-permit-add", add);
    assert_eq!(code, 0, "{}", ua.describe());
    let mut cmd = pjsua(&dir, &proxy, "alice", "alice", &["--srtp", "--answer"]);
    // Over TLS: the proxy's TLS port.
    let args: Vec<_> = cmd.get_args().map(ToOwned::to_owned).collect();
    let mut tls = Command::new("python3");
    for a in args {
        if a == format!("{HOST}:{}", proxy.port).as_str() {
            tls.arg(format!("{HOST}:{}", proxy.tls_port.unwrap()));
        } else {
            tls.arg(a);
        }
    }
    tls.args(["--transport", "tls"]).stdin(Stdio::null());
    cmd = tls;
    let mut alice = Ua::spawn(&dir, "alice-pjsua", cmd);
    common::wait_until(WAIT, "PJSIP registered", || {
        pjsua_lines(&alice).contains("REGISTERED")
    });
    let mut call = ua_command(&proxy, "tls", "bob", "bpw");
    call.args(["call", "alice", "--duration", "3"]);
    let (code, lines, bob) = run_ua(&dir, "bob-call", call);
    assert_eq!(code, 0, "{}\n{}", bob.describe(), pjsua_lines(&alice));
    assert_sdes_media(&lines);
    let code = alice.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{}", pjsua_lines(&alice));
    assert_pjsip_srtp(&dir.join("alice.pjsip.log"));
}
