//! Audio for calls: Opus (RFC 7587, 48 kHz RTP clock) or G.711 μ-law (ITU-T G.711,
//! RTP payload type 0, RFC 3551 §4.5.14), 20 ms RTP packets (RFC 3550), read from
//! and written to WAV files ([`codec`] says which rates).
//!
//! [`g711`], [`opus`], [`codec`], [`resample`], [`wav`] and [`rtp`] are sans-IO (bytes
//! and samples in, bytes and samples out); [`socket`] is the thin tokio shell that
//! paces packets on a UDP socket. [`dtls`] is DTLS-SRTP (RFC 5763/5764) for stock
//! phones that ask for it: sans-IO SDP attributes, roles and key split, and its
//! `handshake` shell run by [`socket`] on the call's media port.

pub mod codec;
pub mod dtls;
pub mod g711;
pub mod opus;
pub mod resample;
pub mod rtp;
pub mod socket;
pub mod srtp;
pub mod wav;

/// Samples per second of G.711, and of every recording.
pub const SAMPLE_RATE: u32 = 8000;
/// Samples (and μ-law bytes) in one 20 ms packet.
pub const FRAME: usize = 160;
