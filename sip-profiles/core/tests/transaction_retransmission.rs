//! Retransmission absorption and regeneration (RFC 3261 §17.1.1.2, §17.1.1.3,
//! §17.1.2.2, §17.2.1, §17.2.2; RFC 6026 §7), and typed errors for invalid input.

use std::cell::Cell;
use std::time::Duration;

use bytes::Bytes;
use sip_core::transaction::{
    AckAction, ClientInvite, ClientNonInvite, Fault, ResponseAction, ServerInvite, ServerNonInvite,
    State, TimerConfig, Transaction, TransactionError, TransactionEvent,
};
use sip_testkit::VirtualClock;

const UDP: bool = false;

fn transmits(tx: &mut (impl Transaction + ?Sized)) -> Vec<Bytes> {
    std::iter::from_fn(|| tx.poll_transmit()).collect()
}

fn events(tx: &mut (impl Transaction + ?Sized)) -> Vec<TransactionEvent> {
    std::iter::from_fn(|| tx.poll_event()).collect()
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

#[test]
fn client_invite_regenerates_the_ack_for_each_retransmitted_final() {
    let mut clock = VirtualClock::new();
    let mut tx = ClientInvite::new(clock.now(), b("INVITE"), UDP, &TimerConfig::default());
    assert_eq!(transmits(&mut tx), [b("INVITE")]);
    let built = Cell::new(0);
    let ack = || {
        built.set(built.get() + 1);
        b("ACK")
    };
    assert_eq!(
        tx.handle_response(clock.now(), 100, ack),
        Ok(ResponseAction::PassUp)
    );
    assert_eq!(
        tx.handle_response(clock.now(), 180, ack),
        Ok(ResponseAction::PassUp),
        "every 1xx goes up"
    );
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        tx.handle_response(clock.now(), 486, ack),
        Ok(ResponseAction::PassUp)
    );
    assert_eq!(tx.state(), State::Completed);
    assert_eq!(transmits(&mut tx), [b("ACK")]);
    for _ in 0..3 {
        clock.advance(Duration::from_millis(500));
        assert_eq!(
            tx.handle_response(clock.now(), 486, ack),
            Ok(ResponseAction::Absorb)
        );
        assert_eq!(
            transmits(&mut tx),
            [b("ACK")],
            "§17.1.1.2: the ACK is re-sent"
        );
    }
    assert_eq!(built.get(), 1, "the ACK is built once and stored");
    // A 180 overtaken by the 486 (reordering) is absorbed without an ACK.
    assert_eq!(
        tx.handle_response(clock.now(), 180, ack),
        Ok(ResponseAction::Absorb)
    );
    assert!(transmits(&mut tx).is_empty());
}

#[test]
fn client_non_invite_absorbs_retransmitted_finals() {
    let clock = VirtualClock::new();
    let mut tx = ClientNonInvite::new(clock.now(), b("REGISTER"), UDP, &TimerConfig::default());
    transmits(&mut tx);
    assert_eq!(
        tx.handle_response(clock.now(), 401,),
        Ok(ResponseAction::PassUp)
    );
    assert_eq!(
        tx.handle_response(clock.now(), 401),
        Ok(ResponseAction::Absorb)
    );
    assert_eq!(
        tx.handle_response(clock.now(), 100),
        Ok(ResponseAction::Absorb)
    );
    assert!(
        transmits(&mut tx).is_empty(),
        "a non-INVITE client sends nothing on responses"
    );
    assert_eq!(tx.state(), State::Completed);
}

#[test]
fn server_invite_resends_its_last_response_on_request_retransmission() {
    let clock = VirtualClock::new();
    let now = clock.now();
    let mut tx = ServerInvite::new(now, UDP, &TimerConfig::default());
    tx.handle_request_retransmission(now).unwrap();
    assert!(
        transmits(&mut tx).is_empty(),
        "nothing sent yet, nothing to re-send"
    );
    tx.send_response(now, 100, b("100")).unwrap();
    tx.send_response(now, 180, b("180")).unwrap();
    assert_eq!(transmits(&mut tx), [b("100"), b("180")]);
    tx.handle_request_retransmission(now).unwrap();
    assert_eq!(
        transmits(&mut tx),
        [b("180")],
        "the most recent provisional"
    );
    tx.send_response(now, 480, b("480")).unwrap();
    tx.handle_request_retransmission(now).unwrap();
    assert_eq!(transmits(&mut tx), [b("480"), b("480")]);
    assert_eq!(tx.handle_ack(now), Ok(AckAction::Absorb));
    assert_eq!(tx.state(), State::Confirmed);
    assert_eq!(
        tx.handle_ack(now),
        Ok(AckAction::Absorb),
        "Confirmed absorbs ACK retransmissions"
    );
    tx.handle_request_retransmission(now).unwrap();
    assert!(
        transmits(&mut tx).is_empty(),
        "Confirmed: the final was acknowledged"
    );
}

