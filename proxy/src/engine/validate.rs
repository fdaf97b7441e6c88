//! Stage 1, validate: what a received message must satisfy before the engine acts on it
//! (RFC 3261 §16.3, §18.3, §8.2; RFC 4475), and the stateless answers to requests that
//! fail. Pure: bytes in, a verdict out; the engine only counts and sends.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use sip_core::message::{
    HeaderName, Message, Method, NameAddr, ParseError, ResponseBuilder, SipUri, eq_ignore_case,
    trim,
};

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
    /// A request fit for the pipeline, with its server transaction key ([`tx_key`]).
    Request { msg: Message, branch: Bytes },
    /// A response, for the transaction layer.
    Response(Message),
    /// Dropped and counted: no answer can or may be sent (no Via, an ACK, a response).
    Dropped(Fault),
    /// Answered statelessly with `status` and a reason naming the fault; a 420 lists
    /// the option tags it refuses (`unsupported`, RFC 3261 §20.40).
    Answer {
        request: Message,
        status: u16,
        reason: String,
        unsupported: Option<String>,
        fault: Fault,
    },
}

/// Runs the validate stage on one message received on `flow`: RFC 3261 §16.3 items 1
/// (syntax) and 5 (Proxy-Require, before any authentication challenge), §18.3
/// (framing), §10.2 (what a REGISTER must hold).
pub(super) fn inspect(data: Bytes, flow: &Flow) -> Inspected {
    if data.iter().all(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Inspected::KeepAlive;
    }
    let msg = match Message::parse(data.clone()) {
        Ok(m) => m,
        Err(ParseError::ContentLengthMismatch) if !flow.transport.is_reliable() => {
            // RFC 3261 §18.3: a datagram shorter than its Content-Length gets a 400.
            return match Message::parse_truncated(data) {
                Ok(m) if m.is_request() => answer(m, 400, "Content-Length Mismatch".into()),
                _ => Inspected::Dropped(Fault::BadRequest),
            };
        }
        Err(e) => return unparsable(data, e),
    };
    if !msg.is_request() {
        return Inspected::Response(msg);
    }
    if let Err(e) = msg.validate() {
        return answer(msg, 400, e.to_string());
    }
    if let Some(reason) = bad_register(&msg) {
        return answer(msg, 400, reason.into());
    }
    if let Some(tags) = proxy_require(&msg) {
        let mut a = answer(msg, 420, "Bad Extension".into());
        if let Inspected::Answer { unsupported, .. } = &mut a {
            *unsupported = Some(tags);
        }
        return a;
    }
    let branch = tx_key(&msg, flow);
    Inspected::Request { msg, branch }
}

/// A request the parser refused is answered when what can be read of it has a method
/// and a Via (RFC 3261 §16.3 item 1, §21.4.1; RFC 4475 §3.1.2): 505 for another SIP
/// version (§8.2.2 / §21.5.6, RFC 4475 `badvers`), 400 naming the fault otherwise.
/// Anything else is dropped.
fn unparsable(data: Bytes, e: ParseError) -> Inspected {
    let Some(request) = Message::parse_for_reply(data) else {
        return Inspected::Dropped(Fault::Unparsable);
    };
    match e {
        ParseError::BadVersion => answer(request, 505, "Version Not Supported".into()),
        e => answer(request, 400, e.to_string()),
    }
}

/// RFC 3261 §10.2: a REGISTER's To holds the address-of-record, a SIP or SIPS URI (RFC
/// 4475 `unksm2`), and each Contact is `*` or a name-addr/addr-spec whose URI carries
/// no headers outside `< >` (§20.10; RFC 4475 `regbadct`). The reason, if it is not.
fn bad_register(msg: &Message) -> Option<&'static str> {
    if msg.method() != Some(&Method::Register) {
        return None;
    }
    let to = msg.to().ok()?;
    let scheme = |s: &[u8]| to.uri.len() > s.len() && eq_ignore_case(&to.uri[..s.len()], s);
    if !scheme(b"sip:") && !scheme(b"sips:") {
        return Some("To Is Not A SIP URI");
    }
    let bad_contact = msg
        .list(HeaderName::Contact)
        .any(|c| trim(c) != b"*" && NameAddr::parse(c).is_none());
    bad_contact.then_some("Bad Contact Header")
}

