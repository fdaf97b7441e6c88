//! End-to-end tests of the `permit-proxy` binary with SIPp as the real peers.
//!
//! Each test starts its own proxy on free loopback ports with a fresh data
//! directory, registers a SIPp UAS through it (RFC 3261 section 10), and
//! drives SIPp UACs through it (section 16). The scenarios live in
//! `testbeds/sipp/` (see the README there). Every SIPp run is bounded by
//! `-m`, `-timeout` and `-timeout_error`, and by a kill here if it still
//! overstays, so the tests always end.
//!
//! SIPp must be on `PATH`. Without it a test prints a note and passes, unless
//! the environment variable `CI` is set: then it fails.
//!
//! Logs, SIPp statistics and message traces of each test stay in
//! `target/tmp/sipp-e2e/<test>/` for inspection; a failure names the files.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

const HOST: &str = "127.0.0.1";
const DOMAIN: &str = "localhost";
const SCENARIOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testbeds/sipp");

/// The proxy under test; `PERMIT_E2E_PROXY` may name another executable with
/// the same command line (used to check the suite against a reference proxy).
fn proxy_program() -> PathBuf {
    std::env::var_os("PERMIT_E2E_PROXY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_permit-proxy")),
        PathBuf::from,
    )
}

// ---------------------------------------------------------------- environment

/// `true` if SIPp can run; `false` (after a note) if it is missing and `CI`
/// is unset; panics if it is missing and `CI` is set.
fn sipp_available() -> bool {
    match Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but sipp is not on PATH"
            );
            eprintln!("note: sipp is not on PATH; SIPp end-to-end test not run");
            false
        }
        Err(e) => panic!("cannot run sipp: {e}"),
    }
}

/// A loopback port free for both UDP and TCP, and never handed out twice by
/// this process (tests run in parallel).
fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    for _ in 0..200 {
        let udp = UdpSocket::bind((HOST, 0)).expect("bind an ephemeral UDP port");
        let port = udp.local_addr().unwrap().port();
        // SIPp binds its RTP echo sockets on port and port + 2.
        let Some(plus_two) = port.checked_add(2) else {
            continue;
        };
        let free =
            TcpListener::bind((HOST, port)).is_ok() && UdpSocket::bind((HOST, plus_two)).is_ok();
        let mut given = GIVEN.lock().unwrap();
        if free && !given.iter().any(|&g| g.abs_diff(port) <= 2) {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port found");
}

/// `true` once some process holds `port` for `transport`: our own bind fails.
fn port_taken(transport: Transport, port: u16) -> bool {
    let taken = |r: std::io::Result<()>| matches!(r, Err(e) if e.kind() == ErrorKind::AddrInUse);
    match transport {
        Transport::Udp => taken(UdpSocket::bind((HOST, port)).map(drop)),
        Transport::Tcp => taken(TcpListener::bind((HOST, port)).map(drop)),
    }
}

/// A per-test directory under Cargo's scratch space, emptied on creation.
fn workdir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("sipp-e2e")
        .join(test);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the test directory");
    dir
}

/// The last `max` bytes of a log file, for failure messages.
fn tail(path: &Path, max: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let start = text.len().saturating_sub(max);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(start);
    format!("--- {} (tail) ---\n{}", path.display(), &text[start..])
}

/// Sends a signal to one process by its PID (std has no `kill(2)`).
fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -s {name} {pid} failed");
}

