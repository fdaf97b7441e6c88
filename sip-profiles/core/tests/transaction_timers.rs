//! Transaction timers at exact virtual instants (RFC 3261 §17, Table 4; RFC 6026 §8.4).

use std::time::Duration;

use bytes::Bytes;
use sip_core::transaction::{
    AckAction, ClientInvite, ClientNonInvite, ResponseAction, ServerInvite, ServerNonInvite, State,
    Timer, TimerConfig, Transaction, TransactionEvent,
};
use sip_testkit::VirtualClock;

const UDP: bool = false;
const TCP: bool = true;

/// What a transaction did, stamped with virtual milliseconds since the clock's start.
#[derive(Default)]
struct Trace {
    sent: Vec<(u128, Bytes)>,
    events: Vec<(u128, TransactionEvent)>,
}

impl Trace {
    fn sent_at(&self) -> Vec<u128> {
        self.sent.iter().map(|(t, _)| *t).collect()
    }
}

fn drain(tx: &mut impl Transaction, clock: &VirtualClock, trace: &mut Trace) {
    let now = clock.elapsed().as_millis();
    while let Some(d) = tx.poll_transmit() {
        trace.sent.push((now, d));
    }
    while let Some(e) = tx.poll_event() {
        trace.events.push((now, e));
    }
}

/// Drains, then fires timers one deadline at a time until none is due within `span`.
fn run(tx: &mut impl Transaction, clock: &mut VirtualClock, trace: &mut Trace, span: Duration) {
    let until = clock.now() + span;
    drain(tx, clock, trace);
    while let Some(at) = tx.poll_timeout().filter(|at| *at <= until) {
        clock.advance_to(at);
        tx.handle_timeout(clock.now());
        drain(tx, clock, trace);
    }
    clock.advance_to(until.max(clock.now()));
}

const FOREVER: Duration = Duration::from_hours(1);

fn ack() -> Bytes {
    Bytes::from_static(b"ACK")
}

fn end(trace: &Trace) -> &[(u128, TransactionEvent)] {
    &trace.events
}

#[test]
fn client_invite_udp_timer_a_doubles_until_timer_b() {
    let mut clock = VirtualClock::new();
    let cfg = TimerConfig::default();
    let mut tx = ClientInvite::new(clock.now(), Bytes::from_static(b"INVITE"), UDP, &cfg);
    let mut trace = Trace::default();
    run(&mut tx, &mut clock, &mut trace, FOREVER);
    // §17.1.1.2: T1, 3*T1, 7*T1, ... until Timer B at 64*T1.
    let t1 = 500;
    assert_eq!(
        trace.sent_at(),
        [0, t1, 3 * t1, 7 * t1, 15 * t1, 31 * t1, 63 * t1]
    );
    assert!(trace.sent.iter().all(|(_, d)| d == "INVITE"));
    assert_eq!(
        end(&trace),
        [
            (64 * t1, TransactionEvent::Timeout(Timer::B)),
            (64 * t1, TransactionEvent::Terminated)
        ]
    );
    assert_eq!(tx.state(), State::Terminated);
    assert_eq!(tx.poll_timeout(), None);
}

#[test]
fn client_invite_tcp_never_retransmits_but_times_out() {
    let mut clock = VirtualClock::new();
    let mut tx = ClientInvite::new(
        clock.now(),
        Bytes::from_static(b"INVITE"),
        TCP,
        &TimerConfig::default(),
    );
    let mut trace = Trace::default();
    run(&mut tx, &mut clock, &mut trace, FOREVER);
    assert_eq!(trace.sent_at(), [0]);
    assert_eq!(
        end(&trace)[0],
        (32_000, TransactionEvent::Timeout(Timer::B))
    );
}

