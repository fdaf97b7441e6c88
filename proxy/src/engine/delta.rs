//! A response written as edits of its request, for transactions that keep their final
//! response only to send it again (engine::absorb).
//!
//! A locally generated response copies most of its request (RFC 3261 §8.2.6.2: Via,
//! From, To, Call-ID and CSeq; a registrar's 200 echoes the Contact too, §10.3 step 8),
//! and a retransmitted request is the same bytes again (§17.1.1.3, §17.1.2.2: the client
//! transaction sends the request it was given). So the response is kept as literal bytes
//! and copies of ranges of the request, and rebuilt from the retransmission when one
//! comes. The caller checks that the retransmission is the request the response was
//! encoded against (same length and hash) before it decodes.
//!
//! Encoding: a sequence of operations, each a varint `len << 1 | copy` followed by the
//! `len` literal bytes (`copy` = 0) or by the varint offset in the request where `len`
//! bytes are copied from (`copy` = 1).

/// Shortest copy worth an operation (a copy costs 2–4 bytes).
const MIN_COPY: usize = 8;
/// Line breaks and parameters of the request that copies may start at; later ones are
/// not used.
const MAX_ANCHORS: usize = 64;
/// Bytes an encoding may compare (each comparison counts its common prefix plus one);
/// past it, the rest is literal. A registrar's 200 needs about a kilobyte; without a
/// bound, a forwarded final of 64 KiB made of `;` against a request of 64 `;` would
/// cost 64 comparisons of up to 64 KiB each.
const MAX_WORK: usize = 64 * 1024;

fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &mut &[u8]) -> Option<usize> {
    let mut v = 0usize;
    for shift in (0..usize::BITS).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= usize::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn put_literal(out: &mut Vec<u8>, lit: &[u8]) {
    if !lit.is_empty() {
        put_varint(out, lit.len() << 1);
        out.extend_from_slice(lit);
    }
}

/// The eight bytes at `at` as one word; `None` when fewer are left.
fn word(b: &[u8], at: usize) -> Option<u64> {
    let w: [u8; 8] = b.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(w))
}

/// The length of the common prefix of `a` and `b`, at most `max`; eight bytes a step.
fn common_prefix(a: &[u8], b: &[u8], max: usize) -> usize {
    let end = a.len().min(b.len()).min(max);
    let mut at = 0;
    while at + 8 <= end {
        let (Some(wa), Some(wb)) = (word(a, at), word(b, at)) else {
            break;
        };
        if wa != wb {
            return at + (wa ^ wb).trailing_zeros() as usize / 8;
        }
        at += 8;
    }
    while at < end && a[at] == b[at] {
        at += 1;
    }
    at
}

/// Appends `target` written against `base` to `out`.
///
/// Copies start at line breaks and parameters: a response repeats its request line by
/// line (Via, From, To, Call-ID, CSeq, a registrar's Contact), and what it changes (the
/// start line, a To tag, an `expires` parameter, a Via's `received` and `rport` values,
/// RFC 3581 §4) ends a copy and runs as a literal to the next line break or `;`, where
/// the next copy starts. So only the request's `\r` and `;` are candidates, tried at
/// the response's, longest match first: a few hundred byte comparisons for a
/// registrar's 200, where hashing every position of the request into a table cost about
/// a tenth of the engine thread's time per REGISTER. A copy is at least [`MIN_COPY`]
/// (eight) bytes, so a candidate whose first eight bytes differ is passed over with one
/// comparison of two words.
pub(crate) fn encode(base: &[u8], target: &[u8], out: &mut Vec<u8>) {
    const _: () = assert!(MIN_COPY == 8, "the candidates' filter compares eight bytes");
    let mut anchors = [(0u32, 0u64); MAX_ANCHORS];
    let mut n = 0;
    if base.len() < u32::MAX as usize {
        let words = memchr::memchr2_iter(b'\r', b';', base)
            .filter_map(|p| Some((p as u32, word(base, p)?)));
        for (slot, anchor) in anchors.iter_mut().zip(words) {
            *slot = anchor;
            n += 1;
        }
    }
    let anchors = &anchors[..n];
    let (mut i, mut lit, mut work) = (0, 0, 0);
    while let Some(off) = memchr::memchr2(b'\r', b';', &target[i..]) {
        i += off;
        if work > MAX_WORK {
            break;
        }
        // Fewer than eight bytes left: no copy.
        let Some(w) = word(target, i) else { break };
        let (mut len, mut from) = (0, 0);
        for &(a, aw) in anchors {
            work += 1;
            if aw != w {
                continue;
            }
            let a = a as usize;
            let common = common_prefix(&base[a..], &target[i..], MAX_WORK.saturating_sub(work));
            work += common;
            if common > len {
                (len, from) = (common, a);
            }
        }
        // A copy that ends on a `;` leaves it to start the next one (a Via whose `rport`
        // got a value: `;rport;branch=` against `;branch=`).
        if len > MIN_COPY && target[i + len - 1] == b';' {
            len -= 1;
        }
        if len >= MIN_COPY {
            put_literal(out, &target[lit..i]);
            put_varint(out, len << 1 | 1);
            put_varint(out, from);
            i += len;
            lit = i;
        } else {
            i += 1;
        }
    }
    put_literal(out, &target[lit..]);
}

