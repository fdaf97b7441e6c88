//! Message-waiting indication (RFC 3842) for stored items: the proxy is the notifier of
//! `Event: message-summary` for its own users. A SUBSCRIBE from the AOR's owner
//! (authenticated, 401) gets 200 and an immediate NOTIFY (RFC 6665 §4.2.1); every new
//! item and every delivery sends a NOTIFY to the owner's subscriptions; a new item,
//! and a REGISTER while items wait, also send an unsolicited NOTIFY to the bindings
//! that hold no subscription (phones that never subscribe still light their lamp).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use rand::Rng;
use sip_core::message::{HeaderName, Message, NameAddr, ResponseBuilder, SipUri};
use sip_core::transport::Transport;

use super::deposit::{Outgoing, received_via_of};
use super::{Proxy, TxKey};
use crate::auth::Role;
use crate::mailbox::summary;
use crate::route::{Flow, Identity};

/// RFC 3842 §3.4: a subscription lasts an hour unless asked otherwise; we grant at
/// most that, and refuse less than a minute (423, RFC 6665 §4.2.1.1).
const DEFAULT_EXPIRES: u32 = 3600;
const MIN_EXPIRES: u32 = 60;
/// Subscriptions kept in all, and per owner (the oldest-expiring one gives way).
const SUBS_MAX: usize = 10_000;
const SUBS_PER_OWNER: usize = 8;

/// A subscription's dialog as the subscriber names it: Call-ID and its From tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct SubKey {
    call_id: String,
    remote_tag: String,
}

#[derive(Debug)]
struct Subscription {
    owner: String,
    local_tag: String,
    /// The subscriber's From URI (To of our NOTIFY).
    remote_uri: String,
    /// The subscriber's Contact (Request-URI of our NOTIFY).
    target: String,
    /// Where the SUBSCRIBE came from: NOTIFYs go back the same way.
    flow: Flow,
    expires: Instant,
    cseq: u32,
}

#[derive(Default)]
pub(super) struct Subscriptions {
    map: HashMap<SubKey, Subscription>,
}

impl Subscriptions {
    pub(super) fn remove(&mut self, k: &SubKey) {
        self.map.remove(k);
    }

    pub(super) fn expire(&mut self, now: Instant) {
        self.map.retain(|_, s| s.expires > now);
    }

