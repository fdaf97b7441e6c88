//! The receiver's side of the split: datagrams from the relay and from the sender
//! are unprotected (one SRTP context per path: each path sees its packets in order,
//! so each replay window stays small), merged back into sequence order
//! (`sip_core::media::Merger`, RFC 3550 §5.1) and depacketized (RFC 6184 / RFC 2250)
//! into the sent stream. Sans-IO: datagrams and time in, the stream out.
//!
//! Which packets are taken: from the relay's address, only SRTP that authenticates;
//! from anywhere else, SRTP that authenticates, or — when the offer said
//! `a=permit-split:selective` — plain RTP from the sender's offered address only.
//! Others are dropped and counted.
//!
//! Each path's packets, duplicates and interarrival jitter, and the merged stream's
//! loss, are counted as RFC 3550 §6.4.1 says ([`Reception`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sip_core::media::rfc6184::Depacketizer;
use sip_core::media::{Merger, rfc2250};
use sip_core::permit::SrtpKeys;
use webrtc_srtp::context::Context;

use super::Codec;
use super::latch::looks_like_latch;
use super::report::{Reception, ReceptionReport};
use super::sdp::SplitMode;
use super::split::{Path, context};

/// How long a missing packet is waited for once a later one arrived.
pub const MERGE_WAIT: Duration = Duration::from_millis(500);
/// Packets held at most while waiting (bounded memory, `Merger`).
pub const MERGE_CAPACITY: usize = 4096;
/// Nothing is released before this long after the first packet: the stream's first
/// packets (parameter sets and the first I picture) come over the relay, a hop longer
/// than the direct path that the first P picture takes.
pub const START_DELAY: Duration = Duration::from_millis(100);
/// The largest stream written (bounded memory): 256 MiB.
pub const MAX_STREAM: usize = 256 << 20;

/// What the receiver saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JoinStats {
    pub from_relay: u64,
    pub direct: u64,
    pub direct_plain: u64,
    /// SRTP that failed authentication, plain RTP where it is not allowed, other
    /// payload types or SSRCs, malformed packets. (What the replay check refuses is
    /// counted as its path's duplicates in [`ReceptionReport`].)
    pub refused: u64,
    /// Sequence numbers the merge gave up waiting for (skipped in the stream written).
    pub lost: u64,
    pub late_or_duplicate: u64,
    pub depacketize_errors: u64,
}

/// One RTP packet after unprotection: timestamp and payload.
#[derive(Debug)]
struct Packet {
    ts: u32,
    payload: Vec<u8>,
}

/// The receiver of one video stream.
pub struct Joiner {
    codec: Codec,
    payload_type: u8,
    relay: Option<SocketAddr>,
    sender: SocketAddr,
    mode: SplitMode,
    rx_relay: Option<Context>,
    rx_direct: Option<Context>,
    ssrc: Option<u32>,
    start_at: Option<Instant>,
    merger: Merger<Packet>,
    depacketizer: Depacketizer,
    es: Vec<u8>,
    last_ts: Option<u32>,
    unit: u64,
    /// Payload bytes taken so far (bounded by [`MAX_STREAM`]).
    taken: usize,
    pub stats: JoinStats,
    reception: Reception,
}

