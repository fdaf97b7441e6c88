//! End-to-end tests of the `permit-proxy` binary with baresip as the real
//! peers: softphones that register (RFC 3261 section 10) and call each other
//! through the proxy (section 16), the way a user's phone would.
//!
//! Each test starts its own proxy on free loopback ports with a fresh data
//! directory and one baresip process per user agent, configured from
//! `testbeds/baresip/config.template` (see the README there): SIP, RTP and
//! the control socket on 127.0.0.1, a sine tone as microphone, no sound
//! device. The test drives each baresip through its `ctrl_tcp` module
//! (netstring JSON commands `uanew`, `dial`, `accept`, `hangup`) and reads
//! the outcome from its events (`REGISTER_OK`, `CALL_INCOMING`,
//! `CALL_ESTABLISHED`, `CALL_CLOSED` with the status line). Every wait is
//! bounded; processes are killed by PID when a test ends, also by a panic.
//!
//! baresip must be on `PATH` (Debian package `baresip-core`). Without it a
//! test prints a note and passes, unless the environment variable `CI` is
//! set: then it fails.
//!
//! The proxy log and each baresip's output with its SIP trace (`-s`) stay in
//! `target/tmp/baresip-e2e/<test>/` for inspection; a failure names them.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::proxy::{Bed, Proxy, ProxyOptions};
use common::{DOMAIN, HOST, Transport, free_port, kill, read_text, tail};

const TESTBED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testbeds/baresip");
/// Longest wait for one expected event.
const EVENT_WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------- environment

/// `true` if baresip can run; `false` (after a note) if it is missing and
/// `CI` is unset; panics if it is missing and `CI` is set.
fn baresip_available() -> bool {
    common::program_available(
        "baresip",
        "-h",
        " (apt-get install baresip-core)",
        "baresip",
    )
}

impl Transport {
    /// How baresip's SIP trace names a message's transport.
    fn trace_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }
}

// ---------------------------------------------------------------- ctrl_tcp

/// One message from baresip's `ctrl_tcp`: a response to a command or an
/// event; its top-level string and boolean members (nested objects such as
/// `rtcp_stats` are skipped).
#[derive(Clone, Debug, Default)]
struct Message(BTreeMap<String, String>);

impl Message {
    fn get(&self, key: &str) -> &str {
        self.0.get(key).map_or("", String::as_str)
    }

    fn is_event(&self) -> bool {
        self.get("event") == "true"
    }

    fn kind(&self) -> &str {
        self.get("type")
    }

    fn param(&self) -> &str {
        self.get("param")
    }
}

/// A tiny reader for the JSON that `ctrl_tcp` writes: one object per
/// netstring. Returns `None` for anything it does not understand.
fn parse_message(text: &str) -> Option<Message> {
    let mut json = Json {
        s: text.as_bytes(),
        at: 0,
    };
    let mut members = BTreeMap::new();
    json.expect(b'{')?;
    if json.peek()? == b'}' {
        return Some(Message(members));
    }
    loop {
        let key = json.string()?;
        json.expect(b':')?;
        if let Value::Text(value) = json.value()? {
            members.insert(key, value);
        }
        match json.next()? {
            b',' => {}
            b'}' => return Some(Message(members)),
            _ => return None,
        }
    }
}

/// A member's value: text for strings, numbers and literals; nested
/// objects and arrays are skipped.
enum Value {
    Text(String),
    Nested,
}

struct Json<'a> {
    s: &'a [u8],
    at: usize,
}

impl Json<'_> {
    fn peek(&mut self) -> Option<u8> {
        while self.s.get(self.at)?.is_ascii_whitespace() {
            self.at += 1;
        }
        self.s.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.at += 1;
        Some(c)
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn value(&mut self) -> Option<Value> {
        match self.peek()? {
            b'"' => self.string().map(Value::Text),
            b'{' | b'[' => {
                let mut depth = 0;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => depth -= 1,
                        _ => {}
                    }
                    self.at += 1;
                    if depth == 0 {
                        return Some(Value::Nested);
                    }
                }
            }
            _ => {
                let start = self.at;
                while !matches!(self.s.get(self.at)?, b',' | b'}' | b']') {
                    self.at += 1;
                }
                let raw = std::str::from_utf8(&self.s[start..self.at]).ok()?;
                Some(Value::Text(raw.trim().to_string()))
            }
        }
    }

    fn string(&mut self) -> Option<String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let c = *self.s.get(self.at)?;
            self.at += 1;
            match c {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let e = *self.s.get(self.at)?;
                    self.at += 1;
                    let ch = match e {
                        b'n' => '\n',
                        b't' => '\t',
                        b'r' => '\r',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'u' => {
                            let hex =
                                std::str::from_utf8(self.s.get(self.at..self.at + 4)?).ok()?;
                            self.at += 4;
                            char::from_u32(u32::from_str_radix(hex, 16).ok()?).unwrap_or('?')
                        }
                        other => char::from(other),
                    };
                    let mut utf8 = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut utf8).as_bytes());
                }
                _ => out.push(c),
            }
        }
    }
}

/// A JSON string literal for `text`.
fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------- baresip

