//! The media relay (the part rtpengine plays for Kamailio), sans-IO: for each gated call
//! with video the engine allocates relay ports here; UAs latch to them with a proof of
//! the call's permit token ([`latch`]); datagrams from latched parties are forwarded
//! to the other leg, everything else is dropped and counted. The relay never reads or
//! changes a payload (SRTP stays end to end).
//!
//! I/O contract: [`RelayTable::handle_datagram`] takes (now, local port, source, bytes)
//! and returns a [`Verdict`]; [`RelayTable::handle_timeout`] frees calls idle for
//! `inactivity`. No socket, no clock, no lock: [`shell`] binds the ports and moves the
//! bytes, [`shell::SharedRelay`] puts the table behind a mutex for the engine.
//!
//! Ports: the range is cut into pairs; pair `k` is `first + 2k` (the caller's leg) and
//! `first + 2k + 1` (the callee's leg). One pair per relayed media section. RTP and
//! RTCP share each port (rtcp-mux, RFC 5761): half the sockets, one latch per leg, and
//! nothing to learn from the SDP's `a=rtcp`. Memory is fixed at start: one entry per
//! pair and at most one call per pair.

pub mod config;
pub mod latch;
pub mod sdp;
pub mod shell;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use latch::{Kind, LATCH_LEN, Latch, LatchKey, Leg, looks_like_latch};

/// Media sections one call may relay (an offer with more is relayed in its first ones).
pub const MAX_STREAMS: usize = 4;

/// Relay settings (`[relay]` in the configuration file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySettings {
    /// Bound and advertised in `a=permit-relay`.
    pub address: IpAddr,
    /// First and last port of the range, inclusive.
    pub ports: (u16, u16),
    /// A call with no forwarded packet and no latch for this long is freed.
    pub inactivity: Duration,
}

impl RelaySettings {
    /// Port pairs in the range (an odd last port stays unused).
    pub fn pairs(&self) -> usize {
        let (first, last) = self.ports;
        usize::from(last.saturating_sub(first)).div_ceil(2)
    }
}

/// A relay call, as the engine holds it: a slot and its generation, so an old id never
/// frees the slot's next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayCallId {
    slot: u32,
    generation: u32,
}

/// What [`MediaRelay::allocate`] gives the engine: the address and, per media section,
/// the ports of both legs `[caller's, callee's]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub id: RelayCallId,
    pub address: IpAddr,
    pub streams: Vec<[u16; 2]>,
}

/// Why no relay call was allocated (the call then goes on without relay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("relay port range exhausted")]
    Full,
    #[error("a relay call needs 1 to {MAX_STREAMS} streams, not {0}")]
    Streams(usize),
}

/// Per-call counters; direction 0 is caller → callee, 1 callee → caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounters {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// Of `packets`, those that are RTCP (RFC 5761 §4: second octet 192..=223).
    pub rtcp: [u64; 2],
    /// Datagrams to this call's ports that were not forwarded (strangers, bad or
    /// replayed latches, a far end not latched yet).
    pub dropped: u64,
    /// Accepted latches, first ones and re-latches.
    pub latches: u64,
}

/// What the relay counted since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub calls_allocated: u64,
    pub calls_freed: u64,
    pub calls_expired: u64,
    pub allocation_failures: u64,
    pub live_calls: u64,
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    pub latches: u64,
    /// A leg latched again to a new source address (with a fresh proof).
    pub relatches: u64,
    /// Latch datagrams whose proof, leg or port was wrong.
    pub latch_rejected: u64,
    /// Valid latch datagrams with a counter already used (replays).
    pub latch_replayed: u64,
    /// Datagrams to a port no call holds (floods, late packets of ended calls).
    pub dropped_unallocated: u64,
    /// Datagrams from a source that is not the leg's latched party.
    pub dropped_stranger: u64,
    /// Datagrams of a latched party while the other leg has not latched yet.
    pub dropped_unlatched: u64,
    /// Forwards and latch answers the shell could not send (socket buffer full, or an
    /// error), and datagrams too large for its buffer (maybe cut), dropped.
    pub send_failed: u64,
    pub oversize: u64,
}

/// Why a datagram was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    Unallocated,
    Stranger,
    BadLatch,
    Replayed,
    FarEndNotLatched,
}

/// What to do with one received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the received bytes unchanged from relay port `from` to `to`.
    Forward {
        from: u16,
        to: SocketAddr,
    },
    /// Answer a latch: send `data` from relay port `from` to `to`.
    Answer {
        from: u16,
        to: SocketAddr,
        data: [u8; LATCH_LEN],
    },
    Drop(Dropped),
}

/// The engine's view of the relay (allocate at INVITE, free at the end of the call).
/// [`RelayTable`] is the reference and the engine tests' double; the binary hands the
/// engine a [`shell::SharedRelay`] over the same table.
pub trait MediaRelay: Send {
    /// A call relaying `streams` media sections, latched with proofs keyed by `token`.
    fn allocate(
        &mut self,
        now: Instant,
        token: &str,
        streams: usize,
    ) -> Result<Allocation, AllocError>;
    /// Frees the call's ports; its counters, or `None` if it was already gone.
    fn free(&mut self, id: RelayCallId) -> Option<CallCounters>;
    /// Whether the call still holds its ports (not freed, not expired).
    fn alive(&self, id: RelayCallId) -> bool;
    fn stats(&self) -> RelayStats;
}

