//! Random input sequences for all four machines: no panic, errors change nothing,
//! states only move forward, timers are never left overdue, Terminated is reported
//! exactly once.

use std::time::Duration;

use bytes::Bytes;
use sip_core::transaction::{
    ClientInvite, ClientNonInvite, ServerInvite, ServerNonInvite, State, TimerConfig, Transaction,
    TransactionEvent,
};
use sip_testkit::rand::Rng;
use sip_testkit::{StdRng, VirtualClock, seeded_rng};

/// Forward order of states; a machine never moves to a lower rank.
fn rank(state: State) -> u8 {
    match state {
        State::Calling | State::Trying => 0,
        State::Proceeding => 1,
        State::Completed | State::Accepted => 2,
        State::Confirmed => 3,
        State::Terminated => 4,
    }
}

/// A status code, mostly valid, sometimes out of range.
fn status(rng: &mut StdRng) -> u16 {
    match rng.random_range(0..10) {
        0 => rng.random_range(0..100),
        1 => rng.random_range(700..1000),
        2..=4 => rng.random_range(100..200),
        5..=6 => rng.random_range(200..300),
        _ => rng.random_range(300..700),
    }
}

/// Feeds one random input; returns whether it was refused.
type Input<T> = fn(&mut T, &mut StdRng, std::time::Instant) -> bool;

fn exercise<T: Transaction>(seed: u64, mut tx: T, mut clock: VirtualClock, input: Input<T>) {
    let mut rng = seeded_rng(seed);
    let mut terminated_events = 0;
    let mut drain = |tx: &mut T| {
        let sent = std::iter::from_fn(|| tx.poll_transmit()).count();
        while let Some(e) = tx.poll_event() {
            if e == TransactionEvent::Terminated {
                terminated_events += 1;
                assert_eq!(tx.state(), State::Terminated, "seed {seed}");
            }
        }
        sent
    };
    drain(&mut tx);
    for _ in 0..60 {
        let before = (tx.state(), tx.poll_timeout());
        let now = clock.now();
        if rng.random_bool(0.3) {
            clock.advance(Duration::from_millis(rng.random_range(0..8000)));
            tx.handle_timeout(clock.now());
            assert!(
                tx.poll_timeout().is_none_or(|at| at > clock.now()),
                "seed {seed}: overdue timer"
            );
        } else if rng.random_bool(0.02) {
            tx.handle_transport_error(now);
            assert!(tx.is_terminated());
        } else if input(&mut tx, &mut rng, now) {
            assert_eq!(
                (tx.state(), tx.poll_timeout()),
                before,
                "seed {seed}: an error changed the machine"
            );
            assert_eq!(drain(&mut tx), 0, "seed {seed}: an error sent something");
        }
        assert!(
            rank(tx.state()) >= rank(before.0),
            "seed {seed}: {:?} -> {:?}",
            before.0,
            tx.state()
        );
        drain(&mut tx);
        if tx.is_terminated() {
            assert_eq!(tx.poll_timeout(), None);
        }
    }
    // Run out every timer: every machine except a server waiting for its TU ends.
    while let Some(at) = tx.poll_timeout() {
        clock.advance_to(at);
        tx.handle_timeout(at);
    }
    drain(&mut tx);
    let ends = tx.is_terminated();
    assert_eq!(
        terminated_events,
        usize::from(ends),
        "seed {seed}: Terminated reported once"
    );
}

#[test]
fn client_invite_random_input() {
    for seed in 0..300 {
        let clock = VirtualClock::new();
        let tx = ClientInvite::new(
            clock.now(),
            Bytes::from_static(b"INVITE"),
            seed % 3 == 0,
            &TimerConfig::default(),
        );
        exercise(seed, tx, clock, |tx, rng, now| {
            tx.handle_response(now, status(rng), || Bytes::from_static(b"ACK"))
                .is_err()
        });
    }
}

#[test]
fn client_non_invite_random_input() {
    for seed in 0..300 {
        let clock = VirtualClock::new();
        let tx = ClientNonInvite::new(
            clock.now(),
            Bytes::from_static(b"BYE"),
            seed % 3 == 0,
            &TimerConfig::default(),
        );
        exercise(seed, tx, clock, |tx, rng, now| {
            tx.handle_response(now, status(rng)).is_err()
        });
    }
}

#[test]
fn server_invite_random_input() {
    for seed in 0..300 {
        let clock = VirtualClock::new();
        let tx = ServerInvite::new(clock.now(), seed % 3 == 0, &TimerConfig::default());
        exercise(seed, tx, clock, |tx, rng, now| {
            match rng.random_range(0..3) {
                0 => tx.handle_request_retransmission(now).is_err(),
                1 => tx.handle_ack(now).is_err(),
                _ => tx
                    .send_response(now, status(rng), Bytes::from_static(b"response"))
                    .is_err(),
            }
        });
    }
}

#[test]
fn server_non_invite_random_input() {
    for seed in 0..300 {
        let clock = VirtualClock::new();
        let tx = ServerNonInvite::new(clock.now(), seed % 3 == 0, &TimerConfig::default());
        exercise(seed, tx, clock, |tx, rng, now| {
            if rng.random_bool(0.5) {
                tx.handle_request_retransmission(now).is_err()
            } else {
                tx.send_response(now, status(rng), Bytes::from_static(b"response"))
                    .is_err()
            }
        });
    }
}
