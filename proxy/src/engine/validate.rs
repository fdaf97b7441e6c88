//! Stage 1, validate: what a received message must satisfy before the engine acts on it
//! (RFC 3261 §16.3, §18.3, §8.2; RFC 4475), and the stateless answers to requests that
//! fail. Pure: bytes in, a verdict out; the engine only counts and sends.

use bytes::Bytes;
use sip_core::message::{Message, Method, ParseError, ResponseBuilder};

use super::Proxy;
use crate::route::{Flow, received_via};

/// Why a message was not acted on (what the engine counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// Not a SIP message we can read at all.
    Unparsable,
    /// A request we can read but must refuse (400 and friends).
    BadRequest,
}

/// The verdict of the validate stage on received bytes.
#[derive(Debug)]
pub(super) enum Inspected {
    /// CRLF keep-alive (RFC 5626 §4.4.1): nothing to do.
    KeepAlive,
    /// A request fit for the pipeline, with its top Via branch (§17.2.3 key).
    Request { msg: Message, branch: Bytes },
    /// A response, for the transaction layer.
    Response(Message),
    /// Dropped and counted: no answer can or may be sent (no usable Via, an ACK, a
    /// response).
    Dropped(Fault),
    /// Answered statelessly with `status` and a reason naming the fault.
    Answer {
        request: Message,
        status: u16,
        reason: String,
        fault: Fault,
    },
}

/// Runs the validate stage on one received message (`reliable`: it came over a stream).
pub(super) fn inspect(data: Bytes, reliable: bool) -> Inspected {
    if data.iter().all(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Inspected::KeepAlive;
    }
    let msg = match Message::parse(data.clone()) {
        Ok(m) => m,
        Err(ParseError::ContentLengthMismatch) if !reliable => {
            // RFC 3261 §18.3: a datagram shorter than its Content-Length gets a 400.
            return match Message::parse_truncated(data) {
                Ok(m) if m.is_request() => answer(m, 400, "Content-Length Mismatch".into()),
                _ => Inspected::Dropped(Fault::BadRequest),
            };
        }
        Err(_) => return Inspected::Dropped(Fault::Unparsable),
    };
    if !msg.is_request() {
        return Inspected::Response(msg);
    }
    if let Err(e) = msg.validate() {
        return answer(msg, 400, e.to_string());
    }
    let branch = msg
        .top_via()
        .ok()
        .and_then(|v| v.branch())
        .map(|b| msg.bytes().slice_ref(b));
    match branch {
        Some(branch) => Inspected::Request { msg, branch },
        None => answer(msg, 400, "Missing Via Branch".into()),
    }
}

/// A stateless answer when one may be sent: never to an ACK (§17.1.1.3: ACK gets no
/// response), never without a Via to send it along.
fn answer(request: Message, status: u16, reason: String) -> Inspected {
    if request.method() == Some(&Method::Ack) || request.top_via().is_err() {
        return Inspected::Dropped(Fault::BadRequest);
    }
    Inspected::Answer {
        request,
        status,
        reason,
        fault: Fault::BadRequest,
    }
}

impl Proxy {
    /// A response sent without a transaction (to malformed requests, §16.3 / §8.2).
    pub(super) fn reply_stateless(&mut self, req: &Message, flow: Flow, status: u16, reason: &str) {
        let tag = self.tag();
        let via = received_via(req, flow.remote);
        let mut b = ResponseBuilder::new(req, status, reason).to_tag(tag.as_bytes());
        if let Some(v) = &via {
            b = b.top_via(v.as_bytes());
        }
        let bytes = b.to_vec();
        self.send(flow, bytes.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspect_str(s: &str, reliable: bool) -> Inspected {
        inspect(Bytes::from(s.to_owned()), reliable)
    }

    const OPTIONS: &str = "OPTIONS sip:bob@localhost SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@localhost>;tag=1\r\nTo: <sip:bob@localhost>\r\nCall-ID: c1\r\n\
CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn keepalive_and_garbage() {
        assert!(matches!(
            inspect_str("\r\n\r\n", true),
            Inspected::KeepAlive
        ));
        assert!(matches!(
            inspect_str("hello world", false),
            Inspected::Dropped(Fault::Unparsable)
        ));
    }

    #[test]
    fn valid_request_carries_its_branch() {
        let Inspected::Request { msg, branch } = inspect_str(OPTIONS, false) else {
            panic!("not a request");
        };
        assert_eq!(&branch[..], b"z9hG4bK1");
        assert_eq!(msg.method(), Some(&Method::Options));
    }

    #[test]
    fn short_datagram_gets_400_but_not_on_a_stream() {
        let short = OPTIONS.replace("Content-Length: 0", "Content-Length: 10");
        match inspect_str(&short, false) {
            Inspected::Answer { status, reason, .. } => {
                assert_eq!((status, reason.as_str()), (400, "Content-Length Mismatch"));
            }
            other => panic!("{other:?}"),
        }
        assert!(!matches!(
            inspect_str(&short, true),
            Inspected::Answer { .. }
        ));
    }

    #[test]
    fn missing_branch_gets_400_and_a_bad_ack_is_dropped() {
        let no_branch = OPTIONS.replace(";branch=z9hG4bK1", "");
        assert!(matches!(
            inspect_str(&no_branch, false),
            Inspected::Answer { status: 400, .. }
        ));
        let ack = no_branch
            .replace("OPTIONS sip", "ACK sip")
            .replace("1 OPTIONS", "1 ACK");
        assert!(matches!(
            inspect_str(&ack, false),
            Inspected::Dropped(Fault::BadRequest)
        ));
    }

    #[test]
    fn cseq_mismatch_names_the_fault() {
        let bad = OPTIONS.replace("1 OPTIONS", "1 INVITE");
        let Inspected::Answer { status, reason, .. } = inspect_str(&bad, false) else {
            panic!("not answered");
        };
        assert_eq!(status, 400);
        assert!(reason.contains("CSeq"), "{reason}");
    }
}
