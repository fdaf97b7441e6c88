//! Who is asking: digest authentication of requests (RFC 3261 §22) as a policy that
//! returns decisions (STYLE.md rule 10). REGISTER is challenged with 401 and
//! WWW-Authenticate (§22.2), proxied requests with 407 and Proxy-Authenticate (§22.3).
//! One challenge per offered algorithm, in the operator's order (RFC 8760 §2.4).
//! Failures feed a per-address brake ([`FailureLimiter`]).

use std::net::IpAddr;
use std::time::Instant;

use sip_core::digest::{Algorithm, AuthFailure, Authenticated, NonceKey, Verifier};
use sip_core::message::{HeaderName, Message};

use crate::limiter::{FailureLimiter, LimiterConfig};

/// Where the HA1 hashes come from.
pub trait UserDirectory: Send {
    /// Reloads if the backing store changed (called once per authentication).
    fn refresh(&mut self);
    fn ha1(&self, username: &str, realm: &str, alg: Algorithm) -> Option<String>;
}

/// Authentication settings.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Off only for labs and load tests: then anyone may register any AOR.
    pub enabled: bool,
    /// Offered algorithms, in challenge order.
    pub algorithms: Vec<Algorithm>,
    /// Nonce lifetime; older nonces get a `stale=true` challenge.
    pub nonce_ttl_secs: u64,
    pub limiter: LimiterConfig,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            // MD5 first: SIPp 3.6 and many deployed phones answer only the first
            // challenge and know only MD5; SHA-256 clients pick SHA-256 (docs/profile.md).
            algorithms: vec![Algorithm::Md5, Algorithm::Sha256],
            nonce_ttl_secs: 300,
            limiter: LimiterConfig::default(),
        }
    }
}

/// Which challenge a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// REGISTER to our registrar: Authorization / 401 / WWW-Authenticate.
    Registrar,
    /// A request we would route: Proxy-Authorization / 407 / Proxy-Authenticate.
    Proxy,
}

/// A response the engine sends instead of acting on the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub reason: &'static str,
    pub headers: Vec<(&'static str, String)>,
}

/// The outcome of [`Auth::check`].
#[derive(Debug)]
pub enum Decision {
    /// Authentication is off: nobody is identified.
    Open,
    Authenticated(Authenticated),
    Reply(Reply),
}

pub struct Auth {
    settings: AuthSettings,
    realm: String,
    verifier: Verifier,
    users: Box<dyn UserDirectory>,
    limiter: FailureLimiter,
    /// Authentications that failed (wrong password or unknown user), for logs/metrics.
    pub failures: u64,
}

impl Auth {
    /// `secret` keys the stateless nonces (fresh per process: nonces from before a
    /// restart are answered with a new challenge).
    pub fn new(
        settings: AuthSettings,
        realm: String,
        users: Box<dyn UserDirectory>,
        secret: [u8; 32],
    ) -> Self {
        let verifier = Verifier::new(
            realm.clone(),
            NonceKey::new(secret),
            settings.nonce_ttl_secs,
            settings.algorithms.clone(),
        );
        let limiter = FailureLimiter::new(settings.limiter);
        Self {
            settings,
            realm,
            verifier,
            users,
            limiter,
            failures: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    /// Requests refused (503) because their source was over its failure budget.
    pub fn limiter_refused(&self) -> u64 {
        self.limiter.refused
    }

    fn challenge(&self, role: Role, unix: u64, salt: u64, stale: bool) -> Reply {
        let (status, reason, name) = match role {
            Role::Registrar => (401, "Unauthorized", "WWW-Authenticate"),
            Role::Proxy => (407, "Proxy Authentication Required", "Proxy-Authenticate"),
        };
        let headers = self
            .verifier
            .challenges(unix, salt, stale)
            .into_iter()
            .map(|c| (name, c))
            .collect();
        Reply {
            status,
            reason,
            headers,
        }
    }

    /// Authenticates `msg` (RFC 3261 §22.2/§22.3). `salt` is fresh randomness for a
    /// new nonce. Identity is the digest username, never the From header.
    pub fn check(
        &mut self,
        now: Instant,
        unix: u64,
        salt: u64,
        ip: IpAddr,
        role: Role,
        msg: &Message,
    ) -> Decision {
        if !self.settings.enabled {
            return Decision::Open;
        }
        let header = match role {
            Role::Registrar => HeaderName::Authorization,
            Role::Proxy => HeaderName::ProxyAuthorization,
        };
        let values: Vec<&[u8]> = msg.headers(header).collect();
        if values.is_empty() {
            return Decision::Reply(self.challenge(role, unix, salt, false));
        }
        if let Some(retry) = self.limiter.check(ip, now) {
            tracing::info!(
                refused = self.limiter.refused,
                "authentication brake: source over its failure budget"
            );
            return Decision::Reply(Reply {
                status: 503,
                reason: "Service Unavailable",
                headers: vec![("Retry-After", retry.as_secs().max(1).to_string())],
            });
        }
        self.users.refresh();
        let method = msg.method().map_or(&b""[..], |m| m.as_bytes());
        let (realm, users) = (&self.realm, &self.users);
        match self
            .verifier
            .authenticate(unix, method, &values, |user, alg| {
                users.ha1(user, realm, alg)
            }) {
            Ok(proof) => Decision::Authenticated(proof),
            Err(AuthFailure::Malformed(why)) => Decision::Reply(Reply {
                status: 400,
                reason: why,
                headers: vec![],
            }),
            Err(AuthFailure::Stale) => Decision::Reply(self.challenge(role, unix, salt, true)),
            Err(AuthFailure::UnknownUser | AuthFailure::BadResponse) => {
                self.failures += 1;
                let level = self.limiter.fail(ip, now);
                tracing::debug!(level, "authentication failed");
                // A second failure in a row from this address: stop re-challenging.
                if level >= 2.0 {
                    Decision::Reply(Reply {
                        status: 403,
                        reason: "Forbidden",
                        headers: vec![],
                    })
                } else {
                    Decision::Reply(self.challenge(role, unix, salt, false))
                }
            }
            Err(_) => Decision::Reply(self.challenge(role, unix, salt, false)),
        }
    }
}
