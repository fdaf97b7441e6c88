//! End-to-end tests of the `permit-proxy` binary with a PBX as a trunk: the
//! PBX registers to the proxy like a phone (user `pbx`), phones at the
//! proxy call it, and it calls them (testbeds/asterisk/README.md).
//!
//! Two kinds of PBX:
//!
//! - `testbeds/asterisk/trunk_emulator.py`, PJSIP (pjsua2) behaving towards
//!   the proxy as Asterisk 22 with the testbed configuration does: the same
//!   REGISTER (Contact `<sip:600@…>;max-calls=N`, refreshed 10 s before it
//!   lapses), an OPTIONS qualify of the proxy every N seconds, 183 with SDP
//!   (early media) before the 200, DTMF as SIP INFO, a re-INVITE, a REFER;
//!   SDES-SRTP only. The phones are `testbeds/asterisk/phone.py`. These
//!   tests need `python3` with `pjsua2` (`pip install -r
//!   testbeds/pjsua/requirements.txt`); without it they print a note and
//!   pass, unless `CI` is set: then they fail.
//! - The real Asterisk with the testbed configuration (ports substituted):
//!   [`real_asterisk_trunk`] runs when `PERMIT_ASTERISK` names an
//!   `asterisk` binary or one is on `PATH`, and is skipped with a note
//!   otherwise, also under CI (Debian 12 has no Asterisk package).
//!
//! Each test starts its own proxy on free loopback ports with a fresh data
//! directory; every script has its own `--timeout` and is killed by PID if
//! it overstays. Logs (the proxy's, each script's output and its PJSIP log
//! with every SIP message, Asterisk's) stay in
//! `target/tmp/asterisk-e2e/<test>/`; a failure names them.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::proxy::{Bed, ProxyOptions};
use common::{DOMAIN, HOST, Transport, kill, read_text, tail, wait_until};

const TESTBED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testbeds/asterisk");

const PBX_PASSWORD: &str = "pbx-secret";

fn users() -> Vec<(&'static str, &'static str)> {
    vec![
        ("pbx", PBX_PASSWORD),
        ("alice", "alice-secret"),
        ("bob", "bob-secret"),
        ("carol", "carol-secret"),
    ]
}

fn password(user: &str) -> &'static str {
    users()
        .into_iter()
        .find(|(u, _)| *u == user)
        .map(|(_, p)| p)
        .expect("a test user")
}

fn pjsua_available() -> bool {
    common::pjsua2_available("Asterisk trunk (emulated)")
}

// ---------------------------------------------------------------- scripts

/// One run of `trunk_emulator.py` or `phone.py`; killed by its PID when
/// dropped.
struct Script {
    name: String,
    timeout: u64,
    child: Child,
    out: PathBuf,
    log: PathBuf,
    err: PathBuf,
    proxy_log: PathBuf,
}

/// How a run ended: its exit status, its result lines, its PJSIP log.
struct Outcome {
    name: String,
    status: ExitStatus,
    lines: Vec<String>,
    log: String,
    files: String,
}

