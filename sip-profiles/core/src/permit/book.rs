//! The callee's memory of the tokens the proxy told it about (in the load-query
//! OPTIONS or the forwarded INVITE): an INVITE is accepted only with a token from
//! this book, for the caller and Call-ID it was told for, once, before it expires.
//!
//! The UA does not hold the proxy key and does not check MACs: it compares the
//! presented string with the one it was told, in constant time. Memory is bounded:
//! at capacity the oldest entry goes, and expired entries are purged whenever the
//! book is touched with the current time.

use std::collections::{HashMap, VecDeque};

use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use super::token::MAX_TOKEN_LEN;

/// Default number of tokens a [`TokenBook`] remembers.
pub const DEFAULT_BOOK_CAPACITY: usize = 4096;
/// Longest caller AOR or Call-ID the book stores (bytes).
pub const MAX_BOOK_FIELD_LEN: usize = 1024;

/// Why the book refused to store a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BookInsertError {
    /// Empty or longer than [`MAX_TOKEN_LEN`], or a caller/Call-ID empty or longer
    /// than [`MAX_BOOK_FIELD_LEN`].
    #[error("permit token, caller or Call-ID has a bad length")]
    BadLength,
    /// The expiry is not after the current time.
    #[error("permit token already expired")]
    Expired,
}

/// Why the book refused a presented token. A UA answers each with 403 Forbidden and
/// logs the source (never the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BookError {
    /// No token was told for this Call-ID, or the presented one matches none of them
    /// (forged, for another call, or purged).
    #[error("unknown permit token")]
    Unknown,
    /// The token matches, but was told for another caller.
    #[error("permit token told for another caller")]
    WrongCaller,
    /// The token matches but its expiry has passed.
    #[error("permit token expired")]
    Expired,
    /// The token was already accepted once: a replay.
    #[error("permit token already used")]
    Used,
}

impl BookError {
    /// The SIP status a UA answers the INVITE with.
    pub fn status_code(self) -> u16 {
        403
    }
}

struct Entry {
    seq: u64,
    token: Box<[u8]>,
    caller: Box<str>,
    expires: u64,
    used: bool,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.token.zeroize();
    }
}

/// Tokens the proxy told this UA, keyed by Call-ID. `Debug` shows only counts.
pub struct TokenBook {
    capacity: usize,
    by_call: HashMap<Box<str>, Vec<Entry>>,
    /// Insertion order (sequence number, Call-ID), oldest first, for eviction.
    order: VecDeque<(u64, Box<str>)>,
    next_seq: u64,
    len: usize,
    /// No entry expires before this (unix seconds): purging scans only from then on.
    earliest_expiry: u64,
}

impl std::fmt::Debug for TokenBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBook")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Default for TokenBook {
    fn default() -> Self {
        Self::new(DEFAULT_BOOK_CAPACITY)
    }
}