/// RFC 3261 §16.3 item 5: this proxy supports no extension a request may ask proxies
/// for, so any Proxy-Require gets 420 with the tags listed in Unsupported — before the
/// §16.3 item 6 / §22.3 challenge. Items 2 and 3 come first: a Request-URI that is not
/// SIP (416) and Max-Forwards 0 (483) are left to the route stage.
fn proxy_require(msg: &Message) -> Option<String> {
    msg.header(HeaderName::ProxyRequire)?;
    let sip_ruri = msg.request_uri().and_then(SipUri::parse).is_some();
    if !sip_ruri || msg.max_forwards() == Ok(Some(0)) {
        return None;
    }
    let tags: Vec<String> = msg
        .list(HeaderName::ProxyRequire)
        .map(|t| String::from_utf8_lossy(trim(t)).into_owned())
        .filter(|t| !t.is_empty())
        .collect();
    (!tags.is_empty()).then(|| tags.join(", "))
}

/// The server transaction key of a valid request (RFC 3261 §17.2.3), bound to the flow it
/// arrived on: the answers go back on that flow (symmetric response routing, RFC 3581),
/// so a request from another source is another transaction, never a retransmission into
/// someone else's (RFC 4475 §3 messages share branches, e.g. `z9hG4bKkdjuw`).
///
/// - A branch with the magic cookie: the branch and the top Via's sent-by.
/// - Otherwise (RFC 2543, RFC 4475 `inv2543`, `longreq`): Request-URI, From tag,
///   Call-ID, CSeq number and the top Via, which an ACK to a non-2xx and a CANCEL
///   repeat; the To tag is left out because that ACK carries ours.
///
/// The method class is the other half of the key ([`super::tx::Kind`]).
pub(super) fn tx_key(msg: &Message, flow: &Flow) -> Bytes {
    const COOKIE: &[u8] = b"z9hG4bK";
    let mut k = Vec::with_capacity(96);
    let via = msg.top_via().ok();
    match via.as_ref().and_then(sip_core::message::Via::branch) {
        Some(branch) if branch.len() > COOKIE.len() && branch.starts_with(COOKIE) => {
            k.extend_from_slice(branch);
            k.push(0);
            if let Some(v) = &via {
                k.extend_from_slice(v.host);
                k.extend_from_slice(&v.port.unwrap_or(0).to_be_bytes());
            }
        }
        _ => {
            k.extend_from_slice(b"2543\0");
            for part in [
                msg.request_uri(),
                msg.from_tag(),
                msg.call_id(),
                msg.list(HeaderName::Via).next(),
            ] {
                k.extend_from_slice(part.unwrap_or_default());
                k.push(0);
            }
            let seq = msg.cseq().map_or(0, |c| c.seq);
            k.extend_from_slice(&seq.to_be_bytes());
        }
    }
    k.push(0);
    k.push(flow.transport as u8);
    match flow.remote.ip() {
        IpAddr::V4(ip) => k.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => k.extend_from_slice(&ip.octets()),
    }
    k.extend_from_slice(&flow.remote.port().to_be_bytes());
    Bytes::from(k)
}

/// Where the responses to `req`, received on `flow`, go.
///
/// Symmetric (the default, `[proxy] symmetric_responses`): back to the source address
/// and port, on the transport and connection the request came in on, as RFC 3581 §4
/// asks for with `rport` and whatever the top Via names (a host that does not resolve,
/// another port, another transport).
///
/// Strict RFC 3261 §18.2.2: on a stream, the same connection; over UDP, the `received`
/// address (the source: we always add `received` when the sent-by host differs) and the
/// sent-by port, or 5060, unless the Via asks for `rport` (RFC 3581 §4). `maddr` is not
/// honoured (no multicast).
pub(super) fn reply_flow(req: &Message, flow: Flow, symmetric: bool) -> Flow {
    if symmetric || flow.transport.is_reliable() {
        return flow;
    }
    let Ok(via) = req.top_via() else {
        return flow;
    };
    if via.rport().is_some() {
        return flow;
    }
    Flow {
        remote: SocketAddr::new(flow.remote.ip(), via.port.unwrap_or(5060)),
        ..flow
    }
}

