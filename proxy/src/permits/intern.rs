//! String interning for the permit table: every AOR and domain is stored once, in one
//! byte arena, and named by a `u32` id. A million lists of a hundred callers drawn from
//! a few million distinct AORs then cost four bytes per entry instead of a string each.
//!
//! Built for lookups that miss the CPU caches (a table of a million lists does not fit
//! in them): a name's id is its offset in the arena, where it is stored as a 2-byte
//! length then its bytes, so checking a candidate touches one place; and each name
//! carries a `u32` tag the table uses for the position of the callee's list, so finding
//! a list takes no second index.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

/// Ids (arena offsets) stay below this bound: the table uses the top bit to tag domain
/// entries and `u32::MAX` as its empty slot. 2 GiB of names is about 70 million AORs.
pub(crate) const ID_LIMIT: usize = 1 << 31;
/// The tag of a name the table has not tagged.
pub(crate) const NO_TAG: u32 = u32::MAX;

/// A name's id and the table's tag for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) id: u32,
    pub(crate) tag: u32,
}

/// Names in one arena, found by a keyed 64-bit hash.
///
/// The hash map holds only `hash → slot` (16 bytes a bucket); the name is compared in
/// the arena. Two names whose keyed SipHash values collide (odds of 2^-64 per pair, not
/// steerable by an attacker who does not know the random key) go to a small overflow
/// map, so every answer is exact.
pub(crate) struct Interner<S = RandomState> {
    arena: Vec<u8>,
    by_hash: HashMap<u64, Slot, BuildHasherDefault<Prehashed>>,
    collided: HashMap<Box<str>, Slot>,
    keys: S,
    count: usize,
}

impl Default for Interner {
    fn default() -> Self {
        Self::with_keys(RandomState::new())
    }
}

impl<S: BuildHasher> Interner<S> {
    fn with_keys(keys: S) -> Self {
        Self {
            arena: Vec::new(),
            by_hash: HashMap::default(),
            collided: HashMap::new(),
            keys,
            count: 0,
        }
    }

    /// The slot of `s` if it was ever interned.
    pub(crate) fn get(&self, s: &str) -> Option<Slot> {
        let slot = *self.by_hash.get(&self.keys.hash_one(s))?;
        if self.bytes(slot.id) == s.as_bytes() {
            Some(slot)
        } else {
            self.collided.get(s).copied()
        }
    }

    /// Whether `s` is interned under an id that `accept` takes. Compares the name
    /// only when `accept` said yes: a lookup that misses the list costs no arena read.
    pub(crate) fn accepts(&self, s: &str, accept: impl Fn(u32) -> bool) -> bool {
        let Some(slot) = self.by_hash.get(&self.keys.hash_one(s)) else {
            return false;
        };
        if accept(slot.id) && self.bytes(slot.id) == s.as_bytes() {
            return true;
        }
        !self.collided.is_empty() && self.collided.get(s).is_some_and(|c| accept(c.id))
    }

    /// The slot of `s`, adding it (untagged) if new; `None` when the arena is full.
    pub(crate) fn intern(&mut self, s: &str) -> Option<Slot> {
        if let Some(slot) = self.get(s) {
            return Some(slot);
        }
        let len = u16::try_from(s.len()).ok()?;
        if self.arena.len() + 2 + s.len() > ID_LIMIT {
            return None;
        }
        let slot = Slot {
            id: u32::try_from(self.arena.len()).ok()?,
            tag: NO_TAG,
        };
        self.arena.extend_from_slice(&len.to_le_bytes());
        self.arena.extend_from_slice(s.as_bytes());
        self.count += 1;
        match self.by_hash.entry(self.keys.hash_one(s)) {
            Entry::Vacant(v) => {
                v.insert(slot);
            }
            Entry::Occupied(_) => {
                self.collided.insert(s.into(), slot);
            }
        }
        Some(slot)
    }

    /// Sets the tag of an interned name; `false` if `s` is not interned.
    pub(crate) fn set_tag(&mut self, s: &str, tag: u32) -> bool {
        let h = self.keys.hash_one(s);
        let Some(slot) = self.by_hash.get_mut(&h) else {
            return false;
        };
        if name(&self.arena, slot.id) == s.as_bytes() {
            slot.tag = tag;
            return true;
        }
        match self.collided.get_mut(s) {
            Some(c) => {
                c.tag = tag;
                true
            }
            None => false,
        }
    }

