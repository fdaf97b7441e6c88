//! Configuration: embedded defaults, a TOML file, and command-line flags that override it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use sip_core::transaction::TimerConfig;
use sip_core::transport::Transport;
use sip_net::Listen;

use sip_core::digest::Algorithm;

use crate::auth::AuthSettings;
use crate::engine::{OverloadSettings, ProxyConfig};
use crate::gate::GateSettings;
use crate::mailbox::StoreSettings;
use crate::registrar::RegistrarConfig;
use crate::route::Identity;
use crate::store::Durability;

/// Configuration errors are the operator's: they stop the program with a message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("bad config file {path}: {source}")]
    Toml {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("bad listen address {0:?}: expected udp:IP:PORT, tcp:IP:PORT or tls:IP:PORT")]
    Listen(String),
    #[error("unknown digest algorithm {0:?}: expected MD5 or SHA-256")]
    Algorithm(String),
    #[error("no digest algorithm offered: list MD5, SHA-256 or both")]
    NoAlgorithm,
    #[error("a tls: listener needs a certificate and key (--tls-cert/--tls-key or [tls] cert/key)")]
    TlsWithoutCert,
    #[error(transparent)]
    Relay(#[from] crate::relay::config::RelayConfigError),
    #[error("[admin] enabled needs a token (at least 16 characters)")]
    AdminWithoutToken,
    #[error("[store] backend = \"postgres\" needs url = \"postgres://…\"")]
    PostgresWithoutUrl,
}

/// `[store] backend`: where the proxy's tables live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendName {
    /// The embedded SQLite files in the data directory (the default).
    #[default]
    Sqlite,
    /// A PostgreSQL database that several proxy nodes may share (crate::pg).
    Postgres,
}

/// The resolved storage backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    /// Its URL's `Debug` hides the password.
    Postgres(crate::pg::PgUrl),
}

impl StoreFile {
    /// The backend `[store] backend` and `url` name.
    fn backend(&self) -> Result<Backend, ConfigError> {
        match (self.backend.unwrap_or_default(), &self.url) {
            (BackendName::Sqlite, _) => Ok(Backend::Sqlite),
            (BackendName::Postgres, Some(url)) => Ok(Backend::Postgres(url.clone())),
            (BackendName::Postgres, None) => Err(ConfigError::PostgresWithoutUrl),
        }
    }
}

/// The file format (every key optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub domain: Option<String>,
    pub data: Option<PathBuf>,
    pub listen: Option<Vec<String>>,
    pub durability: Option<Durability>,
    #[serde(default)]
    pub registrar: RegistrarFile,
    #[serde(default)]
    pub timers: TimersFile,
    #[serde(default)]
    pub auth: AuthFile,
    #[serde(default)]
    pub tls: TlsFile,
    #[serde(default)]
    pub gate: GateFile,
    #[serde(default)]
    pub proxy: ProxyFile,
    #[serde(default)]
    pub store: StoreFile,
    #[serde(default)]
    pub relay: crate::relay::config::RelayFile,
    #[serde(default)]
    pub admin: AdminFile,
    #[serde(default)]
    pub overload: OverloadFile,
}

/// `[overload]`: new INVITEs and REGISTERs get 503 with Retry-After while input waits
/// too long before the engine gets it (engine::overload, docs/architecture.md
/// "Overload").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverloadFile {
    /// Default true.
    pub enabled: Option<bool>,
    /// Over capacity once a datagram waited this long in the receive queue (default 40).
    pub high_ms: Option<u64>,
    /// Back under capacity once the wait is this short (default 10; at most `high_ms`).
    pub low_ms: Option<u64>,
    /// Retry-After of the 503, seconds (default 5, at least 1).
    pub retry_after_s: Option<u64>,
}

impl OverloadFile {
    fn settings(&self) -> OverloadSettings {
        let d = OverloadSettings::default();
        let high = self.high_ms.map_or(d.high, Duration::from_millis);
        let low = self.low_ms.map_or(d.low, Duration::from_millis).min(high);
        OverloadSettings {
            enabled: self.enabled.unwrap_or(d.enabled),
            high,
            low,
            retry_after: self
                .retry_after_s
                .map_or(d.retry_after, |s| Duration::from_secs(s.max(1))),
        }
    }
}

/// `[admin]`: the admin HTTP API and `/metrics` (docs/operations.md "Admin API and
/// metrics").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Off by default.
    pub enabled: Option<bool>,
    /// Default "127.0.0.1:8089" (loopback: anything else is logged as a warning).
    pub listen: Option<SocketAddr>,
    /// The bearer token every request but `/healthz` and `/readyz` must carry.
    pub token: Option<String>,
}

