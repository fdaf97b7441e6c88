//! TLS on loopback sockets (RFC 3261 §26.2): the listener frames and replies like TCP,
//! outgoing connections verify the server against the configured trust anchors, and
//! lab certificates come from `self_signed`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use common::{WAIT, assert_quiet, check_framing_and_reuse, message, recv, scratch, wait_count};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sip_core::transport::{Transmit, Transport};
use sip_net::{Listen, NetConfig, Network, TlsSettings, load_tls, self_signed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A fresh self-signed certificate for the default lab names.
fn lab_cert(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    self_signed(&scratch(tag), &[]).unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test client that trusts only `root`.
fn client_trusting(root: &Path) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(root).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// A test server presenting `cert`/`key`.
fn server_with(cert: &Path, key: &Path) -> TlsAcceptor {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_file(cert).unwrap()],
            PrivateKeyDer::from_pem_file(key).unwrap(),
        )
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

async fn bind_tls(tls: TlsSettings, addr: SocketAddr) -> Network {
    let cfg = NetConfig {
        tls: Some(tls),
        ..NetConfig::default()
    };
    let listen = [Listen {
        transport: Transport::Tls,
        addr,
    }];
    Network::bind(&listen, cfg).await.unwrap()
}

#[test]
fn self_signed_writes_a_loadable_pair_with_a_private_key_file() {
    let dir = scratch("gen");
    let names = vec!["sip.example.test".to_string(), "192.0.2.7".to_string()];
    let (cert, key) = self_signed(&dir.join("sub"), &names).unwrap();
    assert_eq!(cert, dir.join("sub/cert.pem"));
    assert_eq!(key, dir.join("sub/key.pem"));
    let pem = std::fs::read_to_string(&cert).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let tls = load_tls(&cert, &key).unwrap();
    assert!(tls.has_identity() && tls.verify_peer && tls.ca.is_none());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A key that does not belong to the certificate is refused at load time.
    let (_, other_key) = lab_cert("other");
    assert!(load_tls(&cert, &other_key).is_err());
    assert!(load_tls(&dir.join("missing.pem"), &key).is_err());
}

#[tokio::test]
async fn tls_listener_frames_messages_and_replies_on_the_same_connection() {
    let (cert, key) = lab_cert("listen");
    let mut addrs = vec![("127.0.0.1:0", "127.0.0.1")];
    if common::has_ipv6() {
        addrs.push(("[::1]:0", "::1"));
    }
    for (any, ip) in addrs {
        let mut net = bind_tls(load_tls(&cert, &key).unwrap(), any.parse().unwrap()).await;
        let local = net.bound[0].addr;
        assert_eq!(net.bound[0].transport, Transport::Tls);
        let tcp = TcpStream::connect(local).await.unwrap();
        let client_addr = tcp.local_addr().unwrap();
        let name = ServerName::IpAddress(ip.parse::<std::net::IpAddr>().unwrap().into());
        let mut client = client_trusting(&cert).connect(name, tcp).await.unwrap();
        check_framing_and_reuse(&mut net, Transport::Tls, local, client_addr, &mut client).await;
        assert!(!net.sender.has_connection(Transport::Tcp, client_addr));
    }
}

#[tokio::test]
async fn tls_garbage_closes_the_connection() {
    let (cert, key) = lab_cert("garbage");
    let mut net = bind_tls(
        load_tls(&cert, &key).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let tcp = TcpStream::connect(net.bound[0].addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut client = client_trusting(&cert).connect(name, tcp).await.unwrap();
    client.write_all(b"\x16\x03garbage\r\n\r\n").await.unwrap();
    client.flush().await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, client.read(&mut buf))
        .await
        .expect("connection left open")
        .unwrap_or(0);
    assert_eq!(n, 0, "expected end of stream");
    wait_count(&net.sender.stats.framing_errors, 1).await;
    assert_quiet(&mut net).await;
}

#[tokio::test]
async fn tls_listener_is_refused_by_a_client_that_does_not_trust_it() {
    let (cert, key) = lab_cert("served");
    let (stranger, _) = lab_cert("stranger");
    let mut net = bind_tls(
        load_tls(&cert, &key).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let tcp = TcpStream::connect(net.bound[0].addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let handshake = tokio::time::timeout(WAIT, client_trusting(&stranger).connect(name, tcp));
    assert!(handshake.await.expect("handshake hung").is_err());
    wait_count(&net.sender.stats.handshake_errors, 1).await;
    assert_quiet(&mut net).await;
}

/// Runs a one-connection TLS server; returns its address and the accepted stream.
async fn tls_server(
    acceptor: TlsAcceptor,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        acceptor.accept(tcp).await
    });
    (addr, task)
}

#[tokio::test]
async fn tls_outgoing_connection_is_verified_opened_and_reused() {
    // Our own certificate is the only trust anchor when no CA file is given; the
    // server presents the same lab certificate.
    let (cert, key) = lab_cert("out");
    let mut net = bind_tls(
        load_tls(&cert, &key).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let local = net.bound[0].addr;
    let (dest, server) = tls_server(server_with(&cert, &key)).await;
    let send = |n| Transmit {
        transport: Transport::Tls,
        local,
        dest,
        data: Bytes::from(message(n)),
    };
    net.sender.send(send(1)).await;
    assert!(net.sender.has_connection(Transport::Tls, dest));
    assert!(!net.sender.has_connection(Transport::Tcp, dest));
    let mut conn = tokio::time::timeout(WAIT, server)
        .await
        .expect("no connection")
        .unwrap()
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
    conn.flush().await.unwrap();
    let back = recv(&mut net).await;
    assert_eq!(&back.data[..], &message(3)[..]);
    assert_eq!(
        (back.transport, back.peer, back.local),
        (Transport::Tls, dest, local)
    );
    assert_eq!(net.sender.stats.send_errors.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn tls_outgoing_to_an_untrusted_server_fails_unless_verification_is_off() {
    let (ours, our_key) = lab_cert("ours");
    let (theirs, their_key) = lab_cert("theirs");
    for verify_peer in [true, false] {
        let mut tls = load_tls(&ours, &our_key).unwrap();
        tls.verify_peer = verify_peer;
        let net = bind_tls(tls, "127.0.0.1:0".parse().unwrap()).await;
        let (dest, server) = tls_server(server_with(&theirs, &their_key)).await;
        net.sender
            .send(Transmit {
                transport: Transport::Tls,
                local: net.bound[0].addr,
                dest,
                data: Bytes::from(message(1)),
            })
            .await;
        let accepted = tokio::time::timeout(WAIT, server)
            .await
            .expect("server hung");
        if verify_peer {
            assert!(accepted.unwrap().is_err(), "handshake should fail");
            wait_count(&net.sender.stats.handshake_errors, 1).await;
            wait_count(&net.sender.stats.send_errors, 1).await;
            let deadline = tokio::time::Instant::now() + WAIT;
            while net.sender.has_connection(Transport::Tls, dest) {
                assert!(tokio::time::Instant::now() < deadline, "failed flow kept");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        } else {
            let mut conn = accepted.unwrap().unwrap();
            let mut got = vec![0u8; message(1).len()];
            tokio::time::timeout(WAIT, conn.read_exact(&mut got))
                .await
                .expect("nothing received")
                .unwrap();
            assert_eq!(got, message(1));
        }
    }
}

#[tokio::test]
async fn tls_client_only_settings_trust_a_ca_file_and_refuse_a_listener() {
    let (cert, key) = lab_cert("ca");
    let tls = TlsSettings::client(Some(cert.clone()));
    let listen = [Listen {
        transport: Transport::Tls,
        addr: "127.0.0.1:0".parse().unwrap(),
    }];
    let cfg = NetConfig {
        tls: Some(tls.clone()),
        ..NetConfig::default()
    };
    assert!(matches!(
        Network::bind(&listen, cfg.clone()).await,
        Err(sip_net::NetError::TlsNotConfigured { .. })
    ));
    // No listener at all: outgoing TLS still works, from an unspecified local address.
    let net = Network::bind(&[], cfg).await.unwrap();
    let (dest, server) = tls_server(server_with(&cert, &key)).await;
    net.sender
        .send(Transmit {
            transport: Transport::Tls,
            local: "127.0.0.1:0".parse().unwrap(),
            dest,
            data: Bytes::from(message(4)),
        })
        .await;
    let mut conn = tokio::time::timeout(WAIT, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut got = vec![0u8; message(4).len()];
    tokio::time::timeout(WAIT, conn.read_exact(&mut got))
        .await
        .expect("nothing received")
        .unwrap();
    assert_eq!(got, message(4));
}
