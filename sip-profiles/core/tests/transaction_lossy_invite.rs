//! An INVITE client and server transaction over a simulated lossy, reordering,
//! duplicating network, across many seeds: the client ends with the final response,
//! or times out only when no final response ever reached it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sip_core::transaction::{
    AckAction, ClientInvite, ResponseAction, ServerInvite, State, Timer, TimerConfig,
    TransactionEvent,
};
use sip_testkit::rand::Rng;
use sip_testkit::{Endpoint, LinkConfig, SimNetwork, StdRng, VirtualClock, earliest, seeded_rng};

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

/// What one INVITE run ended with.
#[derive(Debug, Default)]
struct InviteRun {
    passed_up: Vec<u16>,
    finals_delivered: usize,
    client_events: Vec<(Duration, TransactionEvent)>,
    client_state: Option<State>,
    acks_sent: usize,
    finals_absorbed: usize,
    server_events: Vec<TransactionEvent>,
    server_acks_delivered: usize,
    server_created: bool,
}

/// The UAS: answers 100 at once, 180 a little later, then `final_status`. For a 2xx it
/// retransmits the 2xx itself until the ACK (§13.3.1.4), through the server
/// transaction while it lives.
struct Uas {
    tx: Option<ServerInvite>,
    script: Vec<(Instant, u16)>,
    retransmit_2xx: Option<(Instant, Duration, Instant)>,
    acked: bool,
}

impl Uas {
    fn poll_timeout(&self) -> Option<Instant> {
        let script = self.script.iter().map(|(at, _)| *at).min();
        let retransmit = self
            .retransmit_2xx
            .filter(|_| !self.acked)
            .map(|(at, _, _)| at);
        earliest([
            script,
            retransmit,
            self.tx.as_ref().and_then(ServerInvite::poll_timeout),
        ])
    }
}

