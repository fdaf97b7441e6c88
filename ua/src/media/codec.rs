//! The audio codecs a call may negotiate (docs/profile.md "The UA in permit mode"):
//! Opus (RFC 7587, dynamic payload type, 48 kHz RTP clock) and G.711 μ-law (PCMU,
//! static payload type 0, 8 kHz, RFC 3551 §4.5.14). 20 ms frames for both.
//!
//! [`AudioEncoder`] turns a `--play` file into one payload per 20 ms (resampled to the
//! codec's rate, [`super::resample`]), then silence; [`AudioDecoder`] turns payloads
//! into 8 kHz samples for the recording (Opus decoded by libopus straight at 8 kHz),
//! so every recording is a 16-bit mono 8 kHz WAV whatever the codec.

use super::opus::{self, OpusDecoder, OpusEncoder, OpusError};
use super::{FRAME, SAMPLE_RATE, g711, resample, wav};

/// Our payload type for Opus in offers (dynamic range, RFC 3551 §3; 111 is also
/// what browsers use).
pub const OPUS_PT: u8 = 111;
/// RTP/AVP payload type of PCMU (RFC 3551 Table 4).
pub const PCMU_PT: u8 = 0;

/// A negotiated audio codec and its payload type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Opus under the payload type the answer carries (RFC 3264 §6.1: the answerer
    /// keeps the offer's number).
    Opus {
        pt: u8,
    },
    Pcmu,
}

/// What we offer, in order of preference (RFC 3264 §5.1).
pub const OFFER: [Codec; 2] = [Codec::Opus { pt: OPUS_PT }, Codec::Pcmu];

impl Codec {
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Opus { pt } => pt,
            Codec::Pcmu => PCMU_PT,
        }
    }

    /// The RTP clock rate (RFC 7587 §4.1, RFC 3551 Table 4).
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Opus { .. } => opus::CLOCK_RATE,
            Codec::Pcmu => SAMPLE_RATE,
        }
    }

    /// RTP timestamp units in one 20 ms frame.
    pub fn frame_ticks(self) -> u32 {
        self.clock_rate() / 50
    }

    /// The SDP lines that describe it (RFC 4566 §6 `a=rtpmap`, RFC 7587 §7 `a=fmtp`).
    pub fn sdp_lines(self) -> String {
        match self {
            Codec::Opus { pt } => {
                format!("a=rtpmap:{pt} opus/48000/2\r\na=fmtp:{pt} useinbandfec=1\r\n")
            }
            Codec::Pcmu => format!("a=rtpmap:{PCMU_PT} PCMU/8000\r\n"),
        }
    }

    /// Lower-case name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Opus { .. } => "opus",
            Codec::Pcmu => "pcmu",
        }
    }
}

/// One call's sending side: the file's samples at the codec's rate, 20 ms at a time.
#[derive(Debug)]
pub struct AudioEncoder {
    samples: Vec<i16>,
    at: usize,
    kind: EncoderKind,
}

#[derive(Debug)]
enum EncoderKind {
    Pcmu,
    Opus(Box<OpusEncoder>),
}

impl AudioEncoder {
    /// `play` is a WAV file (16-bit mono, 8/16/48 kHz; see `shell::load_play`);
    /// `None` or an unreadable file sends silence.
    pub fn new(codec: Codec, play: Option<&[u8]>) -> Result<Self, OpusError> {
        let rate = codec.clock_rate();
        let samples = play
            .and_then(|b| wav::read_pcm(b).ok())
            .map(|(from, s)| resample::resample(&s, from, rate))
            .unwrap_or_default();
        let kind = match codec {
            Codec::Opus { .. } => EncoderKind::Opus(Box::new(OpusEncoder::new()?)),
            Codec::Pcmu => EncoderKind::Pcmu,
        };
        Ok(Self {
            samples,
            at: 0,
            kind,
        })
    }

    /// The payload of the next 20 ms (silence once the file is sent) and the RTP
    /// timestamp units it covers.
    pub fn next_frame(&mut self) -> Result<(Vec<u8>, u32), OpusError> {
        let len = match self.kind {
            EncoderKind::Pcmu => FRAME,
            EncoderKind::Opus(_) => opus::FRAME,
        };
        let end = (self.at + len).min(self.samples.len());
        let frame = &self.samples[self.at..end];
        self.at = end;
        Ok(match &mut self.kind {
            EncoderKind::Pcmu if frame.is_empty() => (vec![g711::SILENCE; FRAME], FRAME as u32),
            // The file's last, short frame keeps its length (timestamps count samples).
            EncoderKind::Pcmu => (g711::encode_all(frame), frame.len() as u32),
            EncoderKind::Opus(e) => (e.encode(frame)?, opus::FRAME as u32),
        })
    }
}

/// One call's receiving side: payloads to 8 kHz samples.
#[derive(Debug)]
pub enum AudioDecoder {
    Pcmu,
    Opus(Box<OpusDecoder>),
}

impl AudioDecoder {
    pub fn new(codec: Codec) -> Result<Self, OpusError> {
        Ok(match codec {
            Codec::Opus { .. } => AudioDecoder::Opus(Box::new(OpusDecoder::new(SAMPLE_RATE)?)),
            Codec::Pcmu => AudioDecoder::Pcmu,
        })
    }

    /// The 8 kHz samples of one payload; `None` for a payload the codec refuses.
    pub fn decode(&mut self, payload: &[u8]) -> Option<Vec<i16>> {
        match self {
            AudioDecoder::Pcmu => Some(payload.iter().map(|&b| g711::decode(b)).collect()),
            AudioDecoder::Opus(d) => d.decode(payload).ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_of_each_codec() {
        let wav = wav::write_at(16_000, &wav::tone_at(440.0, 1, 8000.0, 16_000));
        let mut pcmu = AudioEncoder::new(Codec::Pcmu, Some(&wav)).unwrap();
        let mut opus = AudioEncoder::new(Codec::Opus { pt: 96 }, Some(&wav)).unwrap();
        let mut dec = AudioDecoder::new(Codec::Opus { pt: 96 }).unwrap();
        for _ in 0..50 {
            let (p, ticks) = pcmu.next_frame().unwrap();
            assert_eq!((p.len(), ticks), (FRAME, 160));
            let (o, ticks) = opus.next_frame().unwrap();
            assert_eq!(ticks, 960);
            assert_eq!(dec.decode(&o).unwrap().len(), FRAME, "20 ms at 8 kHz");
        }
        // After the file: silence.
        assert_eq!(pcmu.next_frame().unwrap().0, vec![g711::SILENCE; FRAME]);
        // Opus needs a few frames to settle after the tone; then silence is small.
        let sizes: Vec<usize> = (0..10)
            .map(|_| opus.next_frame().unwrap().0.len())
            .collect();
        assert!(sizes[5..].iter().all(|&n| n < 20), "{sizes:?}");
        assert_eq!(Codec::Opus { pt: 96 }.frame_ticks(), 960);
        assert_eq!(Codec::Pcmu.frame_ticks(), 160);
        assert_eq!(
            Codec::Opus { pt: 111 }.sdp_lines(),
            "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\n"
        );
    }
}
