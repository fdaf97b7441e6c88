//! The harness of the `permit-ua` process tests: the real `permit-proxy` binary on
//! free loopback ports with a fresh data directory, `permit-ua` processes whose
//! stdout (`--json`) is followed line by line, bounded waits, and children killed by
//! PID when a test ends (also by a panic).

// Each test crate uses only a part of this module.
#![allow(dead_code)]

use std::fs;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

pub const HOST: &str = "127.0.0.1";
pub const DOMAIN: &str = "localhost";

/// A loopback port free for UDP and TCP, with TCP free on the next port too, never
/// handed out twice by this process.
pub fn free_port() -> u16 {
    // baresip 1.0 listens for TLS on its SIP port + 1 (testbeds/baresip): that one
    // must be free too, and is never handed out as a port of its own.
    sip_testkit::free_port_with(HOST, 1, |port| {
        TcpListener::bind((HOST, port)).is_ok() && TcpListener::bind((HOST, port + 1)).is_ok()
    })
}

/// `target/tmp/<crate>/<test>/`, emptied.
pub fn workdir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(env!("CARGO_CRATE_NAME").replace('_', "-"))
        .join(test);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the test directory");
    dir
}

pub fn read_text(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

pub fn tail(path: &Path, max: usize) -> String {
    let text = read_text(path);
    let start = text.len().saturating_sub(max);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(start);
    format!("--- {} (tail) ---\n{}", path.display(), &text[start..])
}

/// Sends a signal to one process by its PID.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -s {name} {pid} failed");
}

/// Waits for `child` within `limit`; kills it by PID and panics otherwise.
pub fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
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

/// A peer the test needs is missing: fail when `CI` is set, else note and skip.
pub fn peer_missing(what: &str) -> bool {
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but {what} is missing"
    );
    eprintln!("note: {what} is missing; end-to-end test not run");
    false
}

// ---------------------------------------------------------------- binaries

/// `permit-ua` under test.
pub fn ua_program() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_permit-ua"))
}

/// The `permit-proxy` binary of this workspace, next to `permit-ua` in the same
/// target directory and profile. `cargo test --workspace` builds it (the proxy's own
/// tests need it); `cargo test -p permit-ua` alone does not, so it is built here
/// once if missing (cargo releases its lock while tests run).
pub fn proxy_program() -> PathBuf {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let ua = ua_program();
    let profile_dir = ua.parent().expect("target/<profile>");
    let proxy = profile_dir.join(format!("permit-proxy{}", std::env::consts::EXE_SUFFIX));
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !*built && !proxy.exists() {
        let target_dir = profile_dir.parent().expect("target dir");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-p", "permit-proxy", "--bin", "permit-proxy"])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build -p permit-proxy");
        assert!(status.success(), "cargo build -p permit-proxy failed");
    }
    *built = true;
    proxy
}

// ---------------------------------------------------------------- the proxy

/// A running `permit-proxy` on UDP and TCP `port` (and TLS `tls_port` with a
/// self-signed certificate, `cert`); killed by PID when dropped.
pub struct Proxy {
    child: Child,
    pub port: u16,
    pub tls_port: Option<u16>,
    pub cert: Option<PathBuf>,
    pub data: PathBuf,
    pub log: PathBuf,
}

impl Proxy {
    /// Adds `users` (name, password), then starts the proxy and waits until it
    /// answers an OPTIONS.
    pub fn start(dir: &Path, users: &[(&str, &str)]) -> Proxy {
        Self::start_with(dir, users, false)
    }

    /// [`Proxy::start`] with a TLS listener too, when `tls`.
    pub fn start_with(dir: &Path, users: &[(&str, &str)], tls: bool) -> Proxy {
        Self::start_config(dir, users, tls, None)
    }

