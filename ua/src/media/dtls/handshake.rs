//! The tokio shell of a DTLS-SRTP handshake (RFC 5764 §4) on a call's media port.
//!
//! The `dtls` crate's `DTLSConn` is async over a connection of its own; here that
//! connection is [`MediaPortConn`]: it reads the DTLS records the media socket's
//! reader demultiplexes to it (first byte 20..=63, RFC 5764 §5.1.2) and writes to
//! the peer's media address on the same socket, so DTLS and SRTP share one port.
//! What comes out is the peer's certificate checked against its `a=fingerprint`
//! (RFC 5763 §5) and the SRTP keys exported from the handshake (RFC 5764 §4.2).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use dtls::config::{ClientAuthType, Config, ExtendedMasterSecretType};
use dtls::conn::DTLSConn;
use dtls::crypto::Certificate;
use dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use sip_core::permit::SrtpSuite;
use tokio::net::UdpSocket;
use tokio::sync::{Mutex, mpsc};
use webrtc_util::KeyingMaterialExporter;

use super::{DtlsCall, EXPORTER_LABEL, Fingerprint, Role, material_len, split_material, suite_of};
use crate::keys::MediaKeys;

/// A handshake that has not finished by then has failed (the `dtls` crate retransmits
/// flights on its own; it has no overall limit).
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(15);
/// DTLS records queued for the handshake before further ones are dropped.
pub const INBOX: usize = 64;

/// This process's certificate: self-signed ECDSA P-256, made once per process
/// (RFC 5763 §5: endpoints use self-signed certificates named by their
/// fingerprint). `None` if it could not be made: DTLS is then not offered.
pub fn local_certificate() -> Option<&'static Certificate> {
    static CERT: OnceLock<Option<Certificate>> = OnceLock::new();
    CERT.get_or_init(|| Certificate::generate_self_signed(vec!["permit-ua".to_owned()]).ok())
        .as_ref()
}

/// The fingerprint of [`local_certificate`].
pub fn local_fingerprint() -> Option<Fingerprint> {
    let cert = local_certificate()?;
    cert.certificate.first().map(|der| Fingerprint::of_der(der))
}

/// Why a handshake gave no keys.
#[derive(Debug, thiserror::Error)]
pub enum DtlsError {
    #[error("no local certificate")]
    NoCertificate,
    #[error("DTLS handshake failed: {0}")]
    Handshake(String),
    #[error("DTLS handshake did not finish within {0:?}")]
    Timeout(Duration),
    #[error("the peer chose no SRTP profile we support")]
    NoProfile,
    #[error("exporting the SRTP keys failed: {0}")]
    Export(String),
}

/// An established DTLS association and the SRTP keys it gave.
pub struct Established {
    /// Kept until the call ends (it answers retransmitted flights; closing it sends
    /// `close_notify`).
    pub conn: DTLSConn,
    pub keys: MediaKeys,
    pub suite: SrtpSuite,
}

/// The media port as the DTLS connection sees it.
pub struct MediaPortConn {
    socket: Arc<UdpSocket>,
    remote: SocketAddr,
    inbox: Mutex<mpsc::Receiver<Vec<u8>>>,
}

impl MediaPortConn {
    pub fn new(socket: Arc<UdpSocket>, remote: SocketAddr, inbox: mpsc::Receiver<Vec<u8>>) -> Self {
        Self {
            socket,
            remote,
            inbox: Mutex::new(inbox),
        }
    }
}

fn closed() -> webrtc_util::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "media port closed").into()
}

#[async_trait]
impl webrtc_util::Conn for MediaPortConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        let record = self.inbox.lock().await.recv().await.ok_or_else(closed)?;
        let n = record.len().min(buf.len());
        buf[..n].copy_from_slice(&record[..n]);
        Ok(n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        Ok((self.recv(buf).await?, self.remote))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.socket.send_to(buf, self.remote).await?)
    }

    /// Only ever to the peer's media address of the SDP.
    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        self.send(buf).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.remote)
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.inbox.lock().await.close();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// The handshake's configuration: our certificate, the SRTP profiles of
/// [`super::PROFILES`] (RFC 5764 §4.1.1 `use_srtp`), the peer's certificate accepted
/// when its fingerprint is one of the SDP's (RFC 5763 §5; self-signed, so no chain
/// is verified), and a client certificate required when we are the server (RFC 5763
/// §5: both sides present one).
fn config(call: &DtlsCall) -> Result<Config, DtlsError> {
    let cert = local_certificate().ok_or(DtlsError::NoCertificate)?;
    let expected = call.clone();
    Ok(Config {
        certificates: vec![cert.clone()],
        srtp_protection_profiles: super::PROFILES
            .iter()
            .map(|&p| SrtpProtectionProfile::from(p))
            .collect(),
        extended_master_secret: ExtendedMasterSecretType::Request,
        client_auth: match call.role {
            Role::Server => ClientAuthType::RequireAnyClientCert,
            Role::Client => ClientAuthType::NoClientCert,
        },
        insecure_skip_verify: true,
        verify_peer_certificate: Some(Arc::new(move |certs: &[Vec<u8>], _| match certs.first() {
            Some(der) if expected.accepts(der) => Ok(()),
            _ => Err(dtls::Error::ErrInvalidCertificate),
        })),
        ..Config::default()
    })
}