#[test]
fn client_invite_stops_retransmitting_in_proceeding() {
    let mut clock = VirtualClock::new();
    let mut tx = ClientInvite::new(
        clock.now(),
        Bytes::from_static(b"INVITE"),
        UDP,
        &TimerConfig::default(),
    );
    let mut trace = Trace::default();
    run(&mut tx, &mut clock, &mut trace, Duration::from_secs(2));
    assert_eq!(
        tx.handle_response(clock.now(), 180, ack),
        Ok(ResponseAction::PassUp)
    );
    assert_eq!(tx.state(), State::Proceeding);
    assert_eq!(
        tx.poll_timeout(),
        None,
        "no Timer A, no Timer B in Proceeding"
    );
    run(&mut tx, &mut clock, &mut trace, FOREVER);
    assert_eq!(trace.sent_at(), [0, 500, 1500]);
    assert!(trace.events.is_empty());
}

#[test]
fn client_invite_timer_d_is_32s_on_udp_and_zero_on_tcp() {
    for (reliable, linger) in [(UDP, Some(32_000)), (TCP, None)] {
        let mut clock = VirtualClock::new();
        let mut tx = ClientInvite::new(
            clock.now(),
            Bytes::from_static(b"INVITE"),
            reliable,
            &TimerConfig::default(),
        );
        let mut trace = Trace::default();
        drain(&mut tx, &clock, &mut trace);
        clock.advance(Duration::from_millis(100));
        assert_eq!(
            tx.handle_response(clock.now(), 486, ack),
            Ok(ResponseAction::PassUp)
        );
        run(&mut tx, &mut clock, &mut trace, FOREVER);
        assert_eq!(
            trace.sent,
            [(0, Bytes::from_static(b"INVITE")), (100, ack())]
        );
        let terminated_at = linger.map_or(100, |d| 100 + d);
        assert_eq!(
            end(&trace),
            [(terminated_at, TransactionEvent::Terminated)],
            "reliable={reliable}"
        );
    }
}

#[test]
fn client_invite_accepted_passes_2xx_up_until_timer_m() {
    for reliable in [UDP, TCP] {
        let mut clock = VirtualClock::new();
        let mut tx = ClientInvite::new(
            clock.now(),
            Bytes::from_static(b"INVITE"),
            reliable,
            &TimerConfig::default(),
        );
        let mut trace = Trace::default();
        drain(&mut tx, &clock, &mut trace);
        clock.advance(Duration::from_millis(200));
        assert_eq!(
            tx.handle_response(clock.now(), 200, || unreachable!("no ACK for 2xx")),
            Ok(ResponseAction::PassUp)
        );
        assert_eq!(tx.state(), State::Accepted);
        clock.advance(Duration::from_millis(500));
        assert_eq!(
            tx.handle_response(clock.now(), 200, || unreachable!("no ACK for 2xx")),
            Ok(ResponseAction::PassUp)
        );
        run(&mut tx, &mut clock, &mut trace, FOREVER);
        assert_eq!(trace.sent_at(), [0], "the transaction never ACKs a 2xx");
        assert_eq!(
            end(&trace),
            [(200 + 32_000, TransactionEvent::Terminated)],
            "Timer M = 64*T1"
        );
    }
}

#[test]
fn client_non_invite_timer_e_caps_at_t2_and_timer_f_times_out() {
    let mut clock = VirtualClock::new();
    let mut tx = ClientNonInvite::new(
        clock.now(),
        Bytes::from_static(b"OPTIONS"),
        UDP,
        &TimerConfig::default(),
    );
    let mut trace = Trace::default();
    run(&mut tx, &mut clock, &mut trace, FOREVER);
    // §17.1.2.2: intervals 500, 1000, 2000, then T2 = 4000 until Timer F at 64*T1.
    let expected = [
        0, 500, 1500, 3500, 7500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500,
    ];
    assert_eq!(trace.sent_at(), expected);
    assert_eq!(
        end(&trace),
        [
            (32_000, TransactionEvent::Timeout(Timer::F)),
            (32_000, TransactionEvent::Terminated)
        ]
    );
}

