//! End-to-end tests of the `permit-proxy` binary with PJSIP as the real
//! peer: `testbeds/pjsua/pjsua_ua.py` (pjsua2 from PyPI, see the README
//! there) registers an account through the proxy (RFC 3261 section 10) and
//! places or answers a call (section 16), printing one line per outcome
//! (`REGISTER 200 OK`, `CALL CONFIRMED 200 OK`, `DONE ok`).
//!
//! PJSIP is the peer that proves SHA-256 digest (RFC 7616, RFC 8760) as a
//! client: PJSIP 2.15 computes SHA-256 responses from a plain password.
//!
//! Each test starts its own proxy on free loopback ports with a fresh data
//! directory. Every script run has its own `--timeout` and is killed by PID
//! if it overstays; processes are killed when a test ends, also by a panic.
//!
//! `python3` with the `pjsua2` module must be there
//! (`pip install -r testbeds/pjsua/requirements.txt`). Without it a test
//! prints a note and passes, unless the environment variable `CI` is set:
//! then it fails.
//!
//! The proxy log, each script's output and its PJSIP log with every SIP
//! message stay in `target/tmp/pjsua-e2e/<test>/`; a failure names them.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::proxy::{Bed, Proxy, ProxyOptions};
use common::{DOMAIN, HOST, Transport, kill, read_text, tail};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testbeds/pjsua/pjsua_ua.py");

// ---------------------------------------------------------------- environment

fn pjsua_available() -> bool {
    common::pjsua2_available("PJSIP")
}

// ---------------------------------------------------------------- pjsua_ua.py

/// What one `pjsua_ua.py` run is asked to do.
struct Agent {
    user: &'static str,
    transport: Transport,
    password: Option<&'static str>,
    role: Role,
    /// The script's `--timeout` in seconds.
    timeout: u64,
    /// More command-line flags (`--hold`, `--update`).
    flags: Vec<&'static str>,
}

enum Role {
    /// Register, then exit.
    Register,
    /// Register, answer one call, exit when it ended.
    Answer,
    /// Register (unless `register` is false), call `user`, hang up.
    Call { user: &'static str, register: bool },
}

/// Seconds a script may run by default (its `--timeout`); the harness
/// kills it 10 s later if it is still there.
const AGENT_TIMEOUT: u64 = 30;

impl Agent {
    fn new(user: &'static str, transport: Transport) -> Agent {
        Agent {
            user,
            transport,
            password: None,
            role: Role::Register,
            timeout: AGENT_TIMEOUT,
            flags: Vec::new(),
        }
    }

    fn flags(mut self, flags: &[&'static str]) -> Agent {
        self.flags.extend_from_slice(flags);
        self
    }

    fn timeout(mut self, secs: u64) -> Agent {
        self.timeout = secs;
        self
    }

    fn password(mut self, password: &'static str) -> Agent {
        self.password = Some(password);
        self
    }

    fn role(mut self, role: Role) -> Agent {
        self.role = role;
        self
    }

    fn spawn(&self, dir: &Path, name: &str, proxy: &Proxy) -> Running {
        let out = dir.join(format!("{name}.out"));
        let log = dir.join(format!("{name}.pjsip.log"));
        let mut command = Command::new("python3");
        command
            .arg(SCRIPT)
            .args(["--proxy", &format!("{HOST}:{}", proxy.port(self.transport))])
            .args(["--transport", self.transport.uri_param()])
            .args(["--domain", DOMAIN, "--user", self.user])
            .args(["--timeout", &self.timeout.to_string()])
            .arg("--log")
            .arg(&log);
        if let Some(password) = self.password {
            command.args(["--password", password]);
        }
        match self.role {
            Role::Register => {}
            Role::Answer => {
                command.arg("--answer");
            }
            Role::Call { user, register } => {
                command.args(["--call", user, "--talk", "0.5"]);
                if !register {
                    command.arg("--no-register");
                }
            }
        }
        command.args(&self.flags);
        let child = command
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(dir.join(format!("{name}.err"))).unwrap())
            .spawn()
            .expect("spawn python3 pjsua_ua.py");
        Running {
            name: name.to_string(),
            timeout: self.timeout,
            child,
            out,
            log,
            err: dir.join(format!("{name}.err")),
            proxy_log: proxy.log.clone(),
        }
    }
}

/// One `pjsua_ua.py` process; killed by its PID when dropped.
struct Running {
    name: String,
    timeout: u64,
    child: Child,
    out: PathBuf,
    log: PathBuf,
    err: PathBuf,
    proxy_log: PathBuf,
}

/// How a run ended: its exit status and its result lines.
struct Outcome {
    status: ExitStatus,
    lines: Vec<String>,
    /// The PJSIP log with the SIP messages.
    log: String,
}

impl Outcome {
    fn has(&self, prefix: &str) -> bool {
        self.lines.iter().any(|l| l.starts_with(prefix))
    }