impl Script {
    /// Starts `script` (a file of testbeds/asterisk) as `user` against
    /// the bed's proxy (UDP) with `args`; `timeout` is its `--timeout`.
    fn spawn(
        bed: &Bed,
        name: &str,
        script: &str,
        user: &str,
        timeout: u64,
        args: &[&str],
    ) -> Script {
        Script::spawn_at(
            &bed.dir,
            bed.proxy.port(Transport::Udp),
            &bed.proxy.log,
            name,
            script,
            user,
            timeout,
            args,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_at(
        dir: &Path,
        proxy_port: u16,
        proxy_log: &Path,
        name: &str,
        script: &str,
        user: &str,
        timeout: u64,
        args: &[&str],
    ) -> Script {
        let out = dir.join(format!("{name}.out"));
        let log = dir.join(format!("{name}.pjsip.log"));
        let err = dir.join(format!("{name}.err"));
        let child = Command::new("python3")
            .arg(Path::new(TESTBED).join(script))
            .args(["--proxy", &format!("{HOST}:{proxy_port}")])
            .args([
                "--domain",
                DOMAIN,
                "--user",
                user,
                "--password",
                password(user),
            ])
            .args(["--timeout", &timeout.to_string()])
            .arg("--log")
            .arg(&log)
            .args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap())
            .spawn()
            .expect("spawn python3");
        Script {
            name: name.to_string(),
            timeout,
            child,
            out,
            log,
            err,
            proxy_log: proxy_log.to_path_buf(),
        }
    }

    /// The result lines so far (PJSIP's start-up chatter left out).
    fn lines(&self) -> Vec<String> {
        result_lines(&read_text(&self.out))
    }

    fn has(&self, prefix: &str) -> bool {
        self.lines().iter().any(|l| l.starts_with(prefix))
    }

    /// Waits until a line starts with `prefix`; panics (with the logs) if
    /// the script ends or `limit` passes first.
    fn wait_line(&mut self, prefix: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.has(prefix) {
            let exited = self.child.try_wait().unwrap().is_some();
            assert!(
                !exited && Instant::now() < deadline,
                "{}: no line {prefix:?} {}\n{}",
                self.name,
                if exited {
                    "before it exited"
                } else {
                    "in time"
                },
                self.files()
            );
            sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the end (its own `--timeout` plus 10 s at most).
    fn finish(mut self) -> Outcome {
        let limit = Duration::from_secs(self.timeout + 10);
        let status = common::wait_bounded(&mut self.child, limit, &self.name);
        Outcome {
            name: self.name.clone(),
            status,
            lines: self.lines(),
            log: read_text(&self.log),
            files: self.files(),
        }
    }

    fn files(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}",
            tail(&self.out, 3000),
            tail(&self.err, 1500),
            tail(&self.log, 6000),
            tail(&self.proxy_log, 3000)
        )
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// Lines whose first word is all capitals: what the scripts print.
fn result_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| {
            l.split(' ').next().is_some_and(|w| {
                !w.is_empty() && w.chars().all(|c| c.is_ascii_uppercase() || c == '-')
            })
        })
        .map(str::to_string)
        .collect()
}

impl Outcome {
    fn count(&self, prefix: &str) -> usize {
        self.lines.iter().filter(|l| l.starts_with(prefix)).count()
    }

    fn has(&self, prefix: &str) -> bool {
        self.count(prefix) > 0
    }

    /// Asserts the line is there.
    fn expect(&self, prefix: &str) {
        assert!(
            self.has(prefix),
            "{}: no line {prefix:?}\n{}",
            self.name,
            self.files
        );
    }

    fn expect_ok(&self) {
        assert!(
            self.status.success() && self.has("DONE ok"),
            "{}: {}\n{}",
            self.name,
            self.status,
            self.files
        );
    }

    /// The packets received on the last audio stream (`RTP rx N tx M`).
    fn rtp_rx(&self) -> u64 {
        self.lines
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("RTP rx "))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// The SIP messages this party received, one string each (PJSIP logs
    /// them between `RX … :` and `--end msg--`).
    fn received(&self) -> Vec<String> {
        sip_messages(&self.log, "RX ")
    }

