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

use std::fs;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

const HOST: &str = "127.0.0.1";
const DOMAIN: &str = "localhost";
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testbeds/pjsua/pjsua_ua.py");

// ---------------------------------------------------------------- environment

/// `true` if `python3` can import `pjsua2`; `false` (after a note) if not and
/// `CI` is unset; panics if not and `CI` is set.
fn pjsua_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import pjsua2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but python3 cannot import pjsua2 \
             (pip install -r testbeds/pjsua/requirements.txt)"
        );
        eprintln!("note: python3 cannot import pjsua2; PJSIP end-to-end test not run");
    }
    ok
}

/// A loopback port free for both UDP and TCP, never handed out twice by this
/// process (tests run in parallel).
fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    for _ in 0..200 {
        let udp = UdpSocket::bind((HOST, 0)).expect("bind an ephemeral UDP port");
        let port = udp.local_addr().unwrap().port();
        let free = TcpListener::bind((HOST, port)).is_ok();
        let mut given = GIVEN.lock().unwrap();
        if free && !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port found");
}

/// A per-test directory under Cargo's scratch space, emptied on creation.
fn workdir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("pjsua-e2e")
        .join(test);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the test directory");
    dir
}

fn read(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `max` bytes of a log file, for failure messages.
fn tail(path: &Path, max: usize) -> String {
    let text = read(path);
    let start = text.len().saturating_sub(max);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(start);
    format!("--- {} (tail) ---\n{}", path.display(), &text[start..])
}

fn kill(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

// ---------------------------------------------------------------- the proxy

/// What a test asks of the proxy beyond UDP and TCP listeners.
#[derive(Default)]
struct ProxyOptions {
    /// `(user, password)` pairs added with `user add` before the start; with
    /// none the proxy runs open (`--no-auth`).
    users: Vec<(&'static str, &'static str)>,
    /// `--digest-algorithms` value, if any.
    digest_algorithms: Option<&'static str>,
    /// A TLS listener with a self-signed certificate.
    tls: bool,
    /// `(callee, caller)` user pairs: the caller is put on the callee's
    /// permitted-terminal list (`permit add`), which the gate checks for
    /// every authenticated call.
    permits: Vec<(&'static str, &'static str)>,
}

/// The proxy under test; `PERMIT_E2E_PROXY` may name another executable
/// with the same command line.
fn proxy_program() -> PathBuf {
    std::env::var_os("PERMIT_E2E_PROXY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_permit-proxy")),
        PathBuf::from,
    )
}