    /// The final answers to REGISTER, e.g. `["401 Unauthorized", "200 OK"]`.
    fn register_answers(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix("REGISTER "))
            .collect()
    }
}

impl Running {
    /// The script's result lines so far (PJSIP's start-up chatter before
    /// its log is redirected is left out).
    fn lines(&self) -> Vec<String> {
        read_text(&self.out)
            .lines()
            .filter(|l| {
                l.split(' ')
                    .next()
                    .is_some_and(|w| w.chars().all(|c| c.is_ascii_uppercase()))
            })
            .map(str::to_string)
            .collect()
    }

    /// Waits until a result line starts with `prefix`.
    fn wait_line(&mut self, prefix: &str) {
        let deadline = Instant::now() + Duration::from_secs(self.timeout);
        while !self.lines().iter().any(|l| l.starts_with(prefix)) {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.fail(&format!("exited ({status}) before printing {prefix:?}"));
            }
            if Instant::now() > deadline {
                self.fail(&format!("no {prefix:?} line"));
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the exit (killing the script if it overstays).
    fn finish(mut self) -> Outcome {
        self.wait_exit()
    }

    /// Waits for the exit and asserts `DONE ok` with status 0.
    fn finish_ok(mut self) -> Outcome {
        let outcome = self.wait_exit();
        if !(outcome.status.success() && outcome.has("DONE ok")) {
            self.fail(&format!("{}: {:?}", outcome.status, outcome.lines));
        }
        outcome
    }

    fn wait_exit(&mut self) -> Outcome {
        let deadline = Instant::now() + Duration::from_secs(self.timeout + 10);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                kill(&mut self.child);
                self.fail("did not exit in time; killed");
            }
            sleep(Duration::from_millis(50));
        };
        Outcome {
            status,
            lines: self.lines(),
            log: read_text(&self.log),
        }
    }

    fn report(&self) -> String {
        format!(
            "pjsua {}:\n{}\n{}\n{}\n{}",
            self.name,
            tail(&self.out, 2000),
            tail(&self.err, 2000),
            tail(&self.log, 5000),
            tail(&self.proxy_log, 3000)
        )
    }

