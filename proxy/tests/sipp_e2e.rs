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

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::thread::sleep;
use std::time::Duration;

use common::proxy::{Ports, Proxy};
use common::sipp::{RunningSipp, Sipp, sipp_available};
use common::{DOMAIN, HOST, Transport, add_user, free_port, workdir};

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

    fn ports(&self) -> Ports {
        Ports {
            udp: self.udp,
            tcp: Some(self.tcp),
            tls: None,
        }
    }

    /// Starts the proxy without authentication (these tests are about routing; the
    /// digest tests start it with users and `extra` flags through
    /// [`Bed::start_proxy_with_auth`]).
    fn start_proxy(&self, name: &str) -> Proxy {
        self.start_proxy_with_auth(name, &["--no-auth"])
    }

    /// The proxy with digest authentication on (its default), plus `extra` flags.
    fn start_proxy_with_auth(&self, name: &str, extra: &[&str]) -> Proxy {
        Proxy::start(&self.dir, name, &self.data, self.ports(), extra)
    }

    /// `permit-proxy --data DIR user add NAME --password PW` (the operator's CLI).
    fn add_user(&self, name: &str, password: &str) {
        add_user(&self.data, name, password);
    }

    fn proxy_port(&self, transport: Transport) -> u16 {
        self.ports().port(transport)
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

/// Two engine shards (`--shards 2`): 500 calls over UDP and 200 over TCP, each
/// call's messages steered to one shard by Call-ID, the callee's answers back to the
/// shard in the branch, the binding registered through one shard read by both.
#[test]
fn calls_through_two_engine_shards() {
    if !sipp_available() {
        return;
    }
    let bed = Bed::new("two_shards");
    let proxy = bed.start_proxy_with_auth("proxy", &["--no-auth", "--shards", "2"]);
    let uas = bed.uas("uas", Transport::Udp, 500);
    bed.register("alice", Transport::Udp, &uas);
    bed.uac("uac", "alice", Transport::Udp, 500, 100)
        .run_ok(500);
    uas.finish_ok(500);
    let uas = bed.uas("uas-tcp", Transport::Tcp, 200);
    bed.register("bob", Transport::Tcp, &uas);
    bed.uac("uac-tcp", "bob", Transport::Tcp, 200, 100)
        .run_ok(200);
    uas.finish_ok(200);
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
