//! A simulated datagram network between two endpoints, driven by virtual time.
//!
//! Each direction has its own [`LinkConfig`]: a base delay, a uniform random jitter
//! on top of it (datagrams sent close together can arrive out of order), a duplication
//! probability and a loss probability. All randomness comes from one seeded rng, so a
//! seed replays the same losses, delays and reorderings.
//!
//! Driving loop: `send` what the engines transmit, advance the clock to the earliest
//! of the engines' and the network's `poll_timeout`, then `poll_deliver` until `None`.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use rand::rngs::StdRng;

use crate::seeded_rng;

/// One end of the simulated link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    A,
    B,
}

impl Endpoint {
    /// The other end.
    #[must_use]
    pub fn peer(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::A => 0,
            Self::B => 1,
        }
    }
}

/// Behaviour of one direction of the link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` per datagram; reorders datagrams
    /// sent less than `jitter` apart.
    pub jitter: Duration,
    /// Probability in `0.0..=1.0` that a datagram is dropped.
    pub loss: f64,
    /// Probability in `0.0..=1.0` that a delivered datagram arrives twice (each copy
    /// with its own jitter).
    pub duplicate: f64,
}

impl Default for LinkConfig {
    /// 10 ms one way, no jitter, no loss, no duplication.
    fn default() -> Self {
        Self::perfect(Duration::from_millis(10))
    }
}

impl LinkConfig {
    /// A link that delivers everything, in order, after `delay`.
    pub const fn perfect(delay: Duration) -> Self {
        Self {
            delay,
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
        }
    }

    /// The same link, dropping each datagram with probability `loss`.
    #[must_use]
    pub fn with_loss(mut self, loss: f64) -> Self {
        assert!(
            (0.0..=1.0).contains(&loss),
            "loss {loss} is not a probability"
        );
        self.loss = loss;
        self
    }

    /// The same link, adding up to `jitter` of random delay per datagram.
    #[must_use]
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// The same link, duplicating each datagram with probability `duplicate`.
    #[must_use]
    pub fn with_duplication(mut self, duplicate: f64) -> Self {
        assert!(
            (0.0..=1.0).contains(&duplicate),
            "duplicate {duplicate} is not a probability"
        );
        self.duplicate = duplicate;
        self
    }
}

/// Counters for one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams handed to [`SimNetwork::send`].
    pub sent: u64,
    /// Datagrams dropped by the loss draw.
    pub lost: u64,
    /// Extra copies made by the duplication draw.
    pub duplicated: u64,
    /// Datagrams handed out by [`SimNetwork::poll_deliver`].
    pub delivered: u64,
}

/// A datagram arriving at `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram<M> {
    pub from: Endpoint,
    pub to: Endpoint,
    pub sent_at: Instant,
    pub arrives_at: Instant,
    pub payload: M,
}

/// In flight, ordered by arrival then by send order (so equal arrivals keep FIFO).
struct Flight<M> {
    seq: u64,
    datagram: Datagram<M>,
}

impl<M> Flight<M> {
    fn key(&self) -> (Instant, u64) {
        (self.datagram.arrives_at, self.seq)
    }
}

impl<M> PartialEq for Flight<M> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl<M> Eq for Flight<M> {}

impl<M> PartialOrd for Flight<M> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<M> Ord for Flight<M> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// Two endpoints and the datagrams in flight between them. Generic over the payload;
/// SIP tests carry [`Bytes`].
pub struct SimNetwork<M = Bytes> {
    links: [LinkConfig; 2],
    stats: [LinkStats; 2],
    rng: StdRng,
    seq: u64,
    in_flight: BinaryHeap<Reverse<Flight<M>>>,
}

impl<M: Clone> SimNetwork<M> {
    /// A network whose randomness is drawn from `seed`.
    pub fn new(seed: u64, a_to_b: LinkConfig, b_to_a: LinkConfig) -> Self {
        Self {
            links: [a_to_b, b_to_a],
            stats: [LinkStats::default(); 2],
            rng: seeded_rng(seed),
            seq: 0,
            in_flight: BinaryHeap::new(),
        }
    }

    /// The same `link` in both directions.
    pub fn symmetric(seed: u64, link: LinkConfig) -> Self {
        Self::new(seed, link, link)
    }

    /// Changes the behaviour of the direction starting at `from` (e.g. a partition).
    pub fn set_link(&mut self, from: Endpoint, link: LinkConfig) {
        self.links[from.index()] = link;
    }

