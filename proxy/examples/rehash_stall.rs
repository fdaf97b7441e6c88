//! The longest single insert into a growing hash table, one table against 16 parts,
//! at the size the absorb table reaches under 80,000 REGISTER/s (Timer J keeps 32 s of
//! completed REGISTERs: 2.5 million). Entries are 64 bytes, as an absorb table slot
//! (8-byte fingerprint and 48-byte `Absorbed`, rounded up). See `engine/absorb.rs`,
//! `PARTS`.
//!
//! ```sh
//! cargo run --release -p permit-proxy --example rehash_stall
//! ```

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::time::Instant;

fn main() {
    let keys = RandomState::new();
    for parts in [1usize, 16] {
        let mut tables: Vec<HashMap<u64, [u64; 7]>> = (0..parts).map(|_| HashMap::new()).collect();
        let mut worst = 0u128;
        let started = Instant::now();
        for i in 0..3_000_000u64 {
            let fp = keys.hash_one(i);
            let table = &mut tables[(fp >> 32) as usize % parts];
            let t = Instant::now();
            table.insert(fp, [i; 7]);
            worst = worst.max(t.elapsed().as_micros());
        }
        println!(
            "{parts:>2} part(s): 3,000,000 inserts in {} ms, the longest single insert {worst} µs",
            started.elapsed().as_millis()
        );
    }
}
