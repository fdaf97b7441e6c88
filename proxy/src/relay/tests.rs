//! Unit tests of the sans-IO relay core.
#![allow(clippy::many_single_char_names)] // t(able), a(llocation), p(acket), c(ounters), s(tats)

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::latch::{Kind, Latch, LatchKey, Leg};
use super::*;

const TOKEN: &str = "v1.1.1767225600.AAAAAAAAAAAAAAAAAAAAAA.token-of-call-one";
const OTHER: &str = "v1.1.1767225600.BBBBBBBBBBBBBBBBBBBBBB.token-of-call-two";

fn settings(first: u16, last: u16) -> RelaySettings {
    RelaySettings {
        address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        ports: (first, last),
        inactivity: Duration::from_secs(30),
    }
}

fn addr(last: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, last)), port)
}

fn latch(token: &str, leg: Leg, port: u16, counter: u64) -> [u8; 48] {
    Latch {
        kind: Kind::Latch,
        leg,
        port,
        counter,
    }
    .encode(&LatchKey::new(token.as_bytes()))
}

fn rtp(seq: u8) -> Vec<u8> {
    let mut p = vec![0x80, 96, 0, seq, 0, 0, 0, 1, 0, 0, 0, 9];
    p.extend_from_slice(&[0xAB; 100]);
    p
}

const CALLER: u8 = 10;
const CALLEE: u8 = 20;

/// A table with one call of one stream whose two legs are latched.
fn latched_call(now: Instant) -> (RelayTable, Allocation) {
    let mut t = RelayTable::new(settings(40_000, 40_099), 7);
    let a = t.allocate(now, TOKEN, 1).unwrap();
    let [pa, pb] = a.streams[0];
    let v = t.handle_datagram(
        now,
        pa,
        addr(CALLER, 5000),
        &latch(TOKEN, Leg::Offerer, pa, 1),
    );
    assert!(matches!(v, Verdict::Answer { .. }), "{v:?}");
    let v = t.handle_datagram(
        now,
        pb,
        addr(CALLEE, 6000),
        &latch(TOKEN, Leg::Answerer, pb, 1),
    );
    assert!(matches!(v, Verdict::Answer { .. }), "{v:?}");
    (t, a)
}

#[test]
fn allocation_gives_a_pair_per_stream_from_the_range() {
    let now = Instant::now();
    let mut t = RelayTable::new(settings(40_000, 40_009), 1);
    let a = t.allocate(now, TOKEN, 2).unwrap();
    assert_eq!(a.streams.len(), 2);
    for [pa, pb] in &a.streams {
        assert!((40_000..=40_009).contains(pa) && pa % 2 == 0, "{pa}");
        assert_eq!(*pb, pa + 1);
    }
    assert_ne!(a.streams[0], a.streams[1]);
    assert_eq!(t.allocate(now, TOKEN, 0), Err(AllocError::Streams(0)));
    assert_eq!(t.allocate(now, TOKEN, 5), Err(AllocError::Streams(5)));
    // 5 pairs: 2 taken, 3 left; a call of 4 does not fit, one of 3 does.
    assert_eq!(t.allocate(now, TOKEN, 4), Err(AllocError::Full));
    let b = t.allocate(now, OTHER, 3).unwrap();
    assert_eq!(t.allocate(now, OTHER, 1), Err(AllocError::Full));
    assert_eq!(t.stats().allocation_failures, 2);
    assert_eq!(t.stats().live_calls, 2);
    // Freed ports come back; a freed id frees nothing twice.
    assert!(t.free(b.id).is_some());
    assert!(t.free(b.id).is_none());
    assert!(!t.alive(b.id) && t.alive(a.id));
    assert!(t.allocate(now, OTHER, 3).is_ok());
}

#[test]
fn an_old_id_cannot_free_the_slots_next_call() {
    let now = Instant::now();
    let mut t = RelayTable::new(settings(40_000, 40_001), 1);
    let a = t.allocate(now, TOKEN, 1).unwrap();
    t.free(a.id);
    let b = t.allocate(now, OTHER, 1).unwrap();
    assert_eq!(a.streams, b.streams);
    assert!(t.free(a.id).is_none());
    assert!(t.alive(b.id));
}