    fn fail(&self, what: &str) -> ! {
        panic!("pjsua {}: {what}\n{}", self.name, self.report());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

impl Bed {
    fn run(&self, name: &str, agent: &Agent) -> Running {
        agent.spawn(&self.dir, name, &self.proxy)
    }

    /// `answerer` registers and answers, `dialer` calls it; both must report
    /// the call confirmed and ended.
    fn call(&self, answerer: &Agent, dialer: &Agent) -> (Outcome, Outcome) {
        let mut answering = self.run(answerer.user, answerer);
        answering.wait_line("REGISTERED");
        let calling = self.run(dialer.user, dialer).finish_ok();
        let received = answering.finish_ok();
        for (name, outcome) in [("caller", &calling), ("callee", &received)] {
            assert!(
                outcome.has("CALL CONFIRMED") && outcome.has("CALL DISCONNECTED"),
                "{name}: {:?}",
                outcome.lines
            );
        }
        (calling, received)
    }
}

// ---------------------------------------------------------------- tests

/// PJSIP registers over UDP with an open proxy: the first answer is 200.
#[test]
fn udp_registration_without_auth() {
    if !pjsua_available() {
        return;
    }
    let bed = Bed::new("udp_register", &ProxyOptions::default());
    let outcome = bed
        .run("alice", &Agent::new("alice", Transport::Udp))
        .finish_ok();
    assert_eq!(
        outcome.register_answers(),
        ["200 OK"],
        "{:?}",
        outcome.lines
    );
}

/// Two PJSIP UAs register over `transport`, one calls the other: INVITE,
/// 180, 200, ACK and BYE through the proxy; both unregister at the end.
fn call_between_pjsua(test: &str, transport: Transport) {
    let bed = Bed::new(test, &ProxyOptions::default());
    let answerer = Agent::new("alice", transport).role(Role::Answer);
    let dialer = Agent::new("bob", transport).role(Role::Call {
        user: "alice",
        register: true,
    });
    let (calling, received) = bed.call(&answerer, &dialer);
    for outcome in [calling, received] {
        assert!(outcome.has("UNREGISTER 200"), "{:?}", outcome.lines);
    }
}

#[test]
fn udp_call_between_pjsua() {
    if pjsua_available() {
        call_between_pjsua("udp_call", Transport::Udp);
    }
}

#[test]
fn tcp_call_between_pjsua() {
    if pjsua_available() {
        call_between_pjsua("tcp_call", Transport::Tcp);
    }
}

/// A call to a user the proxy does not know ends in 404 (RFC 3261 21.4.5).
#[test]
fn call_to_unknown_user_gets_404() {
    if !pjsua_available() {
        return;
    }
    let bed = Bed::new("unknown_user", &ProxyOptions::default());
    let caller = Agent::new("bob", Transport::Udp).role(Role::Call {
        user: "nobody",
        register: false,
    });
    let outcome = bed.run("bob", &caller).finish();
    assert!(
        !outcome.status.success() && outcome.has("CALL DISCONNECTED 404"),
        "{:?}",
        outcome.lines
    );
}

/// A phone that vanished without unregistering (its binding stays until it
/// expires) and came back from another address must still be reached at
/// once: the live binding may not wait until the dead one's INVITE client
/// transaction times out (Timer B, 32 s; RFC 3261 16.6 leaves the forking
/// order to the proxy, 16.7 lets it cancel or skip a branch).
#[test]
fn stale_binding_does_not_delay_the_live_one() {
    if !pjsua_available() {
        return;
    }
    let bed = Bed::new("stale_binding", &ProxyOptions::default());
    {
        // Registers, then is killed (drop): no REGISTER with Expires: 0.
        let mut vanished = bed.run(
            "alice-vanished",
            &Agent::new("alice", Transport::Udp).role(Role::Answer),
        );
        vanished.wait_line("REGISTERED");
    }
    let answerer = Agent::new("alice", Transport::Tcp)
        .role(Role::Answer)
        .timeout(20);
    let dialer = Agent::new("bob", Transport::Tcp)
        .role(Role::Call {
            user: "alice",
            register: false,
        })
        .timeout(10);
    bed.call(&answerer, &dialer);
}

// ------------------------------------------------- digest authentication, TLS

/// The users of the authenticated tests and their passwords.
fn users() -> Vec<(&'static str, &'static str)> {
    vec![("alice", "alice-secret"), ("bob", "bob-secret")]
}

/// The values of every `name` header line in a PJSIP log (both directions).
fn headers<'a>(log: &'a str, name: &str) -> Vec<&'a str> {
    log.lines()
        .filter_map(|l| {
            let (header, value) = l.split_once(':')?;
            header.eq_ignore_ascii_case(name).then_some(value.trim())
        })
        .collect()
}