#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn run_invite(seed: u64, a_to_b: LinkConfig, b_to_a: LinkConfig, final_status: u16) -> InviteRun {
    let cfg = TimerConfig::default();
    let mut clock = VirtualClock::new();
    let mut net = SimNetwork::new(seed, a_to_b, b_to_a);
    let mut rng: StdRng = seeded_rng(seed ^ 0x5eed);
    let mut client = ClientInvite::new(clock.now(), Bytes::from_static(b"INVITE"), false, &cfg);
    let mut uas = Uas {
        tx: None,
        script: Vec::new(),
        retransmit_2xx: None,
        acked: false,
    };
    let mut out = InviteRun::default();
    let limit = clock.now() + Duration::from_mins(10);

    loop {
        let now = clock.now();
        while let Some(d) = client.poll_transmit() {
            out.acks_sent += usize::from(d == "ACK");
            net.send(now, CLIENT, d);
        }
        while let Some(e) = client.poll_event() {
            out.client_events.push((clock.elapsed(), e));
        }
        if let Some(tx) = uas.tx.as_mut() {
            while let Some(d) = tx.poll_transmit() {
                net.send(now, SERVER, d);
            }
            while let Some(e) = tx.poll_event() {
                out.server_events.push(e);
            }
        }
        let Some(wake) = earliest([
            client.poll_timeout(),
            net.poll_timeout(),
            uas.poll_timeout(),
        ]) else {
            break;
        };
        assert!(wake <= limit, "seed {seed}: the run does not settle");
        clock.advance_to(wake);
        let now = clock.now();

        while let Some(d) = net.poll_deliver(now) {
            if d.to == CLIENT {
                let status = status_of(&d.payload).expect("responses are status codes");
                if client.is_terminated() {
                    continue; // a late response: the core would handle it statelessly
                }
                out.finals_delivered += usize::from(status >= 200);
                match client.handle_response(now, status, || Bytes::from_static(b"ACK")) {
                    Ok(ResponseAction::PassUp) => {
                        out.passed_up.push(status);
                        if (200..300).contains(&status) {
                            // §13.2.2.4: the UAC core ACKs every 2xx itself.
                            net.send(now, CLIENT, Bytes::from_static(b"ACK 2xx"));
                        }
                    }
                    Ok(ResponseAction::Absorb) => out.finals_absorbed += usize::from(status >= 200),
                    Err(e) => panic!("seed {seed}: {status} refused in {:?}: {e}", client.state()),
                }
                continue;
            }
            match &d.payload[..] {
                b"INVITE" => match uas.tx.as_mut() {
                    None => {
                        let mut tx = ServerInvite::new(now, false, &cfg);
                        tx.send_response(now, 100, response(100)).unwrap();
                        uas.tx = Some(tx);
                        out.server_created = true;
                        let ringing = now + Duration::from_millis(rng.random_range(0..500));
                        let answer = ringing + Duration::from_millis(rng.random_range(0..2500));
                        uas.script = vec![(ringing, 180), (answer, final_status)];
                    }
                    Some(tx) if !tx.is_terminated() => {
                        tx.handle_request_retransmission(now).unwrap();
                    }
                    Some(_) => {}
                },
                b"ACK" => {
                    let tx = uas.tx.as_mut().expect("no ACK before an INVITE");
                    if !tx.is_terminated() {
                        out.server_acks_delivered += 1;
                        assert_eq!(tx.handle_ack(now), Ok(AckAction::Absorb), "seed {seed}");
                    }
                }
                b"ACK 2xx" => {
                    let tx = uas.tx.as_mut().expect("no ACK before an INVITE");
                    if !tx.is_terminated() {
                        out.server_acks_delivered += 1;
                        assert_eq!(tx.handle_ack(now), Ok(AckAction::PassUp), "seed {seed}");
                    }
                    uas.acked = true;
                }
                other => panic!("unexpected datagram {other:?}"),
            }
        }

        client.handle_timeout(now);
        if let Some(tx) = uas.tx.as_mut() {
            tx.handle_timeout(now);
            while let Some(pos) = uas.script.iter().position(|(at, _)| *at <= now) {
                let (_, status) = uas.script.remove(pos);
                tx.send_response(now, status, response(status)).unwrap();
                if (200..300).contains(&status) {
                    uas.retransmit_2xx = Some((now + cfg.t1, cfg.t1, now + cfg.t1 * 64));
                }
            }
            if let Some((at, interval, give_up)) =
                uas.retransmit_2xx.filter(|r| r.0 <= now && !uas.acked)
            {
                uas.retransmit_2xx = (at < give_up).then(|| {
                    if tx.is_terminated() {
                        net.send(now, SERVER, response(final_status));
                    } else {
                        tx.send_response(now, final_status, response(final_status))
                            .unwrap();
                    }
                    let interval = (interval * 2).min(cfg.t2);
                    (at + interval, interval, give_up)
                });
            }
        }
    }
    out.client_state = Some(client.state());
    out
}

/// Checks one INVITE run answered 486; returns whether the client got the final.
fn check_rejected(seed: u64, run: &InviteRun) -> bool {
    let finals: Vec<_> = run.passed_up.iter().filter(|s| **s >= 200).collect();
    if !run.server_created {
        // Every INVITE was lost: Timer B is the only way out.
        assert_eq!(
            run.client_events.first().map(|e| e.1),
            Some(TransactionEvent::Timeout(Timer::B))
        );
        return false;
    }
    match run.server_events.as_slice() {
        [TransactionEvent::Terminated] => assert!(run.server_acks_delivered > 0, "seed {seed}"),
        [
            TransactionEvent::Timeout(Timer::H),
            TransactionEvent::Terminated,
        ] => {
            assert_eq!(
                run.server_acks_delivered, 0,
                "seed {seed}: Timer H only without an ACK"
            );
        }
        other => panic!("seed {seed}: server ended with {other:?}"),
    }
    if finals.is_empty() {
        assert_eq!(
            run.finals_delivered, 0,
            "seed {seed}: a delivered final must reach the TU"
        );
        // Lost every time: timed out in Calling, or waiting in Proceeding, where only
        // the TU's Timer C (§16.6) would end it.
        if run.client_events.first().map(|e| e.1) != Some(TransactionEvent::Timeout(Timer::B)) {
            assert_eq!(run.client_state, Some(State::Proceeding), "seed {seed}");
        }
        return false;
    }
    assert_eq!(
        finals,
        [&486],
        "seed {seed}: the final goes up exactly once"
    );
    assert_eq!(
        run.acks_sent,
        1 + run.finals_absorbed,
        "seed {seed}: one ACK per final received"
    );
    assert_eq!(
        run.client_state,
        Some(State::Terminated),
        "seed {seed}: Timer D ran out"
    );
    true
}