/// A stateless answer when one may be sent: never to an ACK (§17.1.1.3: ACK gets no
/// response), never without a Via (the response copies it, §8.2.6.2; it need not
/// parse: the answer goes back on the flow, RFC 4475 `badvers`).
fn answer(request: Message, status: u16, reason: String) -> Inspected {
    if request.method() == Some(&Method::Ack) || request.header(HeaderName::Via).is_none() {
        return Inspected::Dropped(Fault::BadRequest);
    }
    Inspected::Answer {
        request,
        status,
        reason,
        unsupported: None,
        fault: Fault::BadRequest,
    }
}

impl Proxy {
    /// A response sent without a transaction (to malformed requests, §16.3 / §8.2).
    pub(super) fn reply_stateless(&mut self, req: &Message, flow: Flow, status: u16, reason: &str) {
        self.reply_stateless_with(req, flow, status, reason, None);
    }

    /// [`Proxy::reply_stateless`] with an Unsupported header field (a 420, §20.40).
    pub(super) fn reply_stateless_with(
        &mut self,
        req: &Message,
        flow: Flow,
        status: u16,
        reason: &str,
        unsupported: Option<&str>,
    ) {
        let tag = self.tag();
        let via = received_via(req, flow.remote);
        let mut b = ResponseBuilder::new(req, status, reason).to_tag(tag.as_bytes());
        if let Some(v) = &via {
            b = b.top_via(v.as_bytes());
        }
        if let Some(u) = unsupported {
            b = b.header("Unsupported", u.as_bytes());
        }
        let bytes = b.to_vec();
        let invite = req.method() == Some(&sip_core::message::Method::Invite);
        self.stats.traffic.response(status, invite);
        let dest = reply_flow(req, flow, self.cfg.symmetric_responses);
        self.send(dest, bytes.into());
    }
}

#[cfg(test)]
mod tests {
    use sip_core::transport::Transport;

    use super::*;

    fn flow(transport: Transport, remote: &str) -> Flow {
        Flow {
            transport,
            local: "127.0.0.1:5060".parse().unwrap(),
            remote: remote.parse().unwrap(),
        }
    }