    /// [`Proxy::start_with`] with `config` (TOML) as its configuration file.
    pub fn start_config(
        dir: &Path,
        users: &[(&str, &str)],
        tls: bool,
        config: Option<&str>,
    ) -> Proxy {
        let data = dir.join("data");
        let config_file = config.map(|c| {
            let path = dir.join("proxy.toml");
            fs::write(&path, c).expect("write the proxy's config");
            path
        });
        for (user, password) in users {
            let out = Command::new(proxy_program())
                .arg("--data")
                .arg(&data)
                .args([
                    "--domain",
                    DOMAIN,
                    "user",
                    "add",
                    user,
                    "--password",
                    password,
                ])
                .output()
                .expect("run permit-proxy user add");
            assert!(out.status.success(), "user add {user}: {out:?}");
        }
        let certs = dir.join("certs");
        if tls {
            let out = Command::new(proxy_program())
                .arg("--data")
                .arg(&data)
                .args(["--domain", DOMAIN, "cert", "self-signed", "--out"])
                .arg(&certs)
                .output()
                .expect("run permit-proxy cert self-signed");
            assert!(out.status.success(), "cert self-signed: {out:?}");
        }
        for attempt in 0..3 {
            let port = free_port();
            let tls_port = tls.then(free_port);
            let log = dir.join("proxy.log");
            let mut cmd = Command::new(proxy_program());
            if let Some(c) = &config_file {
                cmd.arg("--config").arg(c);
            }
            cmd.arg("run")
                .args(["--listen", &format!("udp:{HOST}:{port}")])
                .args(["--listen", &format!("tcp:{HOST}:{port}")]);
            if let Some(tls_port) = tls_port {
                cmd.args(["--listen", &format!("tls:{HOST}:{tls_port}")])
                    .arg("--tls-cert")
                    .arg(certs.join("cert.pem"))
                    .arg("--tls-key")
                    .arg(certs.join("key.pem"));
            }
            let child = cmd
                .arg("--data")
                .arg(&data)
                .args(["--domain", DOMAIN])
                .env("PERMIT_LOG", "debug")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log).unwrap())
                .spawn()
                .expect("spawn permit-proxy");
            let mut proxy = Proxy {
                child,
                port,
                tls_port,
                cert: tls.then(|| certs.join("cert.pem")),
                data: data.clone(),
                log,
            };
            match proxy.wait_ready() {
                Ok(()) => return proxy,
                Err(why) if attempt < 2 && why.contains("in use") => {}
                Err(why) => panic!("permit-proxy did not start: {why}"),
            }
        }
        unreachable!("three attempts either return or panic")
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let probe = UdpSocket::bind((HOST, 0)).unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let me = probe.local_addr().unwrap().port();
        for seq in 1.. {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("exited: {status}\n{}", tail(&self.log, 3000)));
            }
            if Instant::now() > deadline {
                return Err(format!("no answer\n{}", tail(&self.log, 3000)));
            }
            let options = format!(
                "OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:{me};branch=z9hG4bK-ready-{seq}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:probe@{DOMAIN}>;tag=ready\r\nTo: <sip:{DOMAIN}>\r\n\
                 Call-ID: ready-{me}@{HOST}\r\nCSeq: {seq} OPTIONS\r\nContent-Length: 0\r\n\r\n"
            );
            let _ = probe.send_to(options.as_bytes(), (HOST, self.port));
            let mut buf = [0u8; 4096];
            if let Ok(n) = probe.recv(&mut buf)
                && buf[..n].starts_with(b"SIP/2.0 ")
            {
                return Ok(());
            }
            sleep(Duration::from_millis(100));
        }
        unreachable!()
    }

    /// `--proxy` for `permit-ua`.
    pub fn addr(&self, transport: &str) -> String {
        let port = match transport {
            "tls" => self.tls_port.expect("the proxy was started without TLS"),
            _ => self.port,
        };
        format!("{transport}:{HOST}:{port}")
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

// ---------------------------------------------------------------- permit-ua

/// A `permit-ua` process; stdout and stderr go to files in the test directory.
pub struct Ua {
    pub child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    name: String,
}

/// The common flags: `--proxy`, `--user`, `--password`, `--domain`, `--json`.
pub fn ua_command(proxy: &Proxy, transport: &str, user: &str, password: &str) -> Command {
    let mut c = Command::new(ua_program());
    c.args(["--proxy", &proxy.addr(transport)])
        .args([
            "--user",
            user,
            "--password",
            password,
            "--domain",
            DOMAIN,
            "--json",
        ])
        .env("PERMIT_LOG", "debug")
        .stdin(Stdio::null());
    if transport == "tls" {
        c.arg("--tls-ca")
            .arg(proxy.cert.as_ref().expect("a TLS proxy"));
    }
    c
}

impl Ua {
    pub fn spawn(dir: &Path, name: &str, mut cmd: Command) -> Ua {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.log"));
        let child = cmd
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn permit-ua");
        Ua {
            child,
            stdout,
            stderr,
            name: name.to_string(),
        }
    }

    /// The JSON lines printed so far.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        read_text(&self.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until a line with `"event": event` is printed; panics after `limit`.
    pub fn wait_event(&mut self, event: &str, limit: Duration) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = self.lines().into_iter().find(|v| v["event"] == event) {
                return v;
            }
            let exited = self.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "{}: no {event} event (exit {exited:?})\n{}\n{}",
                self.name,
                tail(&self.stdout, 3000),
                tail(&self.stderr, 6000)
            );
            sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the exit; returns its code.
    pub fn wait(&mut self, limit: Duration) -> i32 {
        let status = wait_bounded(&mut self.child, limit, &self.name);
        status.code().unwrap_or(-1)
    }

    pub fn describe(&self) -> String {
        format!("{}\n{}", tail(&self.stdout, 3000), tail(&self.stderr, 6000))
    }
}

impl Drop for Ua {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `permit-ua` to completion (bounded) and returns its exit code and JSON lines.
pub fn run_ua(dir: &Path, name: &str, cmd: Command) -> (i32, Vec<serde_json::Value>, Ua) {
    let mut ua = Ua::spawn(dir, name, cmd);
    let code = ua.wait(Duration::from_mins(1));
    let lines = ua.lines();
    (code, lines, ua)
}

// ---------------------------------------------------------------- audio

/// Writes a 16-bit mono 8 kHz WAV of a `hz` tone lasting `seconds`.
pub fn write_tone(path: &Path, hz: f64, seconds: u32) {
    let samples = permit_ua::media::wav::tone(hz, seconds, 8000.0);
    fs::write(path, permit_ua::media::wav::write(&samples)).unwrap();
}

/// The WAV files in `dir`.
pub fn wavs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "wav"))
                .collect()
        })
        .unwrap_or_default()
}

/// Root mean square of a WAV's samples, and their count.
pub fn rms(path: &Path) -> (f64, usize) {
    let samples = permit_ua::media::wav::read(&fs::read(path).unwrap()).expect("a WAV we wrote");
    if samples.is_empty() {
        return (0.0, 0);
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let n = f64::from(u32::try_from(samples.len()).unwrap_or(u32::MAX));
    ((sum / n).sqrt(), samples.len())
}

/// Polls `done` every 50 ms until it holds; panics with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        sleep(Duration::from_millis(50));
    }
}
