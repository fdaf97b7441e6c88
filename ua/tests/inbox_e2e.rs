//! Store and forward with the real binaries (docs/profile.md "Store and forward",
//! "Data with attributes"): `permit-ua send` to a busy callee is stored (202), the
//! callee's `permit-ua answer` hears of it (message-summary NOTIFY) and fetches it
//! once its call ended, the bytes match and the store is empty after; a kill -9 of
//! the proxy between the deposits and the fetch loses nothing (text, sealed text,
//! a file uploaded over HTTP); a tshark capture of every link while data is sent
//! holds the non-secret marker (which went peer to peer) but never the secret ones;
//! bad input (unknown, malformed or another user's item id, an oversized upload,
//! data sealed for another key) gets a clear answer and changes nothing.
//!
//! Logs stay in `target/tmp/permit-ua/<test>/`. The capture test fails (does not
//! skip) when CI is set and tshark is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    DOMAIN, HOST, Proxy, Ua, free_port, peer_missing, read_text, run_ua, signal, ua_command,
    wait_until, workdir,
};
use permit_ua::inbox::item::sha256_hex;

const WAIT: Duration = Duration::from_secs(30);

fn config(http: u16) -> String {
    format!("[store]\nhttp_listen = \"{HOST}:{http}\"\nmax_upload_bytes = 1000000\n")
}

fn start(dir: &Path, users: &[(&str, &str)]) -> Proxy {
    Proxy::start_config(dir, users, false, Some(&config(free_port())))
}

fn ua(proxy: &Proxy, user: &str, pw: &str) -> Command {
    ua_command(proxy, "udp", user, pw)
}

/// Runs one command to completion: (exit code, JSON lines).
fn run(dir: &Path, name: &str, cmd: Command) -> (i32, Vec<serde_json::Value>) {
    let (code, lines, ua) = run_ua(dir, name, cmd);
    if code != 0 {
        eprintln!("{name} exited {code}:\n{}", ua.describe());
    }
    (code, lines)
}

fn last(lines: &[serde_json::Value]) -> serde_json::Value {
    lines.last().cloned().unwrap_or_default()
}

/// bob's list holds alice; bob's key pair is created; returns bob's public key.
fn setup_bob(dir: &Path, proxy: &Proxy) -> String {
    let mut add = ua(proxy, "bob", "bpw");
    add.args(["permit", "add", &format!("alice@{DOMAIN}")]);
    assert_eq!(run(dir, "bob-permit", add).0, 0);
    let mut key = ua(proxy, "bob", "bpw");
    key.arg("key").arg("--identity").arg(dir.join("bob.key"));
    let (code, lines) = run(dir, "bob-key", key);
    assert_eq!(code, 0);
    let public = lines[0]["public_key"].as_str().expect("a key").to_string();
    assert_eq!(public.len(), 43);
    public
}

fn send(dir: &Path, proxy: &Proxy, name: &str, args: &[&str]) -> (i32, serde_json::Value) {
    let mut cmd = ua(proxy, "alice", "apw");
    cmd.arg("send").args(args);
    let (code, lines) = run(dir, name, cmd);
    (code, last(&lines))
}

fn inbox_args(dir: &Path, inbox: &Path) -> Vec<String> {
    vec![
        "--inbox".into(),
        inbox.display().to_string(),
        "--identity".into(),
        dir.join("bob.key").display().to_string(),
    ]
}

/// The number of items waiting for `user` (`inbox list`).
fn waiting(dir: &Path, proxy: &Proxy, user: &str, pw: &str, name: &str) -> u64 {
    let mut list = ua(proxy, user, pw);
    list.args(["inbox", "list"]);
    let (code, lines) = run(dir, name, list);
    assert_eq!(code, 0, "{lines:?}");
    lines[0]["waiting"].as_u64().expect("a count")
}

/// The file a `saved` event names, read.
fn saved_bytes(event: &serde_json::Value) -> Vec<u8> {
    std::fs::read(event["path"].as_str().expect("a path")).expect("the saved file")
}

/// Lines of a recognisable marker: any packet carrying 64 bytes of this data holds
/// one whole marker.
fn marked(marker: &str, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 64);
    let mut n = 0u32;
    while out.len() < size {
        out.extend_from_slice(format!("{marker}{n:08}\n").as_bytes());
        n += 1;
    }
    out.truncate(size);
    out
}

