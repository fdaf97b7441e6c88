//! Sans-IO SIP core shared by the proxy and the UA.
//!
//! I/O contract: nothing in this crate opens a socket, spawns a task or reads a clock.
//! Messages come in as bytes and leave as bytes; time is an argument (`now`) and every
//! engine says when it next wants to be woken (`poll_timeout`).
//!
//! - [`message`]: raw-first SIP message layer (RFC 3261 §7, §20, §25): received bytes are
//!   kept, typed views are decoded on demand, forwarding is the received bytes plus edits.
//! - [`transaction`]: the four RFC 3261 §17 transaction state machines with RFC 6026's
//!   Accepted state, timers as data.
//! - [`digest`]: HTTP Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760):
//!   challenges, stateless nonces, credential verification, nonce-count replay checks.
//! - [`permit`]: the permit token (HMAC-SHA256, rotating proxy keys, the callee's
//!   one-time token book), the session key and its HKDF-SHA256 SRTP keys, SDES
//!   `a=crypto` lines and their SDP edits (RFC 4568).
//! - [`media`]: which RTP packets carry an I picture (H.264 RFC 6184, MPEG-2 RFC 2250)
//!   and the in-order merge of one RTP stream arriving over two paths.
//! - [`transport`]: the values exchanged with the transport shell (received bytes,
//!   transmits).

pub mod digest;
pub mod media;
pub mod message;
pub mod permit;
pub mod transaction;
pub mod transport;
