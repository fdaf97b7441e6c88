//! Response verification and the whole server-side check (RFC 3261 §22.2, §22.3,
//! RFC 7616 §3.4.1-§3.4.3, RFC 8760 §2.4).

use std::hint::black_box;

use subtle::ConstantTimeEq;

use super::{
    Algorithm, Credentials, DigestError, NonceCounts, NonceKey, NonceState, challenge, from_hex,
    to_hex,
};

/// Nonces remembered for replay checks by [`Verifier::new`]: at most 1 KiB each
/// (the parser's value limit), 64 MiB in the worst case, typically 5 MiB.
pub const DEFAULT_NONCE_COUNT_CAPACITY: usize = 65_536;

/// The expected `response` for `creds` as lowercase hex (RFC 7616 §3.4.1), given
/// `H(A1)` (from [`super::ha1`]); the `response` field of `creds` is not read.
///
/// With `qop`: `KD(HA1, nonce ":" nc ":" cnonce ":" qop ":" HA2)`, where
/// `KD(secret, data) = H(secret ":" data)` and `HA2 = H(method ":" uri)` (§3.4.3).
/// Without `qop` (RFC 2069, kept by RFC 3261 §22.4): `KD(HA1, nonce ":" HA2)`.
/// `None` when `qop` is present without `nc` and `cnonce`, or is not `auth`
/// (`auth-int` would hash the body into A2, which is not offered).
/// A UAC fills its own `response` with this.
pub fn response(creds: &Credentials<'_>, method: &[u8], ha1_hex: &str) -> Option<String> {
    expected(creds, method, ha1_hex).map(|r| to_hex(&r))
}

fn expected(creds: &Credentials<'_>, method: &[u8], ha1_hex: &str) -> Option<Vec<u8>> {
    let alg = creds.algorithm;
    let ha2 = alg.hash_hex(&[method, b":", creds.uri.as_bytes()]);
    let ha1 = ha1_hex.to_ascii_lowercase();
    let (ha1, nonce) = (ha1.as_bytes(), creds.nonce.as_bytes());
    match (&creds.qop, creds.nc, &creds.cnonce) {
        (None, _, _) => Some(alg.hash(&[ha1, b":", nonce, b":", ha2.as_bytes()])),
        (Some(qop), Some(nc), Some(cnonce)) if qop.eq_ignore_ascii_case("auth") => {
            let nc = format!("{nc:08x}");
            Some(alg.hash(&[
                ha1,
                b":",
                nonce,
                b":",
                nc.as_bytes(),
                b":",
                cnonce.as_bytes(),
                b":",
                qop.as_bytes(),
                b":",
                ha2.as_bytes(),
            ]))
        }
        _ => None,
    }
}

/// Whether `creds.response` is the right response for `method` and the user's
/// `H(A1)` (lowercase hex, as [`super::ha1`] returns; upper case is tolerated).
/// The response (hex in either case) is compared in constant time.
pub fn verify(creds: &Credentials<'_>, method: &[u8], ha1_hex: &str) -> bool {
    let given = from_hex(creds.response.as_bytes());
    let expected = expected(creds, method, ha1_hex);
    match (given, expected) {
        (Some(given), Some(expected)) => bool::from(given.ct_eq(&expected)),
        _ => false,
    }
}

/// Proof that a request carried valid, fresh, unreplayed Digest credentials
/// (STYLE.md rule 5). Only [`Verifier::authenticate`] makes one.
// A private field rather than #[non_exhaustive]: only this module, not the whole
// crate, can make a proof.
#[allow(clippy::manual_non_exhaustive)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The digest username: the identity, never the From header.
    pub username: String,
    pub realm: String,
    pub algorithm: Algorithm,
    /// The digest-uri the response covers, for callers that compare it with the
    /// Request-URI.
    pub uri: String,
    _proof: (),
}