/// `true` if every one of `values` names `algorithm`, and there is one.
fn all_name(values: &[&str], algorithm: &str) -> bool {
    let param = format!("algorithm={algorithm}").to_ascii_lowercase();
    !values.is_empty()
        && values
            .iter()
            .all(|v| v.to_ascii_lowercase().replace('"', "").contains(&param))
}

/// A proxy in SHA-256-only mode challenges with SHA-256 alone (RFC 8760
/// section 2.4); PJSIP answers with a SHA-256 response and is registered.
#[test]
fn sha256_only_registration() {
    if !pjsua_available() {
        return;
    }
    let options = ProxyOptions {
        users: users(),
        digest_algorithms: Some("sha-256"),
        ..ProxyOptions::default()
    };
    let bed = Bed::new("sha256_only", &options);
    let agent = Agent::new("alice", Transport::Udp).password("alice-secret");
    let outcome = bed.run("alice", &agent).finish_ok();
    assert_eq!(
        outcome.register_answers(),
        ["200 OK"],
        "{:?}",
        outcome.lines
    );
    let challenges = headers(&outcome.log, "WWW-Authenticate");
    let answers = headers(&outcome.log, "Authorization");
    assert!(
        all_name(&challenges, "SHA-256") && all_name(&answers, "SHA-256"),
        "challenges {challenges:?}, answers {answers:?}"
    );
}

/// With the default challenge set (MD5 and SHA-256 offered) PJSIP still
/// registers, with one of the offered algorithms.
#[test]
fn default_challenges_registration() {
    if !pjsua_available() {
        return;
    }
    let options = ProxyOptions {
        users: users(),
        ..ProxyOptions::default()
    };
    let bed = Bed::new("default_challenges", &options);
    let agent = Agent::new("alice", Transport::Tcp).password("alice-secret");
    let outcome = bed.run("alice", &agent).finish_ok();
    assert_eq!(
        outcome.register_answers(),
        ["200 OK"],
        "{:?}",
        outcome.lines
    );
    let answers = headers(&outcome.log, "Authorization");
    assert!(
        all_name(&answers, "SHA-256") || all_name(&answers, "MD5"),
        "answers {answers:?}"
    );
}

/// A wrong password, or a user the proxy does not know, never gets a 2xx to
/// REGISTER, in the default and in the SHA-256-only mode.
#[test]
fn wrong_password_never_registers() {
    if !pjsua_available() {
        return;
    }
    for (mode, algorithms) in [("default", None), ("sha256", Some("sha-256"))] {
        let options = ProxyOptions {
            users: users(),
            digest_algorithms: algorithms,
            ..ProxyOptions::default()
        };
        let bed = Bed::new(&format!("wrong_password_{mode}"), &options);
        for (user, password) in [("alice", "bob-secret"), ("mallory", "alice-secret")] {
            let agent = Agent::new(user, Transport::Udp).password(password);
            let outcome = bed.run(user, &agent).finish();
            let answers = outcome.register_answers();
            assert!(
                !outcome.status.success()
                    && !answers.is_empty()
                    && answers
                        .iter()
                        .all(|a| a.starts_with("401") || a.starts_with("403"))
                    && !outcome.log.contains("SIP/2.0 2"),
                "{mode}: {user} with a wrong password: {:?}",
                outcome.lines
            );
        }
    }
}

