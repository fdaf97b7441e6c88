//! The data directory knows its domain: users are stored for the realm the proxy
//! serves, a command without `--domain` serves the stored domain, and one with
//! another domain refuses to start (exit code 2) with a message that says what to
//! do. Runs the built `permit-proxy` on loopback in a per-test data directory.

mod common;

use std::fs;
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{HOST, free_port, kill, tail, wait_bounded, workdir};
use md5::{Digest, Md5};
use permit_proxy::users::{SqliteUsers, UserRecord};

/// `permit-proxy --data DATA ARGS…` without `--domain` unless `args` has one.
fn cli(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_permit-proxy"))
        .arg("--data")
        .arg(data)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run permit-proxy")
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn add_bob(data: &Path, domain: Option<&str>) {
    let mut args = Vec::new();
    if let Some(d) = domain {
        args.extend(["--domain", d]);
    }
    args.extend(["user", "add", "bob", "--password", "x"]);
    let out = cli(data, &args);
    assert!(out.status.success(), "user add: {}", text(&out));
    let expected = format!("added bob@{}", domain.unwrap_or("localhost"));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&expected),
        "user add: {}",
        text(&out)
    );
}

/// `run` on a fresh UDP port with `flags`; the child with its log, and the port.
fn spawn_run(dir: &Path, data: &Path, flags: &[&str]) -> (Running, u16) {
    let port = free_port();
    let log = dir.join("proxy.log");
    let child = Command::new(env!("CARGO_BIN_EXE_permit-proxy"))
        .arg("--data")
        .arg(data)
        .args(flags)
        .arg("run")
        .args(["--listen", &format!("udp:{HOST}:{port}")])
        .env("PERMIT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn permit-proxy");
    (Running { child, log }, port)
}

/// A running proxy, killed by its PID when dropped.
struct Running {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

fn assert_refused(out: &Output, stored: &str, asked: &str) {
    assert_eq!(out.status.code(), Some(2), "{}", text(out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("serves domain {stored}, not {asked}"))
            && err.contains(&format!("run with --domain {stored}"))
            && err.contains("another --data directory"),
        "{}",
        text(out)
    );
}

#[test]
fn another_domain_is_refused_with_the_fix() {
    let dir = workdir("another_domain_is_refused_with_the_fix");
    let data = dir.join("data");
    add_bob(&data, None);

    let (mut run, _port) = spawn_run(&dir, &data, &["--domain", "other"]);
    let status = wait_bounded(
        &mut run.child,
        Duration::from_secs(20),
        "permit-proxy --domain other run",
    );
    let log = tail(&run.log, 2000);
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains("serves domain localhost, not other")
            && log.contains("run with --domain localhost, or use another --data directory"),
        "{log}"
    );

    // The other commands that open the data directory refuse it too, and write nothing.
    assert_refused(
        &cli(
            &data,
            &[
                "--domain",
                "other",
                "user",
                "add",
                "carol",
                "--password",
                "y",
            ],
        ),
        "localhost",
        "other",
    );
    assert_refused(
        &cli(&data, &["--domain", "other", "user", "list"]),
        "localhost",
        "other",
    );
    assert_refused(
        &cli(
            &data,
            &[
                "--domain",
                "other",
                "permit",
                "add",
                "bob@other",
                "carol@other",
            ],
        ),
        "localhost",
        "other",
    );
    let list = cli(&data, &["user", "list"]);
    assert!(list.status.success(), "{}", text(&list));
    assert_eq!(String::from_utf8_lossy(&list.stdout), "bob@localhost\n");
}