#[test]
fn latched_parties_exchange_packets_both_ways_and_are_counted() {
    let now = Instant::now();
    let (mut t, a) = latched_call(now);
    let [pa, pb] = a.streams[0];
    let p = rtp(1);
    assert_eq!(
        t.handle_datagram(now, pa, addr(CALLER, 5000), &p),
        Verdict::Forward {
            from: pb,
            to: addr(CALLEE, 6000)
        }
    );
    let rtcp = [0x80, 200, 0, 6, 0, 0, 0, 1];
    assert_eq!(
        t.handle_datagram(now, pb, addr(CALLEE, 6000), &rtcp),
        Verdict::Forward {
            from: pa,
            to: addr(CALLER, 5000)
        }
    );
    assert_eq!(
        t.handle_datagram(now, pb, addr(CALLEE, 6000), &p),
        Verdict::Forward {
            from: pa,
            to: addr(CALLER, 5000)
        }
    );
    let c = t.counters(a.id).unwrap();
    assert_eq!(c.packets, [1, 2]);
    assert_eq!(c.bytes, [p.len() as u64, (p.len() + rtcp.len()) as u64]);
    assert_eq!(c.rtcp, [0, 1]);
    assert_eq!(c.latches, 2);
    let s = t.stats();
    assert_eq!(s.forwarded_packets, 3);
    assert_eq!(s.latches, 2);
    assert_eq!(t.free(a.id), Some(c));
}

#[test]
fn the_latch_answer_is_a_latched_datagram_under_the_token() {
    let now = Instant::now();
    let mut t = RelayTable::new(settings(40_000, 40_099), 7);
    let a = t.allocate(now, TOKEN, 1).unwrap();
    let [pa, _] = a.streams[0];
    let v = t.handle_datagram(
        now,
        pa,
        addr(CALLER, 5000),
        &latch(TOKEN, Leg::Offerer, pa, 9),
    );
    let Verdict::Answer { from, to, data } = v else {
        panic!("{v:?}")
    };
    assert_eq!((from, to), (pa, addr(CALLER, 5000)));
    let l = Latch::verify(&data, &LatchKey::new(TOKEN.as_bytes())).unwrap();
    assert_eq!(
        l,
        Latch {
            kind: Kind::Latched,
            leg: Leg::Offerer,
            port: pa,
            counter: 9
        }
    );
}

#[test]
fn a_stranger_is_dropped_and_counted_before_and_after_the_latch() {
    let now = Instant::now();
    let mut t = RelayTable::new(settings(40_000, 40_099), 7);
    let a = t.allocate(now, TOKEN, 1).unwrap();
    let [pa, pb] = a.streams[0];
    // Nobody latched: even the future caller's media is not forwarded.
    assert_eq!(
        t.handle_datagram(now, pa, addr(CALLER, 5000), &rtp(1)),
        Verdict::Drop(Dropped::Stranger)
    );
    let (mut t, a) = latched_call(now);
    for port in [pa, pb] {
        assert_eq!(
            t.handle_datagram(now, port, addr(66, 5000), &rtp(1)),
            Verdict::Drop(Dropped::Stranger)
        );
    }
    // Same IP as the caller, another port: a stranger too.
    assert_eq!(
        t.handle_datagram(now, pa, addr(CALLER, 5001), &rtp(1)),
        Verdict::Drop(Dropped::Stranger)
    );
    assert_eq!(t.stats().dropped_stranger, 3);
    assert_eq!(t.counters(a.id).unwrap().dropped, 3);
    assert_eq!(t.counters(a.id).unwrap().packets, [0, 0]);
}

#[test]
fn a_latch_with_a_wrong_proof_leg_or_port_is_refused() {
    let now = Instant::now();
    let (mut t, a) = latched_call(now);
    let [pa, pb] = a.streams[0];
    let thief = addr(66, 7000);
    // Another call's token (a proof made for another call).
    assert_eq!(
        t.handle_datagram(now, pa, thief, &latch(OTHER, Leg::Offerer, pa, 5)),
        Verdict::Drop(Dropped::BadLatch)
    );
    // The right token, but for the other leg's port or the other leg.
    assert_eq!(
        t.handle_datagram(now, pa, thief, &latch(TOKEN, Leg::Offerer, pb, 5)),
        Verdict::Drop(Dropped::BadLatch)
    );
    assert_eq!(
        t.handle_datagram(now, pa, thief, &latch(TOKEN, Leg::Answerer, pa, 5)),
        Verdict::Drop(Dropped::BadLatch)
    );
    // Truncated, or a random 48 octets with the magic.
    let good = latch(TOKEN, Leg::Offerer, pa, 5);
    assert_eq!(
        t.handle_datagram(now, pa, thief, &good[..40]),
        Verdict::Drop(Dropped::BadLatch)
    );
    let mut forged = good;
    forged[20] ^= 0xFF;
    assert_eq!(
        t.handle_datagram(now, pa, thief, &forged),
        Verdict::Drop(Dropped::BadLatch)
    );
    assert_eq!(t.stats().latch_rejected, 5);
    // The latch did not move: media still flows to the caller.
    assert_eq!(
        t.handle_datagram(now, pb, addr(CALLEE, 6000), &rtp(1)),
        Verdict::Forward {
            from: pa,
            to: addr(CALLER, 5000)
        }
    );
}

