//! H.264 RTP payloads (RFC 6184, non-interleaved mode, `packetization-mode=1`): an
//! access unit becomes single NAL unit packets (§5.6), STAP-A aggregates of small NAL
//! units (§5.7.1) and FU-A fragments of large ones (§5.8); the last packet of an access
//! unit carries the marker bit (§5.1) and all its packets one RTP timestamp. The
//! depacketizer turns the payloads, in sequence order, back into an Annex B stream
//! (`annexb::write_access_unit`), byte for byte for a conforming stream.

use super::annexb;

/// One RTP payload of a video stream, before the RTP header is added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    pub data: Vec<u8>,
    /// Last packet of the access unit (picture).
    pub marker: bool,
    /// Index of the access unit (the sender turns it into an RTP timestamp).
    pub unit: u64,
}

const STAP_A: u8 = 24;
const FU_A: u8 = 28;

/// Packetizes the access units of an Annex B stream into payloads of at most `mtu`
/// bytes (`mtu` ≥ 16).
pub fn packetize(stream: &[u8], mtu: usize) -> Vec<Payload> {
    let mtu = mtu.max(16);
    let nals = annexb::nal_units(stream);
    let mut out = Vec::new();
    for (unit, au) in annexb::access_units(&nals).iter().enumerate() {
        let first = out.len();
        let mut stap: Vec<&[u8]> = Vec::new();
        let flush = |stap: &mut Vec<&[u8]>, out: &mut Vec<Payload>| match stap.len() {
            0 => {}
            1 => {
                out.push(payload(stap[0].to_vec(), unit));
                stap.clear();
            }
            _ => {
                // STAP-A header: F and the highest NRI of the units, type 24.
                let nri = stap.iter().map(|n| n[0] & 0x60).max().unwrap_or(0);
                let mut data = vec![nri | STAP_A];
                for n in stap.iter() {
                    data.extend_from_slice(&(n.len() as u16).to_be_bytes());
                    data.extend_from_slice(n);
                }
                out.push(payload(data, unit));
                stap.clear();
            }
        };
        for &nal in au {
            let stap_len = 1 + stap.iter().map(|n| 2 + n.len()).sum::<usize>();
            if nal.len() > mtu {
                flush(&mut stap, &mut out);
                fragment(nal, mtu, unit, &mut out);
            } else if stap_len + 2 + nal.len() <= mtu {
                stap.push(nal);
            } else {
                flush(&mut stap, &mut out);
                stap.push(nal);
            }
        }
        flush(&mut stap, &mut out);
        if let Some(last) = out.get_mut(first..).and_then(|s| s.last_mut()) {
            last.marker = true;
        }
    }
    out
}

fn payload(data: Vec<u8>, unit: usize) -> Payload {
    Payload {
        data,
        marker: false,
        unit: unit as u64,
    }
}

/// FU-A fragments of one NAL unit (§5.8): indicator (F, NRI, 28), header (S, E, type).
fn fragment(nal: &[u8], mtu: usize, unit: usize, out: &mut Vec<Payload>) {
    let (header, body) = (nal[0], &nal[1..]);
    let chunk = mtu - 2;
    let n = body.len().div_ceil(chunk);
    for (i, part) in body.chunks(chunk).enumerate() {
        let mut fu = header & 0x1f;
        if i == 0 {
            fu |= 0x80;
        }
        if i + 1 == n {
            fu |= 0x40;
        }
        let mut data = Vec::with_capacity(part.len() + 2);
        data.push((header & 0xe0) | FU_A);
        data.push(fu);
        data.extend_from_slice(part);
        out.push(payload(data, unit));
    }
}

/// Why a payload could not be depacketized (it is skipped; the stream goes on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DepacketizeError {
    #[error("empty payload")]
    Empty,
    #[error("malformed aggregation packet")]
    BadAggregate,
    #[error("fragment without its start")]
    OrphanFragment,
    #[error("unsupported payload type {0}")]
    Unsupported(u8),
}

/// Rebuilds the Annex B stream from payloads in sequence order.
#[derive(Debug, Default)]
pub struct Depacketizer {
    unit: Option<u64>,
    nals: Vec<Vec<u8>>,
    fragment: Option<Vec<u8>>,
    out: Vec<u8>,
}

impl Depacketizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// One payload of access unit `unit` (the same for all packets of a picture; the
    /// receiver takes it from the RTP timestamp).
    pub fn push(&mut self, unit: u64, data: &[u8]) -> Result<(), DepacketizeError> {
        if self.unit != Some(unit) {
            self.finish_unit();
            self.unit = Some(unit);
        }
        let &indicator = data.first().ok_or(DepacketizeError::Empty)?;
        match indicator & 0x1f {
            1..=23 => self.nals.push(data.to_vec()),
            STAP_A => {
                let mut rest = &data[1..];
                while !rest.is_empty() {
                    let size = rest
                        .get(..2)
                        .map(|s| usize::from(u16::from_be_bytes([s[0], s[1]])))
                        .ok_or(DepacketizeError::BadAggregate)?;
                    let nal = rest
                        .get(2..2 + size)
                        .ok_or(DepacketizeError::BadAggregate)?;
                    self.nals.push(nal.to_vec());
                    rest = &rest[2 + size..];
                }
            }
            FU_A => {
                let &fu = data.get(1).ok_or(DepacketizeError::BadAggregate)?;
                if fu & 0x80 != 0 {
                    self.fragment = Some(vec![(indicator & 0xe0) | (fu & 0x1f)]);
                }
                let f = self
                    .fragment
                    .as_mut()
                    .ok_or(DepacketizeError::OrphanFragment)?;
                f.extend_from_slice(&data[2..]);
                if fu & 0x40 != 0
                    && let Some(nal) = self.fragment.take()
                {
                    self.nals.push(nal);
                }
            }
            t => return Err(DepacketizeError::Unsupported(t)),
        }
        Ok(())
    }

    fn finish_unit(&mut self) {
        self.fragment = None;
        let nals: Vec<&[u8]> = self.nals.iter().map(Vec::as_slice).collect();
        annexb::write_access_unit(&mut self.out, &nals);
        self.nals.clear();
    }

    /// The stream so far, ending the current access unit.
    pub fn finish(mut self) -> Vec<u8> {
        self.finish_unit();
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_nals_are_aggregated_and_large_ones_fragmented() {
        let mut stream = vec![0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x68, 3, 0, 0, 1, 0x65];
        stream.extend(std::iter::repeat_n(0x5a, 300));
        let p = packetize(&stream, 100);
        assert_eq!(p[0].data[0] & 0x1f, STAP_A, "SPS+PPS aggregated");
        assert!(p[1..].iter().all(|x| x.data[0] & 0x1f == FU_A));
        assert!(p.iter().all(|x| x.data.len() <= 100));
        assert!(p.last().unwrap().marker && !p[0].marker);
        let mut d = Depacketizer::new();
        for x in &p {
            d.push(x.unit, &x.data).unwrap();
        }
        assert_eq!(d.finish(), stream);
    }

    #[test]
    fn orphan_fragments_and_garbage_are_errors_not_panics() {
        let mut d = Depacketizer::new();
        assert_eq!(
            d.push(0, &[0x7c, 0x05, 1]),
            Err(DepacketizeError::OrphanFragment)
        );
        assert_eq!(
            d.push(0, &[0x78, 0, 9, 1]),
            Err(DepacketizeError::BadAggregate)
        );
        assert_eq!(d.push(0, &[]), Err(DepacketizeError::Empty));
        assert_eq!(d.push(0, &[0x7d]), Err(DepacketizeError::Unsupported(29)));
    }
}