#[test]
fn client_non_invite_retransmits_every_t2_in_proceeding() {
    let mut clock = VirtualClock::new();
    let mut tx = ClientNonInvite::new(
        clock.now(),
        Bytes::from_static(b"REGISTER"),
        UDP,
        &TimerConfig::default(),
    );
    let mut trace = Trace::default();
    run(&mut tx, &mut clock, &mut trace, Duration::from_millis(600));
    assert_eq!(
        tx.handle_response(clock.now(), 100),
        Ok(ResponseAction::PassUp)
    );
    assert_eq!(tx.state(), State::Proceeding);
    run(&mut tx, &mut clock, &mut trace, FOREVER);
    // Timer E armed in Trying fires at 1500, then is reset to T2 each time.
    assert_eq!(
        trace.sent_at(),
        [
            0, 500, 1500, 5500, 9500, 13_500, 17_500, 21_500, 25_500, 29_500
        ]
    );
    assert_eq!(
        end(&trace)[0],
        (32_000, TransactionEvent::Timeout(Timer::F)),
        "Timer F still runs in Proceeding"
    );
}

#[test]
fn client_non_invite_timer_k_is_t4_on_udp_and_zero_on_tcp() {
    for (reliable, k) in [(UDP, 5000), (TCP, 0)] {
        let mut clock = VirtualClock::new();
        let mut tx = ClientNonInvite::new(
            clock.now(),
            Bytes::from_static(b"BYE"),
            reliable,
            &TimerConfig::default(),
        );
        let mut trace = Trace::default();
        run(&mut tx, &mut clock, &mut trace, Duration::from_millis(700));
        assert_eq!(
            tx.handle_response(clock.now(), 200),
            Ok(ResponseAction::PassUp)
        );
        run(&mut tx, &mut clock, &mut trace, FOREVER);
        let sent: &[u128] = if reliable { &[0] } else { &[0, 500] };
        assert_eq!(trace.sent_at(), sent);
        assert_eq!(
            end(&trace),
            [(700 + k, TransactionEvent::Terminated)],
            "reliable={reliable}"
        );
    }
}

#[test]
fn server_invite_timer_g_doubles_to_t2_until_timer_h() {
    let mut clock = VirtualClock::new();
    let mut tx = ServerInvite::new(clock.now(), UDP, &TimerConfig::default());
    let mut trace = Trace::default();
    tx.send_response(clock.now(), 100, Bytes::from_static(b"100"))
        .unwrap();
    clock.advance(Duration::from_secs(1));
    tx.send_response(clock.now(), 486, Bytes::from_static(b"486"))
        .unwrap();
    run(&mut tx, &mut clock, &mut trace, FOREVER);
    // §17.2.1: G = T1, 2*T1, 4*T1, then T2, relative to the final at 1000 ms.
    let finals: Vec<u128> = trace
        .sent
        .iter()
        .filter(|(_, d)| d == "486")
        .map(|(t, _)| t - 1000)
        .collect();
    assert_eq!(
        finals,
        [
            0, 500, 1500, 3500, 7500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500
        ]
    );
    assert_eq!(
        end(&trace),
        [
            (33_000, TransactionEvent::Timeout(Timer::H)),
            (33_000, TransactionEvent::Terminated)
        ]
    );
}

#[test]
fn server_invite_confirmed_lingers_timer_i() {
    for (reliable, i) in [(UDP, 5000), (TCP, 0)] {
        let mut clock = VirtualClock::new();
        let mut tx = ServerInvite::new(clock.now(), reliable, &TimerConfig::default());
        let mut trace = Trace::default();
        tx.send_response(clock.now(), 603, Bytes::from_static(b"603"))
            .unwrap();
        run(&mut tx, &mut clock, &mut trace, Duration::from_millis(800));
        assert_eq!(tx.handle_ack(clock.now()), Ok(AckAction::Absorb));
        run(&mut tx, &mut clock, &mut trace, FOREVER);
        let sent: &[u128] = if reliable { &[0] } else { &[0, 500] };
        assert_eq!(trace.sent_at(), sent, "no Timer G on TCP; G stops on ACK");
        assert_eq!(
            end(&trace),
            [(800 + i, TransactionEvent::Terminated)],
            "reliable={reliable}"
        );
    }
}