#[derive(Debug, Clone, Copy, Default)]
struct LegState {
    latched: Option<SocketAddr>,
    /// The counter of the last accepted latch (0: none yet).
    counter: u64,
}

#[derive(Debug, Clone)]
struct Stream {
    pair: u32,
    legs: [LegState; 2],
}

#[derive(Debug)]
struct Call {
    key: LatchKey,
    streams: Vec<Stream>,
    last_activity: Instant,
    counters: CallCounters,
}

#[derive(Debug, Clone, Copy)]
struct Owner {
    slot: u32,
    stream: u8,
}

/// The relay's state: fixed-size tables sized by the port range.
#[derive(Debug)]
pub struct RelayTable {
    settings: RelaySettings,
    /// Per port pair, the call and stream holding it.
    pairs: Vec<Option<Owner>>,
    free_pairs: Vec<u32>,
    calls: Vec<Option<Call>>,
    generations: Vec<u32>,
    free_slots: Vec<u32>,
    rng: StdRng,
    stats: RelayStats,
}

impl RelayTable {
    /// `seed` feeds the rng that picks free pairs (tests seed it).
    pub fn new(settings: RelaySettings, seed: u64) -> RelayTable {
        let n = settings.pairs();
        let n32 = u32::try_from(n).unwrap_or(u32::MAX);
        RelayTable {
            pairs: vec![None; n],
            free_pairs: (0..n32).rev().collect(),
            calls: (0..n).map(|_| None).collect(),
            generations: vec![0; n],
            free_slots: (0..n32).rev().collect(),
            rng: StdRng::seed_from_u64(seed),
            stats: RelayStats::default(),
            settings,
        }
    }

    pub fn settings(&self) -> &RelaySettings {
        &self.settings
    }

    /// The pair and leg a local port serves, if it is in the range.
    fn locate(&self, port: u16) -> Option<(usize, Leg)> {
        let off = usize::from(port.checked_sub(self.settings.ports.0)?);
        let pair = off / 2;
        (pair < self.pairs.len()).then(|| {
            let leg = if off % 2 == 0 {
                Leg::Offerer
            } else {
                Leg::Answerer
            };
            (pair, leg)
        })
    }

    fn port_of(&self, pair: u32, leg: Leg) -> u16 {
        // pair < pairs() ≤ 32768, inside the configured u16 range.
        self.settings.ports.0 + (pair as u16) * 2 + leg.index() as u16
    }

    /// One received datagram: forward it, answer a latch, or drop and count it.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local_port: u16,
        source: SocketAddr,
        data: &[u8],
    ) -> Verdict {
        let owner = self
            .locate(local_port)
            .and_then(|(pair, leg)| self.pairs[pair].map(|o| (o, leg)));
        let Some((owner, leg)) = owner else {
            self.stats.dropped_unallocated += 1;
            return Verdict::Drop(Dropped::Unallocated);
        };
        let Some(call) = self.calls[owner.slot as usize].as_mut() else {
            self.stats.dropped_unallocated += 1;
            return Verdict::Drop(Dropped::Unallocated);
        };
        let stream = &mut call.streams[usize::from(owner.stream)];
        if looks_like_latch(data) {
            let verdict = latch_leg(&call.key, stream, leg, local_port, source, data);
            match verdict {
                Ok((data, fresh, moved)) => {
                    call.last_activity = now;
                    if fresh {
                        call.counters.latches += 1;
                        self.stats.latches += 1;
                        self.stats.relatches += u64::from(moved);
                    }
                    return Verdict::Answer {
                        from: local_port,
                        to: source,
                        data,
                    };
                }
                Err(d) => {
                    call.counters.dropped += 1;
                    match d {
                        Dropped::Replayed => self.stats.latch_replayed += 1,
                        _ => self.stats.latch_rejected += 1,
                    }
                    return Verdict::Drop(d);
                }
            }
        }
        if stream.legs[leg.index()].latched != Some(source) {
            call.counters.dropped += 1;
            self.stats.dropped_stranger += 1;
            return Verdict::Drop(Dropped::Stranger);
        }
        let Some(to) = stream.legs[leg.other().index()].latched else {
            call.counters.dropped += 1;
            self.stats.dropped_unlatched += 1;
            return Verdict::Drop(Dropped::FarEndNotLatched);
        };
        let pair = stream.pair;
        let dir = leg.index();
        let c = &mut call.counters;
        c.packets[dir] += 1;
        c.bytes[dir] += data.len() as u64;
        // RFC 5761 §4: with rtcp-mux, RTCP packet types 192..=223 sit where RTP has
        // its marker bit and payload type.
        if data.len() > 1 && (192..=223).contains(&data[1]) {
            c.rtcp[dir] += 1;
        }
        call.last_activity = now;
        self.stats.forwarded_packets += 1;
        self.stats.forwarded_bytes += data.len() as u64;
        Verdict::Forward {
            from: self.port_of(pair, leg.other()),
            to,
        }
    }

    /// Frees every call idle for `inactivity`; returns how many.
    pub fn handle_timeout(&mut self, now: Instant) -> usize {
        let limit = self.settings.inactivity;
        let idle: Vec<u32> = self
            .calls
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                c.as_ref()
                    .filter(|c| now.saturating_duration_since(c.last_activity) >= limit)
                    .map(|_| i as u32)
            })
            .collect();
        for &slot in &idle {
            self.release(slot);
            self.stats.calls_expired += 1;
        }
        idle.len()
    }

    /// When the next call would expire, if any call is live.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.calls
            .iter()
            .flatten()
            .map(|c| c.last_activity + self.settings.inactivity)
            .min()
    }

    fn release(&mut self, slot: u32) -> Option<CallCounters> {
        let call = self.calls[slot as usize].take()?;
        for s in &call.streams {
            self.pairs[s.pair as usize] = None;
            self.free_pairs.push(s.pair);
        }
        self.generations[slot as usize] = self.generations[slot as usize].wrapping_add(1);
        self.free_slots.push(slot);
        self.stats.live_calls -= 1;
        Some(call.counters)
    }

    fn slot_of(&self, id: RelayCallId) -> Option<u32> {
        let i = id.slot as usize;
        (i < self.calls.len() && self.generations[i] == id.generation && self.calls[i].is_some())
            .then_some(id.slot)
    }

    /// The shell could not send a forward or an answer.
    pub fn count_send_failed(&mut self) {
        self.stats.send_failed += 1;
    }

    /// The shell dropped a datagram that filled its receive buffer.
    pub fn count_oversize(&mut self) {
        self.stats.oversize += 1;
    }

    /// Counters of a live call.
    pub fn counters(&self, id: RelayCallId) -> Option<CallCounters> {
        let slot = self.slot_of(id)?;
        self.calls[slot as usize].as_ref().map(|c| c.counters)
    }
}

