//! UDP and TCP on loopback sockets: framing, connection reuse, keep-alives, errors.

mod common;

use std::sync::atomic::Ordering;

use bytes::Bytes;
use common::{WAIT, assert_quiet, check_framing_and_reuse, loopbacks, message, recv, wait_count};
use sip_core::transport::{Transmit, Transport};
use sip_net::{Listen, NetConfig, NetError, Network};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

async fn bind(transport: Transport, addr: std::net::SocketAddr) -> Network {
    Network::bind(&[Listen { transport, addr }], NetConfig::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn udp_datagram_in_and_reply_out() {
    for any in loopbacks() {
        let mut net = bind(Transport::Udp, any).await;
        let local = net.bound[0].addr;
        assert_ne!(local.port(), 0);
        let client = UdpSocket::bind(any).await.unwrap();
        client.send_to(&message(1), local).await.unwrap();
        let got = recv(&mut net).await;
        assert_eq!(&got.data[..], &message(1)[..]);
        assert_eq!(got.transport, Transport::Udp);
        assert_eq!(got.peer, client.local_addr().unwrap());
        assert_eq!(got.local, local);
        assert!(!net.sender.has_connection(Transport::Udp, got.peer));

        net.sender
            .send(Transmit {
                transport: Transport::Udp,
                local,
                dest: got.peer,
                data: Bytes::from_static(b"pong"),
            })
            .await;
        let mut buf = [0u8; 64];
        let (n, from) = tokio::time::timeout(WAIT, client.recv_from(&mut buf))
            .await
            .expect("no reply")
            .unwrap();
        assert_eq!(&buf[..n], b"pong");
        assert_eq!(from, local);
    }
}

#[tokio::test]
async fn tcp_frames_messages_and_replies_on_the_same_connection() {
    for any in loopbacks() {
        let mut net = bind(Transport::Tcp, any).await;
        let local = net.bound[0].addr;
        let mut client = TcpStream::connect(local).await.unwrap();
        let client_addr = client.local_addr().unwrap();
        check_framing_and_reuse(&mut net, Transport::Tcp, local, client_addr, &mut client).await;
        assert!(!net.sender.has_connection(Transport::Tls, client_addr));
    }
}

/// An invalid Content-Length leaves the end of the message unknown: the header section
/// is handed up (so that the engine can answer 400, RFC 4475 `ncl`), then the
/// connection is closed.
#[tokio::test]
async fn tcp_garbage_closes_the_connection() {
    let mut net = bind(Transport::Tcp, "127.0.0.1:0".parse().unwrap()).await;
    let local = net.bound[0].addr;
    let mut client = TcpStream::connect(local).await.unwrap();
    let client_addr = client.local_addr().unwrap();
    client.write_all(&message(1)).await.unwrap();
    recv(&mut net).await;
    let garbage = b"OPTIONS sip:p SIP/2.0\r\nContent-Length: lots\r\n\r\n";
    client.write_all(garbage).await.unwrap();
    assert_eq!(&recv(&mut net).await.data[..], &garbage[..]);
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, client.read(&mut buf))
        .await
        .expect("connection left open")
        .unwrap_or(0);
    assert_eq!(n, 0, "expected end of stream");
    wait_count(&net.sender.stats.framing_errors, 1).await;
    assert_eq!(net.sender.stats.framing_errors.load(Ordering::Relaxed), 1);
    assert_quiet(&mut net).await;
    // The closed flow leaves the table.
    let deadline = tokio::time::Instant::now() + WAIT;
    while net.sender.has_connection(Transport::Tcp, client_addr) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "flow still in the table"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn tcp_double_crlf_ping_gets_a_crlf_pong() {
    let mut net = bind(Transport::Tcp, "127.0.0.1:0".parse().unwrap()).await;
    let mut client = TcpStream::connect(net.bound[0].addr).await.unwrap();
    // The ping arrives in two pieces; the pong must still come, once.
    client.write_all(b"\r\n").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    client.write_all(b"\r\n").await.unwrap();
    let mut pong = [0u8; 2];
    tokio::time::timeout(WAIT, client.read_exact(&mut pong))
        .await
        .expect("no pong")
        .unwrap();
    assert_eq!(&pong, b"\r\n");
    client.write_all(&message(7)).await.unwrap();
    assert_eq!(&recv(&mut net).await.data[..], &message(7)[..]);
    let mut more = [0u8; 1];
    let extra = tokio::time::timeout(
        std::time::Duration::from_millis(100),
        client.read(&mut more),
    );
    assert!(extra.await.is_err(), "more than one pong");
}

#[tokio::test]
async fn tcp_outgoing_connection_is_opened_and_reused() {
    let mut net = bind(Transport::Tcp, "127.0.0.1:0".parse().unwrap()).await;
    let local = net.bound[0].addr;
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dest = server.local_addr().unwrap();
    let send = |n| Transmit {
        transport: Transport::Tcp,
        local,
        dest,
        data: Bytes::from(message(n)),
    };
    net.sender.send(send(1)).await;
    assert!(net.sender.has_connection(Transport::Tcp, dest));
    let (mut conn, _) = tokio::time::timeout(WAIT, server.accept())
        .await
        .expect("no connection")
        .unwrap();
    net.sender.send(send(2)).await;
    let mut want = message(1);
    want.extend_from_slice(&message(2));
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(WAIT, conn.read_exact(&mut got))
        .await
        .expect("messages not on one connection")
        .unwrap();
    assert_eq!(got, want);

    conn.write_all(&message(3)).await.unwrap();
    let back = recv(&mut net).await;
    assert_eq!(&back.data[..], &message(3)[..]);
    assert_eq!(
        (back.transport, back.peer, back.local),
        (Transport::Tcp, dest, local)
    );
}

#[tokio::test]
async fn tcp_connect_failure_is_counted() {
    let net = bind(Transport::Tcp, "127.0.0.1:0".parse().unwrap()).await;
    // A port that was just free: nothing listens there.
    let dest = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    net.sender
        .send(Transmit {
            transport: Transport::Tcp,
            local: net.bound[0].addr,
            dest,
            data: Bytes::from(message(1)),
        })
        .await;
    wait_count(&net.sender.stats.send_errors, 1).await;
}

#[tokio::test]
async fn tls_listener_without_settings_is_refused() {
    let addr = "127.0.0.1:0".parse().unwrap();
    let listen = [Listen {
        transport: Transport::Tls,
        addr,
    }];
    let err = Network::bind(&listen, NetConfig::default()).await.err();
    assert!(
        matches!(err, Some(NetError::TlsNotConfigured { addr: a }) if a == addr),
        "{err:?}"
    );
}