/// Who answers an incoming call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// baresip answers at once (`answermode=auto`).
    Auto,
    /// The test sends `accept`.
    Manual,
}

/// A SIP account of one baresip UA, with the proxy as outbound proxy.
struct Account {
    user: &'static str,
    transport: Transport,
    password: Option<&'static str>,
    answer: Answer,
}

impl Account {
    fn new(user: &'static str, transport: Transport) -> Account {
        Account {
            user,
            transport,
            password: None,
            answer: Answer::Auto,
        }
    }

    fn password(mut self, password: &'static str) -> Account {
        self.password = Some(password);
        self
    }

    fn answer(mut self, answer: Answer) -> Account {
        self.answer = answer;
        self
    }

    /// The account line of baresip's `accounts` file / `uanew` command.
    fn line(&self, proxy: &Proxy) -> String {
        let auth = self
            .password
            .map(|password| format!(";auth_pass={password}"))
            .unwrap_or_default();
        let port = proxy.port(self.transport);
        let transport = self.transport.uri_param();
        let answer = match self.answer {
            Answer::Auto => "auto",
            Answer::Manual => "manual",
        };
        format!(
            "<sip:{}@{DOMAIN}>{auth};outbound=\"sip:{HOST}:{port};transport={transport}\";\
             regint=600;answermode={answer}",
            self.user
        )
    }
}

/// One SIP message in baresip's trace: `TRANSPORT from -> to` as printed
/// (the local address is `from` for a sent message, `to` for a received
/// one), its start line, its CSeq and its header names in order.
#[derive(Clone, Debug)]
struct Traced {
    transport: String,
    from: String,
    to: String,
    start: String,
    cseq: String,
    headers: Vec<String>,
    /// The header lines as printed.
    head: Vec<String>,
    /// The body lines (the SDP of an offer or answer).
    body: Vec<String>,
}

