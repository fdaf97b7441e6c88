//! Sample-rate conversion between the rates the UA plays and records (8, 16 and
//! 48 kHz), deliberately simple:
//!
//! - up by an integer factor (8 → 16 → 48 kHz): linear interpolation between
//!   neighbouring samples (the images it leaves above the old Nyquist frequency are
//!   small for speech and tones, and Opus's own low-pass removes most of them);
//! - down by an integer factor (48 → 8 kHz): the mean of each block of `factor`
//!   samples, a boxcar low-pass (first null at the new sample rate) then decimation;
//! - other ratios: linear interpolation at the new instants (no low-pass).
//!
//! Not a studio resampler: it serves files to play and recordings to check.

/// `samples` at `from` Hz, resampled to `to` Hz.
pub fn resample(samples: &[i16], from: u32, to: u32) -> Vec<i16> {
    if from == to || samples.is_empty() || from == 0 || to == 0 {
        return samples.to_vec();
    }
    if from.is_multiple_of(to) {
        let factor = (from / to) as usize;
        return samples
            .chunks(factor)
            .map(|block| {
                let sum: i64 = block.iter().map(|&s| i64::from(s)).sum();
                // The mean of i16 values is an i16.
                (sum / i64::from(u32::try_from(block.len()).unwrap_or(1))) as i16
            })
            .collect();
    }
    // Linear interpolation: output sample k sits at input position k·from/to.
    let out_len = (samples.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    (0..out_len)
        .map(|k| {
            let pos = k as u64 * u64::from(from);
            let i = (pos / u64::from(to)) as usize;
            let frac = f64::from((pos % u64::from(to)) as u32) / f64::from(to);
            let a = f64::from(samples[i]);
            let b = f64::from(*samples.get(i + 1).unwrap_or(&samples[i]));
            (a + (b - a) * frac).round() as i16
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::wav::{rms, tone_at, zero_crossing_hz as hz};

    #[test]
    fn keeps_a_tone_between_rates() {
        for (from, to) in [
            (8000, 48_000),
            (16_000, 48_000),
            (48_000, 8000),
            (16_000, 8000),
            (8000, 16_000),
            (44_100, 48_000),
        ] {
            let tone = tone_at(440.0, 1, 10_000.0, from);
            let out = resample(&tone, from, to);
            let expected = tone.len() as u64 * u64::from(to) / u64::from(from);
            assert!(
                out.len().abs_diff(expected as usize) <= 1,
                "{from}->{to}: {} samples",
                out.len()
            );
            let f = hz(&out, to);
            assert!((f - 440.0).abs() < 3.0, "{from}->{to}: {f} Hz");
            let ratio = rms(&out) / rms(&tone);
            assert!(
                (0.95..1.05).contains(&ratio),
                "{from}->{to}: energy x{ratio}"
            );
        }
    }

    /// Down-sampling averages blocks: a tone at the new Nyquist frequency cancels.
    #[test]
    fn downsampling_filters_what_would_alias() {
        let alias = tone_at(8000.0, 1, 10_000.0, 48_000);
        let out = resample(&alias, 48_000, 8000);
        assert!(rms(&out) < 100.0, "rms {}", rms(&out));
        assert_eq!(resample(&[1, 2, 3], 8000, 8000), [1, 2, 3]);
        assert_eq!(resample(&[2, 4, 6, 8], 16_000, 8000), [3, 7]);
        assert_eq!(resample(&[0, 30], 8000, 24_000), [0, 10, 20, 30, 30, 30]);
    }
}