/// Both UAs authenticate with SHA-256: REGISTER gets 401, the INVITE 407
/// (RFC 3261 22.3); the call is established and ended.
#[test]
fn sha256_call_with_passwords() {
    if !pjsua_available() {
        return;
    }
    let options = ProxyOptions {
        users: users(),
        permits: vec![("alice", "bob")],
        digest_algorithms: Some("sha-256"),
        ..ProxyOptions::default()
    };
    let bed = Bed::new("sha256_call", &options);
    let answerer = Agent::new("alice", Transport::Udp)
        .password("alice-secret")
        .role(Role::Answer);
    let dialer = Agent::new("bob", Transport::Tcp)
        .password("bob-secret")
        .role(Role::Call {
            user: "alice",
            register: true,
        });
    let (calling, _) = bed.call(&answerer, &dialer);
    let answers = headers(&calling.log, "Proxy-Authorization");
    assert!(all_name(&answers, "SHA-256"), "INVITE answers {answers:?}");
}

/// PJSIP registers over TLS with a SHA-256 password and is called over its
/// registered TLS connection (it has no certificate of its own, so a new
/// connection towards it could not be set up).
#[test]
fn tls_sha256_callee_is_called_over_its_connection() {
    if !pjsua_available() {
        return;
    }
    let options = ProxyOptions {
        users: users(),
        permits: vec![("alice", "bob")],
        digest_algorithms: Some("sha-256"),
        tls: true,
    };
    let bed = Bed::new("tls_callee", &options);
    let answerer = Agent::new("alice", Transport::Tls)
        .password("alice-secret")
        .role(Role::Answer);
    let dialer = Agent::new("bob", Transport::Udp)
        .password("bob-secret")
        .role(Role::Call {
            user: "alice",
            register: true,
        });
    let (_, alice) = bed.call(&answerer, &dialer);
    let challenges = headers(&alice.log, "WWW-Authenticate");
    assert!(
        all_name(&challenges, "SHA-256"),
        "challenges {challenges:?}"
    );
    // PJSIP logs the peer of each message; a connection the proxy opened
    // itself would come from an ephemeral port, not its TLS listener.
    let from_listener = format!("from TLS {HOST}:{}:", bed.proxy.port(Transport::Tls));
    let invites: Vec<&str> = alice
        .log
        .lines()
        .filter(|l| l.contains("RX ") && l.contains("Request msg INVITE"))
        .collect();
    assert!(
        !invites.is_empty() && invites.iter().all(|l| l.ends_with(&from_listener)),
        "INVITE not over the registered connection: {invites:?}"
    );
}

// ------------------------------------------------- in-dialog requests

/// The SIP requests with `method` that a PJSIP log shows received (`RX`).
fn received(log: &str, method: &str) -> usize {
    let what = format!("Request msg {method}/");
    log.lines()
        .filter(|l| l.contains("RX ") && l.contains(&what))
        .count()
}

/// The top Via of every request a PJSIP log shows received.
fn received_top_vias(log: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = log.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("RX ") && l.contains("Request msg "))
        .map(|(i, l)| {
            let via = lines[i + 1..]
                .iter()
                .take_while(|m| !m.starts_with("--end msg--"))
                .find(|m| m.starts_with("Via:") || m.starts_with("v:"))
                .map_or_else(String::new, |v| (*v).to_string());
            ((*l).to_string(), via)
        })
        .collect()
}

/// Which party changes the call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// bob, the caller.
    Caller,
    /// alice, the callee: her requests go the other way along the route
    /// set (RFC 3261 section 12.2.1.1).
    Callee,
}