    /// The name of an id this interner issued.
    pub(crate) fn resolve(&self, id: u32) -> &str {
        std::str::from_utf8(self.bytes(id)).unwrap_or_default()
    }

    fn bytes(&self, id: u32) -> &[u8] {
        name(&self.arena, id)
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }

    pub(crate) fn shrink_to_fit(&mut self) {
        self.arena.shrink_to_fit();
    }

    /// Bytes held by the arena and the hash index (capacity, not length).
    pub(crate) fn heap_bytes(&self) -> usize {
        // hashbrown: one control byte per bucket beside the 16-byte (u64, Slot) pair
        self.arena.capacity() + self.by_hash.capacity() * (16 + 1)
    }
}

/// The bytes of the name at `id`: a 2-byte little-endian length, then the name.
fn name(arena: &[u8], id: u32) -> &[u8] {
    let i = id as usize;
    let len = u16::from_le_bytes([arena[i], arena[i + 1]]) as usize;
    &arena[i + 2..i + 2 + len]
}

/// A hasher for keys that already are keyed SipHash outputs: passes the `u64` through
/// instead of hashing it a second time.
#[derive(Default)]
pub(crate) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are used; fold anything else so the hasher stays total.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_idempotent_resolves_and_tags() {
        let mut i = Interner::default();
        let a = i.intern("alice@example.com").unwrap();
        let b = i.intern("bob@example.com").unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(i.intern("alice@example.com"), Some(a));
        assert_eq!(i.get("bob@example.com"), Some(b));
        assert_eq!(i.get("Bob@example.com"), None);
        assert_eq!(i.resolve(a.id), "alice@example.com");
        assert_eq!(i.resolve(b.id), "bob@example.com");
        assert_eq!(i.len(), 2);
        assert!(i.set_tag("bob@example.com", 7));
        assert!(!i.set_tag("carol@example.com", 7));
        assert_eq!(i.get("bob@example.com").unwrap().tag, 7);
        assert_eq!(i.get("alice@example.com").unwrap().tag, NO_TAG);
        assert!(i.accepts("bob@example.com", |id| id == b.id));
        assert!(!i.accepts("bob@example.com", |id| id == a.id));
        assert!(!i.accepts("carol@example.com", |_| true));
        let e = i.intern("").unwrap();
        assert_eq!(i.resolve(e.id), "");
        assert_eq!(i.intern(&"x".repeat(70_000)), None);
    }

    /// Hashes only the length, so every two names of one length collide.
    struct ByLength;
    impl BuildHasher for ByLength {
        type Hasher = LengthHasher;
        fn build_hasher(&self) -> LengthHasher {
            LengthHasher(0)
        }
    }
    struct LengthHasher(u64);
    impl Hasher for LengthHasher {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0 += bytes.len() as u64;
        }
    }

    #[test]
    fn colliding_hashes_still_answer_exactly() {
        let mut i = Interner::with_keys(ByLength);
        let a = i.intern("alice@example.com").unwrap();
        let x = i.intern("alicE@example.com").unwrap();
        let y = i.intern("alicX@example.com").unwrap();
        assert_eq!(i.collided.len(), 2, "the hasher must really collide");
        assert_eq!(i.get("alice@example.com"), Some(a));
        assert_eq!(i.get("alicE@example.com"), Some(x));
        assert_eq!(i.intern("alicX@example.com"), Some(y));
        assert_eq!(i.get("alicZ@example.com"), None);
        assert_eq!(i.resolve(y.id), "alicX@example.com");
        assert!(i.set_tag("alicX@example.com", 3));
        assert_eq!(i.get("alicX@example.com").unwrap().tag, 3);
        assert_eq!(i.get("alice@example.com").unwrap().tag, NO_TAG);
        assert!(i.accepts("alicE@example.com", |id| id == x.id));
        assert!(!i.accepts("alicE@example.com", |id| id == a.id));
        assert!(!i.accepts("alicZ@example.com", |_| true));
    }
}
