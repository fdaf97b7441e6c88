//! TLS settings (RFC 3261 §26.2): the certificate a TLS listener presents, and whom an
//! outgoing TLS connection trusts. Trust comes only from configured PEM files — no
//! system or web roots — because SIP over TLS here runs between known hosts.
//!
//! TLS protects one hop (RFC 3261 §26.2.1); what a `sips:` URI demands of the hops
//! after it (RFC 5630 §3) is a routing decision for the engines, not for this module.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::NetError;

/// TLS configuration of a [`crate::Network`].
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The chain and key a TLS listener presents; `None` allows outgoing TLS only.
    identity: Option<Arc<Identity>>,
    /// Verify the certificate of servers we connect to (RFC 3261 §26.3.1). `false`
    /// accepts any certificate: for labs only, and logged as a warning.
    pub verify_peer: bool,
    /// PEM file of the certificates trusted for outgoing connections. Without it, the
    /// root of our own chain is the only trust anchor (a lab of hosts sharing one
    /// self-signed certificate, or one CA whose certificate ends our chain).
    pub ca: Option<PathBuf>,
}

/// A certificate chain (leaf first) and its private key.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Identity")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Loads a listener identity: `cert_pem` holds the chain, leaf first; `key_pem` its key
/// (PKCS#8, PKCS#1 or SEC1). Peers are verified, with our own chain's root as anchor
/// unless [`TlsSettings::ca`] is set afterwards.
pub fn load_tls(cert_pem: &Path, key_pem: &Path) -> Result<TlsSettings, NetError> {
    let pem_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NetError::Pem { path, source }
    };
    let chain = CertificateDer::pem_file_iter(cert_pem)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(pem_err(cert_pem))?;
    if chain.is_empty() {
        return Err(pem_err(cert_pem)(
            rustls_pki_types::pem::Error::NoItemsFound,
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_pem).map_err(pem_err(key_pem))?;
    let settings = TlsSettings {
        identity: Some(Arc::new(Identity { chain, key })),
        verify_peer: true,
        ca: None,
    };
    // Fail at load time, not at bind time, on a key that does not match the certificate.
    settings.server_config(&provider())?;
    Ok(settings)
}

impl TlsSettings {
    /// Outgoing TLS only (no listener), trusting the certificates in `ca`.
    pub fn client(ca: Option<PathBuf>) -> Self {
        Self {
            identity: None,
            verify_peer: true,
            ca,
        }
    }

    /// Whether a TLS listener can be bound with these settings.
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    fn server_config(
        &self,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Option<ServerConfig>, NetError> {
        let Some(id) = &self.identity else {
            return Ok(None);
        };
        // No client certificates requested: RFC 3261 §26.2 leaves mutual TLS to
        // deployments that provision one, and the SIP layer authenticates users by digest.
        let config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(id.chain.clone(), id.key.clone_key())?;
        Ok(Some(config))
    }

    fn client_config(&self, provider: &Arc<CryptoProvider>) -> Result<ClientConfig, NetError> {
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        if !self.verify_peer {
            tracing::warn!("TLS peer verification is off: any server certificate is accepted");
            let verifier = AcceptAnyServerCert(provider.signature_verification_algorithms);
            return Ok(builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth());
        }
        let mut roots = RootCertStore::empty();
        if let Some(ca) = &self.ca {
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|source| NetError::Pem {
                    path: ca.clone(),
                    source,
                })?;
            for cert in certs {
                roots.add(cert)?;
            }
        } else if let Some(root) = self.identity.as_ref().and_then(|id| id.chain.last()) {
            roots.add(root.clone())?;
        }
        if roots.is_empty() {
            tracing::warn!("no TLS trust anchors configured: outgoing TLS connections will fail");
        }
        Ok(builder.with_root_certificates(roots).with_no_client_auth())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The built TLS state a stream set uses.
#[derive(Clone)]
pub(crate) struct TlsContext {
    acceptor: Option<TlsAcceptor>,
    connector: TlsConnector,
}

impl TlsContext {
    pub(crate) fn new(settings: &TlsSettings) -> Result<Self, NetError> {
        let provider = provider();
        let acceptor = settings
            .server_config(&provider)?
            .map(|c| TlsAcceptor::from(Arc::new(c)));
        let connector = TlsConnector::from(Arc::new(settings.client_config(&provider)?));
        Ok(Self {
            acceptor,
            connector,
        })
    }

    pub(crate) fn acceptor(&self) -> Option<TlsAcceptor> {
        self.acceptor.clone()
    }

    pub(crate) fn connector(&self) -> TlsConnector {
        self.connector.clone()
    }
}

/// `verify_peer = false`: any certificate passes, but the handshake signatures are still
/// checked, so the peer at least holds the key of the certificate it sent.
#[derive(Debug)]
struct AcceptAnyServerCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Writes a self-signed certificate and its key for labs, as `cert.pem` and `key.pem`
/// in `out_dir`. Each name becomes a subjectAltName, an IP address if it parses as one
/// (outgoing TLS verifies the address it connects to, RFC 5922 §7.2 notwithstanding),
/// else a DNS name; no names means `localhost`, `127.0.0.1` and `::1`.
pub fn self_signed(out_dir: &Path, names: &[String]) -> Result<(PathBuf, PathBuf), NetError> {
    let names = if names.is_empty() {
        vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
    } else {
        names.to_vec()
    };
    let mut params = rcgen::CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Permit lab (self-signed)");
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NetError::Write { path, source }
    };
    std::fs::create_dir_all(out_dir).map_err(write_err(out_dir))?;
    let cert_path = out_dir.join("cert.pem");
    let key_path = out_dir.join("key.pem");
    std::fs::write(&cert_path, cert.pem()).map_err(write_err(&cert_path))?;
    write_private(&key_path, key.serialize_pem().as_bytes()).map_err(write_err(&key_path))?;
    Ok((cert_path, key_path))
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts.open(path)?;
    // `mode` applies only to a new file; an old key file is narrowed too.
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(data)
}