/// The bytes `code` stands for against `base`; `None` if `code` is not an encoding
/// against a base of this length.
pub(crate) fn decode(base: &[u8], mut code: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(base.len() + code.len());
    while !code.is_empty() {
        let op = get_varint(&mut code)?;
        let len = op >> 1;
        if op & 1 == 0 {
            let (lit, rest) = code.split_at_checked(len)?;
            out.extend_from_slice(lit);
            code = rest;
        } else {
            let at = get_varint(&mut code)?;
            out.extend_from_slice(base.get(at..at.checked_add(len)?)?);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::{common_prefix, decode, encode};

    const REGISTER: &[u8] = b"REGISTER sip:localhost SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:16000;branch=z9hG4bK-32584-1-0\r\nMax-Forwards: 70\r\n\
From: <sip:u000001@localhost>;tag=32584R1\r\nTo: <sip:u000001@localhost>\r\n\
Call-ID: 1-32584@127.0.0.1\r\nCSeq: 1 REGISTER\r\n\
Contact: <sip:u000001@127.0.0.1:16000;transport=UDP>\r\nExpires: 3600\r\n\
User-Agent: permit-bench\r\nContent-Length: 0\r\n\r\n";
    const OK: &[u8] = b"SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 127.0.0.1:16000;branch=z9hG4bK-32584-1-0\r\n\
From: <sip:u000001@localhost>;tag=32584R1\r\nTo: <sip:u000001@localhost>;tag=fccb21d8\r\n\
Call-ID: 1-32584@127.0.0.1\r\nCSeq: 1 REGISTER\r\n\
Contact: <sip:u000001@127.0.0.1:16000;transport=UDP>;expires=3600\r\n\
Content-Length: 0\r\n\r\n";

    /// A registrar's 200 is rebuilt byte for byte from its REGISTER, from less than a
    /// third of its size.
    #[test]
    fn a_register_answer_is_mostly_copies() {
        let mut code = Vec::new();
        encode(REGISTER, OK, &mut code);
        assert_eq!(decode(REGISTER, &code).as_deref(), Some(OK));
        assert!(code.len() * 3 < OK.len(), "{} of {}", code.len(), OK.len());
    }

    /// Any target against any base (unrelated, overlapping, empty, repeated) comes
    /// back exact.
    #[test]
    fn round_trips_whatever_the_bytes() {
        let mut rng = StdRng::seed_from_u64(7);
        for round in 0..2000 {
            // Line breaks among few letters: copies start at them, and many are
            // near-misses of each other.
            let base: Vec<u8> = (0..rng.random_range(0..600))
                .map(|_| *b"abcde\r\n".get(rng.random_range(0..7)).unwrap_or(&b'a'))
                .collect();
            let mut target = Vec::new();
            while target.len() < rng.random_range(0..700) {
                if !base.is_empty() && rng.random_bool(0.6) {
                    let from = rng.random_range(0..base.len());
                    let to = rng.random_range(from..=base.len());
                    target.extend_from_slice(&base[from..to]);
                } else {
                    target.push(rng.random());
                }
            }
            let mut code = Vec::new();
            encode(&base, &target, &mut code);
            assert_eq!(decode(&base, &code), Some(target), "round {round}");
        }
    }

    /// Past its budget of compared bytes the encoder writes the rest as a literal,
    /// and the result still comes back exact.
    #[test]
    fn a_response_of_many_lines_stays_exact() {
        let base = b"x\r\n".repeat(2000);
        let target = [b"\r\nx".repeat(20), b"\r".repeat(30_000)].concat();
        let mut code = Vec::new();
        encode(&base, &target, &mut code);
        assert_eq!(decode(&base, &code), Some(target.clone()));
        assert!(code.len() < target.len() + 8, "mostly literal, not larger");
        // All of it repeats the request: copied until the budget runs out, then literal.
        let base = b";".repeat(64 * 1024);
        let target = b";".repeat(64 * 1024);
        let mut code = Vec::new();
        encode(&base, &target, &mut code);
        assert_eq!(decode(&base, &code), Some(target));
    }

    /// A code read against a shorter base, or cut short, is refused rather than
    /// read out of bounds.
    /// The word-wise common prefix agrees with a byte-wise count, whatever the lengths,
    /// the bound and where the first difference falls.
    #[test]
    fn common_prefix_counts_like_bytes_do() {
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..20_000 {
            let len = rng.random_range(0..40);
            let a: Vec<u8> = (0..len).map(|_| rng.random_range(b'a'..=b'c')).collect();
            let mut b = a.clone();
            b.truncate(rng.random_range(0..=len));
            if !b.is_empty() && rng.random_bool(0.7) {
                let at = rng.random_range(0..b.len());
                b[at] = b'x';
            }
            let max = rng.random_range(0..48);
            let naive = a
                .iter()
                .zip(&b)
                .take(max)
                .take_while(|(x, y)| x == y)
                .count();
            assert_eq!(common_prefix(&a, &b, max), naive, "{a:?} {b:?} {max}");
        }
    }

    #[test]
    fn a_code_that_does_not_fit_its_base_is_refused() {
        let mut code = Vec::new();
        encode(REGISTER, OK, &mut code);
        assert_eq!(decode(&REGISTER[..40], &code), None);
        let cut = &code[..code.len() - 1];
        assert!(decode(REGISTER, cut).is_none_or(|d| d != OK));
        assert_eq!(decode(b"", &[0x80; 12]), None, "a varint longer than usize");
        assert_eq!(decode(b"", &[0x09]), None, "a copy past the base");
        assert_eq!(decode(b"", &[0x08, b'a']), None, "a literal past the code");
    }
}