    /// The SIP messages this party sent.
    fn sent(&self) -> Vec<String> {
        sip_messages(&self.log, "TX ")
    }
}

/// The messages a PJSIP log records in the direction `dir` (`RX `/`TX `).
fn sip_messages(log: &str, dir: &str) -> Vec<String> {
    let mut messages = Vec::new();
    let mut current: Option<String> = None;
    for line in log.lines() {
        if let Some(msg) = current.as_mut() {
            if line.starts_with("--end msg--") {
                messages.push(current.take().unwrap());
            } else {
                msg.push_str(line);
                msg.push('\n');
            }
        } else if line.contains(dir)
            && (line.contains(" Request msg ") || line.contains(" Response msg "))
        {
            current = Some(String::new());
        }
    }
    messages
}

/// The first message of `messages` whose first line starts with `start`
/// (e.g. `SIP/2.0 183`, `INVITE `) and that carries `also`.
fn message(messages: &[String], start: &str, also: &str) -> Option<String> {
    messages
        .iter()
        .find(|m| m.trim_start().starts_with(start) && m.contains(also))
        .cloned()
}

/// The `a=crypto` lines of a message's SDP.
fn crypto_lines(msg: &str) -> Vec<&str> {
    msg.lines().filter(|l| l.starts_with("a=crypto:")).collect()
}

/// An SDP offer or answer with SDES only: `RTP/SAVP` and an `a=crypto` line.
fn assert_sdes(msg: &str, what: &str) {
    assert!(
        msg.contains("m=audio") && msg.contains("RTP/SAVP") && !crypto_lines(msg).is_empty(),
        "{what}: no SDES-SRTP (RTP/SAVP with a=crypto) in\n{msg}"
    );
}

// ---------------------------------------------------------------- the emulated trunk

/// The trunk registers as Asterisk does (401 answered, Contact
/// `<sip:600@…>;max-calls=2`), refreshes its registration 10 s before it
/// lapses (Expires 14 here: every 4 s) and qualifies the proxy with an
/// OPTIONS every second; every refresh and every qualify gets 200.
#[test]
fn trunk_registers_refreshes_and_qualifies() {
    if !pjsua_available() {
        return;
    }
    let bed = Bed::configured(
        "register_refresh_qualify",
        &ProxyOptions {
            users: users(),
            ..ProxyOptions::default()
        },
        Some("[registrar]\nmin_expires = 5\n"),
    );
    let trunk = Script::spawn(
        &bed,
        "pbx",
        "trunk_emulator.py",
        "pbx",
        40,
        &["--expires", "14", "--qualify", "1", "--run", "11"],
    )
    .finish();
    trunk.expect_ok();
    let registers = trunk.count("REGISTER ");
    assert!(
        trunk.count("REGISTER 200") == registers && registers >= 2,
        "the registration and at least one refresh, all 200: {:?}\n{}",
        trunk.lines,
        trunk.files
    );
    let qualifies = trunk.count("QUALIFY ");
    assert!(
        qualifies >= 3 && trunk.count("QUALIFY 200") == qualifies,
        "OPTIONS qualifies, each answered 200: {:?}",
        trunk.lines
    );
    // The REGISTERs carry the Contact as Asterisk writes it, and the
    // registrar's 200 lists it back with its expiry.
    let sent = trunk.sent();
    let register = message(&sent, "REGISTER sip:localhost", "Authorization:")
        .unwrap_or_else(|| panic!("no authenticated REGISTER\n{}", trunk.files));
    assert!(
        register.contains("Contact: <sip:600@127.0.0.1:") && register.contains(";max-calls=2"),
        "REGISTER Contact: {register}"
    );
    let ok = message(&trunk.received(), "SIP/2.0 200", "REGISTER")
        .unwrap_or_else(|| panic!("no 200 to REGISTER\n{}", trunk.files));
    assert!(
        ok.contains("<sip:600@127.0.0.1:"),
        "200 lists the binding: {ok}"
    );
    assert!(
        trunk.has("UNREGISTER 200"),
        "un-REGISTER at the end: {:?}",
        trunk.lines
    );
    bed.proxy.stop_gracefully("TERM");
}

/// A phone calls the trunk: 183 with SDP and early media, then 200; SDES
/// both ways, passed through untouched; audio comes back (the trunk echoes
/// it). In the dialog the trunk sends DTMF as two SIP INFO requests and a
/// re-INVITE: the phone receives them through the proxy and answers 200.
#[test]
fn phone_calls_trunk_with_early_media_info_and_reinvite() {
    if !pjsua_available() {
        return;
    }
    let bed = Bed::new(
        "phone_calls_trunk",
        &ProxyOptions {
            users: users(),
            permits: vec![("pbx", "alice")],
            ..ProxyOptions::default()
        },
    );
    let mut trunk = Script::spawn(
        &bed,
        "pbx",
        "trunk_emulator.py",
        "pbx",
        40,
        &[
            "--answer",
            "--early",
            "1",
            "--dtmf",
            "12",
            "--reinvite",
            "--talk",
            "2",
            "--run",
            "14",
        ],
    );
    trunk.wait_line("REGISTERED", Duration::from_secs(15));
    let alice = Script::spawn(
        &bed,
        "alice",
        "phone.py",
        "alice",
        30,
        &["--call", "pbx", "--keep"],
    )
    .finish();
    let trunk = trunk.finish();
    alice.expect_ok();
    trunk.expect_ok();

    alice.expect("CALL EARLY 183");
    alice.expect("MEDIA ACTIVE EARLY");
    alice.expect("CALL CONFIRMED 200");
    assert!(
        alice.rtp_rx() > 0,
        "alice received no RTP: {:?}",
        alice.lines
    );
    // After the answer the trunk sends alice's audio back (Echo()).
    alice.expect("AUDIO-IN");
    assert_eq!(
        alice
            .lines
            .iter()
            .filter(|l| l.starts_with("DTMF "))
            .cloned()
            .collect::<Vec<_>>(),
        ["DTMF 1 INFO", "DTMF 2 INFO"],
        "{}",
        alice.files
    );
    assert_eq!(trunk.count("TSX UAC INFO 200"), 2, "{}", trunk.files);
    // The re-INVITE: answered 200 by alice, through the proxy.
    assert!(
        trunk
            .lines
            .iter()
            .any(|l| l.starts_with("TSX UAC INVITE 200")),
        "re-INVITE answered: {:?}\n{}",
        trunk.lines,
        trunk.files
    );
    let received = alice.received();
    let reinvite = message(&received, "INVITE ", "CSeq:")
        .unwrap_or_else(|| panic!("alice got no re-INVITE\n{}", alice.files));
    assert!(
        reinvite.contains("Via: SIP/2.0/UDP 127.0.0.1:"),
        "{reinvite}"
    );

    // SDES: RTP/SAVP with a=crypto in the offer, the 183 and the 200; the
    // trunk's keys reach alice byte for byte.
    let sent = alice.sent();
    let invite =
        message(&sent, "INVITE sip:pbx@localhost", "Proxy-Authorization").expect("alice's INVITE");
    assert_sdes(&invite, "alice's INVITE");
    let early = message(&received, "SIP/2.0 183", "application/sdp")
        .unwrap_or_else(|| panic!("no 183 with SDP\n{}", alice.files));
    assert_sdes(&early, "183");
    let ok = message(&received, "SIP/2.0 200", "INVITE").expect("200 to the INVITE");
    assert_sdes(&ok, "200 to the INVITE");
    let trunk_sent = trunk.sent();
    let trunk_ok = message(&trunk_sent, "SIP/2.0 200", "m=audio").expect("the trunk's 200");
    for line in crypto_lines(&ok) {
        assert!(
            trunk_sent.iter().any(|m| m.contains(line)),
            "a=crypto changed on the way: {line}"
        );
    }
    assert!(!crypto_lines(&trunk_ok).is_empty());
    bed.proxy.stop_gracefully("TERM");
}

/// The trunk transfers the phone with a REFER in the dialog: the proxy
/// forwards it (202), the phone calls the target through the proxy (gated:
/// bob permits alice), and the NOTIFYs tell the trunk it worked (200).
/// A transfer to carol, who permits nobody, ends in 403 for the phone's
/// new call and a final NOTIFY with 403 to the trunk.
#[test]
fn trunk_transfers_phone_with_refer() {
    if !pjsua_available() {
        return;
    }
    let bed = Bed::new(
        "refer",
        &ProxyOptions {
            users: users(),
            permits: vec![("pbx", "alice"), ("bob", "alice")],
            ..ProxyOptions::default()
        },
    );
    let mut bob = Script::spawn(&bed, "bob", "phone.py", "bob", 40, &["--answer"]);
    bob.wait_line("REGISTERED", Duration::from_secs(15));
    let mut trunk = Script::spawn(
        &bed,
        "pbx",
        "trunk_emulator.py",
        "pbx",
        40,
        &[
            "--answer", "--early", "0.2", "--refer", "bob", "--talk", "1", "--run", "15",
        ],
    );
    trunk.wait_line("REGISTERED", Duration::from_secs(15));
    let alice = Script::spawn(
        &bed,
        "alice",
        "phone.py",
        "alice",
        35,
        &["--call", "pbx", "--keep", "--talk", "1"],
    )
    .finish();
    let trunk = trunk.finish();
    let bob = bob.finish();
    alice.expect_ok();
    trunk.expect_ok();
    bob.expect_ok();
    alice.expect("TRANSFER sip:bob@localhost");
    alice.expect("XCALL CONFIRMED 200");
    trunk.expect("TSX UAC REFER 202");
    trunk.expect("XFER 200");
    bob.expect("INCOMING");
    bob.expect("CALL CONFIRMED");
    // The REFER reached alice through the proxy, with its Refer-To.
    let refer = message(&alice.received(), "REFER ", "Refer-To:")
        .unwrap_or_else(|| panic!("no REFER\n{}", alice.files));
    assert!(refer.contains("sip:bob@localhost"), "{refer}");

    // A transfer target that does not permit alice.
    let mut trunk = Script::spawn(
        &bed,
        "pbx2",
        "trunk_emulator.py",
        "pbx",
        40,
        &[
            "--answer", "--early", "0.2", "--refer", "carol", "--talk", "1", "--run", "12",
        ],
    );
    trunk.wait_line("REGISTERED", Duration::from_secs(15));
    let alice = Script::spawn(
        &bed,
        "alice2",
        "phone.py",
        "alice",
        30,
        &["--call", "pbx", "--keep"],
    )
    .finish();
    let trunk = trunk.finish();
    alice.expect("TRANSFER sip:carol@localhost");
    alice.expect("XCALL DISCONNECTED 403");
    assert_eq!(alice.status.code(), Some(1), "{}", alice.files);
    trunk.expect("XFER 403");
    assert_eq!(
        trunk.status.code(),
        Some(1),
        "the trunk saw the transfer fail\n{}",
        trunk.files
    );
    bed.proxy.stop_gracefully("TERM");
}

/// The trunk calls phones through the proxy as Asterisk's
/// Dial(PJSIP/permit/sip:USER@localhost) does: alice permits the PBX (her
/// phone rings, answers; DTMF as INFO reaches her), carol does not: the
/// trunk gets 403 and no byte of anything it receives names carol's
/// address (her SIP port).
#[test]
fn trunk_calls_permitted_and_refused_phones() {
    if !pjsua_available() {
        return;
    }
    let bed = Bed::new(
        "trunk_calls",
        &ProxyOptions {
            users: users(),
            permits: vec![("alice", "pbx")],
            ..ProxyOptions::default()
        },
    );
    let mut alice = Script::spawn(&bed, "alice", "phone.py", "alice", 40, &["--answer"]);
    let mut carol = Script::spawn(&bed, "carol", "phone.py", "carol", 40, &["--answer"]);
    alice.wait_line("REGISTERED", Duration::from_secs(15));
    carol.wait_line("REGISTERED", Duration::from_secs(15));
    let trunk = Script::spawn(
        &bed,
        "pbx",
        "trunk_emulator.py",
        "pbx",
        30,
        &["--call", "alice", "--dtmf", "12"],
    )
    .finish();
    let alice = alice.finish();
    trunk.expect_ok();
    trunk.expect("CALL EARLY 180");
    trunk.expect("CALL CONFIRMED 200");
    alice.expect_ok();
    alice.expect("INCOMING");
    alice.expect("DTMF 1 INFO");
    alice.expect("DTMF 2 INFO");
    let invite = message(&alice.received(), "INVITE ", "From:").expect("alice's INVITE");
    assert_sdes(&invite, "the trunk's INVITE");

    let refused = Script::spawn(
        &bed,
        "pbx-carol",
        "trunk_emulator.py",
        "pbx",
        30,
        &["--call", "carol"],
    )
    .finish();
    assert_eq!(refused.status.code(), Some(1), "{}", refused.files);
    refused.expect("CALL DISCONNECTED 403");
    assert!(
        !carol.has("INCOMING"),
        "carol was reached: {:?}",
        carol.lines()
    );
    let carol_port = carol_sip_port(&read_text(&carol.log));
    let received = refused.received();
    let leaked: Vec<&String> = received
        .iter()
        .filter(|m| m.contains(&format!(":{carol_port}")) || m.contains("carol@127.0.0.1"))
        .collect();
    let forbidden = message(&received, "SIP/2.0 403", "INVITE").expect("the 403");
    assert!(!forbidden.contains("Contact:"), "{forbidden}");
    assert!(
        leaked.is_empty(),
        "carol's address reached the trunk: {leaked:?}"
    );
    drop(carol);
    bed.proxy.stop_gracefully("TERM");
}

/// carol's SIP port, from the Contact of her REGISTER.
fn carol_sip_port(log: &str) -> u16 {
    let at = log
        .find("Contact: <sip:carol@127.0.0.1:")
        .expect("carol's Contact in her log");
    log[at + "Contact: <sip:carol@127.0.0.1:".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("a port")
}

/// A PBX answers the load query 200 even when all its lines are busy; the
/// `max-calls` Contact parameter of its REGISTER covers that: with
/// `max-calls=1` and one call up, the next caller gets 486 Busy Here at
/// once and the trunk never sees that INVITE.
#[test]
fn busy_trunk_by_max_calls() {
    if !pjsua_available() {
        return;
    }
    let bed = Bed::new(
        "max_calls",
        &ProxyOptions {
            users: users(),
            permits: vec![("pbx", "alice"), ("pbx", "bob")],
            ..ProxyOptions::default()
        },
    );
    let mut trunk = Script::spawn(
        &bed,
        "pbx",
        "trunk_emulator.py",
        "pbx",
        40,
        &[
            "--answer",
            "--early",
            "0.2",
            "--keep",
            "--contact-params",
            "max-calls=1",
            "--run",
            "12",
        ],
    );
    trunk.wait_line("REGISTERED", Duration::from_secs(15));
    let mut alice = Script::spawn(
        &bed,
        "alice",
        "phone.py",
        "alice",
        30,
        &["--call", "pbx", "--talk", "6"],
    );
    alice.wait_line("CALL CONFIRMED", Duration::from_secs(15));
    let bob = Script::spawn(&bed, "bob", "phone.py", "bob", 20, &["--call", "pbx"]).finish();
    assert_eq!(bob.status.code(), Some(1), "{}", bob.files);
    bob.expect("CALL DISCONNECTED 486");
    alice.wait_line("DONE", Duration::from_secs(20));
    let alice = alice.finish();
    let trunk = trunk.finish();
    alice.expect_ok();
    trunk.expect_ok();
    assert_eq!(
        trunk.count("INCOMING"),
        1,
        "only alice's call reached the trunk: {:?}",
        trunk.lines
    );
    bed.proxy.stop_gracefully("TERM");
}

// ---------------------------------------------------------------- the real Asterisk

/// The `asterisk` binary: `PERMIT_ASTERISK`, else `asterisk` on `PATH`.
fn asterisk_program() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PERMIT_ASTERISK") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "PERMIT_ASTERISK={} is not a file",
            path.display()
        );
        return Some(path);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("asterisk"))
        .find(|p| p.is_file())
}