impl Traced {
    /// The first value of header `name` (full name, case-insensitive).
    fn header(&self, name: &str) -> Option<&str> {
        self.head.iter().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The media direction attribute of the SDP body (RFC 3264 section 5.1;
    /// `sendrecv` when the body has none), `None` without a body.
    fn direction(&self) -> Option<&str> {
        if !self.body.iter().any(|l| l.starts_with("v=")) {
            return None;
        }
        let attribute = self.body.iter().find_map(|l| {
            let a = l.strip_prefix("a=")?;
            ["sendrecv", "sendonly", "recvonly", "inactive"]
                .into_iter()
                .find(|d| a == *d)
        });
        Some(attribute.unwrap_or("sendrecv"))
    }

    fn is_request(&self, method: &str) -> bool {
        self.start.starts_with(&format!("{method} "))
    }

    /// A response to `method` with status class `class` (2 for 2xx).
    fn is_response(&self, class: char, method: &str) -> bool {
        self.start
            .strip_prefix("SIP/2.0 ")
            .is_some_and(|s| s.starts_with(class))
            && self.cseq.ends_with(&format!(" {method}"))
    }
}

/// One baresip process with one account, driven through `ctrl_tcp`;
/// killed by its PID when dropped.
struct Baresip {
    name: String,
    child: Child,
    ctrl: TcpStream,
    sip_port: u16,
    buf: Vec<u8>,
    /// Messages read but not yet consumed by a wait.
    queue: VecDeque<Message>,
    /// Every event type seen, for failure messages.
    seen: Vec<String>,
    token: u32,
    log: PathBuf,
    proxy_log: PathBuf,
}

impl Baresip {
    /// Writes the UA's config from the template and starts baresip. A
    /// start-up that lost a port to another process on the machine (bind:
    /// address in use) is retried on other ports, twice at most.
    fn start(dir: &Path, name: &str, proxy: &Proxy) -> Baresip {
        let mut attempt = 1;
        loop {
            match Baresip::try_start(dir, name, proxy) {
                Ok(ua) => return ua,
                Err(why) if attempt < 3 && why.contains("in use") => attempt += 1,
                Err(why) => panic!("baresip {name}: {why}"),
            }
        }
    }

    fn try_start(dir: &Path, name: &str, proxy: &Proxy) -> Result<Baresip, String> {
        let home = dir.join(name);
        fs::create_dir_all(&home).unwrap();
        let (sip_port, ctrl_port) = (free_port(), free_port());
        let template = fs::read_to_string(format!("{TESTBED}/config.template"))
            .expect("read testbeds/baresip/config.template");
        let config = template
            .replace("@SIP_PORT@", &sip_port.to_string())
            .replace("@CTRL_PORT@", &ctrl_port.to_string())
            .replace("@TLS@", "");
        fs::write(home.join("config"), config).unwrap();
        fs::write(home.join("accounts"), "").unwrap();
        let log = dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).unwrap();
        let mut child = Command::new("baresip")
            .arg("-f")
            .arg(&home)
            .arg("-s")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn baresip");
        let deadline = Instant::now() + Duration::from_secs(10);
        let ctrl = loop {
            // A ctrl_tcp that could not bind leaves baresip running without it.
            if read_text(&log).contains("Address already in use") {
                kill(&mut child);
                return Err(format!("a port was in use\n{}", tail(&log, 3000)));
            }
            if let Ok(stream) = TcpStream::connect((HOST, ctrl_port)) {
                break stream;
            }
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!(
                    "exited during start-up: {status}\n{}",
                    tail(&log, 3000)
                ));
            }
            if Instant::now() > deadline {
                kill(&mut child);
                return Err(format!("no ctrl_tcp on {ctrl_port}\n{}", tail(&log, 3000)));
            }
            sleep(Duration::from_millis(50));
        };
        ctrl.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Ok(Baresip {
            name: name.to_string(),
            child,
            ctrl,
            sip_port,
            buf: Vec::new(),
            queue: VecDeque::new(),
            seen: Vec::new(),
            token: 0,
            log,
            proxy_log: proxy.log.clone(),
        })
    }

    /// Reads what `ctrl_tcp` sent so far (waiting up to its read timeout)
    /// into the queue.
    fn receive(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        match self.ctrl.read(&mut chunk) {
            Ok(0) => {
                let status = self.child.try_wait().ok().flatten();
                self.fail(&format!(
                    "ctrl_tcp connection closed (baresip exit: {status:?})"
                ));
            }
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => self.fail(&format!("ctrl_tcp read: {e}")),
        }
        // Netstrings: LEN ":" PAYLOAD ","
        while let Some(colon) = self.buf.iter().position(|&b| b == b':') {
            let Some(len) = std::str::from_utf8(&self.buf[..colon])
                .ok()
                .and_then(|l| l.parse::<usize>().ok())
            else {
                let junk = String::from_utf8_lossy(&self.buf).into_owned();
                self.fail(&format!("ctrl_tcp sent no netstring: {junk:?}"));
            };
            let end = colon + 1 + len;
            if self.buf.len() <= end {
                break;
            }
            let payload = String::from_utf8_lossy(&self.buf[colon + 1..end]).into_owned();
            self.buf.drain(..=end);
            match parse_message(&payload) {
                Some(message) => {
                    if message.is_event() {
                        self.seen
                            .push(format!("{}({})", message.kind(), message.param()));
                    }
                    self.queue.push_back(message);
                }
                None => self.fail(&format!("ctrl_tcp sent unreadable JSON: {payload}")),
            }
        }
    }

    /// Sends a command and returns its response's `data`; panics unless the
    /// response says `ok`.
    fn command(&mut self, command: &str, params: &str) -> String {
        self.token += 1;
        let token = format!("t{}", self.token);
        let json = format!(
            "{{\"command\":{},\"params\":{},\"token\":{}}}",
            json_string(command),
            json_string(params),
            json_string(&token)
        );
        let netstring = format!("{}:{json},", json.len());
        if let Err(e) = self.ctrl.write_all(netstring.as_bytes()) {
            self.fail(&format!("ctrl_tcp write: {e}"));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(at) = self
                .queue
                .iter()
                .position(|m| m.get("response") == "true" && m.get("token") == token)
            {
                let response = self.queue.remove(at).unwrap();
                if response.get("ok") != "true" {
                    self.fail(&format!("command {command} {params}: {:?}", response.0));
                }
                return response.get("data").to_string();
            }
            if Instant::now() > deadline {
                self.fail(&format!("no response to command {command} {params}"));
            }
            self.receive();
        }
    }

    /// Waits for the next event whose type is one of `kinds` and returns it;
    /// events of other types before it are dropped.
    fn wait_event(&mut self, kinds: &[&str]) -> Message {
        let deadline = Instant::now() + EVENT_WAIT;
        loop {
            while let Some(message) = self.queue.pop_front() {
                if message.is_event() && kinds.contains(&message.kind()) {
                    return message;
                }
            }
            if Instant::now() > deadline {
                self.fail(&format!("none of {kinds:?} within {EVENT_WAIT:?}"));
            }
            self.receive();
        }
    }

    /// Waits for `kind`; any of `failures` first fails the test.
    fn expect_event(&mut self, kind: &str, failures: &[&str]) -> Message {
        let mut kinds = vec![kind];
        kinds.extend_from_slice(failures);
        let event = self.wait_event(&kinds);
        if event.kind() != kind {
            self.fail(&format!(
                "expected {kind}, got {} ({})",
                event.kind(),
                event.param()
            ));
        }
        event
    }

    /// Adds `account` (`uanew`) and waits for its registration's outcome:
    /// the `REGISTER_OK` or `REGISTER_FAIL` event.
    fn register(&mut self, account: &Account, proxy: &Proxy) -> Message {
        self.command("uanew", &account.line(proxy));
        self.wait_event(&["REGISTER_OK", "REGISTER_FAIL"])
    }

    /// Adds `account` and asserts the proxy answered its REGISTER with 200.
    fn register_ok(&mut self, account: &Account, proxy: &Proxy) {
        let event = self.register(account, proxy);
        if event.kind() != "REGISTER_OK" {
            self.fail(&format!("registration failed: {}", event.param()));
        }
    }

    /// Calls `user`; returns when the call is established.
    fn call(&mut self, user: &str) {
        self.command("dial", &format!("sip:{user}@{DOMAIN}"));
        self.expect_event("CALL_ESTABLISHED", &["CALL_CLOSED"]);
    }

    /// Calls `user` and returns the reason the call was closed with (the
    /// final response's status line, for a rejected call).
    fn call_rejected(&mut self, user: &str) -> String {
        self.command("dial", &format!("sip:{user}@{DOMAIN}"));
        let event = self.expect_event("CALL_CLOSED", &["CALL_ESTABLISHED"]);
        event.param().to_string()
    }

    /// Hangs up the current call and waits until baresip closed it.
    fn hang_up(&mut self) {
        self.command("hangup", "");
        self.expect_event("CALL_CLOSED", &[]);
    }

    /// The SIP trace baresip printed so far (`-s`).
    fn trace(&self) -> String {
        read_text(&self.log)
    }

    /// The messages of the SIP trace (`-s`), in order.
    fn trace_messages(&self) -> Vec<Traced> {
        let trace = self.trace();
        let lines: Vec<&str> = trace.lines().collect();
        let mut messages = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let words: Vec<&str> = line.split(' ').collect();
            if let [transport @ ("UDP" | "TCP" | "TLS"), from, "->", to] = words[..]
                && let Some(start) = lines.get(i + 1)
            {
                let head: Vec<&str> = lines[i + 2..]
                    .iter()
                    .take_while(|l| !l.is_empty())
                    .copied()
                    .collect();
                let cseq = head
                    .iter()
                    .find_map(|l| l.strip_prefix("CSeq:"))
                    .unwrap_or_default();
                // The body runs to the line that resets the trace's colour. A
                // message whose reset is not written yet is still being printed (its
                // body may be cut short): it is read on a later pass.
                let rest = &lines[i + 2 + head.len()..];
                let Some(end) = rest.iter().skip(1).position(|l| l.contains("[;m")) else {
                    continue;
                };
                let body: Vec<String> = rest[1..=end].iter().map(|l| (*l).to_string()).collect();
                messages.push(Traced {
                    transport: transport.to_string(),
                    from: from.to_string(),
                    to: to.to_string(),
                    start: start.to_string(),
                    cseq: cseq.trim().to_string(),
                    headers: head
                        .iter()
                        .filter_map(|l| l.split_once(':'))
                        .map(|(name, _)| name.trim().to_ascii_lowercase())
                        .collect(),
                    head: head.iter().map(|l| (*l).to_string()).collect(),
                    body,
                });
            }
        }
        messages
    }

    /// Waits until the SIP trace holds at least `n` messages that match `which`
    /// and returns the `n`th.
    fn wait_traced(&self, what: &str, n: usize, which: impl Fn(&Traced) -> bool) -> Traced {
        let deadline = Instant::now() + EVENT_WAIT;
        loop {
            if let Some(m) = self.trace_messages().into_iter().filter(&which).nth(n - 1) {
                return m;
            }
            if Instant::now() > deadline {
                self.fail(&format!("no {what} (#{n}) within {EVENT_WAIT:?}"));
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// How many 2xx responses to REGISTER the trace shows.
    fn register_2xx(&self) -> usize {
        self.trace_messages()
            .iter()
            .filter(|m| m.start.starts_with("SIP/2.0 2") && m.cseq.ends_with(" REGISTER"))
            .count()
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "baresip {}: {what}\nevents seen: {:?}\n{}\n{}",
            self.name,
            self.seen,
            tail(&self.log, 6000),
            tail(&self.proxy_log, 4000)
        );
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

// ---------------------------------------------------------------- tests

impl Bed {
    /// A baresip UA registered with `account`.
    fn registered(&self, name: &str, account: &Account) -> Baresip {
        let mut ua = Baresip::start(&self.dir, name, &self.proxy);
        ua.register_ok(account, &self.proxy);
        ua
    }
}

/// Caller and callee both report the call established; the callee got it as
/// an incoming call.
fn established(caller: &mut Baresip, answerer: &mut Baresip, user: &str) {
    caller.call(user);
    answerer.expect_event("CALL_ESTABLISHED", &["CALL_CLOSED"]);
}

/// The side that hangs up sends BYE; the other side must see it arrive
/// through the proxy (Record-Route, RFC 3261 section 16.6 step 4) and close.
fn hang_up(by: &mut Baresip, other: &mut Baresip) {
    by.hang_up();
    other.expect_event("CALL_CLOSED", &[]);
}

/// Two baresip UAs register over UDP; one calls the other, which answers at
/// once; both report the call established; the caller hangs up.
#[test]
fn udp_call_established_and_hung_up_by_caller() {
    if !baresip_available() {
        return;
    }
    let bed = Bed::new("udp_call", &ProxyOptions::default());
    let mut alice = bed.registered("alice", &Account::new("alice", Transport::Udp));
    let mut bob = bed.registered("bob", &Account::new("bob", Transport::Udp));
    established(&mut bob, &mut alice, "alice");
    hang_up(&mut bob, &mut alice);
}

/// The same over TCP, with the callee answering by hand (`accept` after
/// `CALL_INCOMING`) and hanging up itself.
#[test]
fn tcp_call_accepted_and_hung_up_by_callee() {
    if !baresip_available() {
        return;
    }
    let bed = Bed::new("tcp_call", &ProxyOptions::default());
    let mut alice = bed.registered(
        "alice",
        &Account::new("alice", Transport::Tcp).answer(Answer::Manual),
    );
    let mut bob = bed.registered("bob", &Account::new("bob", Transport::Tcp));
    bob.command("dial", &format!("sip:alice@{DOMAIN}"));
    let incoming = alice.expect_event("CALL_INCOMING", &["CALL_CLOSED"]);
    assert!(
        incoming.get("peeruri").contains("bob@"),
        "incoming call from {:?}",
        incoming.0
    );
    alice.command("accept", "");
    alice.expect_event("CALL_ESTABLISHED", &["CALL_CLOSED"]);
    bob.expect_event("CALL_ESTABLISHED", &["CALL_CLOSED"]);
    hang_up(&mut alice, &mut bob);
}

/// A UDP caller reaches a TCP callee and back: the proxy bridges transports.
#[test]
fn udp_caller_reaches_tcp_callee() {
    if !baresip_available() {
        return;
    }
    let bed = Bed::new("udp_to_tcp", &ProxyOptions::default());
    let mut alice = bed.registered("alice", &Account::new("alice", Transport::Tcp));
    let mut bob = bed.registered("bob", &Account::new("bob", Transport::Udp));
    established(&mut bob, &mut alice, "alice");
    hang_up(&mut alice, &mut bob);
    let used = |ua: &Baresip, transport: Transport| {
        ua.trace_messages()
            .iter()
            .filter(|m| m.start.starts_with("INVITE ") || m.start.starts_with("BYE "))
            .all(|m| m.transport == transport.trace_name())
    };
    assert!(
        used(&alice, Transport::Tcp) && used(&bob, Transport::Udp),
        "the legs did not use the transports asked for"
    );
}

/// A call to a user the proxy does not know ends in 404 (RFC 3261 21.4.5);
/// one whose binding was removed (`uadel` sends REGISTER with expires=0)
/// ends in 480 (16.5: no live contact).
#[test]
fn calls_to_unknown_and_unregistered_users_are_rejected() {
    if !baresip_available() {
        return;
    }
    let bed = Bed::new("rejected", &ProxyOptions::default());
    let alice_account = Account::new("alice", Transport::Udp);
    let mut alice = bed.registered("alice", &alice_account);
    let mut bob = bed.registered("bob", &Account::new("bob", Transport::Udp));
    let reason = bob.call_rejected("nobody");
    assert!(
        reason.starts_with("404"),
        "call to nobody closed with {reason:?}"
    );

    // The second 2xx to REGISTER in alice's trace answers the removal.
    assert_eq!(alice.register_2xx(), 1);
    alice.command("uadel", &format!("sip:alice@{DOMAIN}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while alice.register_2xx() < 2 {
        assert!(
            Instant::now() < deadline,
            "the REGISTER with expires=0 got no 2xx"
        );
        sleep(Duration::from_millis(50));
    }
    let reason = bob.call_rejected("alice");
    assert!(
        reason.starts_with("480"),
        "call to unregistered alice closed with {reason:?}"
    );
}

// ------------------------------------------------- digest authentication, TLS

/// The algorithms the proxy may offer baresip. baresip 1.0 (Debian 12) with
/// libre 1.1 knows MD5 only, and gives up on a 401/407 as soon as any of its
/// challenges names another algorithm ("Function not implemented"), in
/// whatever order: against the default MD5 + SHA-256 challenge pair it can
/// never register. SHA-256 is proven with PJSIP (`pjsua_e2e.rs`).
const BARESIP_DIGEST: Option<&str> = Some("md5");

/// The users of the authenticated tests and their passwords.
fn users() -> Vec<(&'static str, &'static str)> {
    vec![("alice", "alice-secret"), ("bob", "bob-secret")]
}

/// With passwords: each REGISTER is challenged with 401 and retried with
/// credentials (RFC 3261 22.2), the INVITE with 407 (22.3); the call is
/// established on both sides and hung up.
#[test]
fn md5_digest_register_and_call() {
    if !baresip_available() {
        return;
    }
    let options = ProxyOptions {
        users: users(),
        permits: vec![("alice", "bob")],
        digest_algorithms: BARESIP_DIGEST,
        ..ProxyOptions::default()
    };
    let bed = Bed::new("md5_digest", &options);
    let mut alice = bed.registered(
        "alice",
        &Account::new("alice", Transport::Udp).password("alice-secret"),
    );
    let mut bob = bed.registered(
        "bob",
        &Account::new("bob", Transport::Tcp).password("bob-secret"),
    );
    established(&mut bob, &mut alice, "alice");
    hang_up(&mut alice, &mut bob);
    let starts: Vec<String> = bob.trace_messages().into_iter().map(|m| m.start).collect();
    for expected in ["SIP/2.0 401", "SIP/2.0 407"] {
        assert!(
            starts.iter().any(|s| s.starts_with(expected)),
            "bob was never challenged with {expected}: {starts:?}"
        );
    }
}

/// A wrong password never gets a 2xx to REGISTER; a caller without
/// credentials never gets its INVITE through (407, RFC 3261 22.3).
#[test]
fn wrong_or_missing_credentials_are_refused() {
    if !baresip_available() {
        return;
    }
    let options = ProxyOptions {
        users: users(),
        digest_algorithms: BARESIP_DIGEST,
        ..ProxyOptions::default()
    };
    let bed = Bed::new("wrong_credentials", &options);
    let mut mallory = Baresip::start(&bed.dir, "mallory", &bed.proxy);
    let outcome = mallory.register(
        &Account::new("alice", Transport::Udp).password("not-alice-secret"),
        &bed.proxy,
    );
    assert_eq!(
        outcome.kind(),
        "REGISTER_FAIL",
        "a wrong password registered: {:?}",
        outcome.0
    );
    assert_eq!(
        mallory.register_2xx(),
        0,
        "2xx to REGISTER with a wrong password"
    );

    let _alice = bed.registered(
        "alice",
        &Account::new("alice", Transport::Udp).password("alice-secret"),
    );
    let mut stranger = Baresip::start(&bed.dir, "stranger", &bed.proxy);
    stranger.command(
        "uanew",
        &Account::new("carol", Transport::Udp)
            .line(&bed.proxy)
            .replace("regint=600", "regint=0"),
    );
    let reason = stranger.call_rejected("alice");
    assert!(
        reason.starts_with("407") || reason.starts_with("403"),
        "a caller without credentials got {reason:?}"
    );
}

/// The acceptance test of TLS: baresip registers over TLS with a password
/// and is called over its registered TLS connection. The callee has no
/// certificate of its own, so it cannot accept a TLS connection: the INVITE
/// can only come back over the connection it opened (RFC 5923 / RFC 5626
/// connection reuse); the trace must show exactly that connection.
#[test]
fn tls_callee_with_password_is_called_over_its_registered_connection() {
    if !baresip_available() {
        return;
    }
    let options = ProxyOptions {
        users: users(),
        permits: vec![("alice", "bob")],
        digest_algorithms: BARESIP_DIGEST,
        tls: true,
    };
    let bed = Bed::new("tls_callee", &options);
    let mut alice = bed.registered(
        "alice",
        &Account::new("alice", Transport::Tls).password("alice-secret"),
    );
    let mut bob = bed.registered(
        "bob",
        &Account::new("bob", Transport::Udp).password("bob-secret"),
    );
    established(&mut bob, &mut alice, "alice");
    hang_up(&mut bob, &mut alice);

    let proxy_tls = format!("{HOST}:{}", bed.proxy.port(Transport::Tls));
    let messages = alice.trace_messages();
    let register = messages
        .iter()
        .find(|m| {
            m.transport == Transport::Tls.trace_name()
                && m.to == proxy_tls
                && m.start.starts_with("REGISTER ")
        })
        .unwrap_or_else(|| alice.fail("no REGISTER over TLS in the trace"));
    let invite = messages
        .iter()
        .find(|m| m.start.starts_with("INVITE "))
        .unwrap_or_else(|| alice.fail("no INVITE in the trace"));
    assert!(
        invite.transport == Transport::Tls.trace_name()
            && invite.from == proxy_tls
            && invite.to == register.from,
        "INVITE came as {} {} -> {}, not over the registered connection \
         {proxy_tls} -> {} (alice's TLS listener is {HOST}:{})",
        invite.transport,
        invite.from,
        invite.to,
        register.from,
        alice.sip_port + 1
    );
}

/// The gate (docs/profile.md, "Gate"): an authenticated caller who is not on
/// the callee's permitted-terminal list gets 403, and a call to a user who
/// does not exist gets the very same 403 (status line, header names in the
/// same order), so a refused caller cannot tell the two apart; a permitted
/// caller gets through.
#[test]
fn gate_refuses_unlisted_callers_and_unknown_callees_alike() {
    if !baresip_available() {
        return;
    }
    let options = ProxyOptions {
        users: vec![
            ("alice", "alice-secret"),
            ("bob", "bob-secret"),
            ("carol", "carol-secret"),
        ],
        permits: vec![("alice", "bob")],
        digest_algorithms: BARESIP_DIGEST,
        ..ProxyOptions::default()
    };
    let bed = Bed::new("gate", &options);
    let mut alice = bed.registered(
        "alice",
        &Account::new("alice", Transport::Udp).password("alice-secret"),
    );
    let mut bob = bed.registered(
        "bob",
        &Account::new("bob", Transport::Udp).password("bob-secret"),
    );
    let mut carol = bed.registered(
        "carol",
        &Account::new("carol", Transport::Udp).password("carol-secret"),
    );
    for callee in ["alice", "nobody"] {
        let reason = carol.call_rejected(callee);
        assert!(
            reason.starts_with("403"),
            "carol's call to {callee} closed with {reason:?}"
        );
    }
    let refusals: Vec<Traced> = carol
        .trace_messages()
        .into_iter()
        .filter(|m| m.start.starts_with("SIP/2.0 403") && m.cseq.ends_with(" INVITE"))
        .collect();
    assert!(
        refusals.len() == 2
            && refusals[0].start == refusals[1].start
            && refusals[0].headers == refusals[1].headers,
        "the two 403s differ: {:?}",
        refusals
            .iter()
            .map(|m| (&m.start, &m.headers))
            .collect::<Vec<_>>()
    );
    established(&mut bob, &mut alice, "alice");
    hang_up(&mut bob, &mut alice);
}

// ------------------------------------------------------------- hold and resume

/// `holder` puts the established call on hold and takes it back (baresip's
/// `hold` and `resume`): each is a re-INVITE in the dialog (RFC 3261 section
/// 14) that goes from `holder` to the proxy and along the route set to
/// `other`, whose answer comes back the same way. The offers say `sendonly`
/// then `sendrecv`, the answers `recvonly` then `sendrecv` (RFC 3264 sections
/// 6.1 and 8.4). `proxy_at` are the proxy's addresses (`IP:PORT`) that
/// `holder` and `other` send to: what a UA's trace shows going elsewhere it
/// received.
fn hold_and_resume(holder: &mut Baresip, other: &mut Baresip, proxy_at: (&str, &str)) {
    let (holder_proxy, other_proxy) = proxy_at;
    let received_reinvite = |m: &Traced| {
        m.is_request("INVITE")
            && m.to != other_proxy
            && m.header("To").is_some_and(|t| t.contains("tag="))
    };
    let answered = |m: &Traced| m.is_response('2', "INVITE") && m.to != holder_proxy;
    let count = |ua: &Baresip, f: &dyn Fn(&Traced) -> bool| {
        ua.trace_messages().iter().filter(|m| f(m)).count()
    };
    for (command, offer, answer) in [
        ("hold", "sendonly", "recvonly"),
        ("resume", "sendrecv", "sendrecv"),
    ] {
        let reinvites = count(other, &received_reinvite) + 1;
        let answers = count(holder, &answered) + 1;
        holder.command(command, "");
        let reinvite = other.wait_traced(
            &format!("re-INVITE for {command}"),
            reinvites,
            received_reinvite,
        );
        let vias = reinvite
            .headers
            .iter()
            .filter(|h| *h == "via" || *h == "v")
            .count();
        assert!(
            reinvite.direction() == Some(offer) && vias >= 2,
            "{command}: {} received {:?} with {vias} Via and media {:?}, expected {offer} through the proxy:\n{:?}",
            other.name,
            reinvite.start,
            reinvite.direction(),
            reinvite.head
        );
        let ok = holder.wait_traced(
            &format!("2xx to the re-INVITE for {command}"),
            answers,
            answered,
        );
        assert_eq!(
            ok.direction(),
            Some(answer),
            "{command}: {} got {:?} answering {:?}",
            holder.name,
            ok.start,
            ok.body
        );
        assert_eq!(
            ok.cseq, reinvite.cseq,
            "{command}: the answer to another request"
        );
    }
}

/// The users of the hold tests; each may call the other.
fn hold_options(tls: bool) -> ProxyOptions {
    ProxyOptions {
        users: users(),
        permits: vec![("alice", "bob"), ("bob", "alice")],
        digest_algorithms: BARESIP_DIGEST,
        tls,
    }
}

/// Who ends the call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HangUp {
    Alice,
    Bob,
}

/// bob calls alice over the given transports, then bob holds and resumes,
/// then alice holds and resumes (the callee's re-INVITE goes the other way
/// along the route set, RFC 3261 section 12.2.1.1); the call is then still up
/// until `by` hangs up, and each side closed it once.
fn call_with_hold_both_ways(test: &str, alice_on: Transport, bob_on: Transport, by: HangUp) {
    let tls = alice_on == Transport::Tls || bob_on == Transport::Tls;
    let bed = Bed::new(test, &hold_options(tls));
    let mut alice = bed.registered(
        "alice",
        &Account::new("alice", alice_on).password("alice-secret"),
    );
    let mut bob = bed.registered("bob", &Account::new("bob", bob_on).password("bob-secret"));
    established(&mut bob, &mut alice, "alice");
    let at = |t: Transport| format!("{HOST}:{}", bed.proxy.port(t));
    let (alice_proxy, bob_proxy) = (at(alice_on), at(bob_on));
    hold_and_resume(&mut bob, &mut alice, (&bob_proxy, &alice_proxy));
    hold_and_resume(&mut alice, &mut bob, (&alice_proxy, &bob_proxy));
    match by {
        HangUp::Alice => hang_up(&mut alice, &mut bob),
        HangUp::Bob => hang_up(&mut bob, &mut alice),
    }
    for (ua, name) in [(&alice, "alice"), (&bob, "bob")] {
        let closes = ua
            .seen
            .iter()
            .filter(|e| e.starts_with("CALL_CLOSED"))
            .count();
        assert_eq!(
            closes, 1,
            "{name}'s call closed more than once: {:?}",
            ua.seen
        );
    }
}

#[test]
fn udp_call_with_hold_and_resume_both_ways() {
    if baresip_available() {
        call_with_hold_both_ways("udp_hold", Transport::Udp, Transport::Udp, HangUp::Bob);
    }
}

/// Across transports the proxy records two routes (RFC 5658), both sealed;
/// alice's TCP listener takes the proxy's connections.
#[test]
fn tcp_to_udp_call_with_hold_and_resume_both_ways() {
    if baresip_available() {
        call_with_hold_both_ways("tcp_udp_hold", Transport::Tcp, Transport::Udp, HangUp::Bob);
    }
}

/// alice over TLS, bob over UDP: alice, who has no certificate, gets bob's
/// re-INVITEs over the connection she registered on, and hers reach bob over
/// UDP; the proxy records a TLS and a UDP route (RFC 5658), both sealed.
/// After her own re-INVITE alice's Contact names her TLS listening port
/// (SIP port + 1, where no handshake can complete without a certificate),
/// not her connection: bob's BYE to it must still reach her over her
/// registered flow.
#[test]
fn tls_callee_holds_and_resumes_both_ways() {
    if baresip_available() {
        call_with_hold_both_ways("tls_hold", Transport::Tls, Transport::Udp, HangUp::Bob);
    }
}

/// Both over TLS. bob, the caller, has no certificate either and his
/// Contact names his TLS listening port: alice's re-INVITEs and her BYE
/// reach him only over the connection he registered and called over (RFC
/// 5626 section 5.3, RFC 5923), never over a new connection to his Contact.
#[test]
fn tls_call_with_hold_and_resume_both_ways() {
    if baresip_available() {
        call_with_hold_both_ways(
            "tls_tls_hold",
            Transport::Tls,
            Transport::Tls,
            HangUp::Alice,
        );
    }
}

/// Store and forward (docs/profile.md "Store and forward"): SIPp deposits a
/// MESSAGE for bob while he is offline (202); bob's baresip then registers
/// with `mwi=yes` (module `mwi`, loaded with `insmod`), subscribes to
/// `message-summary` (401, credentials, 200), and its `MWI_NOTIFY` event
/// carries the proxy's NOTIFY body: `Messages-Waiting: yes`, one item listed.
#[test]
fn stored_message_lights_the_message_waiting_lamp_of_baresip() {
    if !baresip_available() || !common::sipp::sipp_available() {
        return;
    }
    let bed = Bed::new(
        "mwi",
        &ProxyOptions {
            users: users(),
            digest_algorithms: BARESIP_DIGEST,
            permits: vec![("bob", "alice")],
            ..ProxyOptions::default()
        },
    );
    let udp = bed.proxy.port(Transport::Udp);
    let deposit = common::sipp::Sipp::new(
        &bed.dir,
        "deposit",
        "message_deposit.xml",
        Transport::Udp,
        Some(udp),
    )
    .arg(&["-s", "bob", "-au", "alice", "-ap", "alice-secret"])
    .arg(&["-auth_uri", &format!("bob@{DOMAIN}"), "-m", "1"])
    .key("caller", "alice")
    .key("body", "call me back")
    .run_ok(1);
    let accepted = deposit
        .trace()
        .into_iter()
        .find(|t| t.received && t.status() == Some(202))
        .expect("the deposit was answered 202");
    let item = accepted.header("Permit-Item").expect("Permit-Item");
    let id = item.split(';').next().unwrap().to_owned();

    let mut bob = Baresip::start(&bed.dir, "bob", &bed.proxy);
    bob.command("insmod", "mwi");
    // baresip 1.0's mwi module arms a 1 ms timer at load that subscribes once for
    // every entry of its subscription list while it appends to that list: if the
    // account registers before that timer fires (three round trips through a fast
    // proxy fit in a millisecond), baresip loops forever sending SUBSCRIBEs and
    // stops reading its socket. Let the timer fire on an empty list first.
    sleep(Duration::from_millis(100));
    let account = Account::new("bob", Transport::Udp).password("bob-secret");
    bob.command("uanew", &format!("{};mwi=yes", account.line(&bed.proxy)));
    bob.expect_event("REGISTER_OK", &["REGISTER_FAIL"]);
    // baresip 1.0 reports the NOTIFY of its subscription as an event (whose
    // param it leaves empty) and prints "MWI for <aor>".
    bob.expect_event("MWI_NOTIFY", &[]);
    let subscribed = bob
        .trace_messages()
        .iter()
        .any(|m| m.is_response('2', "SUBSCRIBE"));
    assert!(subscribed, "SUBSCRIBE answered 2xx\n{}", bob.trace());
    // The NOTIFY in the subscription's dialog, and its body.
    let notify = bob.wait_traced("the NOTIFY of the subscription", 1, |m| {
        m.is_request("NOTIFY")
            && m.header("Subscription-State")
                .is_some_and(|s| s.starts_with("active;expires="))
    });
    assert_eq!(notify.header("Event"), Some("message-summary"));
    let body = notify.body.join("\n");
    assert!(
        body.starts_with(
            "Messages-Waiting: yes\nMessage-Account: sip:bob@localhost\nText-Message: 1/0"
        ),
        "{body}"
    );
    assert!(body.contains(&format!("Permit-Item: {id};")), "{body}");
    bob.wait_traced("bob's 200 to the NOTIFY", 1, |m| {
        m.is_response('2', "NOTIFY")
    });
    assert!(read_text(&bob.log).contains("MWI for sip:bob@localhost"));
}