#[test]
fn busy_callee_gets_the_data_after_its_call_and_the_store_empties() {
    let dir = workdir("inbox-busy");
    let proxy = start(&dir, &[("alice", "apw"), ("bob", "bpw")]);
    setup_bob(&dir, &proxy);
    let inbox = dir.join("bob-inbox");
    let mut bob = ua(&proxy, "bob", "bpw");
    bob.args(["answer", "--max-calls", "1"])
        .args(inbox_args(&dir, &inbox));
    let mut bob = Ua::spawn(&dir, "bob-answer", bob);
    bob.wait_event("registered", WAIT);

    let mut call = ua(&proxy, "alice", "apw");
    call.args(["call", "bob", "--duration", "6"]);
    let mut call = Ua::spawn(&dir, "alice-call", call);
    call.wait_event("connected", WAIT);

    let text = "the keys are under the mat";
    let (code, stored) = send(&dir, &proxy, "alice-send-text", &["bob", "--text", text]);
    assert_eq!(code, 0, "{stored}");
    assert_eq!(stored["event"], "stored", "{stored}");
    assert_eq!(stored["status"], 202);
    let item = stored["item"].as_str().expect("an item id").to_string();
    assert_eq!(item.len(), 32);
    let file = marked("BUSY-FILE-", 100_000);
    std::fs::write(dir.join("photo.bin"), &file).unwrap();
    let (code, up) = send(
        &dir,
        &proxy,
        "alice-send-file",
        &["bob", "--file", dir.join("photo.bin").to_str().unwrap()],
    );
    assert_eq!((code, up["status"].as_u64()), (0, Some(201)), "{up}");

    // The message-summary NOTIFY reaches bob's UA while it is busy.
    let note = bob.wait_event("waiting", WAIT);
    assert!(
        note["message"]
            .as_str()
            .unwrap()
            .contains("when a call ends"),
        "{note}"
    );
    assert!(bob.lines().iter().all(|l| l["event"] != "saved"));
    assert_eq!(call.wait(WAIT), 0, "{}", call.describe());

    // Once free, bob's UA fetches both by itself.
    wait_until(WAIT, "bob saves both items", || {
        bob.lines().iter().filter(|l| l["event"] == "saved").count() >= 2
    });
    let saved: Vec<serde_json::Value> = bob
        .lines()
        .into_iter()
        .filter(|l| l["event"] == "saved")
        .collect();
    let by_item = |id: &str| saved.iter().find(|s| s["item"] == id).cloned().unwrap();
    let t = by_item(&item);
    assert_eq!(saved_bytes(&t), text.as_bytes());
    assert_eq!(t["sha256"], sha256_hex(text.as_bytes()));
    assert_eq!(t["from"], format!("sip:alice@{DOMAIN}"));
    let f = by_item(up["item"].as_str().unwrap());
    assert_eq!(sha256_hex(&saved_bytes(&f)), sha256_hex(&file));
    assert_eq!(waiting(&dir, &proxy, "bob", "bpw", "bob-list-after"), 0);
    signal(bob.child.id(), "TERM");
    bob.wait(WAIT);
}