/// Waits for `child` to exit within `limit`; kills it by PID and panics otherwise.
fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {limit:?}; killed");
        }
        sleep(Duration::from_millis(50));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn sipp_flag(self) -> &'static str {
        match self {
            Transport::Udp => "u1",
            Transport::Tcp => "t1",
        }
    }

    fn uri_param(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

// ---------------------------------------------------------------- the proxy

/// A running `permit-proxy`; killed by its PID when dropped.
struct Proxy {
    child: Child,
    udp: u16,
    tcp: u16,
    log: PathBuf,
}

impl Proxy {
    /// Starts the proxy on `udp`/`tcp` with `data` and waits until it serves.
    /// Starts the proxy without authentication (these tests are about routing; the
    /// digest tests start it with users and `extra` flags through [`Proxy::start_with`]).
    fn start(dir: &Path, data: &Path, udp: u16, tcp: u16, name: &str) -> Proxy {
        Self::start_with(dir, data, udp, tcp, name, &["--no-auth"])
    }

    fn start_with(
        dir: &Path,
        data: &Path,
        udp: u16,
        tcp: u16,
        name: &str,
        extra: &[&str],
    ) -> Proxy {
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(proxy_program())
            .arg("run")
            .args(extra)
            .args(["--listen", &format!("udp:{HOST}:{udp}")])
            .args(["--listen", &format!("tcp:{HOST}:{tcp}")])
            .arg("--data")
            .arg(data)
            .args(["--domain", DOMAIN])
            .env(
                "PERMIT_LOG",
                std::env::var("PERMIT_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join(format!("{name}.stdout"))).unwrap())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn permit-proxy");
        let mut proxy = Proxy {
            child,
            udp,
            tcp,
            log,
        };
        proxy.wait_ready();
        proxy
    }

    /// Ready when both sockets are bound and the proxy answers an OPTIONS
    /// (RFC 3261 section 11) over UDP with any response.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let probe = UdpSocket::bind((HOST, 0)).unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let me = probe.local_addr().unwrap().port();
        let mut seq = 0;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "permit-proxy exited during start-up: {status}\n{}",
                    tail(&self.log, 4000)
                );
            }
            assert!(
                Instant::now() < deadline,
                "permit-proxy did not answer OPTIONS\n{}",
                tail(&self.log, 4000)
            );
            seq += 1;
            if port_taken(Transport::Udp, self.udp) && TcpStream::connect((HOST, self.tcp)).is_ok()
            {
                let options = format!(
                    "OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:{me};branch=z9hG4bK-ready-{seq}\r\n\
                     Max-Forwards: 70\r\nFrom: <sip:probe@{DOMAIN}>;tag=ready\r\nTo: <sip:{DOMAIN}>\r\n\
                     Call-ID: ready-{me}@{HOST}\r\nCSeq: {seq} OPTIONS\r\nContent-Length: 0\r\n\r\n"
                );
                probe.send_to(options.as_bytes(), (HOST, self.udp)).unwrap();
                let mut buf = [0u8; 4096];
                if let Ok(n) = probe.recv(&mut buf)
                    && buf[..n].starts_with(b"SIP/2.0 ")
                {
                    return;
                }
            } else {
                sleep(Duration::from_millis(100));
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asserts the proxy is still running (it did not crash).
    fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("permit-proxy died: {status}\n{}", tail(&self.log, 4000));
        }
    }

    /// SIGTERM or SIGINT: the proxy must exit cleanly (status 0) within 10 s.
    fn stop_gracefully(mut self, sig: &str) {
        self.assert_alive();
        signal(self.pid(), sig);
        let status = wait_bounded(
            &mut self.child,
            Duration::from_secs(10),
            "permit-proxy after SIG{sig}",
        );
        assert!(
            status.success(),
            "permit-proxy exit after SIG{sig}: {status}\n{}",
            tail(&self.log, 4000)
        );
        self.wait_released();
    }

    /// SIGKILL: no chance to flush anything.
    fn kill_hard(mut self) {
        self.assert_alive();
        self.child.kill().expect("SIGKILL permit-proxy");
        self.child.wait().unwrap();
        self.wait_released();
    }

    /// After a stop, waits until nothing holds the ports any more, so that a
    /// restarted proxy is the one that answers.
    fn wait_released(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while port_taken(Transport::Udp, self.udp) || port_taken(Transport::Tcp, self.tcp) {
            assert!(
                Instant::now() < deadline,
                "ports {}/{} still taken after the proxy stopped",
                self.udp,
                self.tcp
            );
            sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------- SIPp

/// Final statistics of one SIPp run, from its `-trace_stat` CSV.
#[derive(Debug, Default)]
struct Stats {
    successful: u64,
    failed: u64,
}

/// One SIPp invocation; its files are `<dir>/<name>.*`.
struct Sipp {
    dir: PathBuf,
    name: String,
    port: u16,
    transport: Transport,
    args: Vec<String>,
    timeout_secs: u64,
}

impl Sipp {
    /// `scenario` is a file in `testbeds/sipp/` (`*.xml`) or a SIPp built-in
    /// (`uac`, `uas`); `remote` is the proxy port, `None` for a UAS.
    fn new(
        dir: &Path,
        name: &str,
        scenario: &str,
        transport: Transport,
        remote: Option<u16>,
    ) -> Sipp {
        let mut args = Vec::new();
        if let Some(remote) = remote {
            args.push(format!("{HOST}:{remote}"));
        }
        if Path::new(scenario).extension().is_some_and(|e| e == "xml") {
            args.extend(["-sf".into(), format!("{SCENARIOS}/{scenario}")]);
        } else {
            args.extend(["-sn".into(), scenario.into()]);
        }
        let (dir, name) = (dir.to_path_buf(), name.to_string());
        Sipp {
            dir,
            name,
            port: free_port(),
            transport,
            args,
            timeout_secs: 30,
        }
    }

    fn arg(mut self, args: &[&str]) -> Sipp {
        self.args.extend(args.iter().map(|a| (*a).to_string()));
        self
    }

    /// `-key NAME VALUE` for the scenario's `[NAME]` keywords.
    fn key(self, name: &str, value: &str) -> Sipp {
        self.arg(&["-key", name, value])
    }

    /// SIPp's global timeout, reached = failure; the harness kills SIPp 15 s
    /// later if it is still running.
    fn timeout(mut self, secs: u64) -> Sipp {
        self.timeout_secs = secs;
        self
    }

    fn spawn(self) -> RunningSipp {
        let file = |suffix: &str| {
            self.dir
                .join(format!("{}{suffix}", self.name))
                .display()
                .to_string()
        };
        let (port, mp, cp) = (
            self.port.to_string(),
            free_port().to_string(),
            free_port().to_string(),
        );
        let mut args = self.args.clone();
        #[rustfmt::skip]
        args.extend([
            "-t", self.transport.sipp_flag(), "-i", HOST, "-p", &port, "-mp", &mp, "-cp", &cp,
            "-key", "domain", DOMAIN, "-nostdin",
            "-timeout", &format!("{}s", self.timeout_secs), "-timeout_error",
            "-trace_stat", "-stf", &file(".csv"), "-fd", "1",
            "-trace_msg", "-message_file", &file("_messages.log"),
            "-trace_err", "-error_file", &file("_errors.log"),
            "-trace_screen", "-screen_file", &file("_screen.log"),
        ].map(String::from));
        fs::write(file(".cmd"), format!("sipp {}\n", args.join(" "))).unwrap();
        let out = fs::File::create(file(".out")).unwrap();
        let child = Command::new("sipp")
            .args(&args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn sipp");
        RunningSipp { child, sipp: self }
    }

    /// Runs to the end; asserts exit 0 with `calls` successful and 0 failed.
    fn run_ok(self, calls: u64) -> Stats {
        self.spawn().finish_ok(calls)
    }
}

/// A SIPp process; killed by its PID when dropped.
struct RunningSipp {
    child: Child,
    sipp: Sipp,
}

impl RunningSipp {
    /// Waits until SIPp holds its SIP port, so a UAS is listening.
    fn wait_listening(mut self) -> RunningSipp {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !port_taken(self.sipp.transport, self.sipp.port) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "sipp {} exited early: {status}\n{}",
                    self.sipp.name,
                    self.report()
                );
            }
            assert!(
                Instant::now() < deadline,
                "sipp {} does not listen on {}",
                self.sipp.name,
                self.sipp.port
            );
            sleep(Duration::from_millis(50));
        }
        self
    }

    /// Waits for the end and returns the statistics, whatever they are.
    fn finish(mut self) -> Stats {
        let limit = Duration::from_secs(self.sipp.timeout_secs + 15);
        wait_bounded(&mut self.child, limit, &format!("sipp {}", self.sipp.name));
        self.stats()
    }

    fn finish_ok(mut self, calls: u64) -> Stats {
        let limit = Duration::from_secs(self.sipp.timeout_secs + 15);
        let exit = wait_bounded(&mut self.child, limit, &format!("sipp {}", self.sipp.name));
        let stats = self.stats();
        assert!(
            exit.success() && stats.successful == calls && stats.failed == 0,
            "sipp {}: {exit}, {stats:?}; expected {calls} successful, 0 failed\n{}",
            self.sipp.name,
            self.report()
        );
        stats
    }

    /// The last row of the `-trace_stat` CSV; `(C)` columns are cumulative.
    fn stats(&self) -> Stats {
        let path = self.sipp.dir.join(format!("{}.csv", self.sipp.name));
        let csv = fs::read_to_string(path).unwrap_or_default();
        let mut rows = csv.lines().filter(|l| !l.trim().is_empty());
        let (Some(header), Some(last)) = (rows.next(), rows.next_back()) else {
            return Stats::default();
        };
        let header: Vec<&str> = header.split(';').collect();
        let row: Vec<&str> = last.split(';').collect();
        let get = |column: &str| {
            let at = header.iter().position(|h| *h == column);
            at.and_then(|i| row.get(i))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Stats {
            successful: get("SuccessfulCall(C)"),
            failed: get("FailedCall(C)"),
        }
    }

    fn report(&self) -> String {
        let file = |suffix: &str| self.sipp.dir.join(format!("{}{suffix}", self.sipp.name));
        format!(
            "{}\n{}\nmessage trace: {}",
            tail(&file("_errors.log"), 3000),
            tail(&file(".out"), 1500),
            file("_messages.log").display()
        )
    }
}

impl Drop for RunningSipp {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------- test bed

/// One test's directory, proxy ports and data directory.
struct Bed {
    dir: PathBuf,
    data: PathBuf,
    udp: u16,
    tcp: u16,
}

impl Bed {
    fn new(test: &str) -> Bed {
        let dir = workdir(test);
        let data = dir.join("data");
        Bed {
            dir,
            data,
            udp: free_port(),
            tcp: free_port(),
        }
    }

    fn start_proxy(&self, name: &str) -> Proxy {
        Proxy::start(&self.dir, &self.data, self.udp, self.tcp, name)
    }

    /// The proxy with digest authentication on (its default), plus `extra` flags.
    fn start_proxy_with_auth(&self, name: &str, extra: &[&str]) -> Proxy {
        Proxy::start_with(&self.dir, &self.data, self.udp, self.tcp, name, extra)
    }

    /// `permit-proxy --data DIR user add NAME --password PW` (the operator's CLI).
    fn add_user(&self, name: &str, password: &str) {
        let out = Command::new(proxy_program())
            .arg("--data")
            .arg(&self.data)
            .args([
                "--domain",
                DOMAIN,
                "user",
                "add",
                name,
                "--password",
                password,
            ])
            .output()
            .expect("run permit-proxy user add");
        assert!(
            out.status.success(),
            "user add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn proxy_port(&self, transport: Transport) -> u16 {
        match transport {
            Transport::Udp => self.udp,
            Transport::Tcp => self.tcp,
        }
    }

    /// A listening `uas.xml` that ends after `calls` calls.
    fn uas(&self, name: &str, transport: Transport, calls: u64) -> RunningSipp {
        let calls = calls.to_string();
        Sipp::new(&self.dir, name, "uas.xml", transport, None)
            .arg(&["-m", &calls])
            .timeout(90)
            .spawn()
            .wait_listening()
    }

    /// REGISTERs `user` with a Contact at `uas` through the proxy over
    /// `transport` (`register.xml`), asserting the 200.
    fn register(&self, user: &str, transport: Transport, uas: &RunningSipp) {
        self.registrar(
            &format!("register-{user}"),
            "register.xml",
            user,
            transport,
            uas,
        )
        .key("expires", "3600")
        .run_ok(1);
    }

    /// Removes that binding again (`unregister.xml`).
    fn unregister(&self, user: &str, transport: Transport, uas: &RunningSipp) {
        self.registrar(
            &format!("unregister-{user}"),
            "unregister.xml",
            user,
            transport,
            uas,
        )
        .run_ok(1);
    }

    fn registrar(
        &self,
        name: &str,
        scenario: &str,
        user: &str,
        transport: Transport,
        uas: &RunningSipp,
    ) -> Sipp {
        let port = uas.sipp.port.to_string();
        Sipp::new(
            &self.dir,
            name,
            scenario,
            transport,
            Some(self.proxy_port(transport)),
        )
        .arg(&["-s", user, "-m", "1", "-auth_uri", DOMAIN])
        .key("contact_host", HOST)
        .key("contact_port", &port)
        .key("contact_transport", uas.sipp.transport.uri_param())
    }

    /// `uac.xml` to `user`: `calls` calls at `rate` per second, 200 ms each.
    fn uac(&self, name: &str, user: &str, transport: Transport, calls: u64, rate: u64) -> Sipp {
        let (calls, rate) = (calls.to_string(), rate.to_string());
        Sipp::new(
            &self.dir,
            name,
            "uac.xml",
            transport,
            Some(self.proxy_port(transport)),
        )
        .arg(&["-s", user, "-m", &calls, "-r", &rate, "-l", "100"])
        .arg(&["-d", "200", "-pause_msg_ign"])
        .timeout(60)
    }

    /// One INVITE to `user` that must be rejected with `status`.
    fn rejected(&self, user: &str, status: u16) {
        let scenario = format!("invite_{status}.xml");
        Sipp::new(
            &self.dir,
            &format!("invite-{user}"),
            &scenario,
            Transport::Udp,
            Some(self.udp),
        )
        .arg(&["-s", user, "-m", "1"])
        .run_ok(1);
    }
}

/// REGISTERs `user` -> `contact_port` over UDP with a plain socket and returns
/// as soon as the 200 arrives, so the caller can kill the proxy at once.
fn register_raw(proxy_udp: u16, user: &str, contact_port: u16) {
    let socket = UdpSocket::bind((HOST, 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let me = socket.local_addr().unwrap().port();
    let register = format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:{me};branch=z9hG4bK-raw-{me}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=raw{me}\r\nTo: <sip:{user}@{DOMAIN}>\r\n\
         Call-ID: raw-{me}@{HOST}\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:{user}@{HOST}:{contact_port};transport=udp>\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n"
    );
    let mut buf = [0u8; 4096];
    for _ in 0..8 {
        socket
            .send_to(register.as_bytes(), (HOST, proxy_udp))
            .unwrap();
        while let Ok(n) = socket.recv(&mut buf) {
            let reply = String::from_utf8_lossy(&buf[..n]);
            if reply.starts_with("SIP/2.0 200") {
                return;
            }
            assert!(
                reply.starts_with("SIP/2.0 1"),
                "REGISTER answered with\n{reply}"
            );
        }
    }
    panic!("no 200 to REGISTER for {user}");
}

/// Datagrams a proxy must survive (drop or answer 400), each one a way a
/// careless parser might panic.
fn garbage_datagrams() -> Vec<Vec<u8>> {
    let mut lcg: u32 = 0x2545_f491;
    let mut noise = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                lcg = lcg.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (lcg >> 16) as u8
            })
            .collect()
    };
    let mut all = vec![
        Vec::new(),
        b"\r\n\r\n".to_vec(),
        b"\0\0\0\0".to_vec(),
        vec![0xff; 1400],
        b"INVITE".to_vec(),
        b"INVITE sip:alice@localhost SIP/2.0\r\n".to_vec(),
        b"INVITE sip:alice@localhost SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-x\r\n".to_vec(),
        b"INVITE sip:alice@localhost SIP/2.0\r\nVia: nonsense\r\nContent-Length: 99999\r\n\r\nv=0".to_vec(),
        b"INVITE  SIP/2.0\r\n\r\n".to_vec(),
        b"SIP/2.0 200 OK\r\n\r\n".to_vec(),
        b"SIP/2.0 999999999999 Big\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-none\r\nCSeq: x\r\n\r\n".to_vec(),
        b"REGISTER sip:localhost SIP/2.0\r\nContact: <sip:\xc3\x28@\xff>\r\nExpires: -1\r\n\r\n".to_vec(),
        b"OPTIONS sip:localhost SIP/2.0\r\nCSeq: 18446744073709551616 OPTIONS\r\nMax-Forwards: -5\r\n\r\n".to_vec(),
        format!("MESSAGE sip:a@localhost SIP/2.0\r\nX: {}\r\n\r\n", "a".repeat(60_000)).into_bytes(),
    ];
    all.extend((0..20).map(|i| noise(1 + i * 97)));
    all
}

// ---------------------------------------------------------------- tests

/// 500 calls over UDP: SIPp UAC -> proxy -> registered SIPp UAS; both sides
/// count 500 successful calls; SIGINT then stops the proxy cleanly.
#[test]
fn udp_calls_reach_registered_uas() {
    if !sipp_available() {
        return;
    }
    let bed = Bed::new("udp_calls");
    let proxy = bed.start_proxy("proxy");
    let uas = bed.uas("uas", Transport::Udp, 500);
    bed.register("alice", Transport::Udp, &uas);
    bed.uac("uac", "alice", Transport::Udp, 500, 100)
        .run_ok(500);
    uas.finish_ok(500);
    proxy.stop_gracefully("INT");
}

/// The same 500 calls over TCP on both legs; SIGTERM then stops the proxy.
#[test]
fn tcp_calls_reach_registered_uas() {
    if !sipp_available() {
        return;
    }
    let bed = Bed::new("tcp_calls");
    let proxy = bed.start_proxy("proxy");
    let uas = bed.uas("uas", Transport::Tcp, 500);
    bed.register("alice", Transport::Tcp, &uas);
    bed.uac("uac", "alice", Transport::Tcp, 500, 100)
        .run_ok(500);
    uas.finish_ok(500);
    proxy.stop_gracefully("TERM");
}

/// SIPp's built-in `uac` and `uas`: the callee does not copy Record-Route and
/// the caller sends ACK and BYE to sip:USER@proxy-ip:port without Route, so
/// the proxy routes them as requests to its own address (RFC 3261 16.4, 16.5).
#[test]
fn builtin_sipp_scenarios_route_through_proxy() {
    if !sipp_available() {
        return;
    }
    let bed = Bed::new("builtin_scenarios");
    let _proxy = bed.start_proxy("proxy");
    let uas = Sipp::new(&bed.dir, "uas", "uas", Transport::Udp, None)
        .arg(&["-m", "50"])
        .timeout(60)
        .spawn()
        .wait_listening();
    bed.register("alice", Transport::Udp, &uas);
    Sipp::new(&bed.dir, "uac", "uac", Transport::Udp, Some(bed.udp))
        .arg(&["-s", "alice", "-m", "50", "-r", "50", "-l", "50"])
        .run_ok(50);
    uas.finish_ok(50);
}

/// The callee hangs up: its BYE goes to the caller's Contact with the
/// Record-Route set as Route (RFC 3261 12.2.1.1), through the proxy, which
/// must recognise its own Route entry and forward by the Request-URI (16.4).
#[test]
fn callee_bye_routes_back_through_proxy() {
    if !sipp_available() {
        return;
    }
    let bed = Bed::new("callee_hangup");
    let _proxy = bed.start_proxy("proxy");
    let uas = Sipp::new(&bed.dir, "uas", "uas_hangup.xml", Transport::Udp, None)
        .arg(&["-s", "frank", "-m", "50", "-d", "200"])
        .timeout(60)
        .spawn()
        .wait_listening();
    bed.register("frank", Transport::Udp, &uas);
    Sipp::new(
        &bed.dir,
        "uac",
        "uac_hangup_wait.xml",
        Transport::Udp,
        Some(bed.udp),
    )
    .arg(&["-s", "frank", "-m", "50", "-r", "50", "-l", "100"])
    .run_ok(50);
    uas.finish_ok(50);
}

/// The caller cancels while the callee rings: the proxy answers the CANCEL,
/// cancels its branch, and passes the callee's 487 back (RFC 3261 16.10, 9.2).
#[test]
fn cancel_while_ringing_ends_in_487() {
    if !sipp_available() {
        return;
    }
    let bed = Bed::new("cancel");
    let _proxy = bed.start_proxy("proxy");
    let uas = Sipp::new(&bed.dir, "uas", "uas_ring.xml", Transport::Udp, None)
        .arg(&["-m", "50"])
        .timeout(60)
        .spawn()
        .wait_listening();
    bed.register("grace", Transport::Udp, &uas);
    Sipp::new(
        &bed.dir,
        "uac",
        "uac_cancel.xml",
        Transport::Udp,
        Some(bed.udp),
    )
    .arg(&["-s", "grace", "-m", "50", "-r", "50", "-l", "100"])
    .run_ok(50);
    uas.finish_ok(50);
}

/// A binding REGISTERed before a graceful stop routes calls after restart on
/// the same data directory.
#[test]
fn binding_survives_sigterm_restart() {
    if !sipp_available() {
        return;
    }
    let bed = Bed::new("restart_sigterm");
    let proxy = bed.start_proxy("proxy-1");
    let uas = bed.uas("uas", Transport::Udp, 20);
    bed.register("carol", Transport::Udp, &uas);
    proxy.stop_gracefully("TERM");
    let _proxy = bed.start_proxy("proxy-2");
    bed.uac("uac", "carol", Transport::Udp, 20, 20).run_ok(20);
    uas.finish_ok(20);
}

/// A 200 to REGISTER promises a stored binding: SIGKILL the proxy the moment
/// the 200 arrives, restart it on the same data directory, calls still route.
#[test]
fn binding_survives_sigkill_right_after_200() {
    if !sipp_available() {
        return;
    }
    let bed = Bed::new("restart_sigkill");
    let proxy = bed.start_proxy("proxy-1");
    let uas = bed.uas("uas", Transport::Udp, 20);
    register_raw(bed.udp, "carol", uas.sipp.port);
    proxy.kill_hard();
    let _proxy = bed.start_proxy("proxy-2");
    bed.uac("uac", "carol", Transport::Udp, 20, 20).run_ok(20);
    uas.finish_ok(20);
}

/// An INVITE to a user the proxy does not know gets 404 (RFC 3261 21.4.5).
#[test]
fn invite_to_unknown_user_gets_404() {
    if !sipp_available() {
        return;
    }
    let bed = Bed::new("unknown_user");
    let mut proxy = bed.start_proxy("proxy");
    bed.rejected("nobody", 404);
    proxy.assert_alive();
}

/// An INVITE to an AOR whose only binding was removed gets 480
/// (RFC 3261 16.5: the location service has no live contact).
#[test]
fn invite_to_aor_without_binding_gets_480() {
    if !sipp_available() {
        return;
    }
    let bed = Bed::new("no_binding");
    let mut proxy = bed.start_proxy("proxy");
    let uas = bed.uas("uas", Transport::Udp, 1);
    bed.register("dave", Transport::Udp, &uas);
    bed.unregister("dave", Transport::Udp, &uas);
    bed.rejected("dave", 480);
    proxy.assert_alive();
}

/// Garbage datagrams on the UDP port neither stop the proxy nor break it:
/// calls placed afterwards succeed.
#[test]
fn udp_garbage_does_not_stop_proxy() {
    if !sipp_available() {
        return;
    }
    let bed = Bed::new("udp_garbage");
    let mut proxy = bed.start_proxy("proxy");
    let uas = bed.uas("uas", Transport::Udp, 10);
    bed.register("erin", Transport::Udp, &uas);
    let socket = UdpSocket::bind((HOST, 0)).unwrap();
    for datagram in garbage_datagrams() {
        socket.send_to(&datagram, (HOST, bed.udp)).unwrap();
    }
    sleep(Duration::from_millis(300));
    proxy.assert_alive();
    bed.uac("uac", "erin", Transport::Udp, 10, 10).run_ok(10);
    uas.finish_ok(10);
    proxy.assert_alive();
}

/// Garbage on TCP connections (junk, an endless header, a body that never
/// comes) neither stops the proxy nor breaks its TCP side.
#[test]
fn tcp_garbage_does_not_stop_proxy() {
    if !sipp_available() {
        return;
    }
    let bed = Bed::new("tcp_garbage");
    let mut proxy = bed.start_proxy("proxy");
    let uas = bed.uas("uas", Transport::Tcp, 10);
    bed.register("erin", Transport::Tcp, &uas);
    for datagram in garbage_datagrams() {
        let mut stream = TcpStream::connect((HOST, bed.tcp)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let _ = stream.write_all(&datagram);
        let _ = stream.shutdown(Shutdown::Write);
        let _ = stream.read(&mut [0u8; 512]);
    }
    let mut endless = TcpStream::connect((HOST, bed.tcp)).unwrap();
    endless
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let _ = endless.write_all(
        format!(
            "INVITE sip:erin@{DOMAIN} SIP/2.0\r\nX: {}",
            "y".repeat(200_000)
        )
        .as_bytes(),
    );
    sleep(Duration::from_millis(300));
    proxy.assert_alive();
    bed.uac("uac", "erin", Transport::Tcp, 10, 10).run_ok(10);
    uas.finish_ok(10);
    proxy.assert_alive();
    drop(endless);
}

// ------------------------------------------------------------- digest auth

/// SIPp answers the MD5 challenge (RFC 3261 section 22, offered first): the callee
/// registers with its password, the caller authenticates each INVITE (407 then
/// retry), and 50 calls complete. Users are added with the CLI while no proxy runs
/// and one more while it runs (no restart needed).
#[test]
fn digest_md5_register_and_calls() {
    if !sipp_available() {
        return;
    }
    let bed = Bed::new("digest_md5");
    bed.add_user("bob", "builder-pw");
    let proxy = bed.start_proxy_with_auth("proxy", &["--no-gate"]);
    bed.add_user("alice", "wonderland-pw");
    let uas = bed.uas("uas", Transport::Udp, 50);
    bed.registrar("register-bob", "register.xml", "bob", Transport::Udp, &uas)
        .key("expires", "3600")
        .arg(&["-au", "bob", "-ap", "builder-pw"])
        .run_ok(1);
    Sipp::new(
        &bed.dir,
        "uac-auth",
        "uac_auth.xml",
        Transport::Udp,
        Some(bed.udp),
    )
    .arg(&[
        "-s",
        "bob",
        "-au",
        "alice",
        "-ap",
        "wonderland-pw",
        "-auth_uri",
        "bob@localhost",
    ])
    .arg(&[
        "-m",
        "50",
        "-r",
        "25",
        "-l",
        "50",
        "-d",
        "100",
        "-pause_msg_ign",
    ])
    .timeout(60)
    .run_ok(50);
    uas.finish_ok(50);
    proxy.stop_gracefully("TERM");
}

/// A wrong password never gets a 2xx: SIPp's REGISTER fails, and the AOR stays
/// unregistered (an authenticated caller then gets 404 for it).
#[test]
fn digest_wrong_password_never_registers() {
    if !sipp_available() {
        return;
    }
    let bed = Bed::new("digest_wrong_pw");
    bed.add_user("bob", "builder-pw");
    bed.add_user("alice", "wonderland-pw");
    let proxy = bed.start_proxy_with_auth("proxy", &[]);
    let uas = bed.uas("uas", Transport::Udp, 1);
    let stats = bed
        .registrar("register-bob", "register.xml", "bob", Transport::Udp, &uas)
        .key("expires", "3600")
        .arg(&["-au", "bob", "-ap", "not-the-password"])
        .timeout(10)
        .spawn()
        .finish();
    assert_eq!(
        (stats.successful, stats.failed),
        (0, 1),
        "a wrong password must not register"
    );
    let seen = fs::read_to_string(bed.dir.join("register-bob_messages.log")).unwrap();
    assert!(seen.contains("SIP/2.0 401"), "the REGISTER was challenged");
    assert!(
        !seen.contains("SIP/2.0 200"),
        "no 2xx may be sent for a wrong password"
    );
    drop(uas);
    proxy.stop_gracefully("TERM");
}
