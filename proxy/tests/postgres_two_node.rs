//! Two `permit-proxy` nodes on one PostgreSQL database (docs/operations.md
//! "PostgreSQL"): a UA registered at node A is reachable by a caller at node B; a
//! permit added with node A's CLI gates calls at node B without a restart, one a callee
//! adds by PUBLISH at node A gates calls at A at once and at B soon after; an item
//! deposited at A is fetched at B exactly once; after kill -9 of A, B keeps serving
//! and nothing A answered is lost.
//!
//! The database is a real server started by the test (initdb into a temp dir, an
//! ephemeral loopback port). The UAs are plain UDP sockets that speak just enough SIP
//! (digest MD5 computed here with md-5, independently of the proxy); the callee's UA
//! answers the load query (OPTIONS) with 200 and every INVITE with 486, so a caller
//! who gets 486 was let through the gate and reached the callee, one who gets 403 was
//! refused. Logs stay in `target/tmp/postgres-two-node/<test>/`.

mod common;

use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::postgres::{Postgres, postgres_available};
use common::proxy::{Ports, Proxy};
use common::{DOMAIN, HOST, free_port, proxy_cli, wait_until, workdir};
use md5::{Digest as _, Md5};

const SUITE: &str = "PostgreSQL two-node";
/// The database password in the nodes' URL.
const SECRET: &str = "pg-s3cret-in-url";

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
    fn parse(data: &[u8]) -> Option<Msg> {
        let split = data.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&data[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let start = lines.next()?.to_owned();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Some(Msg {
            start,
            headers,
            body: data[split + 4..].to_vec(),
        })
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

/// `code` in answer to `req`: its Vias, From, Call-ID and CSeq, To with a tag.
fn response(req: &Msg, code: u16) -> String {
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
    r
}

/// One user's UA: a UDP socket that talks to one node at a time.
struct Ua {
    user: &'static str,
    socket: UdpSocket,
    n: u32,
}

fn password(user: &str) -> String {
    format!("{user}-pw")
}

impl Ua {
    fn new(user: &'static str) -> Ua {
        let socket = UdpSocket::bind((HOST, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Ua { user, socket, n: 0 }
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
                out.extend(Msg::parse(&buf[..n]));
            }
        }
        out
    }

    /// `method` to `ruri` through the node at `node`, with MD5 digest credentials
    /// after its challenge; everything received until the final response.
    fn request(
        &mut self,
        node: u16,
        method: &str,
        ruri: &str,
        extra: &str,
        body: &[u8],
    ) -> Vec<Msg> {
        let first = self.send(node, method, ruri, extra, body, None);
        let Some(challenge) = first
            .iter()
            .find(|m| matches!(m.status(), Some(401 | 407)))
            .cloned()
        else {
            return first;
        };
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
        let ha1 = md5(format!("{}:{realm}:{}", self.user, password(self.user)));
        let ha2 = md5(format!("{method}:{ruri}"));
        let resp = md5(format!("{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}"));
        let creds = format!(
            "{line}: Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{ruri}\", \
response=\"{resp}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c0ffee\"\r\n",
            self.user
        );
        self.send(node, method, ruri, extra, body, Some(&creds))
    }

    fn send(
        &mut self,
        node: u16,
        method: &str,
        ruri: &str,
        extra: &str,
        body: &[u8],
        auth: Option<&str>,
    ) -> Vec<Msg> {
        self.n += 1;
        let (n, port, user) = (self.n, self.port(), self.user);
        // A REGISTER's To is the AOR it registers (RFC 3261 §10.2).
        let to = if method == "REGISTER" {
            format!("sip:{user}@{DOMAIN}")
        } else {
            ruri.to_owned()
        };
        let mut req = format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {HOST}:{port};branch=z9hG4bK-{user}-{port}-{n};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=ua{n}\r\nTo: <{to}>\r\n\
Call-ID: {user}-{port}-{n}\r\nCSeq: {n} {method}\r\nContact: <sip:{user}@{HOST}:{port}>\r\n\
{}{extra}Content-Length: {}\r\n\r\n",
            auth.unwrap_or_default(),
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.socket.send_to(&req, (HOST, node)).unwrap();
        self.receive(Duration::from_secs(5), |got| {
            got.iter().any(|m| m.status().is_some_and(|s| s >= 200))
        })
    }

    /// The final status of what `request` received.
    fn final_status(got: &[Msg]) -> Option<u16> {
        got.iter().filter_map(Msg::status).find(|s| *s >= 200)
    }

    /// REGISTERs this UA's address at `node` for an hour; asserts the 200.
    fn register(&mut self, node: u16) {
        let got = self.request(
            node,
            "REGISTER",
            &format!("sip:{DOMAIN}"),
            "Expires: 3600\r\n",
            b"",
        );
        assert_eq!(Ua::final_status(&got), Some(200), "REGISTER: {got:?}");
    }

    /// The transfer request at `node`; its final response and the deliveries.
    fn transfer(&mut self, node: u16, expect_items: usize) -> (Msg, Vec<Msg>) {
        let ruri = format!("sip:{}@{DOMAIN}", self.user);
        let mut got = self.request(node, "MESSAGE", &ruri, "Event: permit-transfer\r\n", b"");
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

    /// A deposit for `callee` at `node` (RFC 3841 `Request-Disposition: queue`);
    /// the item id from the 202's Permit-Item.
    fn deposit(&mut self, node: u16, callee: &str, text: &str) -> String {
        let got = self.request(
            node,
            "MESSAGE",
            &format!("sip:{callee}@{DOMAIN}"),
            "Request-Disposition: queue\r\nContent-Type: text/plain\r\n",
            text.as_bytes(),
        );
        let accepted = got
            .iter()
            .find(|m| m.status() == Some(202))
            .unwrap_or_else(|| panic!("no 202 for the deposit: {got:?}"));
        let item = accepted.header("Permit-Item").expect("Permit-Item");
        item.split(';').next().unwrap().trim().to_owned()
    }
}

/// A callee that answers OPTIONS 200 and INVITE 486 on its own thread and counts
/// the INVITEs that reached it.
struct Callee {
    invites: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Callee {
    fn serve(ua: &Ua) -> Callee {
        let socket = ua.socket.try_clone().unwrap();
        let invites = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (invites, stop) = (invites.clone(), stop.clone());
            move || {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let Some(req) = Msg::parse(&buf[..n]) else {
                        continue;
                    };
                    let code = if req.is_request("OPTIONS") {
                        200
                    } else if req.is_request("INVITE") {
                        invites.fetch_add(1, Ordering::Relaxed);
                        486
                    } else {
                        continue;
                    };
                    let _ = socket.send_to(response(&req, code).as_bytes(), from);
                }
            }
        });
        Callee {
            invites,
            stop,
            thread: Some(thread),
        }
    }

    fn invites(&self) -> usize {
        self.invites.load(Ordering::Relaxed)
    }
}

impl Drop for Callee {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One INVITE from `caller` to `callee` through the node at `node`, from a fresh
/// socket (a retransmitted final response of an earlier try reaches nobody); its
/// final status.
fn call(caller: &'static str, node: u16, callee: &str) -> Option<u16> {
    let mut ua = Ua::new(caller);
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\n",
        free_port()
    );
    let got = ua.request(
        node,
        "INVITE",
        &format!("sip:{callee}@{DOMAIN}"),
        "Content-Type: application/sdp\r\n",
        sdp.as_bytes(),
    );
    Ua::final_status(&got)
}

/// The test bed: a database, the nodes' config files (A's with the admin API), and
/// two data directories.
struct Bed {
    dir: PathBuf,
    pg: Postgres,
    config: PathBuf,
    config_a: PathBuf,
    admin_a: u16,
    data_a: PathBuf,
    data_b: PathBuf,
}

/// Node A's admin API token.
const TOKEN: &str = "two-node-admin-token";

impl Bed {
    fn new(test: &str) -> Option<Bed> {
        if !postgres_available(SUITE) {
            return None;
        }
        let dir = workdir(test);
        let pg = Postgres::start(test);
        // The server trusts loopback; the password is there to prove no log shows it.
        let url = pg
            .create_db("permit")
            .replacen("permit@", &format!("permit:{SECRET}@"), 1);
        let store = format!("[store]\nbackend = \"postgres\"\nurl = \"{url}\"\n");
        let admin_a = free_port();
        let (config, config_a) = (dir.join("permit.toml"), dir.join("permit-a.toml"));
        std::fs::write(&config, &store).unwrap();
        std::fs::write(
            &config_a,
            format!(
                "{store}[admin]\nenabled = true\nlisten = \"{HOST}:{admin_a}\"\ntoken = \"{TOKEN}\"\n"
            ),
        )
        .unwrap();
        Some(Bed {
            data_a: dir.join("data-a"),
            data_b: dir.join("data-b"),
            dir,
            pg,
            config,
            config_a,
            admin_a,
        })
    }

    /// The operator's CLI with node A's data directory, on the shared database.
    fn cli_a(&self, args: &[&str]) -> String {
        let mut all = vec!["--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        proxy_cli(&self.data_a, &all)
    }

    fn permit(&self, callee: &str, caller: &str) {
        let out = self.cli_a(&[
            "permit",
            "add",
            &format!("{callee}@{DOMAIN}"),
            &format!("{caller}@{DOMAIN}"),
        ]);
        assert!(out.starts_with("added "), "permit add: {out}");
    }

    /// Node A (with the admin API) or B, by its data directory.
    fn node(&self, name: &str, data: &Path) -> Proxy {
        let ports = Ports {
            udp: free_port(),
            tcp: None,
            tls: None,
        };
        let config = if data == self.data_a {
            &self.config_a
        } else {
            &self.config
        };
        let config = config.to_str().unwrap();
        Proxy::start(&self.dir, name, data, ports, &["--config", config])
    }

    /// `POST path` with a JSON body to node A's admin API; the status code.
    fn post_a(&self, path: &str, json: &str) -> u16 {
        use std::io::{Read as _, Write as _};
        let mut c = std::net::TcpStream::connect((HOST, self.admin_a)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            c,
            "POST {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
            json.len()
        )
        .unwrap();
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {answer:?}"))
    }

    /// Rows of `table` matching `filter` in the shared database.
    fn count(&self, table: &str, filter: &str) -> i64 {
        self.pg
            .client("permit")
            .query_one(&format!("SELECT COUNT(*) FROM {table} WHERE {filter}"), &[])
            .unwrap()
            .get(0)
    }
}

/// Polls `attempt` every 100 ms until it gives `want`, at most `limit`; returns how
/// long that took.
fn until_status(
    limit: Duration,
    what: &str,
    want: u16,
    mut attempt: impl FnMut() -> Option<u16>,
) -> Duration {
    let start = Instant::now();
    loop {
        let got = attempt();
        if got == Some(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what}: still {got:?} after {limit:?}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_nodes_share_registrations_permits_and_stored_items() {
    let Some(bed) = Bed::new("shared") else {
        return;
    };
    for user in ["alice", "bob", "carol", "dave", "erin"] {
        bed.cli_a(&["user", "add", user, "--password", &password(user)]);
    }
    bed.permit("bob", "alice");
    bed.permit("dave", "alice");
    let node_a = bed.node("node-a", &bed.data_a);
    let mut node_b = bed.node("node-b", &bed.data_b);
    let (a, b) = (node_a.ports.udp, node_b.ports.udp);

    // 1. bob registers at A; alice, calling through B, reaches him.
    let mut bob = Ua::new("bob");
    bob.register(a);
    let callee = Callee::serve(&bob);
    let waited = until_status(
        Duration::from_secs(10),
        "alice -> bob through node B",
        486,
        || call("alice", b, "bob"),
    );
    eprintln!("node B routed to a binding made at node A after {waited:?}");
    assert!(callee.invites() >= 1, "bob's UA got the INVITE");

    // 2. carol is refused at B; a permit added with A's CLI lets her through B.
    assert_eq!(
        call("carol", b, "bob"),
        Some(403),
        "carol before her permit"
    );
    let before = callee.invites();
    bed.permit("bob", "carol");
    let waited = until_status(
        Duration::from_secs(10),
        "carol -> bob through node B after `permit add` at A",
        486,
        || call("carol", b, "bob"),
    );
    eprintln!("node B gated with the new permit {waited:?} after the CLI returned");
    assert_eq!(callee.invites(), before + 1, "carol's INVITE reached bob");

    // 3. bob adds erin himself (management PUBLISH at A, written by A's permit writer
    //    on its own connection): a call right after the 200 passes A's gate; B's gate
    //    follows.
    let body = format!(r#"{{"add":["erin@{DOMAIN}"]}}"#);
    let got = Ua::new("bob").request(
        a,
        "PUBLISH",
        &format!("sip:bob@{DOMAIN}"),
        "Event: permit-list\r\nContent-Type: application/permit-list+json\r\n",
        body.as_bytes(),
    );
    assert_eq!(Ua::final_status(&got), Some(200), "PUBLISH: {got:?}");
    assert_eq!(
        call("erin", a, "bob"),
        Some(486),
        "erin -> bob at A right after the PUBLISH's 200"
    );
    until_status(
        Duration::from_secs(10),
        "erin -> bob through node B after bob's PUBLISH at A",
        486,
        || call("erin", b, "bob"),
    );

    let (mut alice, mut dave) = (Ua::new("alice"), Ua::new("dave"));
    fetched_once_at_b(&bed, (a, b), &mut alice, &mut dave);
    survives_kill_of_a(&bed, node_a, &mut node_b, (&callee, &mut alice, &mut dave));
    drop(node_b);
    assert_no_secret_logged(&bed.dir);
}

/// Step 3: an item alice deposits at A for dave (never registered) is fetched at B,
/// once: B delivers it and claims it, A does not hand it out meanwhile, dave's 200
/// removes it, neither node has it any more.
fn fetched_once_at_b(bed: &Bed, (a, b): (u16, u16), alice: &mut Ua, dave: &mut Ua) {
    let id = alice.deposit(a, "dave", "first deposit, made at node A");
    assert_eq!(bed.count("item", &format!("id = '{id}'")), 1);
    let (ok, delivered) = dave.transfer(b, 1);
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    assert_eq!(ok.header("Permit-Items"), Some("1"));
    assert_eq!(delivered.len(), 1, "one delivery");
    let m = &delivered[0];
    assert!(m.header("Permit-Item").unwrap().starts_with(&id));
    assert_eq!(m.body, b"first deposit, made at node A");
    // Asked at A while B's delivery waits for its answer: B's claim holds, A hands
    // out nothing (what arrives meanwhile is B's delivery, retransmitted).
    let (ok_a, at_a) = dave.transfer(a, 0);
    assert_eq!(ok_a.header("Permit-Items"), Some("0"), "claimed by B");
    assert!(
        at_a.iter()
            .all(|d| d.header("Call-ID") == m.header("Call-ID")),
        "A delivered the claimed item: {at_a:?}"
    );
    dave.socket
        .send_to(
            response(m, 200).as_bytes(),
            SocketAddr::from(([127, 0, 0, 1], b)),
        )
        .unwrap();
    wait_until(Duration::from_secs(5), "the delivered item removed", || {
        bed.count("item", &format!("id = '{id}'")) == 0
    });
    let (ok, delivered) = dave.transfer(a, 0);
    assert_eq!(
        ok.header("Permit-Items"),
        Some("0"),
        "node A hands out nothing"
    );
    assert!(delivered.is_empty());
    let (ok, delivered) = dave.transfer(b, 0);
    assert_eq!(
        ok.header("Permit-Items"),
        Some("0"),
        "nor does node B again"
    );
    assert!(delivered.is_empty());
}

/// Step 4: what A answered just before kill -9 is all at B: erin's registration, a permit,
/// a deposit; B keeps serving.
fn survives_kill_of_a(
    bed: &Bed,
    node_a: Proxy,
    node_b: &mut Proxy,
    (callee, alice, dave): (&Callee, &mut Ua, &mut Ua),
) {
    let (a, b) = (node_a.ports.udp, node_b.ports.udp);
    let mut erin = Ua::new("erin");
    erin.register(a);
    // This permit through A's admin API (the same operations as the CLI).
    let added = bed.post_a(
        &format!("/permits/erin@{DOMAIN}"),
        &format!("{{\"caller\":\"carol@{DOMAIN}\"}}"),
    );
    assert_eq!(added, 201, "POST /permits/erin");
    let late = alice.deposit(a, "dave", "second deposit, just before the kill");
    node_a.kill_hard();
    assert_eq!(bed.count("binding", "aor = 'erin@localhost'"), 1);
    // B keeps serving: bob (registered at A) is still reached through B,
    // carol's permits hold, and erin, registered at A just before, is reachable.
    let before = callee.invites();
    assert_eq!(call("alice", b, "bob"), Some(486));
    assert_eq!(call("carol", b, "bob"), Some(486));
    assert_eq!(callee.invites(), before + 2);
    let erin_callee = Callee::serve(&erin);
    let waited = until_status(
        Duration::from_secs(10),
        "carol -> erin through B",
        486,
        || call("carol", b, "erin"),
    );
    eprintln!("erin reachable at B {waited:?} after A was killed");
    assert_eq!(erin_callee.invites(), 1);
    let (ok, delivered) = dave.transfer(b, 1);
    assert_eq!(ok.header("Permit-Items"), Some("1"), "{ok:?}");
    assert!(
        delivered[0]
            .header("Permit-Item")
            .unwrap()
            .starts_with(&late)
    );
    node_b.assert_alive();
}

/// The URL's password reached no log, at debug level either.
fn assert_no_secret_logged(dir: &Path) {
    for log in std::fs::read_dir(dir).unwrap() {
        let path = log.unwrap().path();
        if path
            .extension()
            .is_some_and(|e| e == "log" || e == "stdout")
        {
            let text = common::read_text(&path);
            assert!(
                !text.contains(SECRET),
                "{} shows the password",
                path.display()
            );
        }
    }
}

/// The database restarts under two running nodes: meanwhile both keep routing and
/// gating from memory and a REGISTER that cannot be stored gets 500 (nothing is
/// answered 200 that is not stored); afterwards both reconnect by themselves, and a
/// registration at A reaches B through B's re-established LISTEN.
#[test]
fn nodes_outlive_a_database_restart() {
    let Some(mut bed) = Bed::new("restart") else {
        return;
    };
    for user in ["alice", "bob", "carol"] {
        bed.cli_a(&["user", "add", user, "--password", &password(user)]);
    }
    bed.permit("bob", "alice");
    bed.permit("carol", "alice");
    let node_a = bed.node("node-a", &bed.data_a);
    let node_b = bed.node("node-b", &bed.data_b);
    let (a, b) = (node_a.ports.udp, node_b.ports.udp);
    let mut bob = Ua::new("bob");
    bob.register(a);
    let bob_callee = Callee::serve(&bob);
    until_status(
        Duration::from_secs(10),
        "alice -> bob through B",
        486,
        || call("alice", b, "bob"),
    );

    bed.pg.stop();
    assert_eq!(
        call("alice", b, "bob"),
        Some(486),
        "B routes and gates from memory"
    );
    let mut carol = Ua::new("carol");
    let got = carol.request(
        a,
        "REGISTER",
        &format!("sip:{DOMAIN}"),
        "Expires: 3600\r\n",
        b"",
    );
    assert_eq!(
        Ua::final_status(&got),
        Some(500),
        "an unstored REGISTER: {got:?}"
    );

    bed.pg.restart();
    // A's store reconnects (after at most its one-second pause) ...
    until_status(
        Duration::from_secs(15),
        "REGISTER at A after the restart",
        200,
        || {
            let got = carol.request(
                a,
                "REGISTER",
                &format!("sip:{DOMAIN}"),
                "Expires: 3600\r\n",
                b"",
            );
            Ua::final_status(&got)
        },
    );
    // ... and B hears of it (its listener reconnected, or caught up on reconnecting).
    let carol_callee = Callee::serve(&carol);
    until_status(
        Duration::from_secs(15),
        "alice -> carol through B",
        486,
        || call("alice", b, "carol"),
    );
    assert_eq!(carol_callee.invites(), 1);
    assert!(bob_callee.invites() >= 2);
    drop((node_a, node_b));
    assert_no_secret_logged(&bed.dir);
}