#[test]
fn kill_9_of_the_proxy_between_202_and_fetch_loses_nothing() {
    let dir = workdir("inbox-kill9");
    let proxy = start(&dir, &[("alice", "apw"), ("bob", "bpw")]);
    let key = setup_bob(&dir, &proxy);
    // bob is offline: everything is stored.
    let (code, a) = send(&dir, &proxy, "send-text", &["bob", "--text", "plain note"]);
    assert_eq!((code, a["status"].as_u64()), (0, Some(202)), "{a}");
    let (code, b) = send(
        &dir,
        &proxy,
        "send-secret",
        &["bob", "--text", "sealed note", "--secret", "--to-key", &key],
    );
    assert_eq!((code, b["status"].as_u64()), (0, Some(202)), "{b}");
    let big = marked("KILL9-", 300_000);
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    let big_path = dir.join("big.bin");
    let (code, c) = send(
        &dir,
        &proxy,
        "send-big",
        &["bob", "--file", big_path.to_str().unwrap()],
    );
    assert_eq!((code, c["status"].as_u64()), (0, Some(201)), "{c}");

    // SIGKILL (Child::kill), then a new proxy on the same data directory.
    let data = proxy.data.clone();
    drop(proxy);
    let proxy = start(&dir, &[]);
    assert_eq!(proxy.data, data);
    assert_eq!(waiting(&dir, &proxy, "bob", "bpw", "bob-list-restart"), 3);

    let inbox = dir.join("bob-inbox");
    let mut fetch = ua(&proxy, "bob", "bpw");
    fetch
        .args(["inbox", "fetch"])
        .args(inbox_args(&dir, &inbox));
    let (code, lines) = run(&dir, "bob-fetch", fetch);
    assert_eq!(code, 0, "{lines:?}");
    let saved: Vec<&serde_json::Value> = lines.iter().filter(|l| l["event"] == "saved").collect();
    assert_eq!(saved.len(), 3, "{lines:?}");
    let mut contents: Vec<Vec<u8>> = saved.iter().map(|s| saved_bytes(s)).collect();
    contents.sort();
    let mut expected = vec![b"plain note".to_vec(), b"sealed note".to_vec(), big];
    expected.sort();
    assert_eq!(contents, expected);
    assert!(
        saved
            .iter()
            .any(|s| s["secret"] == true && s["item"] == b["item"])
    );
    assert_eq!(waiting(&dir, &proxy, "bob", "bpw", "bob-list-after"), 0);

    // Fetching again: nothing left, nothing duplicated.
    let mut again = ua(&proxy, "bob", "bpw");
    again
        .args(["inbox", "fetch"])
        .args(inbox_args(&dir, &inbox));
    let (code, lines) = run(&dir, "bob-fetch-again", again);
    assert_eq!(code, 0);
    assert_eq!(last(&lines)["saved"], 0);
}

fn have_tshark() -> bool {
    Command::new("tshark")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        || peer_missing("tshark")
}

/// A tshark capture on loopback of the given ports (TCP and UDP), stopped by PID.
struct Capture {
    child: std::process::Child,
    file: PathBuf,
}

