//! H.264 over RTP (RFC 6184): which packets carry an I picture. An I-packet carries an
//! IDR slice (NAL type 5), a sequence or picture parameter set (7, 8: needed to decode
//! it), or a non-IDR slice or data partition A (1, 2) whose `slice_type` is I or SI
//! (H.264 §7.4.3, Table 7-6: `slice_type % 5` is 2 or 4) — including every fragment of
//! such a NAL unit (FU-A/FU-B, RFC 6184 §5.8) and every aggregation packet holding one
//! (STAP-A/B, §5.7.1). What cannot be read with certainty (a fragment whose start was
//! lost, MTAPs, reserved types, a truncated slice header) counts as an I-packet: the
//! cautious side is the encrypted relay path.

use super::Class;
use super::bits::{BitReader, rbsp_prefix};

const NON_IDR: u8 = 1;
const PARTITION_A: u8 = 2;
const IDR: u8 = 5;
const SPS: u8 = 7;
const PPS: u8 = 8;
const STAP_A: u8 = 24;
const STAP_B: u8 = 25;
const FU_A: u8 = 28;
const FU_B: u8 = 29;

/// Whether a whole NAL unit (header byte first) belongs to an I picture.
pub fn nal_is_intra(nal: &[u8]) -> bool {
    let Some(&header) = nal.first() else {
        return false;
    };
    match header & 0x1f {
        IDR | SPS | PPS => true,
        NON_IDR | PARTITION_A => slice_is_intra(&nal[1..]),
        // SEI, AUD, end of sequence/stream, filler, extensions: no picture data.
        3 | 4 | 6 | 9..=23 => false,
        _ => true,
    }
}

/// `first_mb_in_slice ue(v)`, `slice_type ue(v)` (H.264 §7.3.3); unreadable → I.
fn slice_is_intra(after_header: &[u8]) -> bool {
    let rbsp = rbsp_prefix(after_header, 16);
    let mut r = BitReader::new(&rbsp);
    match r.ue().and_then(|_| r.ue()) {
        Ok(slice_type) => matches!(slice_type % 5, 2 | 4),
        Err(_) => true,
    }
}

/// Classifies the RTP payloads of one H.264 stream, in sequence order; it remembers the
/// class of the fragmented NAL unit in progress.
#[derive(Debug, Default)]
pub struct H264Classifier {
    fragment: Option<bool>,
}

impl H264Classifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// The class of one RTP payload.
    pub fn classify(&mut self, payload: &[u8]) -> Class {
        Class::from_intra(self.intra(payload))
    }

    fn intra(&mut self, payload: &[u8]) -> bool {
        let Some(&indicator) = payload.first() else {
            return false;
        };
        match indicator & 0x1f {
            1..=23 => nal_is_intra(payload),
            STAP_A => aggregation_is_intra(&payload[1..]),
            STAP_B => payload.get(3..).is_none_or(aggregation_is_intra),
            t @ (FU_A | FU_B) => {
                let Some(&fu) = payload.get(1) else {
                    return true;
                };
                let (start, end) = (fu & 0x80 != 0, fu & 0x40 != 0);
                let body = if t == FU_B { 4 } else { 2 };
                let intra = if start {
                    // The fragmented NAL's header: F and NRI from the indicator, the
                    // type from the FU header (RFC 6184 §5.8).
                    let mut nal = vec![(indicator & 0xe0) | (fu & 0x1f)];
                    nal.extend_from_slice(payload.get(body..).unwrap_or_default());
                    let intra = nal_is_intra(&nal);
                    self.fragment = Some(intra);
                    intra
                } else {
                    self.fragment.unwrap_or(true)
                };
                if end {
                    self.fragment = None;
                }
                intra
            }
            _ => true,
        }
    }
}

