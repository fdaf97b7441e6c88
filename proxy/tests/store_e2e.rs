//! End-to-end tests of store-and-forward with the real `permit-proxy` binary
//! (docs/profile.md "Store and forward"): SIPp deposits a MESSAGE for an
//! offline callee (202), the proxy is killed with SIGKILL, the item is in
//! `mailbox.sqlite` and, after a restart, is delivered once to the callee's
//! transfer request and deleted on its 2xx; a store at its size cap answers
//! 507 and stores nothing.
//!
//! The callee's UA here is a plain UDP socket speaking just enough SIP (digest
//! MD5 computed with md-5 independently of the proxy). SIPp must be on `PATH`
//! (Debian `sip-tester`); without it the SIPp test passes with a note unless
//! `CI` is set.

mod common;

use std::fmt::Write as _;
use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use common::proxy::{Ports, Proxy};
use common::sipp::{Sipp, sipp_available};
use common::{DOMAIN, HOST, Transport, add_permit, add_user, free_port, wait_until, workdir};
use md5::{Digest as _, Md5};
use sha2::Sha256;

const BODY: &str = "meet me at noon, the usual place";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A received SIP message: start line, headers, body.
#[derive(Debug, Clone)]
struct Msg {
    start: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Msg {
    fn parse(data: &[u8]) -> Msg {
        let split = data
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a header section");
        let head = String::from_utf8_lossy(&data[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let start = lines.next().unwrap().to_owned();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Msg {
            start,
            headers,
            body: data[split + 4..].to_vec(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn status(&self) -> Option<u16> {
        self.start.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
    }

    fn is_request(&self, method: &str) -> bool {
        self.start.starts_with(&format!("{method} "))
    }
}

/// A user's UA: one UDP socket towards the proxy.
struct Ua {
    user: &'static str,
    password: &'static str,
    socket: UdpSocket,
    proxy: u16,
    n: u32,
}

impl Ua {
    fn new(user: &'static str, password: &'static str, proxy: u16) -> Ua {
        let socket = UdpSocket::bind((HOST, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Ua {
            user,
            password,
            socket,
            proxy,
            n: 0,
        }
    }

    fn port(&self) -> u16 {
        self.socket.local_addr().unwrap().port()
    }

    /// Messages received within `wait`, stopping early once `enough` holds.
    fn receive(&self, wait: Duration, enough: impl Fn(&[Msg]) -> bool) -> Vec<Msg> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65_536];
        while Instant::now() < deadline && !enough(&out) {
            if let Ok(n) = self.socket.recv(&mut buf) {
                out.push(Msg::parse(&buf[..n]));
            }
        }
        out
    }

    /// Sends `method` to `ruri` (extra header lines, body), answers a 401/407
    /// with MD5 digest credentials, and returns everything received until a
    /// final response to the authenticated attempt.
    fn request(&mut self, method: &str, ruri: &str, extra: &str, body: &[u8]) -> Vec<Msg> {
        let first = self.send(method, ruri, extra, body, None);
        let challenge = first
            .iter()
            .find(|m| matches!(m.status(), Some(401 | 407)))
            .unwrap_or_else(|| panic!("no challenge: {first:?}"))
            .clone();
        let (field, line) = if challenge.status() == Some(401) {
            ("WWW-Authenticate", "Authorization")
        } else {
            ("Proxy-Authenticate", "Proxy-Authorization")
        };
        let ch = challenge.header(field).unwrap().to_owned();
        let param = |k: &str| {
            let at = ch.find(&format!("{k}=\"")).unwrap() + k.len() + 2;
            ch[at..at + ch[at..].find('"').unwrap()].to_owned()
        };
        let (realm, nonce) = (param("realm"), param("nonce"));
        let md5 = |s: String| hex(&Md5::digest(s.as_bytes()));
        let ha1 = md5(format!("{}:{realm}:{}", self.user, self.password));
        let ha2 = md5(format!("{method}:{ruri}"));
        let response = md5(format!("{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}"));
        let creds = format!(
            "{line}: Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{ruri}\", \
response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c0ffee\"\r\n",
            self.user
        );
        self.send(method, ruri, extra, body, Some(&creds))
    }

    fn send(
        &mut self,
        method: &str,
        ruri: &str,
        extra: &str,
        body: &[u8],
        auth: Option<&str>,
    ) -> Vec<Msg> {
        self.n += 1;
        let (n, port, user) = (self.n, self.port(), self.user);
        let mut req = format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:{port};branch=z9hG4bK-ua-{user}-{n};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=ua{n}\r\nTo: <{ruri}>\r\n\
Call-ID: ua-{user}-{port}-{n}\r\nCSeq: {n} {method}\r\nContact: <sip:{user}@{HOST}:{port}>\r\n\
{}{extra}Content-Length: {}\r\n\r\n",
            auth.unwrap_or_default(),
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.socket.send_to(&req, (HOST, self.proxy)).unwrap();
        self.receive(Duration::from_secs(5), |got| {
            got.iter().any(|m| m.status().is_some_and(|s| s >= 200))
        })
    }

    /// A response to a request the proxy sent us.
    fn answer(&self, req: &Msg, code: u16) {
        let mut r = format!("SIP/2.0 {code} Answered\r\n");
        for (name, value) in &req.headers {
            if ["Via", "From", "Call-ID", "CSeq"]
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name))
            {
                let _ = write!(r, "{name}: {value}\r\n");
            } else if name.eq_ignore_ascii_case("To") {
                let _ = write!(r, "To: {value};tag=ok{code}\r\n");
            }
        }
        r.push_str("Content-Length: 0\r\n\r\n");
        self.socket
            .send_to(r.as_bytes(), (HOST, self.proxy))
            .unwrap();
    }

    /// The transfer request (MESSAGE to the own AOR, `Event: permit-transfer`):
    /// its final response and the deliveries that arrived with it.
    fn transfer(&mut self, expect_items: usize) -> (Msg, Vec<Msg>) {
        let ruri = format!("sip:{}@{DOMAIN}", self.user);
        let mut got = self.request("MESSAGE", &ruri, "Event: permit-transfer\r\n", b"");
        got.extend(self.receive(Duration::from_secs(5), |g| {
            g.iter().filter(|m| m.is_request("MESSAGE")).count() >= expect_items
        }));
        let fin = got
            .iter()
            .find(|m| m.status().is_some_and(|s| s >= 200))
            .expect("an answer to the transfer request")
            .clone();
        let delivered = got
            .into_iter()
            .filter(|m| m.is_request("MESSAGE"))
            .collect();
        (fin, delivered)
    }
}

/// Items in `mailbox.sqlite`: (id, owner, sender, body).
fn stored(data: &Path) -> Vec<(String, String, String, Vec<u8>)> {
    let conn = rusqlite::Connection::open(data.join("mailbox.sqlite")).unwrap();
    let mut stmt = conn
        .prepare("SELECT id, owner, sender, body FROM item ORDER BY stored_at")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn bed(test: &str) -> (std::path::PathBuf, std::path::PathBuf, Ports) {
    let dir = workdir(test);
    let data = dir.join("data");
    add_user(&data, "alice", "alice-pw");
    add_user(&data, "bob", "bob-pw");
    add_permit(&data, "bob", "alice");
    let ports = Ports {
        udp: free_port(),
        tcp: Some(free_port()),
        tls: None,
    };
    (dir, data, ports)
}

#[test]
fn sipp_deposit_survives_kill_9_and_is_delivered_once() {
    if !sipp_available() {
        return;
    }
    let (dir, data, ports) = bed("kill9");
    let proxy = Proxy::start(&dir, "proxy", &data, ports, &[]);
    // bob is offline: never registered.
    let sipp = Sipp::new(
        &dir,
        "deposit",
        "message_deposit.xml",
        Transport::Udp,
        Some(ports.udp),
    )
    .arg(&["-s", "bob", "-au", "alice", "-ap", "alice-pw"])
    .arg(&["-auth_uri", &format!("bob@{DOMAIN}"), "-m", "1"])
    .key("caller", "alice")
    .key("body", BODY)
    .run_ok(1);
    let accepted = sipp
        .trace()
        .into_iter()
        .find(|t| t.received && t.status() == Some(202))
        .expect("SIPp received the 202");
    let item = accepted
        .header("Permit-Item")
        .expect("Permit-Item in the 202");
    let id = item.split(';').next().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    // What SIPp sent as the body (its template ends the line with CRLF).
    let sent = sipp
        .trace()
        .into_iter()
        .rfind(|t| !t.received && t.is_request("MESSAGE"))
        .expect("SIPp sent the MESSAGE");
    let body = Msg::parse(&sent.bytes).body;
    assert!(body.starts_with(BODY.as_bytes()));

    // SIGKILL right after the 202: the item is on disk.
    proxy.kill_hard();
    let rows = stored(&data);
    assert_eq!(rows.len(), 1, "one item in mailbox.sqlite after kill -9");
    assert_eq!(rows[0].0, id);
    assert_eq!(
        (rows[0].1.as_str(), rows[0].2.as_str()),
        ("bob@localhost", "alice@localhost")
    );
    assert_eq!(rows[0].3, body);

    // Restarted on the same data: bob asks for his items.
    let _proxy = Proxy::start(&dir, "proxy-restarted", &data, ports, &[]);
    let mut bob = Ua::new("bob", "bob-pw", ports.udp);
    let (ok, delivered) = bob.transfer(1);
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    assert_eq!(ok.header("Permit-Items"), Some("1"));
    assert_eq!(delivered.len(), 1, "one delivery");
    let m = &delivered[0];
    let permit_item = m.header("Permit-Item").unwrap();
    assert!(permit_item.starts_with(&id), "{permit_item}");
    let sha = hex(&Sha256::digest(&m.body));
    assert_eq!(m.body, body, "the bytes match");
    assert!(
        permit_item.contains(&format!("sha256={sha}")),
        "{permit_item}"
    );
    assert_eq!(m.header("Permit-Attributes"), Some("secret"));
    assert_eq!(m.header("Content-Type"), Some("text/plain"));
    assert!(m.header("From").unwrap().contains("sip:alice@localhost"));
    // Acknowledged: deleted, and the next transfer finds nothing.
    bob.answer(m, 200);
    wait_until(
        Duration::from_secs(5),
        "the item deleted after the 2xx",
        || stored(&data).is_empty(),
    );
    let (ok, delivered) = bob.transfer(0);
    assert_eq!(ok.header("Permit-Items"), Some("0"));
    assert!(delivered.is_empty());
}

#[test]
fn a_store_at_its_cap_answers_507_and_stores_nothing() {
    let (dir, data, ports) = bed("full");
    let config = dir.join("permit.toml");
    std::fs::write(&config, "[store]\nmax_file_bytes = 49152\n").unwrap();
    let config = config.display().to_string();
    let _proxy = Proxy::start(&dir, "proxy", &data, ports, &["--config", &config]);
    let mut alice = Ua::new("alice", "alice-pw", ports.udp);
    let ruri = format!("sip:bob@{DOMAIN}");
    let queue = "Request-Disposition: queue\r\nContent-Type: application/octet-stream\r\n";
    let big = vec![0x5au8; 40_000];
    let got = alice.request("MESSAGE", &ruri, queue, &big);
    let fin = got.iter().rfind(|m| m.status().is_some()).unwrap();
    assert_eq!(fin.status(), Some(507), "{fin:?}");
    assert!(fin.header("Retry-After").is_some());
    assert!(stored(&data).is_empty(), "nothing stored");
    // A small one still fits: 202.
    let got = alice.request("MESSAGE", &ruri, queue, b"small");
    assert_eq!(
        got.iter().rfind(|m| m.status().is_some()).unwrap().status(),
        Some(202)
    );
    assert_eq!(stored(&data).len(), 1);
}

/// SIPp both sides: bob is a registered SIPp UAS that answers the load query
/// 486 (`uas_busy.xml`); SIPp's deposit from alice is stored and answered 202
/// instead of 486, and bob is never sent the MESSAGE.
#[test]
fn busy_sipp_callee_gets_no_message_and_the_deposit_is_stored() {
    if !sipp_available() {
        return;
    }
    let (dir, data, ports) = bed("busy");
    let _proxy = Proxy::start(&dir, "proxy", &data, ports, &[]);
    let uas = Sipp::new(&dir, "bob-busy", "uas_busy.xml", Transport::Udp, None)
        .arg(&["-m", "1"])
        .timeout(30)
        .spawn()
        .wait_listening();
    Sipp::new(
        &dir,
        "register-bob",
        "register.xml",
        Transport::Udp,
        Some(ports.udp),
    )
    .arg(&["-s", "bob", "-au", "bob", "-ap", "bob-pw"])
    .arg(&["-m", "1", "-auth_uri", DOMAIN])
    .key("contact_host", uas.sipp.host)
    .key("contact_port", &uas.sipp.port.to_string())
    .key("contact_transport", "udp")
    .key("expires", "3600")
    .run_ok(1);
    Sipp::new(
        &dir,
        "deposit",
        "message_deposit.xml",
        Transport::Udp,
        Some(ports.udp),
    )
    .arg(&["-s", "bob", "-au", "alice", "-ap", "alice-pw"])
    .arg(&["-auth_uri", &format!("bob@{DOMAIN}"), "-m", "1"])
    .key("caller", "alice")
    .key("body", BODY)
    .run_ok(1);
    let callee = uas.finish_ok(1).trace();
    let asked = callee
        .iter()
        .filter(|t| t.received && t.is_request("OPTIONS"))
        .count();
    assert_eq!(asked, 1, "one load query");
    assert!(
        !callee.iter().any(|t| t.received && t.is_request("MESSAGE")),
        "the busy callee got no MESSAGE"
    );
    let rows = stored(&data);
    assert_eq!(rows.len(), 1);
    assert!(rows[0].3.starts_with(BODY.as_bytes()));
}

/// A minimal HTTP/1.1 client: one request, `Connection: close`; the status, the
/// header lines and the body.
fn http(url: &str, method: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, Msg) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = std::net::TcpStream::connect(authority).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        let _ = write!(req, "{n}: {v}\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let m = Msg::parse(&out);
    let status = m.start.split(' ').nth(1).unwrap().parse().unwrap();
    (status, m)
}

fn upload_bed(test: &str) -> (std::path::PathBuf, std::path::PathBuf, Ports, Vec<String>) {
    let (dir, data, ports) = bed(test);
    let config = dir.join("permit.toml");
    let http = free_port();
    std::fs::write(
        &config,
        format!("[store]\nhttp_listen = \"{HOST}:{http}\"\n"),
    )
    .unwrap();
    let flags = vec!["--config".to_owned(), config.display().to_string()];
    (dir, data, ports, flags)
}

/// alice announces `file` for bob; the upload URL from the 202.
fn announce(alice: &mut Ua, file: &[u8], sha: &str) -> String {
    let body = format!(
        "{{\"size\":{},\"sha256\":\"{sha}\",\"type\":\"application/octet-stream\",\"name\":\"f.bin\"}}",
        file.len()
    );
    let got = alice.request(
        "MESSAGE",
        &format!("sip:bob@{DOMAIN}"),
        "Request-Disposition: queue\r\nContent-Type: application/permit-upload+json\r\n",
        body.as_bytes(),
    );
    let fin = got.iter().rfind(|m| m.status().is_some()).unwrap();
    assert_eq!(fin.status(), Some(202), "{fin:?}");
    fin.header("Permit-Upload")
        .expect("Permit-Upload")
        .trim_matches(['<', '>'])
        .to_owned()
}

fn chunk(file: &[u8], first: usize, last: usize) -> (Vec<(&'static str, String)>, Vec<u8>) {
    (
        vec![(
            "Content-Range",
            format!("bytes {first}-{last}/{}", file.len()),
        )],
        file[first..=last].to_vec(),
    )
}

#[test]
fn an_upload_resumes_after_kill_9_and_the_callee_downloads_it_once() {
    let (dir, data, ports, flags) = upload_bed("upload");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let proxy = Proxy::start(&dir, "proxy", &data, ports, &flags);
    let file: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sha = hex(&Sha256::digest(&file));
    let mut alice = Ua::new("alice", "alice-pw", ports.udp);
    let url = announce(&mut alice, &file, &sha);

    let (h, b) = chunk(&file, 0, 149_999);
    let (status, r) = http(&url, "PUT", &h, &b);
    assert_eq!(status, 204, "{r:?}");
    assert_eq!(r.header("Upload-Offset"), Some("150000"));
    // SIGKILL half way: nothing is visible as an item, the bytes so far are kept.
    proxy.kill_hard();
    assert!(stored(&data).is_empty(), "no half item");
    let _proxy = Proxy::start(&dir, "proxy-restarted", &data, ports, &flags);
    let (status, r) = http(&url, "HEAD", &[], b"");
    assert_eq!(status, 204);
    assert_eq!(r.header("Upload-Offset"), Some("150000"));
    assert_eq!(r.header("Upload-Length"), Some("300000"));
    let (h, b) = chunk(&file, 0, 999);
    let (status, r) = http(&url, "PUT", &h, &b);
    assert_eq!(
        (status, r.header("Upload-Offset")),
        (409, Some("150000")),
        "resume where it stopped"
    );
    let (h, b) = chunk(&file, 150_000, 299_999);
    let (status, _) = http(&url, "PUT", &h, &b);
    assert_eq!(status, 201, "complete and verified");
    let rows = stored(&data);
    assert_eq!(rows.len(), 1);
    let id = rows[0].0.clone();

    // bob fetches: the link comes in a MESSAGE with Permit-Download.
    let mut bob = Ua::new("bob", "bob-pw", ports.udp);
    let (ok, delivered) = bob.transfer(1);
    assert_eq!(ok.status(), Some(200));
    let m = &delivered[0];
    assert_eq!(
        m.header("Content-Type"),
        Some("application/permit-file+json")
    );
    let link: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
    assert_eq!(link["sha256"], sha.as_str());
    assert_eq!(link["size"], 300_000);
    let download = m
        .header("Permit-Download")
        .unwrap()
        .trim_matches(['<', '>'])
        .to_owned();
    assert!(download.contains(&format!("/files/{id}?t=")));
    let (status, r) = http(&download, "GET", &[], b"");
    assert_eq!(status, 200);
    assert_eq!(hex(&Sha256::digest(&r.body)), sha, "the bytes match");
    let (status, r) = http(&download, "GET", &[("Range", "bytes=299990-".into())], b"");
    assert_eq!((status, r.body.as_slice()), (206, &file[299_990..]));
    // The upload URL does not download, and a forged token gets 403.
    let (status, _) = http(&url.replace("/upload/", "/files/"), "GET", &[], b"");
    assert_eq!(status, 403);
    // Acknowledged: the item and its file are gone.
    bob.answer(m, 200);
    wait_until(
        Duration::from_secs(5),
        "the item deleted after the 2xx",
        || stored(&data).is_empty(),
    );
    assert!(
        !data.join("uploads").join(&id).exists(),
        "the file is removed"
    );
    let (status, _) = http(&download, "GET", &[], b"");
    assert_eq!(status, 404);
}

#[test]
fn an_upload_with_a_wrong_checksum_leaves_nothing() {
    let (dir, data, ports, flags) = upload_bed("upload-bad-sum");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let _proxy = Proxy::start(&dir, "proxy", &data, ports, &flags);
    let file = vec![1u8; 5000];
    let wrong = hex(&Sha256::digest(b"something else"));
    let mut alice = Ua::new("alice", "alice-pw", ports.udp);
    let url = announce(&mut alice, &file, &wrong);
    let (h, b) = chunk(&file, 0, 4999);
    let (status, _) = http(&url, "PUT", &h, &b);
    assert_eq!(status, 422);
    assert!(stored(&data).is_empty(), "no item");
    let (status, r) = http(&url, "HEAD", &[], b"");
    assert_eq!(
        (status, r.header("Upload-Offset")),
        (204, Some("0")),
        "the bytes were dropped"
    );
    let (status, _) = http(&format!("{url}x"), "HEAD", &[], b"");
    assert_eq!(status, 403, "a token altered");
}