impl TokenBook {
    /// A book that remembers at most `capacity` tokens (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            by_call: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            len: 0,
            earliest_expiry: u64::MAX,
        }
    }

    /// Number of tokens remembered (used ones included, until they expire).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Remembers `token` (the wire string the proxy sent) for `caller` and `call_id`
    /// until `expires` (unix seconds). Purges expired entries first; when the book
    /// is full the oldest entry is evicted. Telling the same token for the same call
    /// twice (a retransmitted load query) keeps one entry.
    pub fn insert(
        &mut self,
        token: &str,
        caller: &str,
        call_id: &str,
        expires: u64,
        unix_now: u64,
    ) -> Result<(), BookInsertError> {
        if token.is_empty()
            || token.len() > MAX_TOKEN_LEN
            || caller.is_empty()
            || caller.len() > MAX_BOOK_FIELD_LEN
            || call_id.is_empty()
            || call_id.len() > MAX_BOOK_FIELD_LEN
        {
            return Err(BookInsertError::BadLength);
        }
        if expires <= unix_now {
            return Err(BookInsertError::Expired);
        }
        self.purge_expired(unix_now);
        if let Some(entries) = self.by_call.get(call_id)
            && entries
                .iter()
                .any(|e| bool::from(e.token.ct_eq(token.as_bytes())) && *e.caller == *caller)
        {
            return Ok(());
        }
        while self.len >= self.capacity {
            self.evict_oldest();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let call_id: Box<str> = call_id.into();
        self.order.push_back((seq, call_id.clone()));
        self.by_call.entry(call_id).or_default().push(Entry {
            seq,
            token: token.as_bytes().into(),
            caller: caller.into(),
            expires,
            used: false,
        });
        self.len += 1;
        self.earliest_expiry = self.earliest_expiry.min(expires);
        Ok(())
    }

    /// Checks a presented token for an INVITE from `caller` with `call_id` at
    /// `unix_now`. Succeeds once per token; a second presentation is
    /// [`BookError::Used`]. Every stored token of the Call-ID is compared in
    /// constant time, so the time taken does not depend on how much of a guess was
    /// right.
    pub fn accept(
        &mut self,
        presented: &str,
        caller: &str,
        call_id: &str,
        unix_now: u64,
    ) -> Result<(), BookError> {
        self.purge_expired_keep_call(unix_now, call_id);
        let Some(entries) = self.by_call.get_mut(call_id) else {
            return Err(BookError::Unknown);
        };
        // The first entry with this token, preferring one told for this caller.
        let mut found: Option<usize> = None;
        for (i, entry) in entries.iter().enumerate() {
            let same: bool = entry.token.ct_eq(presented.as_bytes()).into();
            if same
                && found.is_none_or(|f| *entries[f].caller != *caller && *entry.caller == *caller)
            {
                found = Some(i);
            }
        }
        let Some(i) = found else {
            return Err(BookError::Unknown);
        };
        let entry = &mut entries[i];
        if unix_now >= entry.expires {
            let seq = entry.seq;
            self.remove(call_id, seq);
            if let Some(pos) = self.order.iter().position(|(s, _)| *s == seq) {
                self.order.remove(pos);
            }
            return Err(BookError::Expired);
        }
        if *entry.caller != *caller {
            return Err(BookError::WrongCaller);
        }
        if entry.used {
            return Err(BookError::Used);
        }
        entry.used = true;
        Ok(())
    }

    /// Drops every entry whose expiry has passed.
    pub fn purge_expired(&mut self, unix_now: u64) {
        self.purge_expired_keep_call(unix_now, "");
    }

    /// Purges expired entries except those of `keep` (so that `accept` can still say
    /// `Expired` rather than `Unknown` for its own call).
    fn purge_expired_keep_call(&mut self, unix_now: u64, keep: &str) {
        if unix_now < self.earliest_expiry {
            return;
        }
        let before = self.len;
        let mut earliest = u64::MAX;
        self.by_call.retain(|call_id, entries| {
            if &**call_id != keep {
                entries.retain(|e| unix_now < e.expires);
            }
            for e in entries.iter() {
                earliest = earliest.min(e.expires);
            }
            !entries.is_empty()
        });
        self.earliest_expiry = earliest;
        self.len = self.by_call.values().map(Vec::len).sum();
        if self.len != before {
            let by_call = &self.by_call;
            self.order.retain(|(seq, call_id)| {
                by_call
                    .get(call_id)
                    .is_some_and(|entries| entries.iter().any(|e| e.seq == *seq))
            });
        }
    }

    fn evict_oldest(&mut self) {
        if let Some((seq, call_id)) = self.order.pop_front() {
            self.remove(&call_id, seq);
        } else {
            // `order` and `by_call` agree by construction; resynchronise if not.
            self.by_call.clear();
            self.len = 0;
        }
    }

    /// Removes one entry from the map (the caller keeps `order` in step).
    fn remove(&mut self, call_id: &str, seq: u64) {
        if let Some(entries) = self.by_call.get_mut(call_id) {
            let before = entries.len();
            entries.retain(|e| e.seq != seq);
            self.len -= before - entries.len();
            if entries.is_empty() {
                self.by_call.remove(call_id);
            }
        }
    }
}