impl Capture {
    /// Starts tshark on loopback for `ports` and waits until it really captures: a
    /// probe datagram to the first port (the proxy drops it) shows in its packet list.
    fn start(dir: &Path, ports: &[u16]) -> Capture {
        let file = dir.join("links.pcapng");
        let log = dir.join("tshark.log");
        let list = dir.join("tshark.packets");
        let filter = ports
            .iter()
            .map(|p| format!("port {p}"))
            .collect::<Vec<_>>()
            .join(" or ");
        let child = Command::new("tshark")
            .args(["-i", "lo", "-l", "-P", "-f", &filter, "-w"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&list).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn tshark");
        let probe = std::net::UdpSocket::bind((HOST, 0)).unwrap();
        wait_until(WAIT, "tshark capturing", || {
            let _ = probe.send_to(b"capture probe", (HOST, ports[0]));
            std::thread::sleep(Duration::from_millis(100));
            !read_text(&list).trim().is_empty()
        });
        Capture { child, file }
    }

    /// Stops the capture and returns the raw capture file.
    fn stop(mut self) -> Vec<u8> {
        // Let the last packets reach the file before the stop.
        std::thread::sleep(Duration::from_millis(500));
        signal(self.child.id(), "INT");
        common::wait_bounded(&mut self.child, WAIT, "tshark");
        std::fs::read(&self.file).expect("the capture file")
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, its steps in order
fn secret_data_never_crosses_a_link_in_plaintext_nor_goes_peer_to_peer() {
    if !have_tshark() {
        return;
    }
    let dir = workdir("inbox-secret");
    let proxy = start(&dir, &[("alice", "apw"), ("bob", "bpw")]);
    let key = setup_bob(&dir, &proxy);
    let http: u16 = config_port(&dir);
    let bob_port = free_port();
    let inbox = dir.join("bob-inbox");
    let mut bob = ua(&proxy, "bob", "bpw");
    bob.args(["--listen", &format!("udp:{HOST}:{bob_port}"), "answer"])
        .args(inbox_args(&dir, &inbox));
    let mut bob = Ua::spawn(&dir, "bob-answer", bob);
    bob.wait_event("registered", WAIT);
    let capture = Capture::start(&dir, &[proxy.port, http, bob_port]);

    // Not secret, callee free: peer to peer (the positive control of the capture).
    let open = marked("OPEN-MARKER-", 2000);
    std::fs::write(dir.join("open.txt"), &open).unwrap();
    let open_path = dir.join("open.txt");
    let (code, d) = send(
        &dir,
        &proxy,
        "send-open",
        &["bob", "--file", open_path.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{d}");
    assert_eq!(
        (d["event"].as_str(), d["direct"].as_bool()),
        (Some("delivered"), Some(true)),
        "{d}"
    );
    // Secret, callee free: sealed, through the proxy.
    let small = marked("SMALL-SECRET-", 2000);
    std::fs::write(dir.join("small.txt"), &small).unwrap();
    let small_path = dir.join("small.txt");
    let (code, s) = send(
        &dir,
        &proxy,
        "send-small-secret",
        &[
            "bob",
            "--file",
            small_path.to_str().unwrap(),
            "--secret",
            "--to-key",
            &key,
        ],
    );
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["direct"], false, "{s}");
    // Secret and large: sealed, uploaded over HTTP, fetched by a second bob UA.
    let large = marked("LARGE-SECRET-", 200_000);
    std::fs::write(dir.join("large.bin"), &large).unwrap();
    let large_path = dir.join("large.bin");
    let (code, l) = send(
        &dir,
        &proxy,
        "send-large-secret",
        &[
            "bob",
            "--file",
            large_path.to_str().unwrap(),
            "--secret",
            "--to-key",
            &key,
        ],
    );
    assert_eq!((code, l["status"].as_u64()), (0, Some(201)), "{l}");
    let mut fetch = ua(&proxy, "bob", "bpw");
    fetch
        .args(["inbox", "fetch"])
        .args(inbox_args(&dir, &inbox));
    let (code, lines) = run(&dir, "bob-fetch", fetch);
    assert_eq!(code, 0, "{lines:?}");
    // The fetch takes it, unless bob's answering UA heard of it first (the proxy's
    // purge tick) and fetched it itself.
    let is_large = |x: &serde_json::Value| x["event"] == "saved" && x["size"] == 200_000;
    wait_until(WAIT, "bob saves the large file and two messages", || {
        let bob_lines = bob.lines();
        bob_lines
            .iter()
            .filter(|x| x["event"] == "saved" && x["size"] != 200_000)
            .count()
            >= 2
            && (lines.iter().any(is_large) || bob_lines.iter().any(is_large))
    });
    let fetched = lines
        .iter()
        .cloned()
        .chain(bob.lines())
        .find(is_large)
        .unwrap();
    assert_eq!(saved_bytes(&fetched), large);
    assert_eq!(fetched["secret"], true);
    let pcap = capture.stop();
    let saved: Vec<serde_json::Value> = bob
        .lines()
        .into_iter()
        .filter(|x| x["event"] == "saved" && x["size"] != 200_000)
        .collect();
    let open_saved = saved.iter().find(|x| x["secret"] == false).unwrap();
    assert_eq!(saved_bytes(open_saved), open);
    assert_eq!(open_saved["direct"], true, "{open_saved}");
    let secret_saved = saved.iter().find(|x| x["secret"] == true).unwrap();
    assert_eq!(saved_bytes(secret_saved), small);
    assert_eq!(secret_saved["direct"], false, "{secret_saved}");

    assert!(
        contains(&pcap, b"OPEN-MARKER-"),
        "the capture saw the open data"
    );
    assert!(
        !contains(&pcap, b"SMALL-SECRET-"),
        "secret text in plaintext on a link"
    );
    assert!(
        !contains(&pcap, b"LARGE-SECRET-"),
        "secret file in plaintext on a link"
    );
    signal(bob.child.id(), "TERM");
    bob.wait(WAIT);
}

/// The HTTP port written in the proxy's configuration of `dir`.
fn config_port(dir: &Path) -> u16 {
    let text = read_text(&dir.join("proxy.toml"));
    let at = text.find(&format!("{HOST}:")).unwrap() + HOST.len() + 1;
    text[at..].split('"').next().unwrap().parse().unwrap()
}

#[test]
fn bad_input_gets_a_clear_answer_and_changes_nothing() {
    let dir = workdir("inbox-bad");
    let proxy = start(&dir, &[("alice", "apw"), ("bob", "bpw"), ("carol", "cpw")]);
    setup_bob(&dir, &proxy);
    let (code, a) = send(&dir, &proxy, "send", &["bob", "--text", "for bob only"]);
    assert_eq!(code, 0, "{a}");
    let item = a["item"].as_str().unwrap().to_string();
    let fetch = |name: &str, user: &str, pw: &str, ids: &[&str]| {
        let mut cmd = ua(&proxy, user, pw);
        cmd.args(["inbox", "fetch"])
            .args(ids)
            .args(inbox_args(&dir, &dir.join(format!("{user}-inbox"))));
        run(&dir, name, cmd)
    };

    let (code, lines) = fetch(
        "unknown",
        "bob",
        "bpw",
        &["0123456789abcdef0123456789abcdef"],
    );
    assert_eq!(code, 1);
    assert_eq!(last(&lines)["status"], 404, "{lines:?}");
    let (code, _) = fetch("malformed", "bob", "bpw", &["not-an-id"]);
    assert_eq!(code, 2);
    let (code, lines) = fetch("other-user", "carol", "cpw", &[&item]);
    assert_eq!(code, 10, "{lines:?}");
    assert_eq!(last(&lines)["status"], 403, "{lines:?}");

    // Oversized: the proxy takes uploads up to 1,000,000 bytes here.
    std::fs::write(dir.join("huge.bin"), vec![7u8; 1_500_000]).unwrap();
    let huge = dir.join("huge.bin");
    let (code, h) = send(
        &dir,
        &proxy,
        "send-huge",
        &["bob", "--file", huge.to_str().unwrap()],
    );
    assert_eq!(code, 1, "{h}");
    assert!(h["message"].as_str().unwrap().contains("413"), "{h}");

    // Sealed for someone else's key: bob's UA cannot open it and keeps it at the proxy.
    let eve = dir.join("eve.key");
    let mut key = ua(&proxy, "alice", "apw");
    key.arg("key").arg("--identity").arg(&eve);
    let (_, lines) = run(&dir, "eve-key", key);
    let eve_key = lines[0]["public_key"].as_str().unwrap().to_string();
    let (code, s) = send(
        &dir,
        &proxy,
        "send-wrong-key",
        &[
            "bob",
            "--text",
            "not for bob",
            "--secret",
            "--to-key",
            &eve_key,
        ],
    );
    assert_eq!(code, 0, "{s}");
    let wrong = s["item"].as_str().unwrap().to_string();
    let (code, lines) = fetch("wrong-key", "bob", "bpw", &[&wrong]);
    assert_eq!(code, 1, "{lines:?}");
    let refused = lines.iter().find(|l| l["event"] == "item-refused").unwrap();
    assert_eq!(refused["status"], 488, "{refused}");

    // Nothing changed: both items still wait for bob.
    assert_eq!(waiting(&dir, &proxy, "bob", "bpw", "bob-list"), 2);
    let (code, lines) = fetch("bob-own", "bob", "bpw", &[&item]);
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(waiting(&dir, &proxy, "bob", "bpw", "bob-list-after"), 1);
}

#[test]
fn answer_fetches_what_waits_when_it_starts() {
    let dir = workdir("inbox-start");
    let proxy = start(&dir, &[("alice", "apw"), ("bob", "bpw")]);
    let key = setup_bob(&dir, &proxy);
    let (code, a) = send(
        &dir,
        &proxy,
        "send",
        &[
            "bob",
            "--text",
            "while you were out",
            "--secret",
            "--to-key",
            &key,
        ],
    );
    assert_eq!((code, a["status"].as_u64()), (0, Some(202)), "{a}");
    let inbox = dir.join("bob-inbox");
    let mut bob = ua(&proxy, "bob", "bpw");
    bob.arg("answer").args(inbox_args(&dir, &inbox));
    let mut bob = Ua::spawn(&dir, "bob-answer", bob);
    // The proxy's NOTIFY after the REGISTER tells bob's UA; it fetches at once.
    let saved = bob.wait_event("saved", WAIT);
    assert_eq!(saved["item"], a["item"]);
    assert_eq!(saved["secret"], true);
    assert_eq!(saved_bytes(&saved), b"while you were out");
    assert_eq!(waiting(&dir, &proxy, "bob", "bpw", "bob-list-after"), 0);
    signal(bob.child.id(), "TERM");
    bob.wait(WAIT);
}