    fn of(&self, owner: &str, now: Instant) -> Vec<SubKey> {
        self.map
            .iter()
            .filter(|(_, s)| s.owner == owner && s.expires > now)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Live subscriptions (tests and metrics).
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

fn contact_uri(user: &str, flow: Flow) -> String {
    let param = match flow.transport {
        Transport::Udp => "",
        Transport::Tcp => ";transport=tcp",
        Transport::Tls => ";transport=tls",
    };
    format!("sip:{user}@{}{param}", Identity::sent_by(flow.local))
}

impl Proxy {
    /// SUBSCRIBE `Event: message-summary` to a local user, initial or refresh.
    pub(super) fn handle_summary_subscribe(
        &mut self,
        now: Instant,
        key: TxKey,
        msg: &Message,
        uri: &SipUri<'_>,
    ) {
        let Some(flow) = self.server.get(&key).map(|e| e.flow) else {
            return;
        };
        let Ok(who) = self.authenticate(now, &key, msg, flow, Role::Registrar) else {
            return;
        };
        let user = uri
            .user
            .and_then(|u| std::str::from_utf8(u).ok())
            .unwrap_or_default()
            .to_owned();
        // Only the owner learns about its own mailbox.
        if who.is_none_or(|w| w.username != user) {
            return self.reply(now, &key, msg, 403, "Forbidden", &[]);
        }
        let owner = format!("{user}@{}", self.cfg.identity.domain.to_ascii_lowercase());
        let expires = match msg.expires() {
            Ok(e) => e.unwrap_or(DEFAULT_EXPIRES),
            Err(_) => return self.reply(now, &key, msg, 400, "Bad Expires", &[]),
        };
        if expires != 0 && expires < MIN_EXPIRES {
            let min = MIN_EXPIRES.to_string();
            return self.reply(
                now,
                &key,
                msg,
                423,
                "Interval Too Brief",
                &[("Min-Expires", min.as_bytes())],
            );
        }
        let expires = expires.min(DEFAULT_EXPIRES);
        let (Some(call_id), Some(from_tag), Ok(from)) = (msg.call_id(), msg.from_tag(), msg.from())
        else {
            return self.reply(now, &key, msg, 400, "Missing From Tag", &[]);
        };
        let skey = SubKey {
            call_id: text(call_id),
            remote_tag: text(from_tag),
        };
        let target = msg
            .header(HeaderName::Contact)
            .and_then(NameAddr::parse)
            .map(|n| text(n.uri));
        let until = now + Duration::from_secs(u64::from(expires));
        if let Some(to_tag) = msg.to_tag() {
            // RFC 6665 §4.2.1.2: a refresh names an existing subscription.
            let Some(s) = self
                .sf
                .subs
                .map
                .get_mut(&skey)
                .filter(|s| s.local_tag.as_bytes() == to_tag && s.owner == owner)
            else {
                return self.reply(now, &key, msg, 481, "Subscription Does Not Exist", &[]);
            };
            s.expires = until;
            s.flow = flow;
            if let Some(t) = target {
                s.target = t;
            }
        } else {
            let Some(target) = target else {
                return self.reply(now, &key, msg, 400, "Missing Contact", &[]);
            };
            if !self.make_room(&owner, now) {
                return self.unavailable(now, &key, msg, b"60");
            }
            let local_tag = self.tag();
            self.sf.subs.map.insert(
                skey.clone(),
                Subscription {
                    owner: owner.clone(),
                    local_tag: local_tag.clone(),
                    remote_uri: text(from.uri),
                    target,
                    flow,
                    expires: until,
                    cseq: self.rng.random_range(1..10_000),
                },
            );
        }
        self.accept_subscription(now, (&key, msg), &skey, &user, expires);
    }

    /// 200 to a SUBSCRIBE (with our tag, the granted Expires and our Contact), then
    /// the NOTIFY: RFC 6665 §4.2.1.4 (an unsubscribe ends with it) and §4.2.2.
    fn accept_subscription(
        &mut self,
        now: Instant,
        (key, msg): (&TxKey, &Message),
        skey: &SubKey,
        user: &str,
        expires: u32,
    ) {
        let Some(s) = self.sf.subs.map.get(skey) else {
            return;
        };
        let (local_tag, flow) = (s.local_tag.clone(), s.flow);
        let via = received_via_of(self, key, msg);
        let exp = expires.to_string();
        let contact = format!("<{}>", contact_uri(user, flow));
        let mut b = ResponseBuilder::new(msg, 200, "OK").to_tag(local_tag.as_bytes());
        if let Some(v) = &via {
            b = b.top_via(v.as_bytes());
        }
        let bytes = b
            .header("Expires", exp.as_bytes())
            .header("Contact", contact.as_bytes())
            .to_vec();
        self.respond(now, key, 200, bytes.into());
        self.summary_notify(now, skey, expires == 0);
        if expires == 0 {
            self.sf.subs.remove(skey);
        }
    }

    /// Keeps the table bounded: evicts the owner's subscription that expires first
    /// when it has too many; `false` when the whole table is full.
    fn make_room(&mut self, owner: &str, now: Instant) -> bool {
        let mine = self.sf.subs.of(owner, now);
        if mine.len() >= SUBS_PER_OWNER
            && let Some(k) = mine
                .iter()
                .min_by_key(|k| self.sf.subs.map.get(*k).map(|s| s.expires))
                .cloned()
        {
            self.sf.subs.remove(&k);
        }
        if self.sf.subs.len() >= SUBS_MAX {
            self.sf.subs.expire(now);
        }
        self.sf.subs.len() < SUBS_MAX
    }

    /// The message-summary body of `owner`'s mailbox now; `None` if it cannot be read.
    fn summary_body(&mut self, owner: &str, now: Instant) -> Option<String> {
        let unix = self.unix(now);
        let read = {
            let mut mailbox = self.sf.mailbox.lock();
            mailbox.waiting(owner, unix).and_then(|total| {
                let listed = mailbox.list(owner, unix, summary::LIST_MAX)?;
                Ok((total, listed))
            })
        };
        match read {
            Ok((total, listed)) => Some(summary::body(owner, total, &listed)),
            Err(e) => {
                tracing::warn!(error = %e, "mailbox read failed; no NOTIFY");
                None
            }
        }
    }

    /// A NOTIFY in the subscription's dialog (RFC 6665 §4.2.2).
    fn summary_notify(&mut self, now: Instant, skey: &SubKey, terminated: bool) {
        let Some(owner) = self.sf.subs.map.get(skey).map(|s| s.owner.clone()) else {
            return;
        };
        let Some(body) = self.summary_body(&owner, now) else {
            return;
        };
        let branch = self.own_branch();
        let Some(s) = self.sf.subs.map.get_mut(skey) else {
            return;
        };
        s.cseq += 1;
        let left = s.expires.saturating_duration_since(now).as_secs();
        let state = if terminated {
            "terminated;reason=timeout".to_owned()
        } else {
            format!("active;expires={left}")
        };
        let user = owner.split('@').next().unwrap_or_default();
        let mut m = String::with_capacity(512 + body.len());
        let _ = write!(
            m,
            "NOTIFY {target} SIP/2.0\r\nVia: SIP/2.0/{t} {sent_by};branch={branch};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:{owner}>;tag={ltag}\r\nTo: <{ruri}>;tag={rtag}\r\n\
Call-ID: {cid}\r\nCSeq: {cseq} NOTIFY\r\nContact: <{contact}>\r\nEvent: message-summary\r\n\
Subscription-State: {state}\r\nContent-Type: {ct}\r\nContent-Length: {len}\r\n\r\n{body}",
            target = s.target,
            t = s.flow.transport.via_token(),
            sent_by = Identity::sent_by(s.flow.local),
            ltag = s.local_tag,
            ruri = s.remote_uri,
            rtag = skey.remote_tag,
            cid = skey.call_id,
            cseq = s.cseq,
            contact = contact_uri(user, s.flow),
            ct = summary::CONTENT_TYPE,
            len = body.len(),
        );
        let flow = s.flow;
        self.stats.notifies += 1;
        self.send_own(
            now,
            flow,
            branch,
            m.into_bytes().into(),
            Outgoing::Notify(Some(skey.clone())),
        );
    }

    /// NOTIFY to every live subscription of `owner`.
    pub(super) fn notify_subscribers(&mut self, now: Instant, owner: &str) {
        for k in self.sf.subs.of(owner, now) {
            self.summary_notify(now, &k, false);
        }
    }

    /// After a change of `owner`'s mailbox: its subscriptions, and its bindings
    /// without one.
    pub(super) fn notify_owner(&mut self, now: Instant, owner: &str) {
        self.notify_subscribers(now, owner);
        self.notify_bindings(now, owner, None);
    }

    /// An unsolicited NOTIFY (out of dialog) to each live binding of `owner` that has
    /// no subscription, or only to those whose contact is in `only`.
    fn notify_bindings(&mut self, now: Instant, owner: &str, only: Option<&[String]>) {
        let aor = format!("sip:{owner}");
        let Some(uri) = SipUri::parse(aor.as_bytes()) else {
            return;
        };
        let Ok(targets) = self.targets(now, &uri, aor.as_bytes(), true, &[]) else {
            return;
        };
        let subscribed: Vec<(String, std::net::SocketAddr)> = self
            .sf
            .subs
            .of(owner, now)
            .iter()
            .filter_map(|k| self.sf.subs.map.get(k))
            .map(|s| (s.target.clone(), s.flow.remote))
            .collect();
        let mut body = None;
        for t in targets {
            let Some(contact) = t.uri.clone() else {
                continue;
            };
            if only.is_some_and(|o| !o.contains(&contact))
                || subscribed
                    .iter()
                    .any(|(target, remote)| *target == contact || *remote == t.dest)
            {
                continue;
            }
            let Some(local) = self.cfg.identity.local_for(t.transport, t.dest) else {
                continue;
            };
            if body.is_none() {
                body = self.summary_body(owner, now);
            }
            let Some(body) = &body else { return };
            let branch = self.own_branch();
            let tag = self.tag();
            let call_id = format!("{:032x}@permit", self.rng.random::<u128>());
            let mut m = String::with_capacity(512 + body.len());
            let _ = write!(
                m,
                "NOTIFY {contact} SIP/2.0\r\nVia: SIP/2.0/{} {};branch={branch};rport\r\nMax-Forwards: 70\r\n",
                t.transport.via_token(),
                Identity::sent_by(local)
            );
            for r in &t.route {
                let _ = write!(m, "Route: {r}\r\n");
            }
            let _ = write!(
                m,
                "From: <sip:{owner}>;tag={tag}\r\nTo: <sip:{owner}>\r\nCall-ID: {call_id}\r\n\
CSeq: 1 NOTIFY\r\nEvent: message-summary\r\nSubscription-State: active\r\n\
Content-Type: {}\r\nContent-Length: {}\r\n\r\n{body}",
                summary::CONTENT_TYPE,
                body.len()
            );
            let flow = Flow {
                transport: t.transport,
                local,
                remote: t.dest,
            };
            self.stats.notifies += 1;
            self.send_own(
                now,
                flow,
                branch,
                m.into_bytes().into(),
                Outgoing::Notify(None),
            );
        }
    }

    /// A REGISTER was accepted: when items wait, its contacts get a NOTIFY.
    pub(super) fn after_register(&mut self, now: Instant, aor: &str, msg: &Message) {
        let unix = self.unix(now);
        if self.sf.disabled
            || self
                .sf
                .mailbox
                .lock()
                .waiting(aor, unix)
                .map_or(true, |u| u.items == 0)
        {
            return;
        }
        let contacts: Vec<String> = msg
            .list(HeaderName::Contact)
            .filter_map(NameAddr::parse)
            .map(|n| text(n.uri))
            .collect();
        if !contacts.is_empty() {
            self.notify_bindings(now, aor, Some(&contacts));
        }
    }
}
