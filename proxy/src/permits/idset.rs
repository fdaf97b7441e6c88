//! A compact set of `u32` ids for one callee's list: open addressing with linear
//! probing in one boxed slice, sized to the list (load at most 3/4, any length, not a
//! power of two), so a list of 100 entries takes 134 slots = 536 bytes and a lookup is
//! one multiply and a few adjacent loads. Removal rebuilds the set (the table does it
//! for a whole edit at once), so no tombstones are needed.

/// The empty slot; ids never take this value (see `intern::ID_LIMIT`).
const EMPTY: u32 = u32::MAX;

#[derive(Debug, Clone, Default)]
pub(crate) struct IdSet {
    slots: Box<[u32]>,
    len: u32,
}

/// Slots for `n` ids: strictly more than `n` (a probe always meets an empty slot) and
/// a load of at most 3/4.
fn capacity_for(n: usize) -> usize {
    if n == 0 { 0 } else { n + n / 3 + 1 }
}

/// Home slot of `v` in a table of `cap` slots: Fibonacci hashing spreads the dense ids,
/// the multiply-shift maps the 32-bit hash onto `0..cap` without a division.
fn home(v: u32, cap: usize) -> usize {
    let h = (u64::from(v).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32;
    ((u64::from(h) * cap as u64) >> 32) as usize
}

impl IdSet {
    /// A set holding `ids` (duplicates collapse).
    pub(crate) fn from_ids(ids: &[u32]) -> Self {
        let mut set = Self {
            slots: vec![EMPTY; capacity_for(ids.len())].into_boxed_slice(),
            len: 0,
        };
        for &v in ids {
            set.insert_unchecked(v);
        }
        set
    }

    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }

    pub(crate) fn contains(&self, v: u32) -> bool {
        let cap = self.slots.len();
        if cap == 0 {
            return false;
        }
        let mut i = home(v, cap);
        loop {
            let s = self.slots[i];
            if s == v {
                return true;
            }
            if s == EMPTY {
                return false;
            }
            i += 1;
            if i == cap {
                i = 0;
            }
        }
    }

    /// Adds `v`; `false` if it was there. Grows by half when the load would pass 3/4.
    pub(crate) fn insert(&mut self, v: u32) -> bool {
        debug_assert_ne!(v, EMPTY);
        if self.contains(v) {
            return false;
        }
        let n = self.len() + 1;
        if 4 * n > 3 * self.slots.len() {
            let mut ids: Vec<u32> = self.iter().collect();
            ids.reserve(n / 2 + 1);
            ids.push(v);
            let mut grown = Self {
                slots: vec![EMPTY; capacity_for(n + n / 2)].into_boxed_slice(),
                len: 0,
            };
            for id in ids {
                grown.insert_unchecked(id);
            }
            *self = grown;
            return true;
        }
        self.insert_unchecked(v)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots.iter().copied().filter(|&s| s != EMPTY)
    }

    /// Heap bytes of the slot array.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.len() * 4
    }

    /// Inserts into a table known to have room.
    fn insert_unchecked(&mut self, v: u32) -> bool {
        let cap = self.slots.len();
        let mut i = home(v, cap);
        loop {
            let s = self.slots[i];
            if s == v {
                return false;
            }
            if s == EMPTY {
                self.slots[i] = v;
                self.len += 1;
                return true;
            }
            i += 1;
            if i == cap {
                i = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_contains_remove() {
        let mut s = IdSet::default();
        assert!(!s.contains(0));
        for v in 0..1000u32 {
            assert!(s.insert(v * 7), "{v}");
            assert!(!s.insert(v * 7));
            assert!(4 * s.len() <= 3 * s.slots.len());
        }
        assert_eq!(s.len(), 1000);
        for v in 0..7000u32 {
            assert_eq!(s.contains(v), v % 7 == 0, "{v}");
        }
        let mut all: Vec<u32> = s.iter().collect();
        all.sort_unstable();
        assert_eq!(all.len(), 1000);
        assert_eq!(all[..3], [0, 7, 14]);
    }

    #[test]
    fn exact_sizes_and_duplicates() {
        let s = IdSet::from_ids(&(0..100).collect::<Vec<_>>());
        assert_eq!(s.heap_bytes(), 134 * 4);
        let d = IdSet::from_ids(&[5, 5, 9]);
        assert_eq!(d.len(), 2);
        assert!(d.contains(5) && d.contains(9) && !d.contains(6));
        // The high ids the table uses for domains are ordinary members.
        let h = IdSet::from_ids(&[1 << 31, (1 << 31) | 5]);
        assert!(h.contains((1 << 31) | 5) && !h.contains(5));
        assert!(IdSet::from_ids(&[]).iter().next().is_none());
    }
}
