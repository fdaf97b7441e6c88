//! The receiver's merge of one RTP stream that arrives over two paths: packets are
//! released in sequence-number order (RFC 3550 §5.1: 16-bit, wrapping); a missing packet
//! is waited for at most `wait` after a later one arrived, then skipped and counted. The
//! hold is bounded: at `capacity` packets the oldest gap is skipped at once, so a caller
//! that drains (`poll` until `None`) after every `push` never holds more. Time is an
//! argument; `poll_timeout` says when to call again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What the merge counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MergeStats {
    pub released: u64,
    /// Sequence numbers given up for lost.
    pub lost: u64,
    /// Packets that came after their turn had passed, or twice.
    pub late_or_duplicate: u64,
}

/// Reorders packets `T` of one SSRC by RTP sequence number.
#[derive(Debug)]
pub struct Merger<T> {
    /// Extended sequence number of the next packet to release.
    next: Option<u64>,
    /// Whether anything was released yet (before that, an earlier packet may still
    /// become the first).
    started: bool,
    held: BTreeMap<u64, (Instant, T)>,
    wait: Duration,
    capacity: usize,
    pub stats: MergeStats,
}

impl<T> Merger<T> {
    pub fn new(wait: Duration, capacity: usize) -> Self {
        Self {
            next: None,
            started: false,
            held: BTreeMap::new(),
            wait,
            capacity: capacity.max(1),
            stats: MergeStats::default(),
        }
    }

    /// The extended number of `seq`, nearest to the next expected one.
    fn extend(&self, seq: u16) -> Option<u64> {
        let next = self.next?;
        // Signed distance in the 16-bit space (RFC 3550 §A.1): within ±32767 of next.
        let delta = i64::from(seq.wrapping_sub(next as u16).cast_signed());
        u64::try_from(i64::try_from(next).ok()? + delta).ok()
    }

    /// A packet with RTP sequence number `seq`, from either path.
    pub fn push(&mut self, now: Instant, seq: u16, packet: T) {
        let Some(mut ext) = self.extend(seq) else {
            // First packet: extended numbers start high enough to go back below it.
            let ext = (1u64 << 32) + u64::from(seq);
            self.next = Some(ext);
            self.held.insert(ext, (now, packet));
            return;
        };
        let next = self.next.unwrap_or(ext);
        if ext < next {
            if self.started {
                self.stats.late_or_duplicate += 1;
                return;
            }
            self.next = Some(ext); // an earlier packet before anything was released
        }
        if self.held.contains_key(&ext) {
            self.stats.late_or_duplicate += 1;
            return;
        }
        if self.held.len() >= self.capacity
            && let Some((&first, _)) = self.held.iter().next()
        {
            // Over the bound: give up the gap before the oldest held packet.
            self.skip_to(first);
            ext = ext.max(first);
        }
        self.held.insert(ext, (now, packet));
    }

    fn skip_to(&mut self, ext: u64) {
        if let Some(next) = self.next
            && ext > next
        {
            self.stats.lost += ext - next;
            self.next = Some(ext);
        }
    }

    /// The next packet in order, if it is here or its wait is over.
    pub fn poll(&mut self, now: Instant) -> Option<T> {
        let next = self.next?;
        let (&first, &(since, _)) = self.held.iter().next()?;
        if first != next {
            if now.saturating_duration_since(since) < self.wait {
                return None;
            }
            self.skip_to(first);
        }
        let (_, packet) = self.held.remove(&first)?;
        self.next = Some(first + 1);
        self.started = true;
        self.stats.released += 1;
        Some(packet)
    }

    /// When a held packet's wait for a gap ends (call `poll` then).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let (&first, &(since, _)) = self.held.iter().next()?;
        (Some(first) != self.next).then_some(since + self.wait)
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(m: &mut Merger<u16>, now: Instant) -> Vec<u16> {
        std::iter::from_fn(|| m.poll(now)).collect()
    }