/// Why [`Verifier::authenticate`] refused. Each variant says what to answer:
/// [`AuthFailure::Malformed`] is a 400; all others a new challenge (401 with
/// `WWW-Authenticate` at a registrar, 407 with `Proxy-Authenticate` at a proxy,
/// RFC 3261 §22.2/§22.3), with `stale=true` only for [`AuthFailure::Stale`].
/// [`AuthFailure::UnknownUser`] and [`AuthFailure::BadResponse`] must be answered
/// identically, so that the wire does not tell which usernames exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// No Digest credentials at all (only other schemes, or no header).
    #[error("no Digest credentials")]
    Missing,
    /// Unreadable credentials for us (400, with this reason phrase).
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    /// Digest credentials, but none for our realm.
    #[error("credentials are for another realm")]
    WrongRealm,
    /// Right response to a nonce past its lifetime: re-challenge with `stale=true`.
    #[error("nonce is stale")]
    Stale,
    /// A nonce we did not issue (or tampered with).
    #[error("nonce was not issued here")]
    BadNonce,
    /// A nonce count not higher than one already accepted for this nonce.
    #[error("nonce count replayed")]
    Replay,
    /// The credential store does not know the username.
    #[error("unknown user")]
    UnknownUser,
    /// The response does not match.
    #[error("wrong response")]
    BadResponse,
    /// An algorithm we did not offer (or do not implement).
    #[error("digest algorithm not offered")]
    AlgorithmNotOffered,
}

impl AuthFailure {
    /// `true` for the one failure answered 400 rather than with a challenge.
    pub fn is_bad_request(self) -> bool {
        matches!(self, Self::Malformed(_))
    }

    /// Whether the new challenge carries `stale=true` (RFC 7616 §3.3).
    pub fn stale(self) -> bool {
        self == Self::Stale
    }

    /// Precedence when no credentials are for our realm: the most telling wins.
    fn rank(self) -> u8 {
        match self {
            Self::Malformed(_) => 3,
            Self::AlgorithmNotOffered => 2,
            Self::WrongRealm => 1,
            _ => 0,
        }
    }
}

/// The server side of Digest for one realm: challenges, nonce checks, response
/// verification and replay protection. Sans-IO: time and salts are arguments.
#[derive(Debug)]
pub struct Verifier {
    realm: String,
    key: NonceKey,
    ttl_secs: u64,
    allowed: Vec<Algorithm>,
    counts: NonceCounts,
}

impl Verifier {
    /// A verifier for `realm` offering `allowed` in that order of preference
    /// (duplicates dropped), nonces living `ttl_secs`, remembering nonce counts for
    /// [`DEFAULT_NONCE_COUNT_CAPACITY`] nonces.
    ///
    /// Panics if `allowed` is empty: a server that offers nothing cannot challenge.
    pub fn new(realm: String, key: NonceKey, ttl_secs: u64, allowed: Vec<Algorithm>) -> Self {
        assert!(
            !allowed.is_empty(),
            "a digest verifier needs at least one algorithm"
        );
        let mut offered = Vec::with_capacity(allowed.len());
        for alg in allowed {
            if !offered.contains(&alg) {
                offered.push(alg);
            }
        }
        Self {
            realm,
            key,
            ttl_secs,
            allowed: offered,
            counts: NonceCounts::new(DEFAULT_NONCE_COUNT_CAPACITY),
        }
    }

