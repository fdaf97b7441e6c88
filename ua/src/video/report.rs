//! The receiver's report of a split video stream, per path (RFC 3550 §6.4.1, the
//! fields of a reception report block, computed as Appendix A.3 and A.8 do).
//!
//! Both paths carry one SSRC and one sequence space (the sender numbers every packet,
//! whichever path it takes), so loss is counted on the merged stream, where it is
//! exact: RFC 3550 §A.3, `expected = highest - lowest + 1` extended sequence numbers
//! (the lowest rather than the first: the relay's longer hop can bring an earlier
//! packet after a later one), `lost = expected - received`, where received counts each
//! sequence number once (duplicates are counted apart, so `lost` never goes negative
//! as RFC 3550's may). A missing number is not attributed to a path: the receiver
//! cannot know which path a packet it never saw would have taken. Each path has its
//! own counts (packets taken, duplicates) and its own interarrival jitter, since the
//! relay's hop has a transit time of its own.
//!
//! Sans-IO: arrival times come in as arguments.

use std::time::Instant;

use super::CLOCK;
use super::split::Path;

/// Sequence numbers remembered for the duplicate check, behind the highest seen (as
/// many as the merge buffer holds, `join::MERGE_CAPACITY`). A duplicate older than
/// that is counted as received.
const WINDOW: u64 = 4096;

/// One path's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PathReport {
    /// Packets taken on this path (after SRTP), duplicates included (not the SRTP
    /// replays, which the SRTP layer drops).
    pub packets: u64,
    /// Packets whose sequence number had already arrived (on either path), and
    /// packets the path's SRTP replay check refused (RFC 3711 §3.3.2).
    pub duplicates: u64,
    /// RFC 3550 §6.4.1 interarrival jitter J, in RTP timestamp units.
    pub jitter: f64,
    /// The previous packet's relative transit time (RFC 3550 §A.8 `s->transit`).
    transit: Option<u32>,
}

impl PathReport {
    /// The jitter in milliseconds at the 90 kHz video clock.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter * 1000.0 / f64::from(CLOCK)
    }

    /// RFC 3550 §6.4.1 / §A.8: `D(i-1,i) = (R_i - R_{i-1}) - (S_i - S_{i-1})`, i.e. the
    /// difference of the relative transit times `R - S`, and
    /// `J(i) = J(i-1) + (|D(i-1,i)| - J(i-1)) / 16`, in arrival order. Arithmetic
    /// modulo 2^32 as in §A.8, so a timestamp wrap does no harm.
    fn handle_arrival(&mut self, arrival: u32, ts: u32) {
        let transit = arrival.wrapping_sub(ts);
        if let Some(last) = self.transit {
            let d = f64::from(transit.wrapping_sub(last).cast_signed().unsigned_abs());
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.transit = Some(transit);
    }
}

/// What the receiver reports at the end of a call.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReceptionReport {
    pub relay: PathReport,
    pub direct: PathReport,
    /// RFC 3550 §A.3 `expected`: sequence numbers from the lowest to the highest seen.
    pub expected: u64,
    /// Distinct sequence numbers received, on either path.
    pub received: u64,
    /// `expected - received` (merged stream).
    pub lost: u64,
}

impl ReceptionReport {
    pub fn path(&self, path: Path) -> &PathReport {
        match path {
            Path::Relay => &self.relay,
            Path::Direct => &self.direct,
        }
    }

    fn path_mut(&mut self, path: Path) -> &mut PathReport {
        match path {
            Path::Relay => &mut self.relay,
            Path::Direct => &mut self.direct,
        }
    }
}

/// The counters behind a [`ReceptionReport`].
#[derive(Debug, Clone)]
pub struct Reception {
    /// Arrival times are counted in RTP units from here (the first packet).
    epoch: Option<Instant>,
    /// Extended sequence numbers (RFC 3550 §A.1): the highest and the lowest seen.
    highest: Option<u64>,
    lowest: u64,
    /// Bit `ext % WINDOW` set: `ext` arrived (for `ext` within WINDOW of `highest`).
    seen: Vec<u64>,
    report: ReceptionReport,
}

impl Default for Reception {
    fn default() -> Self {
        Reception::new()
    }
}

impl Reception {
    pub fn new() -> Reception {
        Reception {
            epoch: None,
            highest: None,
            lowest: 0,
            seen: vec![0; (WINDOW / 64) as usize],
            report: ReceptionReport::default(),
        }
    }

    pub fn report(&self) -> ReceptionReport {
        self.report
    }

