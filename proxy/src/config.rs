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
    /// The wait must stay at `high_ms` or above this long (default 100).
    pub sustain_ms: Option<u64>,
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
            sustain: self.sustain_ms.map_or(d.sustain, Duration::from_millis),
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
    /// Engine shards, each a thread with its own transactions (crate::shard); 0: one
    /// per core.
    pub shards: Option<usize>,
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
    /// `[proxy] shards` or `--shards`: 0 for one per core ([`Config::shard_count`]).
    pub shards: usize,
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
    /// `--shards N` (`[proxy] shards`).
    pub shards: Option<usize>,
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
    // One line per key: splitting the assembly would only scatter the table.
    #[allow(clippy::too_many_lines)]
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
            shards: o.shards.or(f.proxy.shards).unwrap_or(1),
            store,
            relay,
            admin,
            overload: f.overload.settings(),
        })
    }

    /// The number of engine shards to run: `shards`, or one per core when 0.
    pub fn shard_count(&self) -> usize {
        let n = match self.shards {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            n => n,
        };
        n.clamp(1, 256)
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

/// The value a key takes when the file leaves it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDefault {
    /// This TOML value; a test checks that writing it changes nothing.
    Is(&'static str),
    /// Not set, so the feature it configures is off or unused; `example` is a valid
    /// value.
    Unset { example: &'static str },
    /// Worked out at start as `text` says; `example` is a valid value.
    Derived {
        text: &'static str,
        example: &'static str,
    },
}

/// One key of the configuration file: the reference in docs/operations.md is printed
/// from [`REFERENCE`] (`permit-proxy config reference`), and tests check the table
/// against [`FileConfig`]'s fields and the defaults [`Config::load`] applies.
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    /// `section.key`, or `key` for the top level.
    pub key: &'static str,
    pub default: KeyDefault,
    pub meaning: &'static str,
}

const fn key(key: &'static str, default: KeyDefault, meaning: &'static str) -> KeyDoc {
    KeyDoc {
        key,
        default,
        meaning,
    }
}

use KeyDefault::{Derived, Is, Unset};

/// Every key of the configuration file, in the order of docs/operations.md.
pub const REFERENCE: &[KeyDoc] = &[
    key(
        "domain",
        Derived {
            text: "the data directory's stored domain, else `\"localhost\"`",
            example: "\"example.org\"",
        },
        "The SIP domain served by the registrar, also the digest realm (`--domain`). A data directory that serves another domain refuses to start.",
    ),
    key(
        "data",
        Is("\"permit-data\""),
        "Data directory: `permit.sqlite` (bindings, users, lists), `mailbox.sqlite`, `uploads/`, `upload.key` (`--data`). Relative to the working directory.",
    ),
    key(
        "listen",
        Is("[\"udp:127.0.0.1:5060\", \"tcp:127.0.0.1:5060\"]"),
        "SIP listeners, `udp:`, `tcp:` or `tls:` then IP:PORT (`--listen`, repeatable; the flags replace the whole list).",
    ),
    key(
        "durability",
        Is("\"normal\""),
        "How the embedded store syncs a commit: `\"normal\"` survives kill -9 (WAL, `synchronous=NORMAL`), `\"full\"` also a power loss (an fsync per commit).",
    ),
    key(
        "registrar.min_expires",
        Is("60"),
        "Seconds. A shorter non-zero Expires gets 423 with Min-Expires (RFC 3261 §10.3 step 7).",
    ),
    key(
        "registrar.max_expires",
        Is("7200"),
        "Seconds. A longer Expires is shortened to this.",
    ),
    key(
        "registrar.default_expires",
        Is("3600"),
        "Seconds, for a Contact without an expiry.",
    ),
    key(
        "registrar.max_contacts",
        Is("16"),
        "Bindings per AOR; a REGISTER that would leave more gets 403.",
    ),
    key(
        "timers.t1_ms",
        Is("500"),
        "RFC 3261 T1 (round-trip estimate), milliseconds; Timers B, F, H, J are 64×T1.",
    ),
    key(
        "timers.t2_ms",
        Is("4000"),
        "RFC 3261 T2 (largest retransmission interval of non-INVITE requests and INVITE responses), milliseconds.",
    ),
    key(
        "timers.t4_ms",
        Is("5000"),
        "RFC 3261 T4 (longest time a message stays in the network; Timers I and K), milliseconds.",
    ),
    key(
        "timers.timer_c_s",
        Is("180"),
        "Timer C (RFC 3261 §16.6 item 11), seconds: an INVITE branch without a final response this long after its last provisional is cancelled.",
    ),
    key(
        "auth.enabled",
        Is("true"),
        "Digest authentication of REGISTER and out-of-dialog requests; `false` (or `--no-auth`) for labs and load tests only, and it turns the gate off too.",
    ),
    key(
        "auth.algorithms",
        Is("[\"MD5\", \"SHA-256\"]"),
        "Digest algorithms offered, one challenge each, in this order (RFC 8760; `--digest-algorithms`).",
    ),
    key(
        "auth.nonce_ttl_s",
        Is("300"),
        "Seconds a nonce is accepted; an older one gets a new challenge with `stale=true`.",
    ),
    key(
        "tls.cert",
        Unset {
            example: "\"/etc/permit/tls/cert.pem\"",
        },
        "PEM certificate chain for `tls:` listeners (`--tls-cert`); a `tls:` listener without it is an error.",
    ),
    key(
        "tls.key",
        Unset {
            example: "\"/etc/permit/tls/key.pem\"",
        },
        "PEM private key for `tls:` listeners (`--tls-key`).",
    ),
    key(
        "tls.ca",
        Unset {
            example: "\"/etc/permit/tls/ca.pem\"",
        },
        "PEM CA bundle to verify the peers the proxy connects to over TLS; when unset, the last certificate of `cert`'s chain is the only trust anchor (none without `cert`: outgoing TLS fails, warned at start).",
    ),
    key(
        "tls.verify_peer",
        Is("true"),
        "Verify the certificates of peers the proxy connects to.",
    ),
    key(
        "gate.enabled",
        Is("true"),
        "Permitted-terminal lists decide who reaches whom (`--no-gate` or `false`: every authenticated caller reaches every callee). Needs `auth.enabled`.",
    ),
    key(
        "gate.load_query",
        Is("true"),
        "Ask the callee with OPTIONS before routing a permitted INVITE (docs/profile.md \"Load query and call limit\").",
    ),
    key(
        "gate.query_timeout_ms",
        Is("2000"),
        "Milliseconds to wait for the load query's answer; then 480 (or the item is stored).",
    ),
    key(
        "gate.token_ttl_s",
        Is("60"),
        "Lifetime of a permit token, seconds (at least 1).",
    ),
    key(
        "gate.insecure_keys",
        Is("false"),
        "Send session secrets on hops that are not TLS. Labs only: warned at start and on every call.",
    ),
    key(
        "gate.force_direct",
        Is("false"),
        "Answer every permitted INVITE in direct mode (302 with the token), not only those that ask for it.",
    ),
    key(
        "proxy.symmetric_responses",
        Is("true"),
        "Answer the request's source address and flow (RFC 3581 §4); `false`: the top Via, as RFC 3261 §18.2.2 says.",
    ),
    key(
        "proxy.shards",
        Is("1"),
        "Engine shards, each on a thread of its own with its own transactions; messages are steered by Call-ID (responses by the shard in our Via branch); location, users and permit lists are shared. `0`: one per core (at most 256). One shard costs the least CPU per call while one core carries the load (docs/benchmarks.md, Engine shards).",
    ),
    key(
        "store.enabled",
        Is("true"),
        "Store-and-forward of deposits for busy or offline callees; `false` ignores `Request-Disposition: queue`.",
    ),
    key(
        "store.max_item_bytes",
        Is("60000"),
        "Largest deposit body, bytes; larger gets 413.",
    ),
    key(
        "store.callee_max_items",
        Is("100"),
        "Items and uploads waiting for one callee; beyond: 486 Mailbox Full.",
    ),
    key(
        "store.callee_max_bytes",
        Is("209715200"),
        "Bytes waiting for one callee (200 MiB).",
    ),
    key(
        "store.caller_max_items",
        Is("50"),
        "Items one caller may have waiting, all callees; beyond: 507.",
    ),
    key(
        "store.caller_max_bytes",
        Is("104857600"),
        "Bytes one caller may have waiting (100 MiB).",
    ),
    key(
        "store.expiry_s",
        Is("604800"),
        "Lifetime of a stored item, seconds (7 days; at least 1).",
    ),
    key(
        "store.max_file_bytes",
        Is("1073741824"),
        "Cap of `mailbox.sqlite`, bytes (1 GiB; 0: none); past it deposits get 507 with Retry-After.",
    ),
    key(
        "store.max_upload_bytes",
        Is("52428800"),
        "Largest announced HTTP upload, bytes (50 MiB); larger announcements get 413.",
    ),
    key(
        "store.http_listen",
        Unset {
            example: "\"127.0.0.1:8080\"",
        },
        "Address of the HTTP listener for large uploads and downloads; no listener when unset.",
    ),
    key(
        "store.http_base",
        Derived {
            text: "`http://` and the bound `http_listen` address",
            example: "\"http://sip.example.org:8080\"",
        },
        "The listener's base URL as callers reach it (put TLS in front of it outside a lab).",
    ),
    key(
        "store.upload_window_s",
        Is("86400"),
        "Seconds within which an announced upload must be complete (at least 1).",
    ),
    key(
        "store.backend",
        Is("\"sqlite\""),
        "Where every table lives: `\"sqlite\"`, the files in the data directory, or `\"postgres\"`, shared by several nodes (needs `url`).",
    ),
    key(
        "store.url",
        Unset {
            example: "\"postgres://permit:secret@127.0.0.1:5432/permit\"",
        },
        "PostgreSQL URL for `backend = \"postgres\"`; its password is never logged.",
    ),
    key(
        "relay.enabled",
        Is("false"),
        "Relay the media of permitted video calls (docs/profile.md \"Media relay\").",
    ),
    key(
        "relay.ports",
        Is("\"40000-40999\""),
        "UDP port range, inclusive, all bound at start: one pair of ports per relayed media section.",
    ),
    key(
        "relay.address",
        Derived {
            text: "the first listener's IP",
            example: "\"198.51.100.1\"",
        },
        "IP the relay binds and advertises: the one the phones reach (not `0.0.0.0`).",
    ),
    key(
        "relay.inactivity_s",
        Is("60"),
        "A relayed call with no packet and no latch this long is freed, seconds (at least 1).",
    ),
    key(
        "relay.audio",
        Is("false"),
        "Relay the audio sections of video calls too.",
    ),
    key(
        "admin.enabled",
        Is("false"),
        "The admin HTTP API and `/metrics`.",
    ),
    key(
        "admin.listen",
        Is("\"127.0.0.1:8089\""),
        "Address of the admin API; another than loopback is logged as a warning.",
    ),
    key(
        "admin.token",
        Unset {
            example: "\"a-long-random-string-of-24+\"",
        },
        "Bearer token of every admin request but `/healthz` and `/readyz`; required (16 characters or more) when `enabled`. Never logged.",
    ),
    key(
        "overload.enabled",
        Is("true"),
        "Refuse new INVITEs and REGISTERs with 503 and Retry-After while the proxy is over capacity (measured as how long datagrams wait in the socket queue).",
    ),
    key(
        "overload.high_ms",
        Is("40"),
        "Over capacity once a datagram waited this long, milliseconds.",
    ),
    key(
        "overload.low_ms",
        Is("10"),
        "Back under capacity once the wait is this short, milliseconds (at most `high_ms`).",
    ),
    key(
        "overload.sustain_ms",
        Is("100"),
        "Over capacity only once the wait has stayed at `high_ms` or above this long, milliseconds: a short stall of the proxy's thread is not overload. After an episode, admission of new work climbs back one eighth per this long.",
    ),
    key(
        "overload.retry_after_s",
        Is("5"),
        "Retry-After of those 503s, seconds (at least 1).",
    ),
];

mod reference;
pub use reference::{example_file, reference_markdown};

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