#[test]
fn a_replayed_latch_cannot_move_the_leg_a_fresh_one_can() {
    let now = Instant::now();
    let (mut t, a) = latched_call(now);
    let [pa, pb] = a.streams[0];
    let seen = latch(TOKEN, Leg::Offerer, pa, 1);
    // The caller's own latch replayed from elsewhere.
    assert_eq!(
        t.handle_datagram(now, pa, addr(66, 7000), &seen),
        Verdict::Drop(Dropped::Replayed)
    );
    // Retransmitted by the caller itself: answered again, nothing changes.
    assert!(matches!(
        t.handle_datagram(now, pa, addr(CALLER, 5000), &seen),
        Verdict::Answer { .. }
    ));
    assert_eq!(t.stats().latches, 2);
    assert_eq!(t.stats().latch_replayed, 1);
    // The caller moved (new NAT binding): a fresh proof (larger counter) re-latches.
    let moved = addr(11, 5002);
    assert!(matches!(
        t.handle_datagram(now, pa, moved, &latch(TOKEN, Leg::Offerer, pa, 2)),
        Verdict::Answer { .. }
    ));
    assert_eq!(t.stats().relatches, 1);
    assert_eq!(
        t.handle_datagram(now, pb, addr(CALLEE, 6000), &rtp(2)),
        Verdict::Forward {
            from: pa,
            to: moved
        }
    );
    // The old address is a stranger now, and the counter 1 proof is spent.
    assert_eq!(
        t.handle_datagram(now, pa, addr(CALLER, 5000), &rtp(3)),
        Verdict::Drop(Dropped::Stranger)
    );
    assert_eq!(
        t.handle_datagram(now, pa, addr(CALLER, 5000), &seen),
        Verdict::Drop(Dropped::Replayed)
    );
    // A counter of 0 is never accepted.
    let mut t2 = RelayTable::new(settings(40_000, 40_001), 1);
    let b = t2.allocate(now, TOKEN, 1).unwrap();
    let p = b.streams[0][0];
    assert_eq!(
        t2.handle_datagram(now, p, addr(1, 1), &latch(TOKEN, Leg::Offerer, p, 0)),
        Verdict::Drop(Dropped::Replayed)
    );
}

#[test]
fn a_proof_for_a_freed_call_does_not_latch_the_ports_next_call() {
    let now = Instant::now();
    let mut t = RelayTable::new(settings(40_000, 40_001), 1);
    let a = t.allocate(now, TOKEN, 1).unwrap();
    let [pa, _] = a.streams[0];
    t.free(a.id);
    let b = t.allocate(now, OTHER, 1).unwrap();
    assert_eq!(b.streams[0][0], pa);
    assert_eq!(
        t.handle_datagram(
            now,
            pa,
            addr(CALLER, 5000),
            &latch(TOKEN, Leg::Offerer, pa, 3)
        ),
        Verdict::Drop(Dropped::BadLatch)
    );
}

#[test]
fn media_waits_for_the_far_end_to_latch() {
    let now = Instant::now();
    let mut t = RelayTable::new(settings(40_000, 40_099), 7);
    let a = t.allocate(now, TOKEN, 1).unwrap();
    let [pa, _] = a.streams[0];
    t.handle_datagram(
        now,
        pa,
        addr(CALLER, 5000),
        &latch(TOKEN, Leg::Offerer, pa, 1),
    );
    assert_eq!(
        t.handle_datagram(now, pa, addr(CALLER, 5000), &rtp(1)),
        Verdict::Drop(Dropped::FarEndNotLatched)
    );
    assert_eq!(t.stats().dropped_unlatched, 1);
}

