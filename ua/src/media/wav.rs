//! WAV files (RIFF `WAVE`, PCM format 1): what `--play` reads (16-bit, mono,
//! 8000, 16000 or 48000 Hz) and `--record` writes (16-bit, mono, 8000 Hz).

use super::SAMPLE_RATE;

/// Why a file is not a WAV this UA can play.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavError {
    #[error("not a RIFF/WAVE file")]
    NotWave,
    #[error("no fmt chunk before the data chunk")]
    NoFormat,
    #[error("no data chunk")]
    NoData,
    #[error("unsupported format: {0} (need 16-bit PCM, mono, 8000, 16000 or 48000 Hz)")]
    Unsupported(String),
}

/// Sample rates `--play` takes.
pub const PLAY_RATES: [u32; 3] = [8000, 16_000, 48_000];

/// Reads the samples of a 16-bit PCM mono 8 kHz WAV.
pub fn read(bytes: &[u8]) -> Result<Vec<i16>, WavError> {
    match read_pcm(bytes)? {
        (SAMPLE_RATE, samples) => Ok(samples),
        (rate, _) => Err(WavError::Unsupported(format!(
            "format 1, 1 channel(s), {rate} Hz, 16 bits"
        ))),
    }
}

/// Reads the sample rate and samples of a 16-bit PCM mono WAV at one of
/// [`PLAY_RATES`].
pub fn read_pcm(bytes: &[u8]) -> Result<(u32, Vec<i16>), WavError> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotWave);
    }
    let mut at = 12;
    let mut rate_seen: Option<u32> = None;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]])
            as usize;
        let start = at + 8;
        let end = start.saturating_add(len).min(bytes.len());
        let chunk = &bytes[start..end];
        match id {
            b"fmt " => {
                if chunk.len() < 16 {
                    return Err(WavError::NotWave);
                }
                let u16_at = |i: usize| u16::from_le_bytes([chunk[i], chunk[i + 1]]);
                let format = u16_at(0);
                let channels = u16_at(2);
                let rate = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
                let bits = u16_at(14);
                if format != 1 || channels != 1 || !PLAY_RATES.contains(&rate) || bits != 16 {
                    return Err(WavError::Unsupported(format!(
                        "format {format}, {channels} channel(s), {rate} Hz, {bits} bits"
                    )));
                }
                rate_seen = Some(rate);
            }
            b"data" => {
                let Some(rate) = rate_seen else {
                    return Err(WavError::NoFormat);
                };
                let samples = chunk
                    .chunks_exact(2)
                    .map(|p| i16::from_le_bytes([p[0], p[1]]))
                    .collect();
                return Ok((rate, samples));
            }
            _ => {}
        }
        // Chunks are padded to an even length (RIFF).
        at = start.saturating_add(len).saturating_add(len & 1);
    }
    Err(WavError::NoData)
}

/// Writes `samples` as a 16-bit PCM mono 8 kHz WAV.
pub fn write(samples: &[i16]) -> Vec<u8> {
    write_at(SAMPLE_RATE, samples)
}

/// Writes `samples` as a 16-bit PCM mono WAV at `rate` Hz.
pub fn write_at(rate: u32, samples: &[i16]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// A sine tone, for tests and labs: `seconds` of `hz` at `amplitude`.
pub fn tone(hz: f64, seconds: u32, amplitude: f64) -> Vec<i16> {
    tone_at(hz, seconds, amplitude, SAMPLE_RATE)
}

/// [`tone`] sampled at `rate` Hz.
pub fn tone_at(hz: f64, seconds: u32, amplitude: f64, rate: u32) -> Vec<i16> {
    (0..seconds * rate)
        .map(|i| {
            let t = f64::from(i) / f64::from(rate);
            (amplitude * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16
        })
        .collect()
}

/// A count as `f64` (counts of samples are far below 2^32).
#[cfg(test)]
fn count(n: usize) -> f64 {
    f64::from(u32::try_from(n).unwrap_or(u32::MAX))
}

/// The frequency of a tone at `rate` Hz, from its zero crossings (for tests).
#[cfg(test)]
pub(crate) fn zero_crossing_hz(samples: &[i16], rate: u32) -> f64 {
    let crossings = samples
        .windows(2)
        .filter(|w| (w[0] < 0) != (w[1] < 0))
        .count();
    count(crossings) / 2.0 / (count(samples.len()) / f64::from(rate))
}

/// Root mean square of `samples` (for tests).
#[cfg(test)]
pub(crate) fn rms(samples: &[i16]) -> f64 {
    let sum: f64 = samples.iter().map(|&s| f64::from(s).powi(2)).sum();
    (sum / count(samples.len())).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read() {
        let t = tone(440.0, 1, 8000.0);
        let bytes = write(&t);
        assert_eq!(bytes.len(), 44 + t.len() * 2);
        assert_eq!(read(&bytes).unwrap(), t);
        for rate in PLAY_RATES {
            let t = tone_at(440.0, 1, 8000.0, rate);
            assert_eq!(read_pcm(&write_at(rate, &t)).unwrap(), (rate, t.clone()));
        }
        // read() is the 8 kHz reader of recordings.
        assert!(matches!(
            read(&write_at(48_000, &[0; 4])),
            Err(WavError::Unsupported(_))
        ));
        let mut odd = write_at(44_100, &[0; 4]);
        assert!(matches!(read_pcm(&odd), Err(WavError::Unsupported(_))));
        odd[24..28].copy_from_slice(&16_000u32.to_le_bytes());
        assert_eq!(read_pcm(&odd).unwrap().0, 16_000);
    }

    #[test]
    fn refuses_other_formats() {
        let mut stereo = write(&[0; 4]);
        stereo[22] = 2;
        assert!(matches!(read(&stereo), Err(WavError::Unsupported(_))));
        assert_eq!(read(b"RIFF\0\0\0\0WAVE"), Err(WavError::NoData));
        assert_eq!(read(b"OggS"), Err(WavError::NotWave));
        // A data chunk length past the end is cut at the end, never read beyond it.
        let mut short = write(&[1, 2, 3]);
        short[40] = 0xFF;
        assert_eq!(read(&short).unwrap(), [1, 2, 3]);
    }
}