#[test]
fn server_invite_accepted_absorbs_invites_and_passes_acks_up() {
    let clock = VirtualClock::new();
    let now = clock.now();
    let mut tx = ServerInvite::new(now, UDP, &TimerConfig::default());
    tx.send_response(now, 200, b("200")).unwrap();
    assert_eq!(transmits(&mut tx), [b("200")]);
    tx.handle_request_retransmission(now).unwrap();
    assert!(
        transmits(&mut tx).is_empty(),
        "RFC 6026 §7.1: INVITE retransmissions are absorbed"
    );
    tx.send_response(now, 200, b("200 again")).unwrap();
    assert_eq!(
        transmits(&mut tx),
        [b("200 again")],
        "the TU's 2xx retransmissions pass through"
    );
    assert_eq!(tx.handle_ack(now), Ok(AckAction::PassUp));
    assert_eq!(tx.handle_ack(now), Ok(AckAction::PassUp));
    assert_eq!(tx.state(), State::Accepted);
}

#[test]
fn server_non_invite_resends_per_state() {
    let clock = VirtualClock::new();
    let now = clock.now();
    let mut tx = ServerNonInvite::new(now, UDP, &TimerConfig::default());
    tx.handle_request_retransmission(now).unwrap();
    assert!(
        transmits(&mut tx).is_empty(),
        "§17.2.2: discarded in Trying"
    );
    tx.send_response(now, 100, b("100")).unwrap();
    tx.handle_request_retransmission(now).unwrap();
    assert_eq!(transmits(&mut tx), [b("100"), b("100")]);
    tx.send_response(now, 200, b("200")).unwrap();
    tx.handle_request_retransmission(now).unwrap();
    tx.handle_request_retransmission(now).unwrap();
    assert_eq!(transmits(&mut tx), [b("200"), b("200"), b("200")]);
}

#[test]
fn invalid_client_inputs_are_typed_errors_that_change_nothing() {
    let clock = VirtualClock::new();
    let now = clock.now();
    let cfg = TimerConfig::default();

    let mut ci = ClientInvite::new(now, b("INVITE"), UDP, &cfg);
    transmits(&mut ci);
    assert_eq!(
        ci.handle_response(now, 99, || b("ACK")),
        Err(TransactionError::InvalidStatus(99))
    );
    assert_eq!(
        ci.handle_response(now, 700, || b("ACK")),
        Err(TransactionError::InvalidStatus(700))
    );
    assert_eq!(ci.state(), State::Calling);
    ci.handle_response(now, 404, || b("ACK")).unwrap();
    transmits(&mut ci);
    let deadline = ci.poll_timeout();
    let err = ci.handle_response(now, 200, || b("ACK")).unwrap_err();
    assert_eq!(
        err,
        TransactionError::UnexpectedResponse {
            state: State::Completed,
            status: 200
        }
    );
    assert_eq!(err.fault(), Fault::Peer);
    assert_eq!(
        ci.handle_response(now, 500, || b("ACK")),
        Err(TransactionError::UnexpectedResponse {
            state: State::Completed,
            status: 500
        }),
        "a different final is not a retransmission"
    );
    assert_eq!(
        (ci.state(), ci.poll_timeout()),
        (State::Completed, deadline)
    );
    assert!(transmits(&mut ci).is_empty(), "an error sends nothing");

    let mut accepted = ClientInvite::new(now, b("INVITE"), UDP, &cfg);
    accepted.handle_response(now, 200, || b("ACK")).unwrap();
    assert_eq!(
        accepted.handle_response(now, 486, || b("ACK")),
        Err(TransactionError::UnexpectedResponse {
            state: State::Accepted,
            status: 486
        })
    );

    let mut cn = ClientNonInvite::new(now, b("OPTIONS"), UDP, &cfg);
    cn.handle_response(now, 200).unwrap();
    assert_eq!(
        cn.handle_response(now, 404),
        Err(TransactionError::UnexpectedResponse {
            state: State::Completed,
            status: 404
        })
    );
}

