//! Nonce-count replay protection (RFC 7616 §3.4 `nc`, §5.4; RFC 3261 §26.4.1: "The
//! nonce-count mechanism should be used for replay protection").
//!
//! A UAC counts the requests it authenticates with one nonce; a request whose count
//! is not higher than the highest seen for that nonce is a replay. Memory is bounded:
//! when full, the nonce first seen longest ago is forgotten. Nonces are issued in
//! time order and expire after their lifetime, so that one is also the closest to
//! expiry; size the capacity for (authenticated nonces per second × nonce lifetime)
//! so that nothing is forgotten while it could still be replayed.
//!
//! Retransmissions of a request carry the same count; the transaction layer absorbs
//! them before authentication (RFC 3261 §17.2.3), so they never reach this table.

use std::collections::{BTreeMap, VecDeque};

/// The highest nonce count seen per nonce, for at most `capacity` nonces.
#[derive(Debug, Clone)]
pub struct NonceCounts {
    capacity: usize,
    highest: BTreeMap<String, u32>,
    /// Nonces in the order first seen; the front is evicted first.
    order: VecDeque<String>,
}

impl NonceCounts {
    /// A table for `capacity` nonces (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            highest: BTreeMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Records `nc` for `nonce`. `false` when `nc` is not higher than the highest
    /// count already seen for this nonce: a replay, and nothing is recorded.
    pub fn accept(&mut self, nonce: &str, nc: u32) -> bool {
        if let Some(seen) = self.highest.get_mut(nonce) {
            if nc <= *seen {
                return false;
            }
            *seen = nc;
            return true;
        }
        while self.highest.len() >= self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.highest.remove(&oldest);
        }
        self.highest.insert(nonce.to_owned(), nc);
        self.order.push_back(nonce.to_owned());
        true
    }

    /// The highest count seen for `nonce`, if it is remembered.
    pub fn highest(&self, nonce: &str) -> Option<u32> {
        self.highest.get(nonce).copied()
    }

    /// Nonces remembered.
    pub fn len(&self) -> usize {
        self.highest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.highest.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::NonceCounts;

    #[test]
    fn same_count_is_a_replay_and_higher_counts_pass() {
        let mut t = NonceCounts::new(4);
        assert!(t.accept("n", 1));
        assert!(!t.accept("n", 1));
        assert!(t.accept("n", 2));
        assert!(t.accept("n", 7), "gaps are allowed: requests may be lost");
        assert!(!t.accept("n", 3), "lower than the highest");
        assert!(!t.accept("n", 7));
        assert_eq!(t.highest("n"), Some(7));
        assert!(t.accept("m", 1), "counts are per nonce");
    }

    #[test]
    fn the_oldest_nonce_is_evicted_at_capacity() {
        let mut t = NonceCounts::new(2);
        assert!(t.accept("a", 1));
        assert!(t.accept("b", 1));
        assert!(
            t.accept("a", 2),
            "updating does not refresh age or grow the table"
        );
        assert!(t.accept("c", 1));
        assert_eq!(t.len(), 2);
        assert_eq!(t.highest("a"), None, "a was first seen first");
        assert_eq!(t.highest("b"), Some(1));
        assert!(!t.accept("b", 1), "b is still protected");
        assert!(
            t.accept("a", 2),
            "forgotten: accepted again (the documented bound)"
        );
        assert_eq!(t.highest("b"), None);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn memory_stays_bounded_under_a_flood() {
        let mut t = NonceCounts::new(100);
        for i in 0..10_000 {
            assert!(t.accept(&format!("n{i}"), 1));
            assert!(t.len() <= 100);
        }
        assert_eq!(t.order.len(), 100);
        assert!(t.highest("n9999").is_some());
        assert!(t.highest("n9899").is_none());
    }

    #[test]
    fn zero_capacity_means_one() {
        let mut t = NonceCounts::new(0);
        assert_eq!(t.capacity(), 1);
        assert!(t.accept("a", 1));
        assert!(!t.accept("a", 1));
        assert!(t.accept("b", 1));
        assert!(t.accept("a", 1));
        assert!(!t.is_empty());
    }
}