    /// Sends `payload` from `from` to its peer at `now`. Returns whether at least one
    /// copy will arrive.
    pub fn send(&mut self, now: Instant, from: Endpoint, payload: M) -> bool {
        let link = self.links[from.index()];
        self.stats[from.index()].sent += 1;
        if link.loss > 0.0 && self.rng.random_bool(link.loss) {
            self.stats[from.index()].lost += 1;
            return false;
        }
        if link.duplicate > 0.0 && self.rng.random_bool(link.duplicate) {
            self.stats[from.index()].duplicated += 1;
            self.enqueue(now, from, link, payload.clone());
        }
        self.enqueue(now, from, link, payload);
        true
    }

    fn enqueue(&mut self, now: Instant, from: Endpoint, link: LinkConfig, payload: M) {
        let jitter = if link.jitter.is_zero() {
            Duration::ZERO
        } else {
            let nanos = u64::try_from(link.jitter.as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(self.rng.random_range(0..=nanos))
        };
        self.seq += 1;
        let datagram = Datagram {
            from,
            to: from.peer(),
            sent_at: now,
            arrives_at: now + link.delay + jitter,
            payload,
        };
        self.in_flight.push(Reverse(Flight {
            seq: self.seq,
            datagram,
        }));
    }

    /// When the next datagram arrives, if any is in flight.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.in_flight
            .peek()
            .map(|Reverse(f)| f.datagram.arrives_at)
    }

    /// The next datagram that has arrived by `now`, in arrival order.
    pub fn poll_deliver(&mut self, now: Instant) -> Option<Datagram<M>> {
        if self.poll_timeout()? > now {
            return None;
        }
        let Reverse(flight) = self.in_flight.pop()?;
        self.stats[flight.datagram.from.index()].delivered += 1;
        Some(flight.datagram)
    }

    /// Number of datagrams (copies included) still in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Counters for the direction starting at `from`.
    pub fn stats(&self, from: Endpoint) -> LinkStats {
        self.stats[from.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::{Endpoint, LinkConfig, SimNetwork};
    use crate::VirtualClock;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    fn drain(
        net: &mut SimNetwork<u32>,
        clock: &mut VirtualClock,
    ) -> Vec<(Endpoint, u32, Duration)> {
        let mut out = Vec::new();
        while let Some(at) = net.poll_timeout() {
            clock.advance_to(at.max(clock.now()));
            while let Some(d) = net.poll_deliver(clock.now()) {
                out.push((d.to, d.payload, clock.elapsed()));
            }
        }
        out
    }

    #[test]
    fn perfect_link_delivers_in_order_after_delay() {
        let mut clock = VirtualClock::new();
        let mut net = SimNetwork::new(
            1,
            LinkConfig::perfect(10 * MS),
            LinkConfig::perfect(30 * MS),
        );
        net.send(clock.now(), Endpoint::A, 1);
        net.send(clock.now(), Endpoint::B, 2);
        net.send(clock.now(), Endpoint::A, 3);
        assert_eq!(
            net.poll_deliver(clock.now()),
            None,
            "nothing arrives before the delay"
        );
        let got = drain(&mut net, &mut clock);
        assert_eq!(
            got,
            vec![
                (Endpoint::B, 1, 10 * MS),
                (Endpoint::B, 3, 10 * MS),
                (Endpoint::A, 2, 30 * MS)
            ]
        );
        assert_eq!(net.stats(Endpoint::A).delivered, 2);
        assert_eq!(net.stats(Endpoint::B).delivered, 1);
    }

    #[test]
    fn total_loss_drops_everything() {
        let clock = VirtualClock::new();
        let mut net = SimNetwork::symmetric(3, LinkConfig::default().with_loss(1.0));
        for i in 0..100 {
            assert!(!net.send(clock.now(), Endpoint::A, i));
        }
        assert_eq!(net.in_flight(), 0);
        assert_eq!(net.stats(Endpoint::A).lost, 100);
    }

    #[test]
    fn loss_and_jitter_are_seeded() {
        let run = |seed| {
            let mut clock = VirtualClock::new();
            let link = LinkConfig::perfect(5 * MS)
                .with_loss(0.3)
                .with_jitter(20 * MS)
                .with_duplication(0.1);
            let mut net = SimNetwork::symmetric(seed, link);
            for i in 0..200 {
                net.send(clock.now(), Endpoint::A, i);
                clock.advance(MS);
            }
            drain(&mut net, &mut clock)
        };
        let a = run(42);
        assert_eq!(a, run(42));
        assert_ne!(a, run(43));
        let lost = 200 - a.iter().filter(|d| d.1 < 200).count();
        assert!(
            (20..120).contains(&lost),
            "about 30% lost (with 10% duplicates), got {lost}"
        );
        assert!(a.windows(2).any(|w| w[0].1 > w[1].1), "jitter reorders");
    }
}
