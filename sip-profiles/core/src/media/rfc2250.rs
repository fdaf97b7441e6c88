//! MPEG-2 video elementary streams over RTP (RFC 2250 §3): packets begin with headers
//! (sequence, GOP, picture) or a slice, slices that fit are packed whole, a larger slice
//! is fragmented (`B`/`E` mark its first and last byte, §3.4), and every packet carries
//! the 4-byte MPEG video-specific header with the picture's temporal reference and
//! `picture_coding_type` (`P`, what [`super::mpeg2::classify`] reads). The marker bit
//! ends a picture. The receiver strips the header and concatenates: the elementary
//! stream comes back byte for byte.

use super::bits::BitReader;
use super::rfc6184::Payload;

const PICTURE: u8 = 0x00;
const SEQUENCE_HEADER: u8 = 0xb3;

/// The byte offsets of every start code (`00 00 01 xx`) in an elementary stream.
fn start_codes(es: &[u8]) -> Vec<usize> {
    let mut v = Vec::new();
    let mut i = 0;
    while i + 4 <= es.len() {
        if es[i] == 0 && es[i + 1] == 0 && es[i + 2] == 1 {
            v.push(i);
            i += 4;
        } else {
            i += 1;
        }
    }
    v
}

fn is_slice(code: u8) -> bool {
    (0x01..=0xaf).contains(&code)
}

/// Fields of the picture header (ISO/IEC 13818-2 §6.2.3) the RTP header repeats.
#[derive(Debug, Default, Clone, Copy)]
struct PictureInfo {
    temporal_reference: u16,
    coding_type: u8,
    /// FBV, BFC, FFV, FFC as the fourth header byte.
    vectors: u8,
}

fn picture_info(chunk: &[u8]) -> PictureInfo {
    // After 00 00 01 00: temporal_reference(10) picture_coding_type(3) vbv_delay(16)
    // [full_pel_forward_vector(1) forward_f_code(3)] [full_pel_backward(1) backward_f_code(3)]
    let mut r = BitReader::new(chunk.get(4..).unwrap_or_default());
    let mut read = |n| r.bits(n).unwrap_or(0);
    let temporal_reference = read(10) as u16;
    let coding_type = read(3) as u8;
    let _vbv_delay = read(16);
    let mut vectors = 0u8;
    if coding_type == 2 || coding_type == 3 {
        let (ffv, ffc) = (read(1) as u8, read(3) as u8);
        vectors |= (ffv << 3) | ffc;
    }
    if coding_type == 3 {
        let (bfv, bfc) = (read(1) as u8, read(3) as u8);
        vectors |= (bfv << 7) | (bfc << 4);
    }
    PictureInfo {
        temporal_reference,
        coding_type,
        vectors,
    }
}

struct Builder {
    out: Vec<Payload>,
    cur: Vec<u8>,
    sequence: bool,
    begins_slice: bool,
    pic: PictureInfo,
    unit: u64,
}

impl Builder {
    fn flush(&mut self, ends_slice: bool) {
        if self.cur.is_empty() {
            return;
        }
        let header = [
            (self.pic.temporal_reference >> 8) as u8 & 0x03,
            self.pic.temporal_reference as u8,
            (u8::from(self.sequence) << 5)
                | (u8::from(self.begins_slice) << 4)
                | (u8::from(ends_slice) << 3)
                | (self.pic.coding_type & 7),
            self.pic.vectors,
        ];
        let mut data = header.to_vec();
        data.append(&mut self.cur);
        self.out.push(Payload {
            data,
            marker: false,
            unit: self.unit,
        });
        self.sequence = false;
        self.begins_slice = false;
    }
}

