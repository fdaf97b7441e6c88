//! The harness shared by the end-to-end tests of the `permit-proxy` binary:
//! free loopback ports, per-test directories under `target/tmp`, bounded
//! waits, child processes killed by PID, the check for a missing peer, and
//! the operator's CLI. [`proxy`] starts the proxy under test, [`sipp`] runs
//! SIPp.

// Each test crate compiles this module and uses only a part of it.
#![allow(dead_code)]

pub mod postgres;
pub mod proxy;
pub mod sipp;

use std::fs;
use std::io::ErrorKind;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The loopback address of the proxy and of the peers.
pub const HOST: &str = "127.0.0.1";
/// A second loopback address: the gate tests' SIPp callees, whose address
/// no refused caller may ever see.
pub const CALLEE_HOST: &str = "127.0.0.2";
/// The proxy's domain.
pub const DOMAIN: &str = "localhost";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// The `transport` URI parameter (RFC 3261 section 19.1.1).
    pub fn uri_param(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

// ---------------------------------------------------------------- environment

/// A peer the tests need is not there (`missing` says how): panics if the
/// environment variable `CI` is set (`hint` says how to install it), returns
/// `false` after a note otherwise.
pub fn peer_missing(missing: &str, hint: &str, suite: &str) -> bool {
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but {missing}{hint}"
    );
    eprintln!("note: {missing}; {suite} end-to-end test not run");
    false
}

/// `true` if `python3` can import `pjsua2` (PJSIP's Python bindings); [`peer_missing`]
/// for `suite` if not.
pub fn pjsua2_available(suite: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import pjsua2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok || peer_missing(
        "python3 cannot import pjsua2",
        " (pip install -r testbeds/pjsua/requirements.txt)",
        suite,
    )
}

/// `true` if `program` (run with `arg`) can be started at all; [`peer_missing`]
/// if it is not on `PATH`; panics if it cannot be run for another reason.
pub fn program_available(program: &str, arg: &str, hint: &str, suite: &str) -> bool {
    match Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            peer_missing(&format!("{program} is not on PATH"), hint, suite)
        }
        Err(e) => panic!("cannot run {program}: {e}"),
    }
}

// ---------------------------------------------------------------- ports

/// A loopback port never handed out twice, nor next to one handed out, by
/// this process (tests run in parallel). It is free for UDP and TCP on
/// [`HOST`], and so are the ports the peers open next to it: SIPp binds its
/// RTP echo sockets on port and port + 2 (on [`CALLEE_HOST`] for a gate
/// test's callee), baresip listens for TLS on its SIP port + 1.
pub fn free_port() -> u16 {
    sip_testkit::free_port_with(HOST, 2, |port| {
        TcpListener::bind((HOST, port)).is_ok()
            && TcpListener::bind((HOST, port + 1)).is_ok()
            && UdpSocket::bind((HOST, port + 2)).is_ok()
            && UdpSocket::bind((CALLEE_HOST, port)).is_ok()
            && UdpSocket::bind((CALLEE_HOST, port + 2)).is_ok()
    })
}

/// `true` once some process holds `port` on `host` for `transport`: our own
/// bind fails.
pub fn port_taken(host: &str, transport: Transport, port: u16) -> bool {
    let taken = |r: std::io::Result<()>| matches!(r, Err(e) if e.kind() == ErrorKind::AddrInUse);
    match transport {
        Transport::Udp => taken(UdpSocket::bind((host, port)).map(drop)),
        Transport::Tcp | Transport::Tls => taken(TcpListener::bind((host, port)).map(drop)),
    }
}

// ---------------------------------------------------------------- files

/// A per-test directory under Cargo's scratch space, emptied on creation:
/// `target/tmp/<suite>/<test>/`, the suite named after the test crate
/// (`sipp_e2e` writes to `sipp-e2e`).
pub fn workdir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(env!("CARGO_CRATE_NAME").replace('_', "-"))
        .join(test);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the test directory");
    dir
}

/// A file's text (lossy), empty if it cannot be read.
pub fn read_text(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `max` bytes of a log file, for failure messages.
pub fn tail(path: &Path, max: usize) -> String {
    let text = read_text(path);
    let start = text.len().saturating_sub(max);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(start);
    format!("--- {} (tail) ---\n{}", path.display(), &text[start..])
}

// ---------------------------------------------------------------- processes

/// Kills a child that is still running (by its PID) and reaps it.
pub fn kill(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Sends a signal to one process by its PID (std has no `kill(2)`).
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -s {name} {pid} failed");
}

/// Waits for `child` to exit within `limit`; kills it by PID and panics otherwise.
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

/// Polls `done` every 50 ms until it holds; panics with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------- the CLI

/// The proxy under test; `PERMIT_E2E_PROXY` may name another executable with
/// the same command line (used to check the suites against a reference proxy).
pub fn proxy_program() -> PathBuf {
    std::env::var_os("PERMIT_E2E_PROXY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_permit-proxy")),
        PathBuf::from,
    )
}

/// `permit-proxy --data DATA --domain localhost ARGS…` (the operator's CLI);
/// asserts success and returns its standard output.
pub fn proxy_cli(data: &Path, args: &[&str]) -> String {
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
    String::from_utf8(out.stdout).expect("CLI output is UTF-8")
}

/// `user add USER --password PASSWORD`.
pub fn add_user(data: &Path, user: &str, password: &str) {
    proxy_cli(data, &["user", "add", user, "--password", password]);
}

/// `permit add CALLEE CALLER` for users of our domain: `caller` goes on
/// `callee`'s permitted-terminal list, which the gate checks for every
/// authenticated call.
pub fn add_permit(data: &Path, callee: &str, caller: &str) {
    let out = proxy_cli(
        data,
        &[
            "permit",
            "add",
            &format!("{callee}@{DOMAIN}"),
            &format!("{caller}@{DOMAIN}"),
        ],
    );
    assert!(out.starts_with("added "), "permit add: {out}");
}
