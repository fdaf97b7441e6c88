//! Bit reading for video headers: big-endian bits and Exp-Golomb codes
//! (ITU-T H.264 §9.1), over a NAL unit's RBSP (emulation prevention removed, §7.4.1).

/// Removes H.264 emulation-prevention bytes (`00 00 03` → `00 00`) from the first
/// `max` bytes of a NAL unit payload: enough for the header fields we read.
pub fn rbsp_prefix(nal: &[u8], max: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(max.min(nal.len()));
    let mut zeros = 0;
    for &b in nal {
        if out.len() >= max {
            break;
        }
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// A big-endian bit reader; reading past the end is an error, never a panic.
pub struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

/// The data ended before the field did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("truncated bit field")]
pub struct Truncated;

impl<'a> BitReader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    pub fn bit(&mut self) -> Result<u32, Truncated> {
        let byte = self.data.get(self.pos / 8).ok_or(Truncated)?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(u32::from(b))
    }

    pub fn bits(&mut self, n: u32) -> Result<u32, Truncated> {
        let mut v = 0;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Ok(v)
    }

    /// `ue(v)` (H.264 §9.1): leading zeros, a one, then as many info bits.
    pub fn ue(&mut self) -> Result<u32, Truncated> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err(Truncated);
            }
        }
        let rest = self.bits(zeros)?;
        Ok(((1u64 << zeros) - 1 + u64::from(rest)) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_golomb_codes() {
        // 1 → 0, 010 → 1, 011 → 2, 00100 → 3, 00111 → 6 (H.264 Table 9-2).
        let data = [0b1010_0110, 0b0100_0011, 0b1000_0000];
        let mut r = BitReader::new(&data);
        assert_eq!(r.ue(), Ok(0));
        assert_eq!(r.ue(), Ok(1));
        assert_eq!(r.ue(), Ok(2));
        assert_eq!(r.ue(), Ok(3));
        assert_eq!(r.ue(), Ok(6));
        assert_eq!(r.bits(8), Err(Truncated));
    }

    #[test]
    fn emulation_prevention_is_removed() {
        assert_eq!(rbsp_prefix(&[0, 0, 3, 1, 0, 0, 3], 16), vec![0, 0, 1, 0, 0]);
        assert_eq!(rbsp_prefix(&[1, 2, 3, 4], 2), vec![1, 2]);
    }

    #[test]
    fn long_zero_runs_are_refused() {
        let zeros = [0u8; 8];
        assert_eq!(BitReader::new(&zeros).ue(), Err(Truncated));
    }
}