#[test]
fn invalid_server_inputs_are_typed_errors() {
    let clock = VirtualClock::new();
    let now = clock.now();
    let cfg = TimerConfig::default();

    let mut si = ServerInvite::new(now, UDP, &cfg);
    assert_eq!(
        si.handle_ack(now),
        Err(TransactionError::UnexpectedAck {
            state: State::Proceeding
        })
    );
    assert_eq!(
        si.send_response(now, 42, b("?")),
        Err(TransactionError::InvalidStatus(42))
    );
    si.send_response(now, 486, b("486")).unwrap();
    let err = si.send_response(now, 200, b("200")).unwrap_err();
    assert_eq!(
        err,
        TransactionError::ResponseNotAllowed {
            state: State::Completed,
            status: 200
        }
    );
    assert_eq!(err.fault(), Fault::Caller);
    assert_eq!(transmits(&mut si), [b("486")]);

    let mut si2 = ServerInvite::new(now, UDP, &cfg);
    si2.send_response(now, 200, b("200")).unwrap();
    assert_eq!(
        si2.send_response(now, 500, b("500")),
        Err(TransactionError::ResponseNotAllowed {
            state: State::Accepted,
            status: 500
        })
    );
    assert_eq!(
        si2.send_response(now, 180, b("180")),
        Err(TransactionError::ResponseNotAllowed {
            state: State::Accepted,
            status: 180
        })
    );

    let mut sn = ServerNonInvite::new(now, UDP, &cfg);
    sn.send_response(now, 200, b("200")).unwrap();
    assert_eq!(
        sn.send_response(now, 500, b("500")),
        Err(TransactionError::ResponseNotAllowed {
            state: State::Completed,
            status: 500
        }),
        "§17.2.2: further finals are discarded"
    );
    assert_eq!(transmits(&mut sn), [b("200")]);
}

#[test]
fn terminated_transactions_refuse_input() {
    let clock = VirtualClock::new();
    let now = clock.now();
    let cfg = TimerConfig::default();
    let reliable = true;

    let mut ci = ClientInvite::new(now, b("INVITE"), reliable, &cfg);
    ci.handle_response(now, 486, || b("ACK")).unwrap();
    assert_eq!(
        transmits(&mut ci),
        [b("INVITE"), b("ACK")],
        "the ACK is still sent after Timer D = 0"
    );
    assert!(ci.is_terminated());
    assert_eq!(
        ci.handle_response(now, 486, || b("ACK")),
        Err(TransactionError::Terminated)
    );

    let mut cn = ClientNonInvite::new(now, b("OPTIONS"), reliable, &cfg);
    cn.handle_response(now, 200).unwrap();
    assert_eq!(
        cn.handle_response(now, 200),
        Err(TransactionError::Terminated)
    );

    let mut si = ServerInvite::new(now, reliable, &cfg);
    si.send_response(now, 486, b("486")).unwrap();
    si.handle_ack(now).unwrap();
    assert!(si.is_terminated(), "Timer I = 0 on TCP");
    assert_eq!(si.handle_ack(now), Err(TransactionError::Terminated));
    assert_eq!(
        si.handle_request_retransmission(now),
        Err(TransactionError::Terminated)
    );
    assert_eq!(
        si.send_response(now, 486, b("486")),
        Err(TransactionError::Terminated)
    );

    let mut sn = ServerNonInvite::new(now, reliable, &cfg);
    sn.send_response(now, 200, b("200")).unwrap();
    assert!(sn.is_terminated(), "Timer J = 0 on TCP");
    assert_eq!(
        sn.handle_request_retransmission(now),
        Err(TransactionError::Terminated)
    );
    assert_eq!(events(&mut sn), [TransactionEvent::Terminated]);
    assert_eq!(events(&mut sn), [], "Terminated is reported once");
}

#[test]
fn transport_errors_terminate_every_machine() {
    let clock = VirtualClock::new();
    let now = clock.now();
    let cfg = TimerConfig::default();
    let mut machines: Vec<Box<dyn Transaction>> = vec![
        Box::new(ClientInvite::new(now, b("INVITE"), UDP, &cfg)),
        Box::new(ClientNonInvite::new(now, b("OPTIONS"), UDP, &cfg)),
        Box::new(ServerInvite::new(now, UDP, &cfg)),
        Box::new(ServerNonInvite::new(now, UDP, &cfg)),
    ];
    for tx in &mut machines {
        tx.handle_transport_error(now);
        assert_eq!(
            events(tx.as_mut()),
            [
                TransactionEvent::TransportError,
                TransactionEvent::Terminated
            ]
        );
        assert_eq!((tx.state(), tx.poll_timeout()), (State::Terminated, None));
        tx.handle_transport_error(now);
        assert_eq!(events(tx.as_mut()), [], "absorbed once terminated");
    }
}