#[test]
fn an_older_data_directory_is_judged_by_its_users() {
    let dir = workdir("an_older_data_directory_is_judged_by_its_users");
    let data = dir.join("data");
    // What a version without a stored domain left behind: users of one realm.
    SqliteUsers::open(&data)
        .unwrap()
        .put(&UserRecord::new("bob", "127.0.0.1", "x"))
        .unwrap();
    let out = cli(&data, &["--domain", "localhost", "user", "list"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("users of realm 127.0.0.1 only")
            && err.contains("run with --domain 127.0.0.1"),
        "{}",
        text(&out)
    );
    // Without --domain it serves its users' realm, and remembers it.
    let out = cli(&data, &["user", "add", "alice", "--password", "y"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("added alice@127.0.0.1"),
        "{}",
        text(&out)
    );
    assert_refused(
        &cli(&data, &["--domain", "localhost", "user", "list"]),
        "127.0.0.1",
        "localhost",
    );
}

/// README's sequence: users added without `--domain`, then `run` without it.
#[test]
fn run_without_domain_serves_the_default_the_users_were_stored_for() {
    let dir = workdir("run_without_domain_serves_the_default");
    let data = dir.join("data");
    add_bob(&data, None);
    register_with_digest(&dir, &data, "localhost");
}

/// A domain given once is the data directory's: `run` without `--domain` serves it.
#[test]
fn run_without_domain_serves_the_stored_domain() {
    let dir = workdir("run_without_domain_serves_the_stored_domain");
    let data = dir.join("data");
    add_bob(&data, Some("permit.test"));
    register_with_digest(&dir, &data, "permit.test");
}

/// Runs the proxy without `--domain` and registers bob for `domain`: the challenge
/// names `domain` as the realm and bob's digest for it gets 200.
fn register_with_digest(dir: &Path, data: &Path, domain: &str) {
    let (mut run, port) = spawn_run(dir, data, &[]);
    let sock = UdpSocket::bind((HOST, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let me = sock.local_addr().unwrap().port();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut cseq = 0;
    let mut exchange = |auth: Option<String>, run: &mut Running| -> String {
        cseq += 1;
        let auth = auth.map_or_else(String::new, |a| format!("Authorization: {a}\r\n"));
        let register = format!(
            "REGISTER sip:{domain} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {HOST}:{me};rport;branch=z9hG4bK-dd-{cseq}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:bob@{domain}>;tag=dd\r\nTo: <sip:bob@{domain}>\r\n\
             Call-ID: data-domain-{me}@{HOST}\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:bob@{HOST}:{me}>\r\nExpires: 60\r\n{auth}Content-Length: 0\r\n\r\n"
        );
        loop {
            if let Some(status) = run.child.try_wait().unwrap() {
                panic!("permit-proxy exited: {status}\n{}", tail(&run.log, 4000));
            }
            assert!(
                Instant::now() < deadline,
                "no answer to REGISTER\n{}",
                tail(&run.log, 4000)
            );
            sock.send_to(register.as_bytes(), (HOST, port)).unwrap();
            let mut buf = [0u8; 8192];
            while let Ok(n) = sock.recv(&mut buf) {
                let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
                let final_for_us = !answer.starts_with("SIP/2.0 1")
                    && answer.contains(&format!("CSeq: {cseq} REGISTER"));
                if final_for_us {
                    return answer;
                }
            }
        }
    };

    let challenge = exchange(None, &mut run);
    assert!(
        challenge.starts_with("SIP/2.0 401 "),
        "{challenge}\n{}",
        tail(&run.log, 4000)
    );
    let md5_challenge = challenge
        .lines()
        .find(|l| {
            l.to_ascii_lowercase().starts_with("www-authenticate:")
                && l.to_ascii_lowercase().contains("algorithm=md5")
        })
        .unwrap_or_else(|| panic!("no MD5 challenge in {challenge}"));
    let realm = quoted(md5_challenge, "realm");
    assert_eq!(realm, domain, "{challenge}");
    let nonce = quoted(md5_challenge, "nonce");

    // RFC 2617 §3.2.2.1 (qop=auth), as RFC 3261 §22.4 uses it.
    let uri = format!("sip:{domain}");
    let ha1 = hex_md5(&format!("bob:{realm}:x"));
    let ha2 = hex_md5(&format!("REGISTER:{uri}"));
    let response = hex_md5(&format!("{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}"));
    let authorization = format!(
        "Digest username=\"bob\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c0ffee\""
    );
    let answer = exchange(Some(authorization), &mut run);
    assert!(
        answer.starts_with("SIP/2.0 200 "),
        "{answer}\n{}",
        tail(&run.log, 4000)
    );
}

/// The quoted value of `name="…"` in a header line.
fn quoted(line: &str, name: &str) -> String {
    let key = format!("{name}=\"");
    let start = line
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + key.len();
    let len = line[start..]
        .find('"')
        .unwrap_or_else(|| panic!("unterminated {name} in {line}"));
    line[start..start + len].to_owned()
}

fn hex_md5(s: &str) -> String {
    use std::fmt::Write;
    Md5::digest(s.as_bytes())
        .iter()
        .fold(String::new(), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}
