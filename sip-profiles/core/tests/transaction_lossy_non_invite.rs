//! A non-INVITE client and server transaction over a simulated lossy, reordering,
//! duplicating network, across many seeds: the client ends with the final response,
//! or times out (Timer F) only when no final response ever reached it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sip_core::transaction::{
    ClientNonInvite, ResponseAction, ServerNonInvite, Timer, TimerConfig, TransactionEvent,
};
use sip_testkit::rand::Rng;
use sip_testkit::{Endpoint, LinkConfig, SimNetwork, VirtualClock, earliest, seeded_rng};

const SEEDS: u64 = 200;
const CLIENT: Endpoint = Endpoint::A;
const SERVER: Endpoint = Endpoint::B;

fn lossy(loss: f64) -> LinkConfig {
    LinkConfig::perfect(Duration::from_millis(20))
        .with_jitter(Duration::from_millis(150))
        .with_loss(loss)
        .with_duplication(0.05)
}

fn status_of(payload: &Bytes) -> Option<u16> {
    std::str::from_utf8(payload).ok()?.parse().ok()
}

fn response(status: u16) -> Bytes {
    Bytes::from(status.to_string())
}

/// One non-INVITE run: `(final responses passed up, finals delivered, client events)`.
fn run_non_invite(
    seed: u64,
    a_to_b: LinkConfig,
    b_to_a: LinkConfig,
) -> (Vec<u16>, usize, Vec<TransactionEvent>) {
    let cfg = TimerConfig::default();
    let mut clock = VirtualClock::new();
    let mut net = SimNetwork::new(seed, a_to_b, b_to_a);
    let mut rng = seeded_rng(seed ^ 0xbeef);
    let mut client = ClientNonInvite::new(clock.now(), Bytes::from_static(b"OPTIONS"), false, &cfg);
    let mut server: Option<ServerNonInvite> = None;
    let mut script: Vec<(Instant, u16)> = Vec::new();
    let (mut passed_up, mut delivered, mut events) = (Vec::new(), 0, Vec::new());
    let limit = clock.now() + Duration::from_mins(10);
    loop {
        let now = clock.now();
        while let Some(d) = client.poll_transmit() {
            net.send(now, CLIENT, d);
        }
        events.extend(std::iter::from_fn(|| client.poll_event()));
        if let Some(tx) = server.as_mut() {
            while let Some(d) = tx.poll_transmit() {
                net.send(now, SERVER, d);
            }
        }
        let script_at = script.iter().map(|(at, _)| *at).min();
        let server_at = server.as_ref().and_then(ServerNonInvite::poll_timeout);
        let Some(wake) = earliest([
            client.poll_timeout(),
            net.poll_timeout(),
            script_at,
            server_at,
        ]) else {
            break;
        };
        assert!(wake <= limit, "seed {seed}: the run does not settle");
        clock.advance_to(wake);
        let now = clock.now();
        while let Some(d) = net.poll_deliver(now) {
            if d.to == CLIENT {
                let status = status_of(&d.payload).unwrap();
                if client.is_terminated() {
                    continue;
                }
                delivered += usize::from(status >= 200);
                if client.handle_response(now, status).unwrap() == ResponseAction::PassUp
                    && status >= 200
                {
                    passed_up.push(status);
                }
            } else if let Some(tx) = server.as_mut() {
                if !tx.is_terminated() {
                    tx.handle_request_retransmission(now).unwrap();
                }
            } else {
                server = Some(ServerNonInvite::new(now, false, &cfg));
                let answer = now + Duration::from_millis(rng.random_range(0..3000));
                script = vec![(answer, 200)];
                if answer > now + Duration::from_millis(200) {
                    script.push((now + Duration::from_millis(200), 100));
                }
            }
        }
        client.handle_timeout(now);
        if let Some(tx) = server.as_mut() {
            tx.handle_timeout(now);
            script.sort_unstable();
            while script.first().is_some_and(|(at, _)| *at <= now) {
                let (_, status) = script.remove(0);
                tx.send_response(now, status, response(status)).unwrap();
            }
        }
    }
    (passed_up, delivered, events)
}

/// Checks one non-INVITE run; returns whether the client got the final.
fn check_non_invite(
    seed: u64,
    (passed_up, delivered, events): (Vec<u16>, usize, Vec<TransactionEvent>),
) -> bool {
    if passed_up.is_empty() {
        assert_eq!(
            delivered, 0,
            "seed {seed}: a delivered final must reach the TU"
        );
        assert_eq!(
            events,
            [
                TransactionEvent::Timeout(Timer::F),
                TransactionEvent::Terminated
            ]
        );
        return false;
    }
    assert_eq!(
        passed_up,
        [200],
        "seed {seed}: the final goes up exactly once"
    );
    assert_eq!(
        events,
        [TransactionEvent::Terminated],
        "seed {seed}: Timer K ends Completed"
    );
    true
}

#[test]
fn non_invite_over_30_percent_loss() {
    let completed = (0..SEEDS)
        .filter(|seed| check_non_invite(*seed, run_non_invite(*seed, lossy(0.3), lossy(0.3))))
        .count();
    assert!(
        completed as u64 >= SEEDS * 95 / 100,
        "only {completed} of {SEEDS} runs completed"
    );
}

#[test]
fn non_invite_over_80_percent_loss_fails_only_without_a_final() {
    let completed = (0..SEEDS)
        .filter(|seed| check_non_invite(*seed, run_non_invite(*seed, lossy(0.8), lossy(0.8))))
        .count();
    assert!(
        completed > 0 && completed < SEEDS as usize,
        "both outcomes occur: {completed} of {SEEDS}"
    );
}

#[test]
fn non_invite_times_out_at_timer_f_under_total_loss() {
    for seed in 0..20 {
        let (passed_up, _, events) = run_non_invite(seed, lossy(1.0), lossy(1.0));
        assert!(passed_up.is_empty());
        assert_eq!(
            events,
            [
                TransactionEvent::Timeout(Timer::F),
                TransactionEvent::Terminated
            ]
        );
    }
}