/// bob calls alice; then the `holder` puts the call on hold and resumes it
/// (two re-INVITEs, RFC 3261 section 14, offering `sendonly` then
/// `sendrecv`, RFC 3264 section 8.4) and sends an UPDATE with a new offer
/// (RFC 3311), all in the dialog through the proxy's sealed Record-Route.
/// Both report the media state at each step (the holder LOCAL_HOLD then
/// ACTIVE, the other REMOTE_HOLD then ACTIVE), each final answer is 200, and
/// every request the other party received came from the proxy (its Via on
/// top).
fn call_with_hold_and_update(test: &str, alice_on: Transport, bob_on: Transport, holder: Holder) {
    let options = ProxyOptions {
        users: users(),
        permits: vec![("alice", "bob")],
        digest_algorithms: Some("sha-256"),
        tls: alice_on == Transport::Tls || bob_on == Transport::Tls,
    };
    let bed = Bed::new(test, &options);
    let modify: &[&'static str] = &["--hold", "--update"];
    let mut answerer = Agent::new("alice", alice_on)
        .password("alice-secret")
        .role(Role::Answer);
    let mut dialer = Agent::new("bob", bob_on)
        .password("bob-secret")
        .role(Role::Call {
            user: "alice",
            register: true,
        });
    match holder {
        Holder::Caller => dialer = dialer.flags(modify),
        Holder::Callee => {
            answerer = answerer.flags(modify);
            // The caller stays in the call while the callee changes it.
            dialer = dialer.flags(&["--talk", "4"]);
        }
    }
    let (bob, alice) = bed.call(&answerer, &dialer);
    let (changer, other, other_on, invites) = match holder {
        Holder::Caller => (&bob, &alice, alice_on, 3),
        Holder::Callee => (&alice, &bob, bob_on, 2),
    };
    let media = |o: &Outcome| -> Vec<String> {
        o.lines
            .iter()
            .filter_map(|l| l.strip_prefix("MEDIA "))
            .map(str::to_string)
            .collect()
    };
    let (changer_media, other_media) = (media(changer), media(other));
    let hold_then_active = |m: &[String], hold: &str| {
        let at = m.iter().position(|s| s == hold);
        at.is_some_and(|i| m[i + 1..].iter().any(|s| s == "ACTIVE"))
    };
    assert!(
        hold_then_active(&changer_media, "LOCAL_HOLD")
            && hold_then_active(&other_media, "REMOTE_HOLD"),
        "media states: holder {changer_media:?}, other {other_media:?}"
    );
    for (side, outcome, line) in [
        ("holder", changer, "TSX UAC INVITE 200"),
        ("holder", changer, "TSX UAC UPDATE 200"),
        ("other", other, "TSX UAS UPDATE 200"),
    ] {
        assert!(
            outcome.has(line),
            "{side}: no {line:?} in {:?}",
            outcome.lines
        );
    }
    let proxy_via = format!(
        "SIP/2.0/{} {HOST}:{};",
        other_on.uri_param().to_ascii_uppercase(),
        bed.proxy.port(other_on)
    );
    let vias = received_top_vias(&other.log);
    let elsewhere: Vec<&(String, String)> = vias
        .iter()
        .filter(|(_, via)| !via.contains(&proxy_via))
        .collect();
    assert!(
        received(&other.log, "INVITE") >= invites
            && received(&other.log, "UPDATE") == 1
            && elsewhere.is_empty(),
        "the other party received {} INVITE, {} UPDATE; not from the proxy ({proxy_via}): {elsewhere:?}",
        received(&other.log, "INVITE"),
        received(&other.log, "UPDATE")
    );
}

#[test]
fn udp_call_with_hold_resume_and_update() {
    if pjsua_available() {
        call_with_hold_and_update(
            "udp_hold_update",
            Transport::Udp,
            Transport::Udp,
            Holder::Caller,
        );
    }
}

/// alice over TLS: the re-INVITEs and the UPDATE reach her over the
/// connection she registered on (she has no certificate); bob over TCP.
#[test]
fn tls_call_with_hold_resume_and_update() {
    if pjsua_available() {
        call_with_hold_and_update(
            "tls_hold_update",
            Transport::Tls,
            Transport::Tcp,
            Holder::Caller,
        );
    }
}

/// The callee holds, resumes and updates: over UDP, and with both over TLS
/// (her requests reach bob over the connection he called on).
#[test]
fn callee_holds_resumes_and_updates() {
    if pjsua_available() {
        call_with_hold_and_update("callee_udp", Transport::Udp, Transport::Udp, Holder::Callee);
        call_with_hold_and_update("callee_tls", Transport::Tls, Transport::Tls, Holder::Callee);
    }
}