/// STAP units: 16-bit size, NAL unit, repeated (RFC 6184 §5.7.1). Malformed → I.
fn aggregation_is_intra(mut units: &[u8]) -> bool {
    while units.len() >= 2 {
        let size = usize::from(u16::from_be_bytes([units[0], units[1]]));
        let Some(nal) = units.get(2..2 + size) else {
            return true;
        };
        if nal_is_intra(nal) {
            return true;
        }
        units = &units[2 + size..];
    }
    !units.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slice NAL (type `t`, NRI 3) whose header holds first_mb 0 and `slice_type`.
    fn slice(t: u8, slice_type: u8) -> Vec<u8> {
        // ue(0) = "1"; ue(slice_type) for 0..=9.
        let code: (u32, u32) = match slice_type {
            0 => (1, 1),
            1 => (0b010, 3),
            2 => (0b011, 3),
            3 => (0b00100, 5),
            4 => (0b00101, 5),
            5 => (0b00110, 5),
            6 => (0b00111, 5),
            7 => (0b000_1000, 7),
            8 => (0b000_1001, 7),
            _ => (0b000_1010, 7),
        };
        let bits = (1u32 << code.1) | code.0; // leading "1" for first_mb, then the code
        let len = code.1 + 1;
        let v = (bits << (32 - len)) | (1 << (31 - len)); // rbsp stop bit
        let mut out = vec![0x60 | t];
        out.extend_from_slice(&v.to_be_bytes());
        out
    }

    #[test]
    fn slice_types_and_parameter_sets() {
        for st in 0..=9 {
            let intra = matches!(st % 5, 2 | 4);
            assert_eq!(nal_is_intra(&slice(NON_IDR, st)), intra, "slice_type {st}");
        }
        assert!(nal_is_intra(&[0x65, 0x88]));
        assert!(nal_is_intra(&[0x67, 0x42]));
        assert!(nal_is_intra(&[0x68, 0xce]));
        assert!(!nal_is_intra(&[0x06, 0x05])); // SEI
        assert!(!nal_is_intra(&[0x09, 0xf0])); // AUD
        assert!(nal_is_intra(&[0x41])); // P-slice header truncated: cautious
    }

    #[test]
    fn fragments_follow_their_start() {
        let mut c = H264Classifier::new();
        let p = slice(NON_IDR, 0);
        // FU-A of a P slice: start, middle, end.
        let start = [&[0x7c, 0x80 | NON_IDR][..], &p[1..]].concat();
        assert_eq!(c.classify(&start), Class::Inter);
        assert_eq!(c.classify(&[0x7c, NON_IDR, 0xaa]), Class::Inter);
        assert_eq!(c.classify(&[0x7c, 0x40 | NON_IDR, 0xbb]), Class::Inter);
        // FU-A of an IDR slice: every fragment is intra.
        assert_eq!(c.classify(&[0x7c, 0x80 | IDR, 0x88]), Class::Intra);
        assert_eq!(c.classify(&[0x7c, IDR, 0x00]), Class::Intra);
        assert_eq!(c.classify(&[0x7c, 0x40 | IDR, 0x00]), Class::Intra);
        // A middle fragment whose start was lost: cautious.
        assert_eq!(c.classify(&[0x7c, NON_IDR, 0x00]), Class::Intra);
    }

    #[test]
    fn aggregates_are_intra_when_any_unit_is() {
        let mut c = H264Classifier::new();
        let stap = |units: &[&[u8]]| {
            let mut v = vec![0x78];
            for u in units {
                v.extend_from_slice(&(u.len() as u16).to_be_bytes());
                v.extend_from_slice(u);
            }
            v
        };
        assert_eq!(c.classify(&stap(&[&[0x67, 1], &[0x68, 2]])), Class::Intra);
        assert_eq!(c.classify(&stap(&[&[0x06, 1], &[0x09, 2]])), Class::Inter);
        assert_eq!(c.classify(&[0x78, 0, 9, 0x06]), Class::Intra); // size overruns
    }

    #[test]
    fn any_bytes_are_classified_without_panic() {
        let mut c = H264Classifier::new();
        let mut x: u32 = 12345;
        for len in 0..64 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            let _ = c.classify(&data);
        }
    }
}
