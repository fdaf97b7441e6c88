//! The permit token and the session key (docs/profile.md, "Permit token and session
//! key"), sans-IO.
//!
//! I/O contract: nothing here reads a clock or draws randomness by itself. The
//! current time (`unix_now`, seconds since the epoch) is an argument, and every
//! random value (token nonce, session secret, proxy key) comes from an injected
//! [`rand_core::CryptoRng`].
//!
//! # The pieces
//!
//! - [`Token`]: one-time authentication information for a permitted caller → callee
//!   pair: HMAC-SHA256 under a proxy key over (caller AOR, callee AOR, Call-ID,
//!   expiry, 128-bit nonce), written `v1.<kid>.<exp>.<nonce>.<mac>`.
//! - [`KeyRing`]: the proxy keys; the current key signs, the current and the previous
//!   verify ([`KeyRing::verify`] returns a [`Verified`] proof or a [`TokenError`]).
//! - [`TokenBook`]: the callee UA's memory of the tokens the proxy told it: a
//!   presented token is accepted once, for its caller and Call-ID, before it expires.
//! - [`SessionSecret`]: the 256-bit per-call secret, and the per-direction SRTP
//!   master keys derived from it with HKDF-SHA256 ([`SrtpKeys`]).
//! - [`CryptoAttr`]: SDES `a=crypto` lines (RFC 4568 §9.1), parsed and printed.
//! - [`sdp`]: `a=crypto` edits on raw SDP bytes.
//!
//! Secrets (keys, tokens, session secrets, SRTP keys) have a `Debug` that shows none
//! of their bytes and no `Display`; key material is zeroed when dropped.

mod book;
mod ring;
mod sdes;
pub mod sdp;
mod session;
mod token;

pub use book::{BookError, BookInsertError, DEFAULT_BOOK_CAPACITY, MAX_BOOK_FIELD_LEN, TokenBook};
pub use ring::{BadProxyKey, KeyId, KeyIdInUse, KeyRing, PROXY_KEY_LEN, ProxyKey, Verified};
pub use sdes::{CryptoAttr, KeyParam, Lifetime, Mki, SdesError, SrtpSuite};
pub use session::{
    BadSessionSecret, Direction, OkmTooLong, SESSION_SECRET_B64_LEN, SESSION_SECRET_LEN,
    SessionSecret, SrtpKeys, hkdf_sha256,
};
pub use token::{MAC_LEN, MAX_TOKEN_LEN, NONCE_LEN, Token, TokenClaims, TokenError};
