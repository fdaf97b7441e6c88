//! Heap bytes per registration binding in the location service, indexes included.
//!
//! ```text
//! cargo run --release -p permit-proxy --example location_memory -- [BINDINGS]
//! ```
//!
//! Registers BINDINGS AORs (default 100,000) with one binding each, as a phone's
//! REGISTER makes them (a 40-byte Contact with an IP literal and port, a 36-byte
//! Call-ID, the REGISTER's source address), into a `Location` whose store discards the
//! writes (the memory of the storage backend is not the location's). The figure is the
//! growth of the resident set (VmRSS) divided by BINDINGS: it includes the AOR keys, the
//! by-address index, the hash tables' spare capacity and the allocator's overhead (the
//! workspace forbids `unsafe`, so no counting allocator). Use 1,000,000 for a stable
//! figure.

#![allow(clippy::cast_precision_loss)]

use std::net::SocketAddr;

use permit_proxy::location::{Binding, CallIdHash, Location};
use permit_proxy::store::{LocationStore, StoreError};
use sip_core::transport::Transport;

/// Resident set in KiB (VmRSS from /proc/self/status).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A store that keeps nothing.
struct Discard;

impl LocationStore for Discard {
    fn load_all(&mut self) -> Result<Vec<(String, Vec<Binding>)>, StoreError> {
        Ok(Vec::new())
    }
    fn put(&mut self, _: &str, _: &[Binding]) -> Result<(), StoreError> {
        Ok(())
    }
    fn purge_expired(&mut self, _: u64) -> Result<(), StoreError> {
        Ok(())
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let mut location = Location::open(Box::new(Discard)).expect("open");
    let before = rss_kib();
    for i in 0..n {
        let ip = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let port = 5060 + (i % 1000) as u16;
        let addr = SocketAddr::from((ip, port));
        let aor = format!("u{i:07}@tenant{}.example.com", i % 500);
        let binding = Binding {
            contact: format!("sip:u{i:07}@{}:{port};transport=udp", addr.ip()).into(),
            expires_at: 1_800_003_600,
            q: 1000,
            call_id: CallIdHash::of(&format!("{i:08x}-5f1c-4e2a-9d3b-{i:012x}")),
            cseq: 1,
            path: Vec::new(),
            source: Some((Transport::Udp, addr)),
            max_calls: None,
            load_query: true,
        };
        location.replace(&aor, vec![binding]).expect("replace");
    }
    let after = rss_kib();
    let per = (after - before) as f64 * 1024.0 / n as f64;
    println!(
        "bindings={n} rss_growth_kib={} bytes_per_binding={per:.0} size_of::<Binding>={}",
        after - before,
        std::mem::size_of::<Binding>()
    );
    assert_eq!(location.counts(), (n, n));
}
