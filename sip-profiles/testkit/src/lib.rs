//! Deterministic test support for the sans-IO engines of this workspace.
//!
//! Nothing here is used in production code. Engines in `sip-core` take time as an
//! argument and randomness from an injected rng; this crate supplies both in a form
//! that tests can reproduce exactly:
//!
//! - [`VirtualClock`]: an `Instant` that only moves when the test says so, so timers
//!   can be asserted at exact virtual instants.
//! - [`seeded_rng`]: a [`StdRng`] from a `u64` seed.
//! - [`SimNetwork`]: datagrams between two endpoints with per-direction delay, jitter
//!   (which reorders), duplication and seeded loss, driven by the virtual clock.
//! - [`free_port_with`]: loopback ports for the end-to-end suites that start real peers.

mod clock;
mod net;
mod ports;

pub use clock::{VirtualClock, earliest};
pub use net::{Datagram, Endpoint, LinkConfig, LinkStats, SimNetwork};
pub use ports::free_port_with;
/// The rand version the seeded rng comes from, for `Rng` methods in tests.
pub use rand;
pub use rand::rngs::StdRng;

use rand::SeedableRng;

/// A reproducible rng: the same `seed` gives the same sequence on every run.
pub fn seeded_rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

#[cfg(test)]
mod tests {
    use super::seeded_rng;
    use rand::Rng;

    #[test]
    fn same_seed_same_sequence() {
        let a: Vec<u32> = (0..8)
            .map({
                let mut r = seeded_rng(7);
                move |_| r.random()
            })
            .collect();
        let b: Vec<u32> = (0..8)
            .map({
                let mut r = seeded_rng(7);
                move |_| r.random()
            })
            .collect();
        let c: Vec<u32> = (0..8)
            .map({
                let mut r = seeded_rng(8);
                move |_| r.random()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