/// The installation's modules and data (XML documentation) directories,
/// found next to `sbin/asterisk` as testbeds/asterisk/run.sh does.
fn asterisk_dirs(program: &Path) -> (PathBuf, PathBuf) {
    let prefix = program
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("/usr"));
    let modules = [
        prefix.join("lib/asterisk/modules"),
        prefix.join("lib64/asterisk/modules"),
        "/usr/lib/asterisk/modules".into(),
    ]
    .into_iter()
    .find(|d| d.is_dir())
    .unwrap_or_else(|| panic!("no modules directory next to {}", program.display()));
    let data = [
        prefix.join("var/lib/asterisk"),
        "/var/lib/asterisk".into(),
        "/usr/share/asterisk".into(),
    ]
    .into_iter()
    .find(|d| d.join("documentation").is_dir())
    .unwrap_or_else(|| {
        panic!(
            "no data directory with documentation/ for {}",
            program.display()
        )
    });
    (modules, data)
}

/// A running Asterisk; killed by its PID when dropped.
struct Asterisk {
    program: PathBuf,
    conf: PathBuf,
    child: Child,
    full_log: PathBuf,
    console: PathBuf,
    run: PathBuf,
}

impl Asterisk {
    /// `asterisk -rx COMMAND` against this instance's control socket.
    fn cli(&self, command: &str) -> String {
        let out = Command::new(&self.program)
            .arg("-C")
            .arg(&self.conf)
            .args(["-rx", command])
            .stdin(Stdio::null())
            .output()
            .expect("run asterisk -rx");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log(&self) -> String {
        read_text(&self.full_log)
    }

    fn files(&self) -> String {
        format!(
            "{}\n{}",
            tail(&self.full_log, 8000),
            tail(&self.console, 2000)
        )
    }
}

impl Drop for Asterisk {
    fn drop(&mut self) {
        kill(&mut self.child);
        let _ = fs::remove_dir_all(&self.run);
    }
}

impl Asterisk {
    /// Writes the testbed configuration into a run-time directory (the
    /// proxy's port and a free one for Asterisk substituted, `debug=yes` for
    /// the PJSIP message log), starts `asterisk -C … -f` and waits until
    /// it has registered to the proxy.
    fn start(program: PathBuf, bed: &Bed) -> Asterisk {
        let proxy_port = bed.proxy.port(Transport::Udp);
        let asterisk_port = common::free_port();
        let (modules, data) = asterisk_dirs(&program);
        // Asterisk's control socket path must stay short (sun_path).
        let run = std::env::temp_dir().join(format!("permit-ast-{}", std::process::id()));
        let _ = fs::remove_dir_all(&run);
        let etc = run.join("etc");
        for sub in ["etc", "lib", "spool", "run", "log"] {
            fs::create_dir_all(run.join(sub)).unwrap();
        }
        for name in [
            "pjsip.conf",
            "extensions.conf",
            "modules.conf",
            "rtp.conf",
            "logger.conf",
        ] {
            let mut text = fs::read_to_string(Path::new(TESTBED).join(name)).unwrap();
            if name == "pjsip.conf" {
                for (from, to) in [
                    ("127.0.0.1:5060", format!("127.0.0.1:{proxy_port}")),
                    (
                        "bind=127.0.0.1:5080",
                        format!("bind=127.0.0.1:{asterisk_port}"),
                    ),
                    ("type=global\n", "type=global\ndebug=yes\n".to_string()),
                ] {
                    assert!(text.contains(from), "pjsip.conf has no {from:?}");
                    text = text.replace(from, &to);
                }
            }
            fs::write(etc.join(name), text).unwrap();
        }
        let conf = etc.join("asterisk.conf");
        let template = fs::read_to_string(Path::new(TESTBED).join("asterisk.conf.in")).unwrap();
        fs::write(
            &conf,
            template
                .replace("@RUN@", &run.display().to_string())
                .replace("@MODULES@", &modules.display().to_string())
                .replace("@DATA@", &data.display().to_string()),
        )
        .unwrap();
        let console = bed.dir.join("asterisk.console");
        let child = Command::new(&program)
            .arg("-C")
            .arg(&conf)
            .args(["-f", "-n", "-vvv"])
            .stdin(Stdio::null())
            .stdout(fs::File::create(&console).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn asterisk");
        let mut asterisk = Asterisk {
            program,
            conf,
            child,
            full_log: run.join("log/full"),
            console,
            run,
        };
        let registered = Instant::now() + Duration::from_secs(30);
        while !asterisk
            .cli("pjsip show registrations")
            .contains("Registered")
        {
            assert!(
                asterisk.child.try_wait().unwrap().is_none() && Instant::now() < registered,
                "Asterisk did not register to the proxy\n{}",
                asterisk.files()
            );
            sleep(Duration::from_millis(500));
        }
        asterisk
    }
}

/// alice calls sip:pbx@localhost, Asterisk's extension 600: 183 with SDP
/// and early media, then the 200 (SDES) and the echo (audio comes back).
fn phone_calls_echo(bed: &Bed) {
    let alice = Script::spawn(
        bed,
        "alice-calls",
        "phone.py",
        "alice",
        30,
        &["--call", "pbx", "--talk", "3"],
    )
    .finish();
    alice.expect_ok();
    alice.expect("CALL EARLY 183");
    alice.expect("MEDIA ACTIVE EARLY");
    alice.expect("CALL CONFIRMED 200");
    assert!(
        alice.rtp_rx() > 0,
        "no audio back from the echo: {:?}",
        alice.lines
    );
    // Echo() sends alice's audio back once Asterisk answered.
    alice.expect("AUDIO-IN");
    let received = alice.received();
    let ok = message(&received, "SIP/2.0 200", "INVITE").expect("200 to the INVITE");
    assert_sdes(&ok, "Asterisk's 200");
    assert!(
        ok.contains("Server: Asterisk PBX (permit testbed)")
            || ok.contains("User-Agent: Asterisk PBX"),
        "{ok}"
    );
}

/// The real Asterisk with testbeds/asterisk's configuration, only the
/// ports changed (the proxy's and Asterisk's, free ones) and the PJSIP
/// message log switched on (`debug=yes`): it registers to the proxy and
/// qualifies it (OPTIONS, answered 200; qualify_frequency=30, so the
/// second one comes 30 s after the first); a phone calls extension 600
/// (183 with early media, then the echo: audio comes back); Asterisk dials
/// alice (permitted: rings, connects, DTMF as INFO) and carol (not
/// permitted: the 403 reaches Asterisk, with no address of carol's).
#[test]
fn real_asterisk_trunk() {
    let Some(program) = asterisk_program() else {
        eprintln!(
            "note: no asterisk binary (set PERMIT_ASTERISK=/path/to/sbin/asterisk or put asterisk on PATH); \
             the real-Asterisk trunk test is skipped (Debian 12 has no Asterisk package; \
             the emulated-trunk tests of this file cover CI)"
        );
        return;
    };
    if !pjsua_available() {
        return;
    }
    let bed = Bed::new(
        "real_asterisk",
        &ProxyOptions {
            users: users(),
            permits: vec![("pbx", "alice"), ("alice", "pbx")],
            ..ProxyOptions::default()
        },
    );
    let proxy_port = bed.proxy.port(Transport::Udp);
    let mut asterisk = Asterisk::start(program, &bed);
    let qualify = format!("OPTIONS sip:127.0.0.1:{proxy_port} SIP/2.0");

    // A phone calls extension 600 through the proxy: early media, then the echo.
    phone_calls_echo(&bed);

    // Asterisk dials alice (permitted).
    let mut alice = Script::spawn(
        &bed,
        "alice-answers",
        "phone.py",
        "alice",
        30,
        &["--answer"],
    );
    alice.wait_line("REGISTERED", Duration::from_secs(15));
    asterisk.cli("channel originate Local/alice@permit-out application Wait 2");
    let alice = alice.finish();
    alice.expect_ok();
    alice.expect("INCOMING");
    alice.expect("CALL CONFIRMED");
    alice.expect("DTMF 1 INFO");
    alice.expect("DTMF 2 INFO");

    // Asterisk dials carol (not permitted): 403, nothing of carol's.
    let mut carol = Script::spawn(&bed, "carol", "phone.py", "carol", 30, &["--answer"]);
    carol.wait_line("REGISTERED", Duration::from_secs(15));
    asterisk.cli("channel originate Local/carol@permit-out application Wait 2");
    wait_until(
        Duration::from_secs(15),
        "the 403 for carol reaches Asterisk",
        || asterisk.log().contains("SIP/2.0 403 Forbidden"),
    );
    assert!(
        !carol.has("INCOMING"),
        "carol was reached: {:?}",
        carol.lines()
    );
    let carol_port = carol_sip_port(&read_text(&carol.log));
    let log = asterisk.log();
    assert!(
        !log.contains(&format!("127.0.0.1:{carol_port}")),
        "carol's address reached Asterisk"
    );
    drop(carol);

    // The qualify: 200 to each OPTIONS, a second one 30 s after the first.
    wait_until(
        Duration::from_secs(45),
        "two qualify OPTIONS from Asterisk",
        || asterisk.log().matches(&qualify).count() >= 2,
    );
    let contacts = asterisk.cli("pjsip show contacts");
    assert!(
        contacts.contains("Avail"),
        "the proxy is not reachable for Asterisk:\n{contacts}"
    );
    asterisk.cli("core stop now");
    let _ = common::wait_bounded(
        &mut asterisk.child,
        Duration::from_secs(10),
        "asterisk after core stop now",
    );
    bed.proxy.stop_gracefully("TERM");
}
