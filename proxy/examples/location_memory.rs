//! Heap bytes per registration binding in the location service, indexes included.
//!
//! ```text
//! cargo run --release -p permit-proxy --example location_memory -- [BINDINGS]
//! ```
//!
//! Registers BINDINGS AORs (default 100,000) with one binding each through the registrar
//! (`registrar::handle_register`, as the engine calls it, with a phone's REGISTER: a
//! 40-byte Contact with an IP literal and port, a 36-byte Call-ID, the source address),
//! into a `Location` whose store discards the
//! writes (the memory of the storage backend is not the location's). The figure is the
//! growth of the resident set (VmRSS) divided by BINDINGS: it includes the AOR keys, the
//! by-address index, the hash tables' spare capacity and the allocator's overhead (the
//! workspace forbids `unsafe`, so no counting allocator). Use 1,000,000 for a stable
//! figure.

#![allow(clippy::cast_precision_loss)]

use std::net::SocketAddr;
use std::sync::Arc;

use permit_proxy::location::{Binding, Location};
use permit_proxy::registrar::{Registered, RegistrarConfig, handle_register};
use permit_proxy::store::{LocationStore, StoreError};
use sip_core::message::Message;
use sip_core::transport::Transport;

/// The allocator of the `permit-proxy` binary (main.rs), so that the figure is the one
/// the running proxy has.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    fn purge_expired(&mut self, _: u64, _: &[Arc<str>]) -> Result<(), StoreError> {
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
    let cfg = RegistrarConfig::default();
    for i in 0..n {
        let ip = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let port = 5060 + (i % 1000) as u16;
        let addr = SocketAddr::from((ip, port));
        let user = format!("u{i:07}");
        let domain = format!("tenant{}.example.com", i % 500);
        // The REGISTER a phone sends, through the registrar as the engine calls it.
        let register = format!(
            "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/UDP {addr};branch=z9hG4bK{i:x}\r\n\
From: <sip:{user}@{domain}>;tag={i:x}\r\nTo: <sip:{user}@{domain}>\r\n\
Call-ID: {i:08x}-5f1c-4e2a-9d3b-{i:012x}\r\nCSeq: 1 REGISTER\r\n\
Contact: <sip:{user}@{addr};transport=udp>\r\nExpires: 3600\r\nMax-Forwards: 70\r\n\
Content-Length: 0\r\n\r\n"
        );
        let msg = Message::parse(register.into()).expect("parse");
        let aor = format!("{user}@{domain}");
        let r = handle_register(
            &cfg,
            &mut location,
            &aor,
            &msg,
            (Transport::Udp, addr),
            1_800_000_000,
        );
        assert!(matches!(r, Registered::Ok(..)), "{i}");
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
