//! How long one deposit's write takes in the SQLite mailbox (`synchronous=FULL`: an
//! fsync per item), as the deposit writer runs it: [`Mailbox::deposit`] of a
//! `SIZE`-byte item, quotas checked, committed. Before the deposit writer this was
//! how long the engine's thread stood still for each deposit.
//!
//! ```sh
//! cargo run --release -p permit-proxy --example deposit_write -- DIR [COUNT] [SIZE]
//! ```
//! DIR: an empty directory on the disk to measure (the mailbox file is created there).
//! Prints the mean, the median and the 99th percentile.

#![allow(clippy::cast_precision_loss)]

use std::time::Instant;

use permit_proxy::mailbox::sqlite::SqliteItems;
use permit_proxy::mailbox::{Item, ItemId, Mailbox, Quotas};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(dir) = args.get(1) else {
        eprintln!("usage: deposit_write DIR [COUNT] [SIZE]");
        std::process::exit(2);
    };
    let count: usize = args.get(2).map_or(500, |a| a.parse().expect("count"));
    let size: usize = args.get(3).map_or(1_000, |a| a.parse().expect("size"));
    let items = SqliteItems::open(std::path::Path::new(dir), u64::MAX).expect("open");
    let quotas = Quotas {
        callee_items: u64::MAX,
        callee_bytes: u64::MAX,
        caller_items: u64::MAX,
        caller_bytes: u64::MAX,
        ..Quotas::default()
    };
    let mut mailbox = Mailbox::new(Box::new(items), quotas);
    let mut took = Vec::with_capacity(count);
    for i in 0..count {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let owner = format!("u{}@localhost", i % 100);
        let item = Item::new(
            ItemId(id),
            &owner,
            "alice@localhost",
            "text/plain",
            "",
            vec![b'x'; size],
            1_000,
            2_000_000_000,
        );
        let t = Instant::now();
        mailbox.deposit(&item, 1_000).expect("deposit");
        took.push(t.elapsed().as_secs_f64() * 1e6);
    }
    took.sort_by(f64::total_cmp);
    let mean = took.iter().sum::<f64>() / count as f64;
    let at = |per_mille: usize| took[(count * per_mille / 1_000).min(count - 1)];
    println!(
        "deposits={count} size={size} mean_us={mean:.0} p50_us={:.0} p99_us={:.0} max_us={:.0}",
        at(500),
        at(990),
        took[count - 1]
    );
}
