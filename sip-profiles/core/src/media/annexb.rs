//! H.264 Annex B byte streams (ITU-T H.264 §B.1): NAL units behind start codes, grouped
//! into access units (§7.4.1.2.3), and written back. A start code is `00 00 01`; the
//! `zero_byte` before it (a 4-byte start code) is present for sequence and picture
//! parameter sets and for the first NAL unit of an access unit (§B.1.2), which is how
//! [`write_access_unit`] writes them, so a conforming stream that follows that rule
//! (x264, ffmpeg) is rebuilt byte for byte.

/// The NAL units of an Annex B stream, without start codes (trailing zero bytes of a
/// NAL unit, `trailing_zero_8bits`, belong to the next start code).
pub fn nal_units(stream: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= stream.len() {
        if stream[i] == 0 && stream[i + 1] == 0 && stream[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(starts.len());
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(stream.len(), |&n| n - 3);
        while end > s && stream[end - 1] == 0 {
            end -= 1;
        }
        if end > s {
            out.push(&stream[s..end]);
        }
    }
    out
}

fn is_vcl(nal: &[u8]) -> bool {
    matches!(nal.first().map(|h| h & 0x1f), Some(1..=5))
}

/// `first_mb_in_slice` is 0: the slice starts a new picture (for our purposes).
fn first_slice_of_picture(nal: &[u8]) -> bool {
    // ue(v) = 0 is the single bit "1": the first payload bit is set.
    nal.get(1).is_some_and(|b| b & 0x80 != 0)
}

/// Groups NAL units into access units (H.264 §7.4.1.2.3): after a picture's slices,
/// an access unit delimiter, SPS, PPS, SEI, types 14–18, or a slice with
/// `first_mb_in_slice` 0 begins the next access unit.
pub fn access_units<'a>(nals: &[&'a [u8]]) -> Vec<Vec<&'a [u8]>> {
    let mut units: Vec<Vec<&'a [u8]>> = Vec::new();
    let mut has_vcl = false;
    for &nal in nals {
        let t = nal[0] & 0x1f;
        let starts_new = has_vcl
            && (matches!(t, 6..=9 | 14..=18) || (is_vcl(nal) && first_slice_of_picture(nal)));
        if starts_new || units.is_empty() {
            units.push(Vec::new());
            has_vcl = false;
        }
        has_vcl |= is_vcl(nal);
        if let Some(u) = units.last_mut() {
            u.push(nal);
        }
    }
    units
}

/// Appends an access unit's NAL units to `out` with the start codes of §B.1.2.
pub fn write_access_unit(out: &mut Vec<u8>, nals: &[&[u8]]) {
    for (i, nal) in nals.iter().enumerate() {
        let t = nal.first().map_or(0, |h| h & 0x1f);
        if i == 0 || t == 7 || t == 8 {
            out.push(0);
        }
        out.extend_from_slice(&[0, 0, 1]);
        out.extend_from_slice(nal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_rebuild() {
        let stream = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x68, 3, 0, 0, 1, 0x65, 0x88, 4, 0, 0, 0, 1, 0x41,
            0x9a, 5, 0, 0, 0, 1, 0x41, 0x9b,
        ];
        let nals = nal_units(&stream);
        assert_eq!(nals.len(), 5);
        let aus = access_units(&nals);
        assert_eq!(aus.len(), 3, "SPS PPS IDR | P | P");
        let mut out = Vec::new();
        for au in &aus {
            write_access_unit(&mut out, au);
        }
        assert_eq!(out, stream);
    }
}