impl AdminFile {
    fn settings(&self) -> Result<AdminSettings, ConfigError> {
        let enabled = self.enabled.unwrap_or(false);
        let token = self
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty());
        if enabled && token.is_none_or(|t| t.len() < crate::admin::MIN_TOKEN_LEN) {
            return Err(ConfigError::AdminWithoutToken);
        }
        Ok(AdminSettings {
            enabled,
            listen: self.listen.unwrap_or(AdminSettings::DEFAULT_LISTEN),
            token: token.map(crate::admin::Token::new),
        })
    }
}

/// The resolved `[admin]` section.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Present whenever `enabled` (checked at load); its `Debug` prints no secret.
    pub token: Option<crate::admin::Token>,
}

impl AdminSettings {
    pub const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8089);
}

impl StoreFile {
    /// The settings: defaults where a key is not given.
    fn settings(&self) -> StoreSettings {
        let d = StoreSettings::default();
        let dq = d.quotas;
        StoreSettings {
            enabled: self.enabled.unwrap_or(d.enabled),
            quotas: crate::mailbox::Quotas {
                max_item_bytes: self.max_item_bytes.unwrap_or(dq.max_item_bytes),
                max_upload_bytes: self.max_upload_bytes.unwrap_or(dq.max_upload_bytes),
                callee_items: self.callee_max_items.unwrap_or(dq.callee_items),
                callee_bytes: self.callee_max_bytes.unwrap_or(dq.callee_bytes),
                caller_items: self.caller_max_items.unwrap_or(dq.caller_items),
                caller_bytes: self.caller_max_bytes.unwrap_or(dq.caller_bytes),
                expiry_secs: self.expiry_s.map_or(dq.expiry_secs, |s| s.max(1)),
            },
            max_file_bytes: self.max_file_bytes.unwrap_or(d.max_file_bytes),
            http_listen: self.http_listen,
            http_base: self.http_base.clone(),
            upload_window_secs: self
                .upload_window_s
                .map_or(d.upload_window_secs, |s| s.max(1)),
        }
    }
}

