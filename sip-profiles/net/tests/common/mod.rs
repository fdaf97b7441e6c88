//! Helpers shared by the loopback tests: messages, bounded waits, scratch directories.

#![allow(dead_code)] // each test file uses a different subset

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use sip_core::transport::Received;
use sip_net::Network;

/// Upper bound on any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(5);

/// A complete request with a body, numbered so that messages can be told apart.
pub fn message(n: u32) -> Vec<u8> {
    let body = format!("body {n}");
    format!(
        "OPTIONS sip:p@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-{n}\r\n\
         Call-ID: c{n}\r\n\
         CSeq: {n} OPTIONS\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The next message the network hands to the engine, or a test failure.
pub async fn recv(net: &mut Network) -> Received {
    tokio::time::timeout(WAIT, net.inbound.recv())
        .await
        .expect("no message within the wait")
        .expect("inbound queue closed")
}

/// Asserts nothing more reaches the engine for a short while.
pub async fn assert_quiet(net: &mut Network) {
    let more = tokio::time::timeout(Duration::from_millis(200), net.inbound.recv()).await;
    assert!(more.is_err(), "unexpected message: {more:?}");
}

/// Waits until `counter` reaches at least `n`.
pub async fn wait_count(counter: &AtomicU64, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while counter.load(Ordering::Relaxed) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "counter stayed at {}",
            counter.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch(tag: &str) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sip-net-{tag}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether IPv6 loopback can be bound here.
pub fn has_ipv6() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// Loopback addresses to test on: IPv4 always, IPv6 where the machine has it.
pub fn loopbacks() -> Vec<SocketAddr> {
    let mut v = vec!["127.0.0.1:0".parse().unwrap()];
    if has_ipv6() {
        v.push("[::1]:0".parse().unwrap());
    }
    v
}

/// Drives one client connection through the stream contract: two messages in one write
/// and one split across three writes reach the engine framed, tagged with `transport`,
/// the listener and the client's address; a transmit back to that address arrives on
/// the same connection.
pub async fn check_framing_and_reuse<S>(
    net: &mut Network,
    transport: sip_core::transport::Transport,
    listener: SocketAddr,
    client_addr: SocketAddr,
    client: &mut S,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut two = message(1);
    two.extend_from_slice(&message(2));
    client.write_all(&two).await.unwrap();
    client.flush().await.unwrap();
    let split = message(3);
    for part in [&split[..7], &split[7..60], &split[60..]] {
        client.write_all(part).await.unwrap();
        client.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in 1..=3 {
        let got = recv(net).await;
        assert_eq!(&got.data[..], &message(n)[..], "message {n}");
        assert_eq!(got.transport, transport);
        assert_eq!(got.peer, client_addr);
        assert_eq!(got.local, listener);
    }
    assert_quiet(net).await;

    assert!(net.sender.has_connection(transport, client_addr));
    let reply = b"SIP/2.0 200 OK\r\nCall-ID: c1\r\nContent-Length: 0\r\n\r\n";
    net.sender
        .send(sip_core::transport::Transmit {
            transport,
            local: listener,
            dest: client_addr,
            data: bytes::Bytes::from_static(reply),
        })
        .await;
    let mut back = vec![0u8; reply.len()];
    tokio::time::timeout(WAIT, client.read_exact(&mut back))
        .await
        .expect("no reply on the same connection")
        .unwrap();
    assert_eq!(&back[..], &reply[..]);
}