/// A latch datagram on `leg`'s port: the answer to send, whether the leg (re)latched,
/// and whether it moved from another address.
fn latch_leg(
    key: &LatchKey,
    stream: &mut Stream,
    leg: Leg,
    port: u16,
    source: SocketAddr,
    data: &[u8],
) -> Result<([u8; LATCH_LEN], bool, bool), Dropped> {
    let l = Latch::verify(data, key).map_err(|_| Dropped::BadLatch)?;
    if l.kind != Kind::Latch || l.leg != leg || l.port != port {
        return Err(Dropped::BadLatch);
    }
    let state = &mut stream.legs[leg.index()];
    let retransmission = l.counter == state.counter && state.latched == Some(source);
    if !(l.counter > state.counter || retransmission) {
        return Err(Dropped::Replayed);
    }
    let fresh = !retransmission;
    let moved = fresh && state.latched.is_some_and(|a| a != source);
    state.latched = Some(source);
    state.counter = l.counter;
    let answer = Latch {
        kind: Kind::Latched,
        ..l
    };
    Ok((answer.encode(key), fresh, moved))
}

impl MediaRelay for RelayTable {
    fn allocate(
        &mut self,
        now: Instant,
        token: &str,
        streams: usize,
    ) -> Result<Allocation, AllocError> {
        if streams == 0 || streams > MAX_STREAMS {
            return Err(AllocError::Streams(streams));
        }
        if self.free_pairs.len() < streams || self.free_slots.is_empty() {
            self.stats.allocation_failures += 1;
            return Err(AllocError::Full);
        }
        let slot = self.free_slots.pop().unwrap_or_default();
        let mut list = Vec::with_capacity(streams);
        let mut ports = Vec::with_capacity(streams);
        for i in 0..streams {
            // A random free pair (STYLE: relay ports from the injected rng), O(1).
            let at = self.rng.random_range(0..self.free_pairs.len());
            let pair = self.free_pairs.swap_remove(at);
            self.pairs[pair as usize] = Some(Owner {
                slot,
                stream: i as u8,
            });
            ports.push([
                self.port_of(pair, Leg::Offerer),
                self.port_of(pair, Leg::Answerer),
            ]);
            list.push(Stream {
                pair,
                legs: [LegState::default(); 2],
            });
        }
        self.calls[slot as usize] = Some(Call {
            key: LatchKey::new(token.as_bytes()),
            streams: list,
            last_activity: now,
            counters: CallCounters::default(),
        });
        self.stats.calls_allocated += 1;
        self.stats.live_calls += 1;
        Ok(Allocation {
            id: RelayCallId {
                slot,
                generation: self.generations[slot as usize],
            },
            address: self.settings.address,
            streams: ports,
        })
    }

    fn free(&mut self, id: RelayCallId) -> Option<CallCounters> {
        let slot = self.slot_of(id)?;
        let c = self.release(slot);
        self.stats.calls_freed += 1;
        c
    }

    fn alive(&self, id: RelayCallId) -> bool {
        self.slot_of(id).is_some()
    }

    fn stats(&self) -> RelayStats {
        self.stats
    }
}

#[cfg(test)]
mod tests;