#[test]
fn a_flood_to_unallocated_ports_is_dropped_and_counted_without_growing() {
    let now = Instant::now();
    let mut t = RelayTable::new(settings(40_000, 40_099), 7);
    let a = t.allocate(now, TOKEN, 1).unwrap();
    let held = a.streams[0];
    let mut n = 0u64;
    for i in 0..20_000u32 {
        let port = 39_990 + (i % 130) as u16; // below, inside and above the range
        if held.contains(&port) {
            continue;
        }
        let data = if i % 2 == 0 {
            rtp(i as u8)
        } else {
            latch(TOKEN, Leg::Offerer, port, u64::from(i)).to_vec()
        };
        let v = t.handle_datagram(now, port, addr((i % 250) as u8, 1000), &data);
        assert_eq!(v, Verdict::Drop(Dropped::Unallocated));
        n += 1;
    }
    assert_eq!(t.stats().dropped_unallocated, n);
    assert_eq!(t.stats().live_calls, 1);
    assert_eq!(t.stats().latches, 0);
}

#[test]
fn an_idle_call_expires_an_active_one_stays() {
    let t0 = Instant::now();
    let mut t = RelayTable::new(settings(40_000, 40_099), 7);
    let idle = t.allocate(t0, TOKEN, 1).unwrap();
    let (_, busy_alloc) = (0, t.allocate(t0, OTHER, 1).unwrap());
    let [pa, pb] = busy_alloc.streams[0];
    t.handle_datagram(
        t0,
        pa,
        addr(CALLER, 5000),
        &latch(OTHER, Leg::Offerer, pa, 1),
    );
    t.handle_datagram(
        t0,
        pb,
        addr(CALLEE, 6000),
        &latch(OTHER, Leg::Answerer, pb, 1),
    );
    assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(30)));
    let t1 = t0 + Duration::from_secs(20);
    t.handle_datagram(t1, pa, addr(CALLER, 5000), &rtp(1));
    assert_eq!(t.handle_timeout(t0 + Duration::from_secs(29)), 0);
    assert_eq!(t.handle_timeout(t0 + Duration::from_secs(30)), 1);
    assert!(!t.alive(idle.id) && t.alive(busy_alloc.id));
    assert_eq!(t.poll_timeout(), Some(t1 + Duration::from_secs(30)));
    assert_eq!(t.handle_timeout(t1 + Duration::from_secs(30)), 1);
    assert!(!t.alive(busy_alloc.id));
    let s = t.stats();
    assert_eq!((s.calls_expired, s.calls_freed, s.live_calls), (2, 0, 0));
    assert_eq!(t.poll_timeout(), None);
    // Its ports are unallocated now.
    assert_eq!(
        t.handle_datagram(t1, pa, addr(CALLER, 5000), &rtp(2)),
        Verdict::Drop(Dropped::Unallocated)
    );
}

#[test]
fn calls_are_bounded_by_the_range() {
    let now = Instant::now();
    let mut t = RelayTable::new(settings(40_000, 40_999), 3);
    assert_eq!(t.settings().pairs(), 500);
    let ids: Vec<_> = (0..500)
        .map(|_| t.allocate(now, TOKEN, 1).unwrap().id)
        .collect();
    assert_eq!(t.allocate(now, TOKEN, 1), Err(AllocError::Full));
    let mut ports: Vec<u16> = Vec::new();
    for id in &ids {
        assert!(t.alive(*id));
    }
    for p in 40_000..=40_999u16 {
        if matches!(
            t.handle_datagram(now, p, addr(1, 1), &rtp(0)),
            Verdict::Drop(Dropped::Stranger)
        ) {
            ports.push(p);
        }
    }
    assert_eq!(ports.len(), 1000, "every port belongs to a call");
}

#[test]
fn a_range_at_the_top_of_the_port_space_works_to_its_last_port() {
    let now = Instant::now();
    let mut t = RelayTable::new(settings(65_530, 65_535), 2);
    let a = t.allocate(now, TOKEN, 3).unwrap();
    let mut ports: Vec<u16> = a.streams.iter().flatten().copied().collect();
    ports.sort_unstable();
    assert_eq!(ports, (65_530..=65_535).collect::<Vec<_>>());
    for [pa, pb] in &a.streams {
        t.handle_datagram(
            now,
            *pa,
            addr(CALLER, 5000),
            &latch(TOKEN, Leg::Offerer, *pa, 1),
        );
        t.handle_datagram(
            now,
            *pb,
            addr(CALLEE, 6000),
            &latch(TOKEN, Leg::Answerer, *pb, 1),
        );
        assert_eq!(
            t.handle_datagram(now, *pa, addr(CALLER, 5000), &rtp(1)),
            Verdict::Forward {
                from: *pb,
                to: addr(CALLEE, 6000)
            }
        );
    }
}