    /// Replaces the replay table with one for `capacity` nonces.
    #[must_use]
    pub fn with_nonce_count_capacity(mut self, capacity: usize) -> Self {
        self.counts = NonceCounts::new(capacity);
        self
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The offered algorithms, in order of preference.
    pub fn allowed(&self) -> &[Algorithm] {
        &self.allowed
    }

    /// One challenge value per offered algorithm, in order of preference, all with
    /// one new nonce (RFC 8760 §2.4: one `WWW-Authenticate` / `Proxy-Authenticate`
    /// header field each, most preferred first).
    pub fn challenges(&self, unix_now: u64, salt: u64, stale: bool) -> Vec<String> {
        let nonce = self.key.issue(unix_now, salt);
        self.allowed
            .iter()
            .map(|&alg| challenge(&self.realm, alg, &nonce, stale))
            .collect()
    }

    /// Authenticates a request from its `Authorization` (registrar) or
    /// `Proxy-Authorization` (proxy) values.
    ///
    /// Uses the first Digest credentials for our realm (RFC 3261 §22.3: a proxy
    /// looks through all values); if there are none, reports the most telling
    /// problem: Malformed, then AlgorithmNotOffered, WrongRealm, Missing. Then, in
    /// order: the algorithm must be offered; `qop=auth` must be present (we always
    /// offer it; RFC 2069 responses are refused as Malformed); the nonce must be ours
    /// (BadNonce); `ha1_for(username, algorithm)` must know the user (UnknownUser,
    /// after a dummy verification so that timing matches BadResponse); the
    /// response must match (BadResponse); a stale nonce is reported only now, so
    /// that `stale=true` goes only to clients that know the password (RFC 7616
    /// §3.3); last the nonce count must be new (Replay), checked after the
    /// response so that a forger cannot use up a client's counts.
    pub fn authenticate(
        &mut self,
        unix_now: u64,
        method: &[u8],
        header_values: &[&[u8]],
        ha1_for: impl Fn(&str, Algorithm) -> Option<String>,
    ) -> Result<Authenticated, AuthFailure> {
        let creds = self.select(header_values)?;
        if !self.allowed.contains(&creds.algorithm) {
            return Err(AuthFailure::AlgorithmNotOffered);
        }
        let nc = match (&creds.qop, creds.nc, &creds.cnonce) {
            (None, _, _) => return Err(AuthFailure::Malformed("qop=auth required")),
            (Some(qop), _, _) if !qop.eq_ignore_ascii_case("auth") => {
                return Err(AuthFailure::Malformed("qop other than auth"));
            }
            (Some(_), Some(nc), Some(_)) => nc,
            _ => return Err(AuthFailure::Malformed("qop without nc or cnonce")),
        };
        let nonce_state = self.key.check(&creds.nonce, unix_now, self.ttl_secs);
        if nonce_state == NonceState::Invalid {
            return Err(AuthFailure::BadNonce);
        }
        let Some(ha1) = ha1_for(&creds.username, creds.algorithm) else {
            let dummy = "0".repeat(2 * creds.algorithm.output_len());
            black_box(verify(&creds, method, black_box(&dummy)));
            return Err(AuthFailure::UnknownUser);
        };
        if !verify(&creds, method, &ha1) {
            return Err(AuthFailure::BadResponse);
        }
        if nonce_state == NonceState::Stale {
            return Err(AuthFailure::Stale);
        }
        if !self.counts.accept(&creds.nonce, nc) {
            return Err(AuthFailure::Replay);
        }
        Ok(Authenticated {
            username: creds.username.into_owned(),
            realm: creds.realm.into_owned(),
            algorithm: creds.algorithm,
            uri: creds.uri.into_owned(),
            _proof: (),
        })
    }

    /// The first credentials for our realm (compared exactly: realms are
    /// case-sensitive, RFC 7616 §3.3).
    fn select<'h>(&self, values: &[&'h [u8]]) -> Result<Credentials<'h>, AuthFailure> {
        let mut failure = AuthFailure::Missing;
        for value in values {
            let this = match Credentials::parse(value) {
                Ok(creds) if creds.realm == self.realm.as_str() => return Ok(creds),
                Ok(_) => AuthFailure::WrongRealm,
                Err(DigestError::NotDigest) => AuthFailure::Missing,
                Err(DigestError::UnsupportedAlgorithm) => AuthFailure::AlgorithmNotOffered,
                Err(DigestError::Malformed(why)) => AuthFailure::Malformed(why),
            };
            if this.rank() > failure.rank() {
                failure = this;
            }
        }
        Err(failure)
    }
}
