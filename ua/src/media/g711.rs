//! G.711 μ-law (ITU-T G.711 §3, the segment/mantissa form with a bias of 0x84), from
//! and to 16-bit linear PCM.

const BIAS: i32 = 0x84;
const CLIP: i32 = 32_635;

/// The μ-law byte of silence.
pub const SILENCE: u8 = 0xFF;

/// Encodes one 16-bit sample.
pub fn encode(sample: i16) -> u8 {
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && s & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    // sign, exponent and mantissa fit in 8 bits, so the low byte is exact
    !((sign | (exponent << 4) | mantissa) & 0xFF).to_le_bytes()[0]
}

/// Decodes one μ-law byte.
pub fn decode(byte: u8) -> i16 {
    let u = !byte;
    let exponent = (u >> 4) & 0x07;
    let mantissa = i32::from(u & 0x0F);
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    let s = if u & 0x80 != 0 { -magnitude } else { magnitude };
    s as i16
}

pub fn encode_all(samples: &[i16]) -> Vec<u8> {
    samples.iter().map(|&s| encode(s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(encode(0), SILENCE);
        assert_eq!(decode(SILENCE), 0);
        assert_eq!(encode(i16::MAX), 0x80);
        assert_eq!(encode(i16::MIN), 0x00);
        assert_eq!(decode(0x80), 32_124);
        assert_eq!(decode(0x00), -32_124);
    }

    /// Every code decodes to a value that encodes back to it (0x7F, negative zero,
    /// maps to 0xFF), and encoding error stays within the segment's step.
    #[test]
    fn round_trips() {
        for b in 0..=255u8 {
            let back = encode(decode(b));
            assert!(
                back == b || (b == 0x7F && back == 0xFF),
                "{b:#x} -> {back:#x}"
            );
        }
        for s in (-32_000..32_000).step_by(97) {
            let err = (i32::from(decode(encode(s as i16))) - s).abs();
            assert!(err <= (s.abs() / 16).max(8) + 4, "{s}: error {err}");
        }
    }
}
