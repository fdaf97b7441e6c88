//! Settings of `permit-ua`: a TOML file (`--config`) with command-line flags over it.
//!
//! ```toml
//! proxy = "udp:127.0.0.1:5060"   # udp|tcp|tls:HOST:PORT
//! user = "alice"
//! password = "s3cret"            # or PERMIT_UA_PASSWORD
//! domain = "example.org"
//! listen = "udp:0.0.0.0:5070"     # udp|tcp|tls:IP:PORT (default: an ephemeral port;
//!                                # tls: only with a tls: proxy, for direct mode)
//! tls_ca = "ca.pem"              # trust anchors: the proxy, and callees called directly
//! tls_cert = "cert.pem"          # the TLS listener's certificate and key (generated,
//! tls_key = "key.pem"            #   self-signed, when the files do not exist)
//! expires = 600
//! ```

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use serde::Deserialize;
use sip_core::transport::Transport;

/// A configuration problem: exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Toml {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{what} is required (flag --{what} or `{what} = ...` in the config file)")]
    Missing { what: &'static str },
    #[error("bad {what} {value:?}: {why}")]
    Bad {
        what: &'static str,
        value: String,
        why: String,
    },
}

/// The config file's keys, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub proxy: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub domain: Option<String>,
    pub listen: Option<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub expires: Option<u32>,
}

impl FileSettings {
    pub fn load(path: &std::path::Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| SettingsError::Toml {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// `udp|tcp|tls:HOST:PORT`, HOST an IP (IPv6 in brackets) or a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub transport: Transport,
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn parse(what: &'static str, s: &str) -> Result<Self, SettingsError> {
        let bad = |why: &str| SettingsError::Bad {
            what,
            value: s.to_string(),
            why: why.to_string(),
        };
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| bad("expected udp|tcp|tls:HOST:PORT"))?;
        let transport =
            Transport::from_token(scheme.as_bytes()).ok_or_else(|| bad("unknown transport"))?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("missing :PORT"))?;
        let port = port.parse().map_err(|_| bad("bad port"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        Ok(Self {
            transport,
            host,
            port,
        })
    }

    /// The first address the host resolves to (an IP literal needs no lookup).
    pub fn resolve(&self) -> Result<SocketAddr, SettingsError> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| SettingsError::Bad {
                what: "host",
                value: self.host.clone(),
                why: "does not resolve".into(),
            })
    }
}

/// Everything a command needs to reach the proxy as the user.
#[derive(Debug, Clone)]
pub struct Settings {
    pub proxy: Endpoint,
    pub proxy_addr: SocketAddr,
    pub user: String,
    pub password: Option<String>,
    pub domain: String,
    pub listen: Option<Endpoint>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub expires: u32,
}

/// Flags that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub proxy: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub domain: Option<String>,
    pub listen: Option<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Settings {
    /// Merges flags over the file, and `env_password` (PERMIT_UA_PASSWORD) under both.
    pub fn merge(
        file: FileSettings,
        flags: Overrides,
        env_password: Option<String>,
    ) -> Result<Self, SettingsError> {
        let proxy = flags
            .proxy
            .or(file.proxy)
            .ok_or(SettingsError::Missing { what: "proxy" })?;
        let proxy = Endpoint::parse("proxy", &proxy)?;
        let listen = flags
            .listen
            .or(file.listen)
            .map(|l| Endpoint::parse("listen", &l))
            .transpose()?;
        if let Some(l) = &listen
            && proxy.transport != l.transport
        {
            return Err(SettingsError::Bad {
                what: "listen",
                value: format!("{}:{}", l.host, l.port),
                why: "must use the proxy's transport".into(),
            });
        }
        let user = flags
            .user
            .or(file.user)
            .ok_or(SettingsError::Missing { what: "user" })?;
        let domain = flags
            .domain
            .or(file.domain)
            .unwrap_or_else(|| proxy.host.clone());
        Ok(Self {
            proxy_addr: proxy.resolve()?,
            proxy,
            user,
            password: flags.password.or(file.password).or(env_password),
            domain,
            listen,
            tls_ca: flags.tls_ca.or(file.tls_ca),
            tls_cert: flags.tls_cert.or(file.tls_cert),
            tls_key: flags.tls_key.or(file.tls_key),
            expires: file.expires.unwrap_or(600),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("proxy", "tls:[::1]:5061").unwrap();
        assert_eq!(
            (e.transport, e.host.as_str(), e.port),
            (Transport::Tls, "::1", 5061)
        );
        assert_eq!(
            e.resolve().unwrap(),
            "[::1]:5061".parse::<std::net::SocketAddr>().unwrap()
        );
        for bad in [
            "127.0.0.1:5060",
            "sctp:h:1",
            "udp:h",
            "udp::5060",
            "udp:h:x",
        ] {
            assert!(Endpoint::parse("proxy", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_override_the_file_and_env_comes_last() {
        let file: FileSettings = toml::from_str(
            "proxy = \"udp:127.0.0.1:5060\"\nuser = \"alice\"\npassword = \"file\"\ndomain = \"example.org\"\n",
        )
        .unwrap();
        let flags = Overrides {
            user: Some("bob".into()),
            ..Overrides::default()
        };
        let s = Settings::merge(file, flags, Some("env".into())).unwrap();
        assert_eq!(
            (s.user.as_str(), s.password.as_deref()),
            ("bob", Some("file"))
        );
        assert_eq!(s.domain, "example.org");
        let s = Settings::merge(
            FileSettings::default(),
            Overrides {
                proxy: Some("tcp:127.0.0.1:5060".into()),
                user: Some("a".into()),
                ..Overrides::default()
            },
            Some("env".into()),
        )
        .unwrap();
        assert_eq!(s.password.as_deref(), Some("env"));
        assert_eq!(s.domain, "127.0.0.1");
        assert!(toml::from_str::<FileSettings>("proxi = \"x\"").is_err());
        assert!(matches!(
            Settings::merge(FileSettings::default(), Overrides::default(), None),
            Err(SettingsError::Missing { what: "proxy" })
        ));
    }
}
