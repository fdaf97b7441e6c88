//! Opus (RFC 6716) for RTP (RFC 7587) through the system libopus (the `opus` crate):
//! mono 20 ms frames at 48 kHz, in-band FEC on (what our `a=fmtp:111
//! useinbandfec=1` announces, RFC 7587 §6.1).
//!
//! RFC 7587 §4.1: the RTP clock of Opus is always 48 kHz, whatever the audio
//! bandwidth; §7: the SDP encoding name is `opus/48000/2` even for a mono sender
//! (§3.1: every receiver decodes mono and stereo alike).

use ::opus::{Application, Channels};

/// The RTP clock rate of Opus (RFC 7587 §4.1).
pub const CLOCK_RATE: u32 = 48_000;
/// Samples in one 20 ms frame at 48 kHz.
pub const FRAME: usize = 960;
/// Longest Opus packet (RFC 6716 §3.2.1 allows 1275 bytes per frame).
const MAX_PACKET: usize = 1275;
/// Longest decoded packet: 120 ms at 48 kHz (RFC 6716 §3.2.5).
const MAX_DECODED: usize = 5760;

/// Why the codec refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("opus: {0}")]
pub struct OpusError(String);

impl From<::opus::Error> for OpusError {
    fn from(e: ::opus::Error) -> Self {
        Self(e.to_string())
    }
}

/// A mono Opus encoder tuned for voice.
#[derive(Debug)]
pub struct OpusEncoder(::opus::Encoder);

impl OpusEncoder {
    pub fn new() -> Result<Self, OpusError> {
        let mut e = ::opus::Encoder::new(CLOCK_RATE, Channels::Mono, Application::Voip)?;
        e.set_inband_fec(true)?;
        Ok(Self(e))
    }

    /// One packet from one 20 ms frame ([`FRAME`] samples at 48 kHz; a short frame
    /// is padded with silence).
    pub fn encode(&mut self, frame: &[i16]) -> Result<Vec<u8>, OpusError> {
        let mut pcm = [0i16; FRAME];
        let n = frame.len().min(FRAME);
        pcm[..n].copy_from_slice(&frame[..n]);
        Ok(self.0.encode_vec(&pcm, MAX_PACKET)?)
    }
}

/// A mono Opus decoder; libopus resamples its output to `rate` (8, 12, 16, 24 or
/// 48 kHz, RFC 6716 §4).
#[derive(Debug)]
pub struct OpusDecoder {
    inner: ::opus::Decoder,
    rate: u32,
}

impl OpusDecoder {
    pub fn new(rate: u32) -> Result<Self, OpusError> {
        Ok(Self {
            inner: ::opus::Decoder::new(rate, Channels::Mono)?,
            rate,
        })
    }

    /// The output sample rate.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// The samples of one packet (a stereo packet is mixed down to mono).
    pub fn decode(&mut self, packet: &[u8]) -> Result<Vec<i16>, OpusError> {
        let mut out = vec![0i16; MAX_DECODED];
        let n = self.inner.decode(packet, &mut out, false)?;
        out.truncate(n);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::wav::{rms, tone_at, zero_crossing_hz as hz};

    /// A 440 Hz tone through encode and decode keeps its frequency and energy, at
    /// 48 kHz and decoded straight to 8 kHz (what the recorder does).
    #[test]
    fn round_trip_keeps_a_tone() {
        let tone = tone_at(440.0, 2, 10_000.0, CLOCK_RATE);
        let mut enc = OpusEncoder::new().unwrap();
        let packets: Vec<Vec<u8>> = tone.chunks(FRAME).map(|f| enc.encode(f).unwrap()).collect();
        assert_eq!(packets.len(), 100);
        let bytes: usize = packets.iter().map(Vec::len).sum();
        assert!(bytes < tone.len() * 2 / 8, "compressed: {bytes} bytes");
        for rate in [CLOCK_RATE, 8000] {
            let mut dec = OpusDecoder::new(rate).unwrap();
            let out: Vec<i16> = packets
                .iter()
                .flat_map(|p| dec.decode(p).unwrap())
                .collect();
            assert_eq!(out.len(), tone.len() * rate as usize / CLOCK_RATE as usize);
            // The codec's look-ahead delays the start: judge the steady part.
            let steady = &out[out.len() / 10..];
            let f = hz(steady, rate);
            assert!((f - 440.0).abs() < 4.0, "{rate} Hz: {f} Hz");
            let ratio = rms(steady) / rms(&tone);
            assert!((0.8..1.2).contains(&ratio), "{rate} Hz: energy x{ratio}");
        }
    }

    #[test]
    fn refuses_garbage_without_panicking() {
        let mut dec = OpusDecoder::new(8000).unwrap();
        // A packet whose TOC byte claims more frames than it carries (code 3, RFC 6716
        // §3.2.5, count 0) is malformed.
        assert!(dec.decode(&[0x03, 0x00]).is_err());
        assert_eq!(dec.rate(), 8000);
    }
}