#[test]
fn server_invite_tcp_still_waits_timer_h_for_the_ack() {
    let mut clock = VirtualClock::new();
    let mut tx = ServerInvite::new(clock.now(), TCP, &TimerConfig::default());
    let mut trace = Trace::default();
    tx.send_response(clock.now(), 404, Bytes::from_static(b"404"))
        .unwrap();
    run(&mut tx, &mut clock, &mut trace, FOREVER);
    assert_eq!(trace.sent_at(), [0]);
    assert_eq!(
        end(&trace)[0],
        (32_000, TransactionEvent::Timeout(Timer::H))
    );
}

#[test]
fn server_invite_accepted_lasts_timer_l() {
    for reliable in [UDP, TCP] {
        let mut clock = VirtualClock::new();
        let mut tx = ServerInvite::new(clock.now(), reliable, &TimerConfig::default());
        let mut trace = Trace::default();
        clock.advance(Duration::from_millis(300));
        tx.send_response(clock.now(), 200, Bytes::from_static(b"200"))
            .unwrap();
        assert_eq!(tx.state(), State::Accepted);
        run(&mut tx, &mut clock, &mut trace, FOREVER);
        assert_eq!(
            trace.sent_at(),
            [300],
            "the transaction does not retransmit 2xx itself"
        );
        assert_eq!(end(&trace), [(300 + 32_000, TransactionEvent::Terminated)]);
    }
}

#[test]
fn server_non_invite_timer_j_is_64_t1_on_udp_and_zero_on_tcp() {
    for (reliable, j) in [(UDP, 32_000), (TCP, 0)] {
        let mut clock = VirtualClock::new();
        let mut tx = ServerNonInvite::new(clock.now(), reliable, &TimerConfig::default());
        let mut trace = Trace::default();
        clock.advance(Duration::from_millis(40));
        tx.send_response(clock.now(), 200, Bytes::from_static(b"200"))
            .unwrap();
        run(&mut tx, &mut clock, &mut trace, FOREVER);
        assert_eq!(
            trace.sent_at(),
            [40],
            "a non-INVITE server never retransmits on a timer"
        );
        assert_eq!(
            end(&trace),
            [(40 + j, TransactionEvent::Terminated)],
            "reliable={reliable}"
        );
    }
}

#[test]
fn timers_scale_with_a_configured_t1() {
    let cfg = TimerConfig {
        t1: Duration::from_millis(100),
        t2: Duration::from_millis(400),
        ..TimerConfig::default()
    };
    let mut clock = VirtualClock::new();
    let mut tx = ClientNonInvite::new(clock.now(), Bytes::from_static(b"OPTIONS"), UDP, &cfg);
    let mut trace = Trace::default();
    run(&mut tx, &mut clock, &mut trace, FOREVER);
    assert_eq!(&trace.sent_at()[..6], [0, 100, 300, 700, 1100, 1500]);
    assert_eq!(end(&trace)[0], (6400, TransactionEvent::Timeout(Timer::F)));
}

#[test]
fn a_late_handle_timeout_fires_every_missed_timer_on_schedule() {
    let mut clock = VirtualClock::new();
    let mut tx = ClientInvite::new(
        clock.now(),
        Bytes::from_static(b"INVITE"),
        UDP,
        &TimerConfig::default(),
    );
    assert!(tx.poll_transmit().is_some());
    // The caller wakes up 4 s late: Timer A fired at 0.5, 1.5 and 3.5 s.
    clock.advance(Duration::from_secs(4));
    tx.handle_timeout(clock.now());
    let mut count = 0;
    while tx.poll_transmit().is_some() {
        count += 1;
    }
    assert_eq!(count, 3);
    assert_eq!(
        tx.poll_timeout(),
        Some(clock.start() + Duration::from_millis(7500)),
        "schedule unshifted"
    );
}