/// Runs one `permit-proxy` administration command; panics unless it succeeds.
fn proxy_admin(data: &Path, args: &[&str]) {
    let out = Command::new(proxy_program())
        .arg("--data")
        .arg(data)
        .args(["--domain", DOMAIN])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run permit-proxy");
    assert!(
        out.status.success(),
        "permit-proxy {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed certificate and key from `permit-proxy cert self-signed`:
/// the PEM file with "key" in its name is the key, the other the certificate.
fn self_signed(dir: &Path, data: &Path) -> (PathBuf, PathBuf) {
    let certs = dir.join("certs");
    proxy_admin(
        data,
        &["cert", "self-signed", "--out", &certs.display().to_string()],
    );
    let files: Vec<PathBuf> = fs::read_dir(&certs)
        .expect("read the certificate directory")
        .map(|e| e.unwrap().path())
        .collect();
    let pick = |key: bool| {
        files
            .iter()
            .find(|p| {
                let name = p.file_name().unwrap().to_string_lossy().to_lowercase();
                name.contains("key") == key
                    && [".pem", ".crt", ".key"].iter().any(|x| name.ends_with(x))
            })
            .cloned()
            .unwrap_or_else(|| {
                panic!("cert self-signed wrote no such file (key: {key}): {files:?}")
            })
    };
    (pick(false), pick(true))
}

/// A running `permit-proxy`; killed by its PID when dropped.
struct Proxy {
    child: Child,
    udp: u16,
    tcp: u16,
    tls: Option<u16>,
    log: PathBuf,
}

impl Proxy {
    /// Adds the users and permits, then starts the proxy on fresh ports. A
    /// start-up that lost a port to another process on the machine (bind:
    /// address in use) is retried on other ports, twice at most.
    fn start(dir: &Path, options: &ProxyOptions) -> Proxy {
        let data = dir.join("data");
        for (user, password) in &options.users {
            proxy_admin(&data, &["user", "add", user, "--password", password]);
        }
        for (callee, caller) in &options.permits {
            let (callee, caller) = (format!("{callee}@{DOMAIN}"), format!("{caller}@{DOMAIN}"));
            proxy_admin(&data, &["permit", "add", &callee, &caller]);
        }
        let tls_files = options.tls.then(|| self_signed(dir, &data));
        let mut attempt = 1;
        loop {
            let mut proxy = Proxy::spawn(dir, &data, options, tls_files.as_ref());
            match proxy.wait_ready() {
                Ok(()) => return proxy,
                Err(log) if attempt < 3 && log.contains("in use") => attempt += 1,
                Err(log) => panic!("permit-proxy did not start\n{log}"),
            }
        }
    }

    fn spawn(
        dir: &Path,
        data: &Path,
        options: &ProxyOptions,
        tls_files: Option<&(PathBuf, PathBuf)>,
    ) -> Proxy {
        let (udp, tcp) = (free_port(), free_port());
        let mut command = Command::new(proxy_program());
        command
            .arg("run")
            .args(["--listen", &format!("udp:{HOST}:{udp}")])
            .args(["--listen", &format!("tcp:{HOST}:{tcp}")])
            .arg("--data")
            .arg(data)
            .args(["--domain", DOMAIN]);
        if options.users.is_empty() {
            command.arg("--no-auth");
        }
        if let Some(algorithms) = options.digest_algorithms {
            command.args(["--digest-algorithms", algorithms]);
        }
        let tls = tls_files.map(|(cert, key)| {
            let port = free_port();
            command
                .args(["--listen", &format!("tls:{HOST}:{port}")])
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key);
            port
        });
        let log = dir.join("proxy.log");
        let child = command
            .env(
                "PERMIT_LOG",
                std::env::var("PERMIT_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("proxy.stdout")).unwrap())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn permit-proxy");
        Proxy {
            child,
            udp,
            tcp,
            tls,
            log,
        }
    }

    /// Ready when the TCP (and TLS) listeners accept and the proxy answers an
    /// OPTIONS (RFC 3261 section 11) over UDP with any response; the tail of
    /// its log if it exited first.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let probe = UdpSocket::bind((HOST, 0)).unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let me = probe.local_addr().unwrap().port();
        for seq in 1.. {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("exit: {status}\n{}", tail(&self.log, 4000)));
            }
            assert!(
                Instant::now() < deadline,
                "permit-proxy did not answer OPTIONS\n{}",
                tail(&self.log, 4000)
            );
            let listening = [Some(self.tcp), self.tls]
                .into_iter()
                .flatten()
                .all(|port| TcpStream::connect((HOST, port)).is_ok());
            if !listening {
                sleep(Duration::from_millis(100));
                continue;
            }
            let options = format!(
                "OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:{me};branch=z9hG4bK-ready-{seq}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:probe@{DOMAIN}>;tag=ready\r\nTo: <sip:{DOMAIN}>\r\n\
                 Call-ID: ready-{me}@{HOST}\r\nCSeq: {seq} OPTIONS\r\nContent-Length: 0\r\n\r\n"
            );
            let _ = probe.send_to(options.as_bytes(), (HOST, self.udp));
            let mut buf = [0u8; 4096];
            if let Ok(n) = probe.recv(&mut buf)
                && buf[..n].starts_with(b"SIP/2.0 ")
            {
                return Ok(());
            }
        }
        unreachable!("the probe loop only ends by returning")
    }

    fn port(&self, transport: Transport) -> u16 {
        match transport {
            Transport::Udp => self.udp,
            Transport::Tcp => self.tcp,
            Transport::Tls => self.tls.expect("the proxy was started without TLS"),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
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
        }
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
            .args(["--transport", self.transport.name()])
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
        read(&self.out)
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
            log: read(&self.log),
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

/// One test's directory and proxy.
struct Bed {
    dir: PathBuf,
    proxy: Proxy,
}

impl Bed {
    fn new(test: &str, options: &ProxyOptions) -> Bed {
        let dir = workdir(test);
        let proxy = Proxy::start(&dir, options);
        Bed { dir, proxy }
    }

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