    #[test]
    fn two_paths_interleave_back_into_order() {
        let t = sip_testkit::VirtualClock::new().now();
        let mut m = Merger::new(Duration::from_millis(50), 64);
        // Direct path is faster: 2, 3 arrive before the relayed 1.
        m.push(t, 1000, 1000);
        assert_eq!(drain(&mut m, t), vec![1000]);
        m.push(t, 1002, 1002);
        m.push(t, 1003, 1003);
        assert_eq!(drain(&mut m, t), Vec::<u16>::new(), "waits for 1001");
        m.push(t, 1001, 1001);
        assert_eq!(drain(&mut m, t), vec![1001, 1002, 1003]);
        assert_eq!(m.stats.lost, 0);
    }

    #[test]
    fn wraps_and_gives_up_on_a_lost_packet() {
        let t = sip_testkit::VirtualClock::new().now();
        let mut m = Merger::new(Duration::from_millis(50), 64);
        m.push(t, 65534, 65534);
        m.push(t, 65535, 65535);
        m.push(t, 1, 1); // 0 is lost
        assert_eq!(drain(&mut m, t), vec![65534, 65535]);
        assert_eq!(m.poll_timeout(), Some(t + Duration::from_millis(50)));
        assert_eq!(
            drain(&mut m, t + Duration::from_millis(49)),
            Vec::<u16>::new()
        );
        assert_eq!(drain(&mut m, t + Duration::from_millis(50)), vec![1]);
        assert_eq!(m.stats.lost, 1);
        m.push(t, 0, 0); // too late now
        m.push(t, 1, 1); // duplicate
        assert_eq!(m.stats.late_or_duplicate, 2);
    }

    #[test]
    fn an_earlier_first_packet_still_leads() {
        let t = sip_testkit::VirtualClock::new().now();
        let mut m = Merger::new(Duration::from_millis(50), 64);
        m.push(t, 11, 11);
        m.push(t, 10, 10); // the relayed I-packet arrives after the first direct one
        assert_eq!(drain(&mut m, t), vec![10, 11]);
    }

    #[test]
    fn holding_is_bounded() {
        let t = sip_testkit::VirtualClock::new().now();
        let mut m = Merger::new(Duration::from_mins(1), 4);
        m.push(t, 0, 0);
        assert_eq!(drain(&mut m, t), vec![0]);
        let mut out = vec![];
        for s in 2..20u16 {
            m.push(t, s, s); // 1 never comes
            out.extend(drain(&mut m, t));
            assert!(m.held() <= 4, "{}", m.held());
        }
        assert_eq!(out, (2..20).collect::<Vec<u16>>());
        assert_eq!(m.stats.lost, 1);
    }

    #[test]
    #[allow(clippy::many_single_char_names)]
    fn random_two_path_delivery_is_reordered_exactly() {
        let t = sip_testkit::VirtualClock::new().now();
        let mut m = Merger::new(Duration::from_millis(100), 1024);
        let mut x: u32 = 7;
        let mut rnd = || {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            x >> 8
        };
        // Packets from 65000 on (wrapping), each path in order, paths interleaved at random.
        let seqs: Vec<u16> = (0..2000u32)
            .map(|i| 65000u16.wrapping_add(i as u16))
            .collect();
        let (mut relay, mut direct): (Vec<u16>, Vec<u16>) = (vec![], vec![]);
        for &s in &seqs {
            if rnd() % 10 == 0 {
                relay.push(s);
            } else {
                direct.push(s);
            }
        }
        let (mut i, mut j, mut out) = (0, 0, vec![]);
        while i < relay.len() || j < direct.len() {
            let take_relay = j >= direct.len() || (i < relay.len() && rnd() % 3 == 0);
            let s = if take_relay {
                i += 1;
                relay[i - 1]
            } else {
                j += 1;
                direct[j - 1]
            };
            m.push(t, s, s);
            out.extend(std::iter::from_fn(|| m.poll(t)));
        }
        out.extend(drain(&mut m, t + Duration::from_secs(1)));
        assert_eq!(out, seqs);
    }
}