    /// A packet taken on `path` at `now`: sequence number `seq`, RTP timestamp `ts`.
    /// Returns whether its sequence number is new.
    pub fn handle_packet(&mut self, now: Instant, path: Path, seq: u16, ts: u32) -> bool {
        let epoch = *self.epoch.get_or_insert(now);
        // Arrival in RTP timestamp units (RFC 3550 §6.4.1 `R_i`), modulo 2^32.
        let ticks =
            now.saturating_duration_since(epoch).as_nanos() * u128::from(CLOCK) / 1_000_000_000;
        let arrival = ticks as u32;
        let fresh = self.handle_seq(seq);
        let p = self.report.path_mut(path);
        p.packets += 1;
        if fresh {
            // A duplicate is the same packet again: it leaves the jitter alone.
            p.handle_arrival(arrival, ts);
        } else {
            p.duplicates += 1;
        }
        self.report.expected = self.highest.map_or(0, |h| h - self.lowest + 1);
        self.report.lost = self.report.expected.saturating_sub(self.report.received);
        fresh
    }

    /// A packet the SRTP replay check of `path` refused: a duplicate of that path.
    pub fn handle_replay(&mut self, path: Path) {
        self.report.path_mut(path).duplicates += 1;
    }

    /// RFC 3550 §A.1: the extended number of `seq` is the one nearest the highest
    /// seen (a signed 16-bit distance). Records it; whether it is new.
    fn handle_seq(&mut self, seq: u16) -> bool {
        let Some(highest) = self.highest else {
            // Extended numbers start high enough to go back below the first.
            let ext = (1u64 << 32) + u64::from(seq);
            self.highest = Some(ext);
            self.lowest = ext;
            self.mark(ext);
            self.report.received += 1;
            return true;
        };
        let delta = i64::from(seq.wrapping_sub(highest as u16).cast_signed());
        let ext = highest.saturating_add_signed(delta);
        if ext > highest {
            // Forget what falls out of the window behind the new highest.
            if ext - highest >= WINDOW {
                self.seen.fill(0);
            } else {
                for e in highest + 1..=ext {
                    self.unmark(e);
                }
            }
            self.highest = Some(ext);
        } else if highest - ext < WINDOW && self.is_marked(ext) {
            return false;
        }
        self.lowest = self.lowest.min(ext);
        self.mark(ext);
        self.report.received += 1;
        true
    }