impl std::fmt::Debug for Joiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joiner")
            .field("codec", &self.codec)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Joiner {
    /// `keys`: the sender's video key (`None`: the call has no SRTP, plain RTP is
    /// taken on both paths). `sender`: the offer's video address; `relay`: our relay
    /// port's address, if the call is relayed.
    pub fn new(
        codec: Codec,
        payload_type: u8,
        keys: Option<&SrtpKeys>,
        mode: SplitMode,
        sender: SocketAddr,
        relay: Option<SocketAddr>,
    ) -> Joiner {
        Joiner {
            codec,
            payload_type,
            relay,
            sender,
            mode,
            rx_relay: keys.and_then(|k| context(k, true)),
            rx_direct: keys.and_then(|k| context(k, true)),
            ssrc: None,
            start_at: None,
            merger: Merger::new(MERGE_WAIT, MERGE_CAPACITY),
            depacketizer: Depacketizer::new(),
            es: Vec::new(),
            last_ts: None,
            unit: 0,
            taken: 0,
            stats: JoinStats::default(),
            reception: Reception::new(),
        }
    }

    /// One datagram received from `from` on our video socket.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        if looks_like_latch(data) {
            return; // the relay's answers are the shell's business
        }
        let from_relay = self.relay == Some(from);
        let path = if from_relay {
            Path::Relay
        } else {
            Path::Direct
        };
        let keyed = self.rx_direct.is_some();
        let ctx = if from_relay {
            self.rx_relay.as_mut()
        } else {
            self.rx_direct.as_mut()
        };
        let plain_allowed = !keyed || (!from_relay && self.mode == SplitMode::Selective);
        let rtp = match ctx.map(|c| c.decrypt_rtp(data)) {
            Some(Ok(p)) => p.to_vec(),
            // A plain packet of the selective direct path is taken only from the
            // sender's own address; SRTP that fails is never taken as plain.
            _ if plain_allowed && (!keyed || from == self.sender) => data.to_vec(),
            // RFC 3711 §3.3.2: a packet index this path's context has seen.
            Some(Err(webrtc_srtp::Error::SrtpSsrcDuplicated(..))) => {
                self.reception.handle_replay(path);
                return;
            }
            _ => {
                self.stats.refused += 1;
                return;
            }
        };
        let Some((seq, packet)) = self.parse(&rtp) else {
            self.stats.refused += 1;
            return;
        };
        if from_relay {
            self.stats.from_relay += 1;
        } else if keyed && data.len() == rtp.len() {
            self.stats.direct_plain += 1;
        } else {
            self.stats.direct += 1;
        }
        self.reception.handle_packet(now, path, seq, packet.ts);
        self.start_at.get_or_insert(now + START_DELAY);
        self.merger.push(now, seq, packet);
        self.drain(now);
    }

    /// RFC 3550 §5.1: version 2, our payload type, one SSRC (the first seen).
    fn parse(&mut self, rtp: &[u8]) -> Option<(u16, Packet)> {
        if rtp.len() < 12 || rtp[0] >> 6 != 2 || rtp[1] & 0x7f != self.payload_type {
            return None;
        }
        let csrc = usize::from(rtp[0] & 0x0f) * 4;
        let mut start = 12 + csrc;
        if rtp[0] & 0x10 != 0 {
            let ext = rtp.get(start + 2..start + 4)?;
            start += 4 + usize::from(u16::from_be_bytes([ext[0], ext[1]])) * 4;
        }
        let mut end = rtp.len();
        if rtp[0] & 0x20 != 0 {
            end = end.checked_sub(usize::from(*rtp.last()?))?;
        }
        let payload = rtp.get(start..end)?.to_vec();
        let ssrc = u32::from_be_bytes([rtp[8], rtp[9], rtp[10], rtp[11]]);
        if *self.ssrc.get_or_insert(ssrc) != ssrc {
            return None;
        }
        let seq = u16::from_be_bytes([rtp[2], rtp[3]]);
        let ts = u32::from_be_bytes([rtp[4], rtp[5], rtp[6], rtp[7]]);
        Some((seq, Packet { ts, payload }))
    }

    /// The reception report so far (RFC 3550 §6.4.1).
    pub fn reception(&self) -> ReceptionReport {
        self.reception.report()
    }

    /// When [`Joiner::handle_timeout`] is due (a gap's wait ends).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let start = self.start_at?;
        Some(self.merger.poll_timeout().map_or(start, |t| t.max(start)))
            .filter(|_| self.merger.held() > 0)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.drain(now);
    }

    fn drain(&mut self, now: Instant) {
        if self.start_at.is_none_or(|s| now < s) {
            return;
        }
        while let Some(p) = self.merger.poll(now) {
            self.depacketize(&p);
        }
        let s = self.merger.stats;
        self.stats.lost = s.lost;
        self.stats.late_or_duplicate = s.late_or_duplicate;
    }

    fn depacketize(&mut self, p: &Packet) {
        if self.taken + p.payload.len() > MAX_STREAM {
            self.stats.depacketize_errors += 1;
            return;
        }
        self.taken += p.payload.len();
        match self.codec {
            Codec::H264 => {
                // A new timestamp starts a new access unit (RFC 6184 §5.1).
                if self.last_ts.is_some_and(|t| t != p.ts) {
                    self.unit += 1;
                }
                self.last_ts = Some(p.ts);
                if self.depacketizer.push(self.unit, &p.payload).is_err() {
                    self.stats.depacketize_errors += 1;
                }
            }
            Codec::Mpv => match rfc2250::depacketize(&p.payload) {
                Some(es) => self.es.extend_from_slice(es),
                None => self.stats.depacketize_errors += 1,
            },
        }
    }

    /// The end of the stream: what is still held is released (gaps skipped), and the
    /// stream is returned with the counts.
    pub fn finish(mut self, now: Instant) -> (Vec<u8>, JoinStats, ReceptionReport) {
        let later = now + START_DELAY + MERGE_WAIT * 2;
        self.drain(later);
        while self.merger.held() > 0 {
            let before = self.merger.held();
            self.drain(later + MERGE_WAIT * 4);
            if self.merger.held() == before {
                break;
            }
        }
        let stream = match self.codec {
            Codec::H264 => self.depacketizer.finish(),
            Codec::Mpv => self.es,
        };
        (stream, self.stats, self.reception.report())
    }
}