#[test]
fn invite_rejected_over_30_percent_loss() {
    let completed = (0..SEEDS)
        .filter(|seed| check_rejected(*seed, &run_invite(*seed, lossy(0.3), lossy(0.3), 486)))
        .count();
    assert!(
        completed as u64 >= SEEDS * 97 / 100,
        "only {completed} of {SEEDS} runs completed"
    );
}

#[test]
fn invite_rejected_over_80_percent_loss_fails_only_without_a_final() {
    let completed = (0..SEEDS)
        .filter(|seed| check_rejected(*seed, &run_invite(*seed, lossy(0.8), lossy(0.8), 486)))
        .count();
    assert!(
        completed > 0 && completed < SEEDS as usize,
        "both outcomes occur: {completed} of {SEEDS}"
    );
}

#[test]
fn invite_accepted_over_30_percent_loss_passes_every_2xx_up() {
    let mut completed = 0;
    for seed in 0..SEEDS {
        let run = run_invite(seed, lossy(0.3), lossy(0.3), 200);
        let oks = run.passed_up.iter().filter(|s| **s == 200).count();
        if oks == 0 {
            assert_eq!(run.finals_delivered, 0, "seed {seed}");
            continue;
        }
        completed += 1;
        assert_eq!(
            run.finals_absorbed, 0,
            "seed {seed}: RFC 6026: no 2xx is absorbed in Accepted"
        );
        assert_eq!(
            oks, run.finals_delivered,
            "seed {seed}: every delivered 2xx goes up"
        );
        assert_eq!(
            run.acks_sent, 0,
            "seed {seed}: the transaction never ACKs a 2xx"
        );
        assert_eq!(
            run.server_events,
            [TransactionEvent::Terminated],
            "seed {seed}: Timer L ends Accepted"
        );
        assert_eq!(
            run.client_events.last().map(|e| e.1),
            Some(TransactionEvent::Terminated)
        );
    }
    assert!(
        completed >= SEEDS * 97 / 100,
        "only {completed} of {SEEDS} runs completed"
    );
}

#[test]
fn invite_times_out_at_timer_b_when_every_request_is_lost() {
    for seed in 0..20 {
        let run = run_invite(seed, lossy(1.0), lossy(0.0), 486);
        assert!(!run.server_created);
        assert!(run.passed_up.is_empty());
        assert_eq!(
            run.client_events,
            [
                (Duration::from_secs(32), TransactionEvent::Timeout(Timer::B)),
                (Duration::from_secs(32), TransactionEvent::Terminated)
            ],
            "seed {seed}"
        );
    }
}

#[test]
fn invite_times_out_when_every_response_is_lost() {
    for seed in 0..20 {
        let run = run_invite(seed, lossy(0.0), lossy(1.0), 486);
        assert!(run.server_created && run.passed_up.is_empty() && run.finals_delivered == 0);
        assert_eq!(
            run.client_events[0],
            (Duration::from_secs(32), TransactionEvent::Timeout(Timer::B))
        );
        assert_eq!(
            run.server_events,
            [
                TransactionEvent::Timeout(Timer::H),
                TransactionEvent::Terminated
            ]
        );
    }
}
