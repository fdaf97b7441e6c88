//! RTP for one audio stream (RFC 3550), sans-IO: a sender that numbers and stamps
//! 20 ms frames, a receiver that checks, decodes and places them by timestamp.
//! Packets are the `rtp` crate's ([`rtp::packet::Packet`]).

use bytes::{Bytes, BytesMut};
use rand::Rng;
use rtp::header::Header;
use rtp::packet::Packet;
use webrtc_util::marshal::{Marshal, MarshalSize, Unmarshal};

use super::SAMPLE_RATE;
use super::codec::{AudioDecoder, Codec};
use super::opus::OpusError;
use crate::sdp::PCMU;

/// The sending side of one stream (RFC 3550 §5.1: random SSRC, initial sequence
/// number and timestamp; the timestamp counts samples, 8000 per second for PCMU,
/// 48000 for Opus whatever its bandwidth, RFC 7587 §4.1).
#[derive(Debug, Clone)]
pub struct RtpSender {
    payload_type: u8,
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    first: bool,
}

impl RtpSender {
    /// A PCMU sender.
    pub fn new(rng: &mut impl Rng) -> Self {
        Self::for_codec(rng, Codec::Pcmu)
    }

    /// A sender of `codec`'s payload type.
    pub fn for_codec(rng: &mut impl Rng, codec: Codec) -> Self {
        Self {
            payload_type: codec.payload_type(),
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
        self.packet_of(payload, payload.len() as u32)
    }

    /// One packet carrying `payload`, which covers `ticks` units of the RTP clock (the
    /// next packet's timestamp is that much later).
    pub fn packet_of(&mut self, payload: &[u8], ticks: u32) -> Bytes {
        let packet = Packet {
            header: Header {
                version: 2,
                marker: std::mem::take(&mut self.first),
                payload_type: self.payload_type,
                sequence_number: self.seq,
                timestamp: self.timestamp,
                ssrc: self.ssrc,
                ..Header::default()
            },
            payload: Bytes::copy_from_slice(payload),
        };
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(ticks);
        let mut buf = BytesMut::zeroed(packet.marshal_size());
        // Marshalling into a buffer of exactly marshal_size() bytes cannot fail.
        let _ = packet.marshal_to(&mut buf);
        buf.freeze()
    }
}

/// The receiving side: decodes packets of the negotiated payload type from the first
/// SSRC seen and places their samples (8 kHz) at their timestamp, so reordering and
/// loss leave the timeline intact (gaps are silence). At most `max_samples` are kept.
/// Opus packets are decoded in arrival order (the decoder's state follows them).
#[derive(Debug)]
pub struct RtpReceiver {
    payload_type: u8,
    clock_rate: u32,
    decoder: AudioDecoder,
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
    /// A PCMU receiver.
    pub fn new(max_samples: usize) -> Self {
        Self {
            payload_type: PCMU,
            clock_rate: SAMPLE_RATE,
            decoder: AudioDecoder::Pcmu,
            ssrc: None,
            base: 0,
            samples: Vec::new(),
            max_samples,
            packets: 0,
            dropped: 0,
        }
    }

    /// A receiver of `codec`.
    pub fn for_codec(codec: Codec, max_samples: usize) -> Result<Self, OpusError> {
        Ok(Self {
            payload_type: codec.payload_type(),
            clock_rate: codec.clock_rate(),
            decoder: AudioDecoder::new(codec)?,
            ..Self::new(max_samples)
        })
    }

    /// Feeds one datagram; `false` if it was dropped.
    pub fn handle_datagram(&mut self, data: &[u8]) -> bool {
        let mut buf = data;
        let Ok(packet) = Packet::unmarshal(&mut buf) else {
            self.dropped += 1;
            return false;
        };
        let h = &packet.header;
        if h.version != 2
            || h.payload_type != self.payload_type
            || self.ssrc.is_some_and(|s| s != h.ssrc)
        {
            self.dropped += 1;
            return false;
        }
        if self.ssrc.is_none() {
            self.ssrc = Some(h.ssrc);
            self.base = h.timestamp;
        }
        // Offsets past half the timestamp space are packets from before the first one.
        let ticks = h.timestamp.wrapping_sub(self.base);
        // RTP clock units to 8 kHz samples (Opus: 48 kHz clock, 6 units a sample).
        let offset =
            (u64::from(ticks) * u64::from(SAMPLE_RATE) / u64::from(self.clock_rate)) as usize;
        if ticks > u32::MAX / 2 || offset >= self.max_samples {
            self.dropped += 1;
            return false;
        }
        let Some(decoded) = self.decoder.decode(&packet.payload) else {
            self.dropped += 1;
            return false;
        };
        let end = offset.saturating_add(decoded.len());
        if end > self.max_samples {
            self.dropped += 1;
            return false;
        }
        if self.samples.len() < end {
            self.samples.resize(end, 0);
        }
        self.samples[offset..end].copy_from_slice(&decoded);
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
    use crate::media::{FRAME, g711, wav};

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

    /// Opus under a dynamic payload type: 48 kHz timestamps, 8 kHz samples placed
    /// by timestamp; PCMU and garbage under the Opus number are dropped.
    #[test]
    fn opus_stream_round_trips() {
        let codec = Codec::Opus { pt: 111 };
        let tone = wav::tone_at(440.0, 1, 10_000.0, 8000);
        let file = wav::write(&tone);
        let mut enc = crate::media::codec::AudioEncoder::new(codec, Some(&file)).unwrap();
        let mut tx = RtpSender::for_codec(&mut seeded_rng(4), codec);
        let packets: Vec<Bytes> = (0..50)
            .map(|_| {
                let (p, ticks) = enc.next_frame().unwrap();
                tx.packet_of(&p, ticks)
            })
            .collect();
        assert_eq!(packets[0][1], 0x80 | 0x6F, "marker, payload type 111");
        let ts = |p: &Bytes| u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        assert_eq!(ts(&packets[1]), ts(&packets[0]).wrapping_add(960));
        let mut rx = RtpReceiver::for_codec(codec, 8000 * 60).unwrap();
        for p in &packets {
            assert!(rx.handle_datagram(p));
        }
        let pcmu = RtpSender::new(&mut seeded_rng(5)).packet(&[0xFF; FRAME]);
        assert!(!rx.handle_datagram(&pcmu));
        let mut garbage = packets[49].to_vec();
        garbage.truncate(12);
        garbage.extend_from_slice(&[0x03, 0x00]); // a code-3 TOC with no frame count
        assert!(!rx.handle_datagram(&garbage));
        assert_eq!((rx.packets, rx.dropped), (50, 2));
        assert_eq!(rx.samples().len(), tone.len());
        let steady = &rx.samples()[800..];
        let hz = wav::zero_crossing_hz(steady, 8000);
        assert!((hz - 440.0).abs() < 5.0, "{hz} Hz");
    }
}