    fn slot(ext: u64) -> (usize, u64) {
        let i = ext % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn mark(&mut self, ext: u64) {
        let (w, b) = Self::slot(ext);
        self.seen[w] |= b;
    }

    fn unmark(&mut self, ext: u64) {
        let (w, b) = Self::slot(ext);
        self.seen[w] &= !b;
    }

    fn is_marked(&self, ext: u64) -> bool {
        let (w, b) = Self::slot(ext);
        self.seen[w] & b != 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sip_testkit::VirtualClock;

    use super::*;

    /// The known pattern: 20 packets, sequence numbers 65530.. (through the wrap),
    /// every third one on the relay; 65533 and 3 never arrive, 65535 arrives twice
    /// (relay then direct), 5 arrives before 4, and the relay's SRTP replay check
    /// refuses one packet.
    #[test]
    fn loss_and_duplicates_of_a_known_pattern() {
        let mut clock = VirtualClock::new();
        let mut r = Reception::new();
        let path = |i: u16| {
            if i.is_multiple_of(3) {
                Path::Relay
            } else {
                Path::Direct
            }
        };
        let mut order: Vec<u16> = (0..20).filter(|i| ![3, 9].contains(i)).collect();
        let four = order.iter().position(|&i| i == 10).unwrap();
        order.swap(four, four + 1); // 65530+11 = 5 before 65530+10 = 4
        let mut fresh = 0;
        for i in order {
            let seq = 65530u16.wrapping_add(i);
            fresh += u64::from(r.handle_packet(clock.now(), path(i), seq, 0));
            clock.advance(Duration::from_millis(1));
        }
        // 65535 (i = 5, a direct packet by the pattern) again, over the relay.
        assert!(!r.handle_packet(clock.now(), Path::Relay, 65535, 0));
        r.handle_replay(Path::Relay);
        let rep = r.report();
        // Sequence numbers 65530..=65535, 0..=13: 20 expected, 18 distinct arrived.
        assert_eq!(rep.expected, 20);
        assert_eq!(rep.received, 18);
        assert_eq!(fresh, 18);
        assert_eq!(rep.lost, 2);
        // The relay's i are 0, 6, 12, 15, 18 (3 and 9 lost) plus the duplicate: 6
        // packets, 2 duplicates (the repeated 65535 and the replay); the direct path's
        // i are the 13 others of 0..20 without 3, 9 and the relay's.
        assert_eq!((rep.relay.packets, rep.relay.duplicates), (6, 2));
        assert_eq!((rep.direct.packets, rep.direct.duplicates), (13, 0));
        assert_eq!(rep.relay.packets + rep.direct.packets - 1, rep.received);
    }

    /// A packet earlier than the first one received (the relay's longer hop) widens
    /// the expected range instead of counting as a loss or a wrap.
    #[test]
    fn an_earlier_packet_after_the_first_is_expected_not_lost() {
        let clock = VirtualClock::new();
        let mut r = Reception::new();
        for seq in [102u16, 103, 100, 104] {
            r.handle_packet(clock.now(), Path::Direct, seq, 0);
        }
        let rep = r.report();
        assert_eq!((rep.expected, rep.received, rep.lost), (5, 4, 1));
        r.handle_packet(clock.now(), Path::Relay, 101, 0);
        assert_eq!(r.report().lost, 0);
        // A jump beyond the window: the old numbers are forgotten, not duplicates.
        assert!(r.handle_packet(clock.now(), Path::Direct, 104 + 5000, 0));
        assert!(r.handle_packet(clock.now(), Path::Direct, 104 + 5001 - 4096, 0));
        assert_eq!(r.report().expected, 5005);
    }

    /// Known arrival times, by hand with RFC 3550 §A.8's J += (|D| - J)/16, at 90 kHz
    /// (1 ms = 90 units). Relay path, timestamps 0, 3000, 6000, 9000 (30 fps):
    ///   arrivals 10 ms, 45 ms, 76 ms, 110 ms after the epoch = 900, 4050, 6840, 9900
    ///   transits R - S: 900, 1050, 840, 900
    ///   |D|: 150, 210, 60
    ///   J: 0 + 150/16 = 9.375;  9.375 + (210 - 9.375)/16 = 21.9140625;
    ///      21.9140625 + (60 - 21.9140625)/16 = 24.294433...
    ///   J = 24.2944335937 units = 0.26994 ms.
    /// Direct path, timestamps 0, 9000, 18000, 27000 (100 ms apart) arriving at 0, 100,
    /// 200, 300 ms: transit constant, |D| = 0, J = 0.
    #[test]
    fn jitter_of_known_arrival_times() {
        let mut clock = VirtualClock::new();
        let start = clock.now();
        let mut r = Reception::new();
        let mut events = vec![
            (10, Path::Relay, 1001, 0),
            (45, Path::Relay, 1003, 3000),
            (76, Path::Relay, 1005, 6000),
            (110, Path::Relay, 1007, 9000),
        ];
        for (i, seq) in (0..4u32).zip([1000u16, 1002, 1004, 1006]) {
            events.push((u64::from(i) * 100, Path::Direct, seq, i * 9000));
        }
        events.sort_by_key(|e| e.0);
        // The epoch: the direct path's first packet, at 0 ms.
        for (ms, path, seq, ts) in events {
            clock.advance_to(start + Duration::from_millis(ms));
            r.handle_packet(clock.now(), path, seq, ts);
        }
        let rep = r.report();
        let want = 21.914_062_5 + (60.0 - 21.914_062_5) / 16.0;
        assert!(
            (rep.relay.jitter - want).abs() < 1e-9,
            "{}",
            rep.relay.jitter
        );
        assert!((rep.relay.jitter_ms() - want / 90.0).abs() < 1e-12);
        assert!((rep.relay.jitter_ms() - 0.269_94).abs() < 1e-5);
        assert!(rep.direct.jitter.abs() < 1e-12, "{}", rep.direct.jitter);
        assert_eq!((rep.expected, rep.lost), (8, 0));
    }

    /// The timestamp wraps (RFC 3550 §A.8: modulo 2^32) without a jump in jitter.
    #[test]
    fn jitter_across_a_timestamp_wrap() {
        let clock = VirtualClock::new();
        let start = clock.now();
        let mut r = Reception::new();
        let first = u32::MAX - 2999;
        for i in 0..4u32 {
            let at = start + Duration::from_millis(u64::from(i) * 100);
            // 100 ms = 9000 units per packet, with 90 units (1 ms) of extra delay on
            // the third: |D| = 0, 90, 90 → J = 90/16 = 5.625, + (90 - 5.625)/16.
            let extra = u64::from(i == 2);
            r.handle_packet(
                at + Duration::from_millis(extra),
                Path::Relay,
                i as u16,
                first.wrapping_add(i * 9000),
            );
        }
        let want = 5.625 + (90.0 - 5.625) / 16.0;
        assert!(
            (r.report().relay.jitter - want).abs() < 1e-9,
            "{:?}",
            r.report()
        );
    }
}
