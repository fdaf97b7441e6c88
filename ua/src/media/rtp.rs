//! RTP for one PCMU stream (RFC 3550), sans-IO: a sender that numbers and stamps
//! 20 ms frames, a receiver that checks, decodes and places them by timestamp.
//! Packets are the `rtp` crate's ([`rtp::packet::Packet`]).

use bytes::{Bytes, BytesMut};
use rand::Rng;
use rtp::header::Header;
use rtp::packet::Packet;
use webrtc_util::marshal::{Marshal, MarshalSize, Unmarshal};

use super::g711;
use crate::sdp::PCMU;

/// The sending side of one stream (RFC 3550 §5.1: random SSRC, initial sequence
/// number and timestamp; the timestamp counts samples, 8000 per second for PCMU).
#[derive(Debug, Clone)]
pub struct RtpSender {
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    first: bool,
}

impl RtpSender {
    pub fn new(rng: &mut impl Rng) -> Self {
        Self {
            ssrc: rng.random(),
            seq: rng.random(),
            timestamp: rng.random(),
            first: true,
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// One packet carrying `payload` (μ-law bytes, one per sample). The first packet
    /// has the marker bit (the start of a talkspurt, RFC 3551 §4.1).
    pub fn packet(&mut self, payload: &[u8]) -> Bytes {
        let packet = Packet {
            header: Header {
                version: 2,
                marker: std::mem::take(&mut self.first),
                payload_type: PCMU,
                sequence_number: self.seq,
                timestamp: self.timestamp,
                ssrc: self.ssrc,
                ..Header::default()
            },
            payload: Bytes::copy_from_slice(payload),
        };
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(payload.len() as u32);
        let mut buf = BytesMut::zeroed(packet.marshal_size());
        // Marshalling into a buffer of exactly marshal_size() bytes cannot fail.
        let _ = packet.marshal_to(&mut buf);
        buf.freeze()
    }
}

/// The receiving side: decodes PCMU packets of the first SSRC seen and places their
/// samples at their timestamp, so reordering and loss leave the timeline intact
/// (gaps are silence). At most `max_samples` are kept.
#[derive(Debug, Clone)]
pub struct RtpReceiver {
    ssrc: Option<u32>,
    base: u32,
    samples: Vec<i16>,
    max_samples: usize,
    /// Packets decoded.
    pub packets: u64,
    /// Datagrams dropped: not RTP, another payload type or SSRC, out of the window.
    pub dropped: u64,
}

impl RtpReceiver {
    pub fn new(max_samples: usize) -> Self {
        Self {
            ssrc: None,
            base: 0,
            samples: Vec::new(),
            max_samples,
            packets: 0,
            dropped: 0,
        }
    }

    /// Feeds one datagram; `false` if it was dropped.
    pub fn handle_datagram(&mut self, data: &[u8]) -> bool {
        let mut buf = data;
        let Ok(packet) = Packet::unmarshal(&mut buf) else {
            self.dropped += 1;
            return false;
        };
        let h = &packet.header;
        if h.version != 2 || h.payload_type != PCMU || self.ssrc.is_some_and(|s| s != h.ssrc) {
            self.dropped += 1;
            return false;
        }
        if self.ssrc.is_none() {
            self.ssrc = Some(h.ssrc);
            self.base = h.timestamp;
        }
        // Offsets past half the timestamp space are packets from before the first one.
        let offset = h.timestamp.wrapping_sub(self.base) as usize;
        let end = offset.saturating_add(packet.payload.len());
        if offset > (u32::MAX / 2) as usize || end > self.max_samples {
            self.dropped += 1;
            return false;
        }
        if self.samples.len() < end {
            self.samples.resize(end, 0);
        }
        for (slot, &b) in self.samples[offset..end]
            .iter_mut()
            .zip(packet.payload.iter())
        {
            *slot = g711::decode(b);
        }
        self.packets += 1;
        true
    }

    pub fn samples(&self) -> &[i16] {
        &self.samples
    }

    pub fn into_samples(self) -> Vec<i16> {
        self.samples
    }
}

#[cfg(test)]
mod tests {
    use sip_testkit::seeded_rng;

    use super::*;
    use crate::media::{FRAME, wav};

    #[test]
    fn packets_have_rfc3550_headers() {
        let mut tx = RtpSender::new(&mut seeded_rng(1));
        let a = tx.packet(&[0xFF; FRAME]);
        let b = tx.packet(&[0xFF; FRAME]);
        assert_eq!(a.len(), 12 + FRAME);
        assert_eq!(a[0] >> 6, 2, "version 2");
        assert_eq!(a[1], 0x80 | PCMU, "marker on the first packet");
        assert_eq!(b[1], PCMU);
        let seq = |p: &Bytes| u16::from_be_bytes([p[2], p[3]]);
        let ts = |p: &Bytes| u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        assert_eq!(seq(&b), seq(&a).wrapping_add(1));
        assert_eq!(ts(&b), ts(&a).wrapping_add(FRAME as u32));
        assert_eq!(&a[8..12], &tx.ssrc().to_be_bytes());
    }

    /// Reordered and lost packets: the receiver's timeline still has the tone where
    /// it arrived and silence where it was lost.
    #[test]
    fn receiver_places_by_timestamp() {
        let tone = wav::tone(440.0, 1, 10_000.0)[..5 * FRAME].to_vec();
        let mut tx = RtpSender::new(&mut seeded_rng(2));
        let packets: Vec<Bytes> = tone
            .chunks(FRAME)
            .map(|f| tx.packet(&g711::encode_all(f)))
            .collect();
        let mut rx = RtpReceiver::new(8000 * 60);
        for i in [0, 2, 1, 4] {
            assert!(rx.handle_datagram(&packets[i]));
        }
        assert!(!rx.handle_datagram(b"not rtp"));
        let mut other = packets[3].to_vec();
        other[1] = 8; // PCMA
        assert!(!rx.handle_datagram(&other));
        assert_eq!((rx.packets, rx.dropped), (4, 2));
        let got = rx.samples();
        assert_eq!(got.len(), tone.len());
        assert!(
            got[3 * FRAME..4 * FRAME].iter().all(|&s| s == 0),
            "lost frame is silence"
        );
        for i in (0..3 * FRAME).chain(4 * FRAME..5 * FRAME) {
            let err = (i32::from(got[i]) - i32::from(tone[i])).abs();
            assert!(err < 700, "sample {i}: {} vs {}", got[i], tone[i]);
        }
    }

    #[test]
    fn receiver_memory_is_bounded() {
        let mut tx = RtpSender::new(&mut seeded_rng(3));
        let mut rx = RtpReceiver::new(FRAME * 2);
        for _ in 0..5 {
            rx.handle_datagram(&tx.packet(&[0; FRAME]));
        }
        assert_eq!(rx.samples().len(), FRAME * 2);
        assert_eq!((rx.packets, rx.dropped), (2, 3));
    }
}