/// Packetizes an MPEG-1/2 video elementary stream into payloads of at most `mtu` bytes
/// (`mtu` ≥ 16); `unit` counts pictures in stream order.
pub fn packetize(es: &[u8], mtu: usize) -> Vec<Payload> {
    let room = mtu.max(16) - 4;
    let codes = start_codes(es);
    let mut b = Builder {
        out: Vec::new(),
        cur: Vec::new(),
        sequence: false,
        begins_slice: false,
        pic: PictureInfo::default(),
        unit: 0,
    };
    let mut pictures = 0u64;
    let mut picture_open = false;
    // Bytes before the first start code (none in a conforming stream) lead the first packet.
    if let Some(&first) = codes.first() {
        b.cur.extend_from_slice(&es[..first]);
    }
    for (k, &at) in codes.iter().enumerate() {
        let end = codes.get(k + 1).copied().unwrap_or(es.len());
        let chunk = &es[at..end];
        let code = chunk[3];
        if is_slice(code) {
            if b.cur.len() + chunk.len() > room && !b.cur.is_empty() {
                b.flush(false);
            }
            if b.cur.is_empty() || !b.cur.iter().any(|_| true) {
                b.begins_slice = true;
            } else if !b.begins_slice {
                // Headers only so far: a slice right after them still "begins" (§3.4 B).
                b.begins_slice = true;
            }
            if chunk.len() <= room - b.cur.len().min(room) {
                b.cur.extend_from_slice(chunk);
            } else {
                // A slice larger than a packet: fragments, B on the first, E on the last.
                let mut rest = chunk;
                while !rest.is_empty() {
                    let n = (room - b.cur.len()).min(rest.len());
                    b.cur.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                    if !rest.is_empty() {
                        b.flush(false);
                    }
                }
            }
            continue;
        }
        // A header: a new picture's headers start a new packet (the previous picture ends).
        let opens_picture = matches!(code, SEQUENCE_HEADER | 0xb8 | PICTURE);
        if opens_picture && picture_open {
            b.flush(true);
            if let Some(last) = b.out.last_mut() {
                last.marker = true;
            }
            picture_open = false;
        }
        if b.cur.len() + chunk.len() > room {
            b.flush(true);
        }
        if code == SEQUENCE_HEADER {
            b.sequence = true;
        }
        if code == PICTURE {
            b.pic = picture_info(chunk);
            b.unit = pictures;
            pictures += 1;
            picture_open = true;
        }
        b.cur.extend_from_slice(chunk);
    }
    b.flush(true);
    if let Some(last) = b.out.last_mut() {
        last.marker = true;
    }
    b.out
}

/// The elementary-stream bytes of one payload: the 4-byte header (and the 4-byte MPEG-2
/// extension when `T` is set) removed; `None` when it is too short.
pub fn depacketize(payload: &[u8]) -> Option<&[u8]> {
    let t = payload.first()? & 0x04 != 0;
    payload.get(if t { 8 } else { 4 }..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picture_header_fields() {
        // temporal_reference 5, P picture (2), vbv_delay 0xffff, ffv 0, ffc 7.
        // bits: 0000000101 010 1111111111111111 0 111
        let chunk = [0, 0, 1, 0, 0b0000_0001, 0b0101_0111, 0xff, 0xfb, 0x80];
        let p = picture_info(&chunk);
        assert_eq!((p.temporal_reference, p.coding_type), (5, 2));
        assert_eq!(p.vectors, 0x07);
    }

    #[test]
    fn round_trip_of_a_synthetic_stream() {
        let mut es = vec![0, 0, 1, 0xb3, 1, 2, 3, 4, 0, 0, 1, 0xb8, 9, 9, 9, 9];
        es.extend_from_slice(&[0, 0, 1, 0, 0x00, 0x48, 0xff, 0xf8]); // I picture
        es.extend_from_slice(&[0, 0, 1, 1]);
        es.extend(std::iter::repeat_n(0x55, 200));
        es.extend_from_slice(&[0, 0, 1, 0, 0x00, 0x50, 0xff, 0xff, 0x80]); // P picture
        es.extend_from_slice(&[0, 0, 1, 1, 0x66, 0x66]);
        es.extend_from_slice(&[0, 0, 1, 0xb7]);
        let p = packetize(&es, 64);
        assert!(p.iter().all(|x| x.data.len() <= 64));
        let rebuilt: Vec<u8> = p
            .iter()
            .flat_map(|x| depacketize(&x.data).unwrap().to_vec())
            .collect();
        assert_eq!(rebuilt, es);
        assert_eq!(p[0].data[2] & 0x20, 0x20, "sequence header flagged");
        assert_eq!(p[0].data[2] & 7, 1, "I picture");
        assert_eq!(p.last().unwrap().data[2] & 7, 2, "P picture");
        assert_eq!(
            p.iter().filter(|x| x.marker).count(),
            2,
            "one marker per picture"
        );
    }
}
