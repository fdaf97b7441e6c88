//! MPEG-2 video over RTP (RFC 2250 §3.4): the MPEG video-specific header of every packet
//! names the picture type (`P`: 1 = I, 2 = P, 3 = B, 4 = D) and whether a sequence
//! header is present (`S`). An I-packet carries an I picture or a sequence header (which
//! the I picture needs to be decoded). A payload too short for the header counts as an
//! I-packet (the cautious side).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |    MBZ  |T|         TR        | |N|S|B|E|  P  | | BFC | | FFC |
//!                                  AN              FBV     FFV
//! ```

use super::Class;

/// RFC 2250 picture_type of an I picture.
pub const I_PICTURE: u8 = 1;

/// The class of one RFC 2250 MPEG video payload.
pub fn classify(payload: &[u8]) -> Class {
    let Some(&b2) = payload.get(2) else {
        return Class::Intra;
    };
    if payload.len() < 4 {
        return Class::Intra;
    }
    let sequence_header = b2 & 0x20 != 0;
    let picture_type = b2 & 0x07;
    Class::from_intra(sequence_header || picture_type == I_PICTURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(s: bool, p: u8) -> [u8; 4] {
        [0, 0, (u8::from(s) << 5) | p, 0]
    }

    #[test]
    fn picture_types() {
        assert_eq!(classify(&header(false, 1)), Class::Intra);
        assert_eq!(classify(&header(false, 2)), Class::Inter);
        assert_eq!(classify(&header(false, 3)), Class::Inter);
        assert_eq!(classify(&header(true, 2)), Class::Intra);
        assert_eq!(classify(&[0, 0]), Class::Intra);
    }
}