/// Runs the handshake of `call` over `conn` and exports the SRTP keys.
pub async fn establish(conn: MediaPortConn, call: DtlsCall) -> Result<Established, DtlsError> {
    let config = config(&call)?;
    let is_client = call.role == Role::Client;
    let conn = tokio::time::timeout(
        HANDSHAKE_LIMIT,
        DTLSConn::new(Arc::new(conn), config, is_client, None),
    )
    .await
    .map_err(|_| DtlsError::Timeout(HANDSHAKE_LIMIT))?
    .map_err(|e| DtlsError::Handshake(e.to_string()))?;
    let profile = conn.selected_srtpprotection_profile();
    let suite = match profile {
        SrtpProtectionProfile::Unsupported => None,
        p => suite_of(p as u16),
    }
    .ok_or(DtlsError::NoProfile)?;
    let len = material_len(&suite).ok_or(DtlsError::NoProfile)?;
    let mut material = conn
        .connection_state()
        .await
        .export_keying_material(EXPORTER_LABEL, &[], len)
        .await
        .map_err(|e| DtlsError::Export(e.to_string()))?;
    let keys = split_material(&material, &suite, call.role);
    material.fill(0);
    let keys = keys.ok_or_else(|| DtlsError::Export("wrong length".into()))?;
    Ok(Established { conn, keys, suite })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::srtp::SrtpSession;

    /// Two endpoints on loopback run the handshake through [`MediaPortConn`], each
    /// fed by a demultiplexing reader as the media socket does, and get mirrored keys;
    /// a peer whose certificate is not the SDP's is refused.
    #[tokio::test]
    async fn two_endpoints_agree_on_srtp_keys_and_refuse_a_wrong_fingerprint() {
        let local = local_fingerprint().unwrap();
        for (right, expect_ok) in [(true, true), (false, false)] {
            let a = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
            let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
            let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
            let peer = if right { local } else { Fingerprint([9; 32]) };
            let call = |role| DtlsCall {
                role,
                peer: vec![peer],
                local,
                proto: "UDP/TLS/RTP/SAVP".into(),
            };
            let pump = |s: Arc<UdpSocket>, tx: mpsc::Sender<Vec<u8>>| {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 2048];
                    while let Ok((n, _)) = s.recv_from(&mut buf).await {
                        if super::super::is_dtls(&buf[..n])
                            && tx.send(buf[..n].to_vec()).await.is_err()
                        {
                            break;
                        }
                    }
                })
            };
            let (atx, arx) = mpsc::channel(INBOX);
            let (btx, brx) = mpsc::channel(INBOX);
            let (pa, pb) = (pump(a.clone(), atx), pump(b.clone(), btx));
            let client = establish(MediaPortConn::new(a, b_addr, arx), call(Role::Client));
            let server = establish(MediaPortConn::new(b, a_addr, brx), call(Role::Server));
            let (c, s) = tokio::join!(client, server);
            pa.abort();
            pb.abort();
            if !expect_ok {
                assert!(c.is_err() || s.is_err(), "a wrong fingerprint must fail");
                continue;
            }
            let (c, s) = (c.unwrap(), s.unwrap());
            assert_eq!(c.suite, SrtpSuite::AesCm128HmacSha1_80);
            assert_eq!(c.keys.send, s.keys.recv);
            assert_eq!(c.keys.recv, s.keys.send);
            let mut tx = SrtpSession::new(&c.keys).unwrap();
            let mut rx = SrtpSession::new(&s.keys).unwrap();
            let mut rtp = crate::media::rtp::RtpSender::new(&mut sip_testkit::seeded_rng(1));
            let packet = rtp.packet(&[0x55; 160]);
            assert_eq!(rx.unprotect(&tx.protect(&packet).unwrap()).unwrap(), packet);
        }
    }
}