/// `[store]`: store-and-forward of deposits for busy or offline callees.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    pub enabled: Option<bool>,
    /// Largest deposit body, bytes (default 60000).
    pub max_item_bytes: Option<u64>,
    /// Items and bytes waiting for one callee (defaults 100, 10 MiB).
    pub callee_max_items: Option<u64>,
    pub callee_max_bytes: Option<u64>,
    /// Items and bytes one caller may have waiting (defaults 50, 5 MiB).
    pub caller_max_items: Option<u64>,
    pub caller_max_bytes: Option<u64>,
    /// Lifetime of an item, seconds (default 604800, 7 days).
    pub expiry_s: Option<u64>,
    /// Cap of `mailbox.sqlite`, bytes (default 1 GiB; 0: none).
    pub max_file_bytes: Option<u64>,
    /// Largest announced upload, bytes (default 50 MiB).
    pub max_upload_bytes: Option<u64>,
    /// The HTTP listener for large uploads (off when absent), e.g. "127.0.0.1:8080".
    pub http_listen: Option<SocketAddr>,
    /// `http://host:port` as callers reach the listener (default from `http_listen`).
    pub http_base: Option<String>,
    /// How long an announced upload may take, seconds (default 86400).
    pub upload_window_s: Option<u64>,
    /// "sqlite" (default) or "postgres" (docs/operations.md "PostgreSQL").
    pub backend: Option<BackendName>,
    /// The PostgreSQL URL, `postgres://user:password@host:port/db` (never logged).
    pub url: Option<crate::pg::PgUrl>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFile {
    /// Answer to the request's source address, port and flow (RFC 3581 §4; default
    /// true); false: to the top Via as RFC 3261 §18.2.2 says.
    pub symmetric_responses: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateFile {
    /// Off: every authenticated caller reaches every callee.
    pub enabled: Option<bool>,
    /// Ask the callee with OPTIONS before routing a permitted INVITE.
    pub load_query: Option<bool>,
    pub query_timeout_ms: Option<u64>,
    /// Lifetime of a permit token, seconds (default 60).
    pub token_ttl_s: Option<u64>,
    /// Send session secrets on hops that are not TLS (labs only).
    pub insecure_keys: Option<bool>,
    /// Answer every permitted INVITE with a 302 to the callee (direct mode).
    pub force_direct: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    pub enabled: Option<bool>,
    /// Offered digest algorithms in challenge order: "MD5", "SHA-256".
    pub algorithms: Option<Vec<String>>,
    pub nonce_ttl_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// PEM certificate chain and private key for `tls:` listeners.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// PEM CA bundle to verify peers we connect to.
    pub ca: Option<PathBuf>,
    /// Verify the certificates of peers we connect to (default true).
    pub verify_peer: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrarFile {
    pub min_expires: Option<u32>,
    pub max_expires: Option<u32>,
    pub default_expires: Option<u32>,
    pub max_contacts: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimersFile {
    pub t1_ms: Option<u64>,
    pub t2_ms: Option<u64>,
    pub t4_ms: Option<u64>,
    pub timer_c_s: Option<u64>,
}

/// The domain served when neither a flag, the file nor the data directory names one.
pub const DEFAULT_DOMAIN: &str = "localhost";

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The served domain, also the digest realm. When `domain_given` is false this is
    /// [`DEFAULT_DOMAIN`] until the data directory's stored domain replaces it
    /// (`users::SqliteUsers::claim_domain`).
    pub domain: String,
    /// `--domain` or the file's `domain` named the domain.
    pub domain_given: bool,
    pub data: PathBuf,
    pub listen: Vec<Listen>,
    pub durability: Durability,
    /// `[store] backend` and `url`: the embedded SQLite files or PostgreSQL.
    pub backend: Backend,
    pub registrar: RegistrarConfig,
    pub timers: TimerConfig,
    pub timer_c: Duration,
    pub auth: AuthSettings,
    pub tls: TlsPaths,
    pub gate: GateSettings,
    /// `[proxy] symmetric_responses` (`ProxyConfig::symmetric_responses`).
    pub symmetric_responses: bool,
    /// `[store]` (docs/operations.md "Store and forward").
    pub store: StoreSettings,
    /// `[relay]` when enabled (docs/operations.md "Media relay").
    pub relay: Option<crate::relay::config::RelayConfig>,
    /// `[admin]` (docs/operations.md "Admin API and metrics").
    pub admin: AdminSettings,
    /// `[overload]` (engine::overload).
    pub overload: OverloadSettings,
}

/// Where the TLS material is, if any.
#[derive(Debug, Clone, Default)]
pub struct TlsPaths {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub verify_peer: bool,
}

/// Values given on the command line (they win over the file).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub domain: Option<String>,
    pub data: Option<PathBuf>,
    pub listen: Vec<String>,
    /// Comma-separated digest algorithms, e.g. `sha-256` or `md5,sha-256`.
    pub digest_algorithms: Option<String>,
    pub no_auth: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub no_gate: bool,
}

/// Parses digest algorithm names in order (RFC 8760 §2.4 tokens, case-insensitive).
pub fn parse_algorithms<S: AsRef<str>>(names: &[S]) -> Result<Vec<Algorithm>, ConfigError> {
    if names.iter().all(|n| n.as_ref().trim().is_empty()) {
        return Err(ConfigError::NoAlgorithm);
    }
    names
        .iter()
        .map(|n| {
            let n = n.as_ref().trim();
            Algorithm::from_token(n.as_bytes()).ok_or_else(|| ConfigError::Algorithm(n.to_owned()))
        })
        .collect()
}

pub fn parse_listen(s: &str) -> Result<Listen, ConfigError> {
    let bad = || ConfigError::Listen(s.to_owned());
    let (t, addr) = s.split_once(':').ok_or_else(bad)?;
    let transport = Transport::from_token(t.as_bytes()).ok_or_else(bad)?;
    let addr: SocketAddr = addr.parse().map_err(|_| bad())?;
    Ok(Listen { transport, addr })
}

impl Config {
    /// Embedded defaults < file < flags.
    pub fn load(file: Option<&std::path::Path>, o: Overrides) -> Result<Self, ConfigError> {
        let f: FileConfig = match file {
            Some(p) => {
                let path = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Toml {
                    path,
                    source: Box::new(e),
                })?
            }
            None => FileConfig::default(),
        };
        let listen_strs = if o.listen.is_empty() {
            f.listen
                .unwrap_or_else(|| vec!["udp:127.0.0.1:5060".into(), "tcp:127.0.0.1:5060".into()])
        } else {
            o.listen
        };
        let listen: Vec<Listen> = listen_strs
            .iter()
            .map(|s| parse_listen(s))
            .collect::<Result<_, _>>()?;
        let mut auth = AuthSettings::default();
        if let Some(e) = f.auth.enabled {
            auth.enabled = e;
        }
        if o.no_auth {
            auth.enabled = false;
        }
        if let Some(a) = &f.auth.algorithms {
            auth.algorithms = parse_algorithms(a)?;
        }
        if let Some(a) = &o.digest_algorithms {
            auth.algorithms = parse_algorithms(&a.split(',').collect::<Vec<_>>())?;
        }
        if let Some(t) = f.auth.nonce_ttl_s {
            auth.nonce_ttl_secs = t;
        }
        let tls = TlsPaths {
            cert: o.tls_cert.or(f.tls.cert),
            key: o.tls_key.or(f.tls.key),
            ca: f.tls.ca,
            verify_peer: f.tls.verify_peer.unwrap_or(true),
        };
        if listen.iter().any(|l| l.transport == Transport::Tls)
            && (tls.cert.is_none() || tls.key.is_none())
        {
            return Err(ConfigError::TlsWithoutCert);
        }
        let mut gate = GateSettings::default();
        // Without authentication nobody is identified: the gate (and with it the load
        // query and call limits) cannot apply.
        gate.enabled = f.gate.enabled.unwrap_or(gate.enabled) && !o.no_gate && auth.enabled;
        gate.load_query = f.gate.load_query.unwrap_or(gate.load_query);
        if let Some(ms) = f.gate.query_timeout_ms {
            gate.query_timeout = Duration::from_millis(ms);
        }
        if let Some(s) = f.gate.token_ttl_s {
            gate.token_ttl = Duration::from_secs(s.max(1));
        }
        gate.insecure_keys = f.gate.insecure_keys.unwrap_or(gate.insecure_keys);
        gate.force_direct = f.gate.force_direct.unwrap_or(gate.force_direct);
        let store = f.store.settings();
        let relay = f.relay.settings(&listen)?;
        let admin = f.admin.settings()?;
        let r = RegistrarConfig::default();
        let t = TimerConfig::default();
        let domain = o.domain.or(f.domain);
        Ok(Self {
            domain_given: domain.is_some(),
            domain: domain.unwrap_or_else(|| DEFAULT_DOMAIN.into()),
            data: o
                .data
                .or(f.data)
                .unwrap_or_else(|| PathBuf::from("permit-data")),
            listen,
            durability: f.durability.unwrap_or(Durability::Normal),
            backend: f.store.backend()?,
            registrar: RegistrarConfig {
                min_expires: f.registrar.min_expires.unwrap_or(r.min_expires),
                max_expires: f.registrar.max_expires.unwrap_or(r.max_expires),
                default_expires: f.registrar.default_expires.unwrap_or(r.default_expires),
                max_contacts: f.registrar.max_contacts.unwrap_or(r.max_contacts),
            },
            timers: TimerConfig {
                t1: f.timers.t1_ms.map_or(t.t1, Duration::from_millis),
                t2: f.timers.t2_ms.map_or(t.t2, Duration::from_millis),
                t4: f.timers.t4_ms.map_or(t.t4, Duration::from_millis),
                ..t
            },
            timer_c: Duration::from_secs(f.timers.timer_c_s.unwrap_or(180)),
            auth,
            tls,
            gate,
            symmetric_responses: f.proxy.symmetric_responses.unwrap_or(true),
            store,
            relay,
            admin,
            overload: f.overload.settings(),
        })
    }

    /// The engine's configuration, given the addresses actually bound.
    pub fn proxy_config(&self, bound: &[Listen]) -> ProxyConfig {
        let identity = Identity {
            domain: self.domain.clone(),
            listeners: bound.iter().map(|l| (l.transport, l.addr)).collect(),
        };
        let mut cfg = ProxyConfig::new(identity);
        cfg.registrar = self.registrar.clone();
        cfg.timers = self.timers;
        cfg.timer_c = self.timer_c;
        cfg.gate = self.gate.clone();
        cfg.symmetric_responses = self.symmetric_responses;
        cfg.overload = self.overload.clone();
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_on_by_default_and_marks_from_the_file() {
        let d = Config::load(None, Overrides::default()).unwrap();
        assert_eq!(d.overload, OverloadSettings::default());
        assert!(d.proxy_config(&d.listen).overload.enabled);
        let dir = std::env::temp_dir().join(format!("permit-cfg-ovl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.toml");
        std::fs::write(
            &file,
            "[overload]\nenabled = false\nhigh_ms = 80\nlow_ms = 200\nretry_after_s = 0\n",
        )
        .unwrap();
        let c = Config::load(Some(&file), Overrides::default()).unwrap();
        let o = c.proxy_config(&c.listen).overload;
        assert!(!o.enabled);
        assert_eq!(o.high, Duration::from_millis(80));
        // A low mark above the high one would never let the proxy leave overload.
        assert_eq!(o.low, Duration::from_millis(80));
        assert_eq!(o.retry_after, Duration::from_secs(1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn symmetric_responses_by_default_strict_on_request() {
        let dir = std::env::temp_dir().join(format!("permit-cfg-sym-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.toml");
        std::fs::write(&file, "[proxy]\nsymmetric_responses = false\n").unwrap();
        let strict = Config::load(Some(&file), Overrides::default()).unwrap();
        assert!(!strict.symmetric_responses);
        assert!(!strict.proxy_config(&strict.listen).symmetric_responses);
        let d = Config::load(None, Overrides::default()).unwrap();
        assert!(d.symmetric_responses && d.proxy_config(&d.listen).symmetric_responses);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn flags_override_file_and_defaults() {
        let dir = std::env::temp_dir().join(format!("permit-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.toml");
        std::fs::write(&file, "domain = \"example.org\"\nlisten = [\"udp:127.0.0.1:5080\"]\n[registrar]\nmin_expires = 30\n").unwrap();
        let c = Config::load(
            Some(&file),
            Overrides {
                listen: vec!["tcp:[::1]:5090".into()],
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.domain, "example.org");
        assert!(c.domain_given);
        assert_eq!(
            c.listen,
            vec![Listen {
                transport: Transport::Tcp,
                addr: "[::1]:5090".parse().unwrap()
            }]
        );
        assert_eq!(c.registrar.min_expires, 30);
        assert_eq!(c.data, PathBuf::from("permit-data"));
        let d = Config::load(None, Overrides::default()).unwrap();
        assert_eq!(d.listen.len(), 2);
        assert_eq!(d.domain, "localhost");
        assert!(!d.domain_given);
        assert!(parse_listen("sctp:1.2.3.4:5").is_err());
        assert_eq!(
            parse_algorithms(&["sha-256"]).unwrap(),
            vec![Algorithm::Sha256]
        );
        assert_eq!(
            parse_algorithms(&["SHA-256", " md5"]).unwrap(),
            vec![Algorithm::Sha256, Algorithm::Md5]
        );
        assert!(matches!(
            parse_algorithms(&["sha-1"]),
            Err(ConfigError::Algorithm(_))
        ));
        assert!(matches!(
            parse_algorithms::<&str>(&[]),
            Err(ConfigError::NoAlgorithm)
        ));
        assert!(matches!(
            Config::load(
                None,
                Overrides {
                    listen: vec!["tls:127.0.0.1:5061".into()],
                    ..Overrides::default()
                }
            ),
            Err(ConfigError::TlsWithoutCert)
        ));
        std::fs::write(
            &file,
            "[store]\nmax_item_bytes = 100\ncaller_max_items = 2\nexpiry_s = 60\nmax_file_bytes = 0\n",
        )
        .unwrap();
        let s = Config::load(Some(&file), Overrides::default())
            .unwrap()
            .store;
        assert_eq!(
            (
                s.quotas.max_item_bytes,
                s.quotas.caller_items,
                s.quotas.expiry_secs
            ),
            (100, 2, 60)
        );
        assert_eq!(s.quotas.callee_items, 100, "unset keys keep their default");
        assert_eq!(s.max_file_bytes, 0);
        assert!(s.enabled);
        std::fs::write(&file, "[admin]\nenabled = true\n").unwrap();
        assert!(matches!(
            Config::load(Some(&file), Overrides::default()),
            Err(ConfigError::AdminWithoutToken)
        ));
        std::fs::write(&file, "[admin]\nenabled = true\ntoken = \"short\"\n").unwrap();
        assert!(Config::load(Some(&file), Overrides::default()).is_err());
        std::fs::write(
            &file,
            "[admin]\nenabled = true\ntoken = \"0123456789abcdef-secret\"\n",
        )
        .unwrap();
        let a = Config::load(Some(&file), Overrides::default())
            .unwrap()
            .admin;
        assert!(a.enabled && a.listen == AdminSettings::DEFAULT_LISTEN);
        assert!(!format!("{a:?}").contains("secret"), "no token in Debug");
        let d = Config::load(None, Overrides::default()).unwrap().admin;
        assert!(!d.enabled && d.token.is_none());
        std::fs::write(&file, "nonsense = 1\n").unwrap();
        assert!(matches!(
            Config::load(Some(&file), Overrides::default()),
            Err(ConfigError::Toml { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