    fn inspect_str(s: &str, reliable: bool) -> Inspected {
        let t = if reliable {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        inspect(Bytes::from(s.to_owned()), &flow(t, "192.0.2.9:40000"))
    }

    fn answered(i: Inspected) -> (u16, String, Option<String>) {
        match i {
            Inspected::Answer {
                status,
                reason,
                unsupported,
                ..
            } => (status, reason, unsupported),
            other => panic!("not answered: {other:?}"),
        }
    }

    fn key_of(s: &str, f: &Flow) -> Bytes {
        match inspect(Bytes::from(s.to_owned()), f) {
            Inspected::Request { branch, .. } => branch,
            other => panic!("not a request: {other:?}"),
        }
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
    fn valid_request_carries_its_transaction_key() {
        let Inspected::Request { msg, branch } = inspect_str(OPTIONS, false) else {
            panic!("not a request");
        };
        assert!(branch.starts_with(b"z9hG4bK1\x00127.0.0.1"));
        assert_eq!(msg.method(), Some(&Method::Options));
    }

    /// RFC 4475 §3 messages from different sources share a branch and a sent-by
    /// (`cparam01`, `cparam02`): each is its own transaction; a retransmission from the
    /// same source is the same one.
    #[test]
    fn the_key_holds_branch_sent_by_and_source() {
        let a = flow(Transport::Udp, "192.0.2.9:40000");
        let b = flow(Transport::Udp, "192.0.2.9:40001");
        let tcp = flow(Transport::Tcp, "192.0.2.9:40000");
        assert_eq!(key_of(OPTIONS, &a), key_of(OPTIONS, &a));
        assert_ne!(key_of(OPTIONS, &a), key_of(OPTIONS, &b));
        assert_ne!(key_of(OPTIONS, &a), key_of(OPTIONS, &tcp));
        let other_host = OPTIONS.replace("127.0.0.1:5070", "127.0.0.2:5070");
        assert_ne!(key_of(OPTIONS, &a), key_of(&other_host, &a));
    }

    /// RFC 4475 `inv2543`, `longreq`: no branch once got 400 "Missing Via Branch"; the
    /// RFC 2543 rules of §17.2.3 match its ACK and CANCEL to it.
    #[test]
    fn a_request_without_a_branch_is_matched_the_rfc_2543_way() {
        let f = flow(Transport::Udp, "192.0.2.9:40000");
        let invite = OPTIONS
            .replace(";branch=z9hG4bK1", "")
            .replace("OPTIONS", "INVITE");
        let ack = invite
            .replace("INVITE sip", "ACK sip")
            .replace("1 INVITE", "1 ACK")
            .replace("<sip:bob@localhost>", "<sip:bob@localhost>;tag=ours");
        let cancel = invite
            .replace("INVITE sip", "CANCEL sip")
            .replace("1 INVITE", "1 CANCEL");
        let key = key_of(&invite, &f);
        assert!(key.starts_with(b"2543\0"));
        assert_eq!(key, key_of(&ack, &f));
        assert_eq!(key, key_of(&cancel, &f));
        let next = invite.replace("CSeq: 1", "CSeq: 2");
        assert_ne!(key, key_of(&next, &f));
        // A bare magic cookie (RFC 4475 `badbranch`) is no RFC 3261 branch either.
        let bare = OPTIONS.replace("branch=z9hG4bK1", "branch=z9hG4bK");
        assert!(key_of(&bare, &f).starts_with(b"2543\0"));
    }

    #[test]
    fn short_datagram_gets_400() {
        let short = OPTIONS.replace("Content-Length: 0", "Content-Length: 10");
        let (status, reason, _) = answered(inspect_str(&short, false));
        assert_eq!((status, reason.as_str()), (400, "Content-Length Mismatch"));
    }

    #[test]
    fn a_bad_ack_is_dropped() {
        let ack = OPTIONS
            .replace("OPTIONS sip", "ACK sip")
            .replace("1 OPTIONS", "1 INVITE");
        assert!(matches!(
            inspect_str(&ack, false),
            Inspected::Dropped(Fault::BadRequest)
        ));
    }

    #[test]
    fn cseq_mismatch_names_the_fault() {
        let bad = OPTIONS.replace("1 OPTIONS", "1 INVITE");
        let (status, reason, _) = answered(inspect_str(&bad, false));
        assert_eq!(status, 400);
        assert!(reason.contains("CSeq"), "{reason}");
    }

    /// RFC 4475 `lwsstart`, `trws`, `ltgtruri`, `lwsruri`, `escruri`, `ncl`, `mcl01`,
    /// `badvers` were dropped in silence: what the parser refuses is answered when it
    /// has a Via, 505 for another SIP version.
    #[test]
    fn refused_requests_are_answered_with_the_fault() {
        for (from, to, status, reason) in [
            ("OPTIONS sip:bob", "OPTIONS  sip:bob", 400, "Bad Start Line"),
            (
                "sip:bob@localhost SIP",
                "<sip:bob@localhost> SIP",
                400,
                "Bad Request-URI",
            ),
            (
                "Content-Length: 0",
                "Content-Length: -999",
                400,
                "Bad Content-Length Header",
            ),
            (
                "Content-Length: 0",
                "l: 0\r\nContent-Length: 0",
                400,
                "Bad Content-Length Header",
            ),
            (
                "localhost SIP/2.0",
                "localhost SIP/7.0",
                505,
                "Version Not Supported",
            ),
        ] {
            let bad = OPTIONS.replacen(from, to, 1);
            for reliable in [false, true] {
                let got = answered(inspect_str(&bad, reliable));
                assert_eq!((got.0, got.1.as_str()), (status, reason), "{to}");
            }
        }
        let no_via = OPTIONS
            .replace("OPTIONS sip:bob", "OPTIONS  sip:bob")
            .replace("Via:", "X-Via:");
        assert!(matches!(
            inspect_str(&no_via, false),
            Inspected::Dropped(Fault::BadRequest)
        ));
    }

    /// RFC 4475 `bext01`: Proxy-Require gets 420 listing the tags, before any challenge;
    /// Max-Forwards 0 (483) and a non-SIP Request-URI (416) come first (§16.3 items 2, 3).
    #[test]
    fn proxy_require_gets_420_with_unsupported() {
        let pr = OPTIONS.replace(
            "Content-Length",
            "Proxy-Require: foo, bar\r\nContent-Length",
        );
        let (status, _, unsupported) = answered(inspect_str(&pr, false));
        assert_eq!((status, unsupported.as_deref()), (420, Some("foo, bar")));
        let hops = pr.replace("Max-Forwards: 70", "Max-Forwards: 0");
        assert!(matches!(
            inspect_str(&hops, false),
            Inspected::Request { .. }
        ));
        let tel = pr.replace("OPTIONS sip:bob@localhost", "OPTIONS tel:+1555");
        assert!(matches!(
            inspect_str(&tel, false),
            Inspected::Request { .. }
        ));
    }

    /// RFC 4475 `regbadct`, `unksm2`: a REGISTER whose Contact does not decode or whose To
    /// is not a SIP URI gets 400; the same headers in other requests are not ours to judge.
    #[test]
    fn register_syntax() {
        let register = OPTIONS
            .replace("OPTIONS sip:bob@localhost", "REGISTER sip:localhost")
            .replace("1 OPTIONS", "1 REGISTER");
        let contact = |c: &str| {
            register.replace("Content-Length", &format!("Contact: {c}\r\nContent-Length"))
        };
        for ok in [
            "*",
            "<sip:bob@192.0.2.9>;expires=60",
            "sip:bob@192.0.2.9;unknownparam",
        ] {
            assert!(
                matches!(inspect_str(&contact(ok), false), Inspected::Request { .. }),
                "{ok}"
            );
        }
        let bad = contact("sip:bob@192.0.2.9?Route=%3Csip:x%3E");
        assert_eq!(answered(inspect_str(&bad, false)).1, "Bad Contact Header");
        let isbn = register.replace("To: <sip:bob@localhost>", "To: isbn:2983792873");
        assert_eq!(answered(inspect_str(&isbn, false)).1, "To Is Not A SIP URI");
        let options = OPTIONS.replace("To: <sip:bob@localhost>", "To: <tel:+1555>");
        assert!(matches!(
            inspect_str(&options, false),
            Inspected::Request { .. }
        ));
    }

    #[test]
    fn responses_go_back_to_the_source_unless_strict() {
        let msg = Message::parse(Bytes::from(OPTIONS)).unwrap();
        let udp = flow(Transport::Udp, "192.0.2.9:40000");
        assert_eq!(reply_flow(&msg, udp, true), udp);
        // §18.2.2: received (the source) and the sent-by port.
        let strict = reply_flow(&msg, udp, false);
        assert_eq!(strict.remote, "192.0.2.9:5070".parse().unwrap());
        let rport =
            Message::parse(Bytes::from(OPTIONS.replace(";branch", ";rport;branch"))).unwrap();
        assert_eq!(reply_flow(&rport, udp, false), udp);
        let tcp = flow(Transport::Tcp, "192.0.2.9:40000");
        assert_eq!(reply_flow(&msg, tcp, false), tcp);
    }
}
