//! Loopback ports for end-to-end tests that start real peers (tests run in parallel,
//! and a peer often opens ports next to its own).
//!
//! The ports come from below the kernel's ephemeral range
//! (`net.ipv4.ip_local_port_range`). A port picked inside that range is free when it
//! is checked, but before the test's server binds it the kernel may hand the same
//! number to any outgoing connection as its source port (a database client, a peer's
//! own socket), and the server then fails with "Address already in use". Below the
//! range only an explicit bind takes a port.

use std::net::UdpSocket;
use std::sync::Mutex;

/// Lowest port handed out: above the registered services a test machine may run.
const LOWEST: u16 = 10_000;

/// The kernel's ephemeral range, `(low, high)`; Linux's default when unreadable.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut it = text.split_whitespace().map(str::parse::<u16>);
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .unwrap_or((32_768, 60_999))
}

/// The ports to pick from, `lo..hi`: below the ephemeral range when there is room
/// (at least 1,000 ports), else above it.
fn pool(spread: u16) -> (u16, u16) {
    let (low, high) = ephemeral_range();
    if low.saturating_sub(spread) >= LOWEST + 1_000 {
        (LOWEST, low - spread)
    } else {
        (high.saturating_add(1).max(LOWEST), u16::MAX - spread)
    }
}

/// A loopback port on `host` that this process never handed out before, nor within
/// `spread` of one it handed out, outside the kernel's ephemeral range, free for UDP
/// on `host`, and for which `free(port)` holds: the caller binds there what its peers
/// will open (TCP on the port, a port or two above it).
///
/// # Panics
/// When no port of the pool passes.
pub fn free_port_with(host: &str, spread: u16, free: impl Fn(u16) -> bool) -> u16 {
    // The next candidate; starts at a place set by the process id, so test
    // processes that run at the same time start far apart.
    static NEXT: Mutex<Option<u32>> = Mutex::new(None);
    let (lo, hi) = pool(spread);
    let size = u32::from(hi.saturating_sub(lo)).max(1);
    let step = u32::from(spread) + 1;
    let mut next = NEXT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut at = next.unwrap_or_else(|| (std::process::id().wrapping_mul(2_654_435_761)) % size);
    for _ in 0..size / step {
        let port = lo + u16::try_from(at % size).expect("below the pool's size");
        at = (at + step) % size;
        if UdpSocket::bind((host, port)).is_ok() && free(port) {
            *next = Some(at);
            return port;
        }
    }
    panic!("no free loopback port in {lo}..{hi}");
}

#[cfg(test)]
mod tests {
    use super::{ephemeral_range, free_port_with};
    use std::net::TcpListener;

    #[test]
    fn ports_handed_out_are_apart_outside_the_ephemeral_range_and_pass_the_check() {
        let (low, high) = ephemeral_range();
        let ports: Vec<u16> = (0..20)
            .map(|_| {
                free_port_with("127.0.0.1", 2, |p| {
                    TcpListener::bind(("127.0.0.1", p)).is_ok() && p % 2 == 0
                })
            })
            .collect();
        for (i, a) in ports.iter().enumerate() {
            assert_eq!(a % 2, 0, "the check was applied");
            assert!(!(low..=high).contains(a), "{a} is in {low}..={high}");
            for b in &ports[i + 1..] {
                assert!(a.abs_diff(*b) > 2, "{a} and {b} are too close");
            }
        }
    }
}
