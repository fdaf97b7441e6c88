//! Tables keyed by a keyed hash (a `RandomState`'s SipHash of the real key): the key
//! is a hash already, so the table uses it as it is instead of hashing it a second
//! time.

use std::hash::{BuildHasherDefault, Hasher};

/// A hasher that hands back the `u64` it was given (bucket from the low bits, control
/// byte from the top ones).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct AsIs(u64);

impl Hasher for AsIs {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed; any other input is folded in, never dropped.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// The `BuildHasher` of a table keyed by keyed hashes.
pub(crate) type Keyed = BuildHasherDefault<AsIs>;
