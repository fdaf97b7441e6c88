//! Media pieces shared by the UA and the relay, sans-IO: which RTP packets carry an I
//! picture (H.264 per RFC 6184, MPEG-2 video per RFC 2250), and the merge of one RTP
//! stream that arrives over two paths (I-packets through the proxy's relay, the others
//! peer to peer) back into sequence order (one SSRC, one sequence space).

pub mod annexb;
pub mod bits;
pub mod h264;
pub mod merge;
pub mod mpeg2;
pub mod rfc2250;
pub mod rfc6184;

pub use merge::{MergeStats, Merger};

/// Whether an RTP packet carries (part of) an intra-coded picture or what decoding it
/// needs (parameter sets, sequence headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// An I-packet: encrypted and sent through the relay.
    Intra,
    /// Any other packet: sent directly to the peer.
    Inter,
}

impl Class {
    pub fn from_intra(intra: bool) -> Self {
        if intra { Self::Intra } else { Self::Inter }
    }
}
