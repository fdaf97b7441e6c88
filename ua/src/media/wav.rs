//! WAV files (RIFF `WAVE`, PCM format 1): what `--play` reads (16-bit, mono,
//! 8000 Hz) and `--record` writes.

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
    #[error("unsupported format: {0} (need 16-bit PCM, mono, 8000 Hz)")]
    Unsupported(String),
}

/// Reads the samples of a 16-bit PCM mono 8 kHz WAV.
pub fn read(bytes: &[u8]) -> Result<Vec<i16>, WavError> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotWave);
    }
    let mut at = 12;
    let mut format_ok = false;
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
                if format != 1 || channels != 1 || rate != SAMPLE_RATE || bits != 16 {
                    return Err(WavError::Unsupported(format!(
                        "format {format}, {channels} channel(s), {rate} Hz, {bits} bits"
                    )));
                }
                format_ok = true;
            }
            b"data" => {
                if !format_ok {
                    return Err(WavError::NoFormat);
                }
                return Ok(chunk
                    .chunks_exact(2)
                    .map(|p| i16::from_le_bytes([p[0], p[1]]))
                    .collect());
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
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
    out.extend_from_slice(&(SAMPLE_RATE * 2).to_le_bytes()); // byte rate
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
    (0..seconds * SAMPLE_RATE)
        .map(|i| {
            let t = f64::from(i) / f64::from(SAMPLE_RATE);
            (amplitude * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16
        })
        .collect()
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
