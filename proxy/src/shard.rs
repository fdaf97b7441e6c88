//! One engine per core: how messages find their engine shard.
//!
//! Each shard is a sans-IO [`crate::engine::Proxy`] with its own transactions, response
//! contexts and timers, on its own thread; the location service, users, permit lists,
//! dialog counts and the mailbox are shared tables ([`crate::engine::Proxy::new_shard`]).
//! A message must reach the shard that holds its transactions:
//!
//! - a **request** goes to the shard of its Call-ID (a keyed hash): a dialog's requests,
//!   the ACK and CANCEL of an INVITE and the retransmissions of any request share it
//!   (RFC 3261 §17.2.3 matches server transactions by the top Via branch, which a UA
//!   keeps within one Call-ID);
//! - a **response** goes to the shard named by the top Via branch when the branch is
//!   ours: every branch the proxy creates carries its shard in two hex digits
//!   ([`crate::route::branch_for`]), which covers the proxy's own requests (load query,
//!   NOTIFY, deliveries) whose Call-IDs it chose; a response with another branch is
//!   steered by Call-ID like a request (it is forwarded statelessly or dropped).
//!
//! The steering reads only the header lines it needs (no full parse): a message that
//! cannot be steered (keep-alive, garbage) goes to shard 0, which drops or answers it.

use std::hash::{BuildHasher, RandomState};

use sip_core::message::{HeaderName, param, split_commas};

use crate::route::branch_shard;

/// Picks the shard of a received message.
#[derive(Debug, Clone)]
pub struct Steering {
    shards: usize,
    keys: RandomState,
}

impl Steering {
    /// `shards` engines (at least 1; at most 256, the branch's two hex digits).
    pub fn new(shards: usize) -> Self {
        Self {
            shards: shards.clamp(1, 256),
            keys: RandomState::new(),
        }
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The shard of the message in `data` (a datagram or a framed stream message).
    pub fn shard_of(&self, data: &[u8]) -> usize {
        if self.shards == 1 {
            return 0;
        }
        let mut call_id = None;
        let response = data.starts_with(b"SIP/2.0 ");
        let mut seen_via = false;
        for line in header_lines(data) {
            let Some((name, value)) = split_header(line) else {
                continue;
            };
            let name = HeaderName::from_bytes(name);
            if response && !seen_via && name == HeaderName::Via {
                seen_via = true;
                let top = split_commas(value).next();
                if let Some(s) = top.and_then(|v| param(v, b"branch")).and_then(branch_shard) {
                    let s = usize::from(s);
                    if s < self.shards {
                        return s;
                    }
                }
            } else if call_id.is_none() && name == HeaderName::CallId {
                call_id = Some(value.trim_ascii());
                if !response {
                    break;
                }
            }
            if call_id.is_some() && seen_via {
                break;
            }
        }
        call_id.map_or(0, |c| self.of_call_id(c))
    }

    /// The shard of a Call-ID.
    pub fn of_call_id(&self, call_id: &[u8]) -> usize {
        let h = self.keys.hash_one(call_id);
        // Multiply-shift: the high bits of the hash pick the shard without a division.
        usize::try_from((u128::from(h) * self.shards as u128) >> 64).unwrap_or(0)
    }
}

/// The header lines of a message (the start line skipped), up to the blank line.
fn header_lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == b'\n')
        .skip(1)
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .take_while(|l| !l.is_empty())
}

fn split_header(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    Some((line[..colon].trim_ascii(), &line[colon + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::branch_for;

    fn request(call_id: &str) -> Vec<u8> {
        format!(
            "INVITE sip:bob@example.org SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
             From: <sip:a@example.org>;tag=1\r\nTo: <sip:bob@example.org>\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn response(branch: &str, call_id: &str) -> Vec<u8> {
        format!(
            "SIP/2.0 200 OK\r\nv: SIP/2.0/UDP 127.0.0.1:5060;rport;BRANCH={branch}, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
             From: <sip:a@example.org>;tag=1\r\nTo: <sip:bob@example.org>;tag=2\r\ni: {call_id}\r\n\
             CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn requests_follow_their_call_id_and_spread() {
        let s = Steering::new(4);
        let mut seen = [0usize; 4];
        for i in 0..4000 {
            let cid = format!("{i}-abc@host");
            let shard = s.shard_of(&request(&cid));
            assert_eq!(shard, s.of_call_id(cid.as_bytes()));
            assert_eq!(shard, s.shard_of(&request(&cid)), "stable");
            seen[shard] += 1;
        }
        // Each of 4 shards gets a fair part of 4000 Call-IDs (expected 1000 each).
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }

    #[test]
    fn responses_return_to_the_shard_in_our_branch() {
        let s = Steering::new(4);
        for shard in 0..4u8 {
            let branch = format!("{}.1", branch_for(shard, 0xfeed));
            for cid in ["x@y", "other", "3"] {
                assert_eq!(s.shard_of(&response(&branch, cid)), usize::from(shard));
            }
        }
        // Not our branch, or a shard we do not have: by Call-ID.
        let foreign = response("z9hG4bKabc", "c1@h");
        assert_eq!(s.shard_of(&foreign), s.of_call_id(b"c1@h"));
        let beyond = response(&branch_for(9, 1), "c2@h");
        assert_eq!(s.shard_of(&beyond), s.of_call_id(b"c2@h"));
    }

    #[test]
    fn anything_else_goes_to_the_first_shard() {
        let s = Steering::new(3);
        assert_eq!(s.shard_of(b"\r\n\r\n"), 0);
        assert_eq!(s.shard_of(b"garbage without lines"), 0);
        assert_eq!(s.shard_of(b"INVITE sip:x SIP/2.0\r\nTo: x\r\n\r\n"), 0);
        assert_eq!(Steering::new(1).shard_of(&request("any")), 0);
    }
}
