//! The commands that fill the inbox: `permit-ua inbox list`, `permit-ua inbox fetch`,
//! and the automatic fetch of `permit-ua answer` (docs/profile.md "Transfer request",
//! "Data with attributes"). What is accepted and how it is saved: [`super::save`].

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::item::{ItemInfo, is_item_id, parse_summary};
pub use super::save::{
    FILE_LINK_TYPE, InboxContext, MAX_DOWNLOAD, Refused, Saved, accept, default_home,
};
use super::{Incoming, Outgoing, StoreEvent, answered_header};
use crate::engine::Event;
use crate::outcome::exit;
use crate::shell::{Driver, Next, Output};

/// The transfer request's body type.
pub const TRANSFER_TYPE: &str = "application/permit-transfer+json";
/// How long `inbox` waits for the proxy's answers and deliveries.
const WAIT: Duration = Duration::from_mins(1);

/// The transfer request (docs/profile.md "Transfer request"): all items, or `ids`.
pub fn transfer_request(aor: &str, ids: &[String]) -> Outgoing {
    let body = (!ids.is_empty()).then(|| {
        (
            TRANSFER_TYPE.to_string(),
            json!({ "items": ids }).to_string().into_bytes(),
        )
    });
    Outgoing {
        method: "MESSAGE",
        uri: aor.to_string(),
        to: aor.to_string(),
        call_id: None,
        headers: vec![("Event", "permit-transfer".into())],
        body,
        direct: false,
    }
}

/// A one-shot message-summary subscription (`Expires: 0`, RFC 6665 §4.2.1.4: the
/// notifier sends the state once and ends it).
fn summary_fetch(aor: &str) -> Outgoing {
    Outgoing {
        method: "SUBSCRIBE",
        uri: aor.to_string(),
        to: aor.to_string(),
        call_id: None,
        headers: vec![
            ("Event", "message-summary".into()),
            ("Accept", "application/simple-message-summary".into()),
            ("Expires", "0".into()),
        ],
        body: None,
        direct: false,
    }
}

/// The proxy's refusal of a store request, in words, and the exit code.
pub fn refusal_words(status: Option<u16>, reason: &str) -> (String, u8) {
    match status {
        None => (
            "no answer from the proxy".into(),
            exit::NO_ANSWER_FROM_PROXY,
        ),
        Some(s @ (401 | 407)) => (format!("wrong user or password ({s})"), exit::REFUSED),
        Some(s @ 403) => (format!("refused: {reason} ({s})"), exit::REFUSED),
        Some(s) => (format!("the proxy answered {s} {reason}"), exit::FAILED),
    }
}

fn aor_of(d: &Driver) -> String {
    d.ua.config().local.aor()
}

/// `permit-ua inbox list`: the waiting items from one message-summary NOTIFY.
pub async fn run_list(mut d: Driver, out: Output) -> u8 {
    let aor = aor_of(&d);
    let id = d.ua.store_send(Instant::now(), summary_fetch(&aor));
    let deadline = Instant::now() + WAIT;
    let mut accepted = false;
    loop {
        match d.next(Some(deadline)).await {
            Next::Event(Event::Store(StoreEvent::Answered {
                id: got,
                status,
                reason,
                ..
            })) if got == id => {
                if status.is_some_and(|s| (200..300).contains(&s)) {
                    accepted = true;
                } else {
                    let (text, code) = refusal_words(status, &reason);
                    out.say(
                        "failed",
                        &text,
                        json!({ "status": status, "exit_code": code }),
                    );
                    return code;
                }
            }
            Next::Event(Event::Store(StoreEvent::Summary { body })) => {
                let s = parse_summary(&body);
                let items: Vec<Value> = s
                    .items
                    .iter()
                    .map(|w| {
                        json!({
                            "item": w.info.id, "from": w.from, "type": w.info.content_type,
                            "size": w.info.size, "sha256": w.info.sha256,
                            "expires": w.info.expires, "secret": w.attributes.secret(),
                        })
                    })
                    .collect();
                let mut text = if s.count == 0 {
                    "no items wait for you".to_string()
                } else {
                    format!("{} items wait for you", s.count)
                };
                for w in &s.items {
                    let _ = write!(
                        text,
                        "\n  {} {} bytes from {}{}",
                        w.info.id,
                        w.info.size.unwrap_or(0),
                        w.from.as_deref().unwrap_or("?"),
                        if w.attributes.secret() {
                            " (secret)"
                        } else {
                            ""
                        }
                    );
                }
                out.say(
                    "inbox",
                    &text,
                    json!({ "waiting": s.count, "items": items, "exit_code": 0 }),
                );
                // Let the 200 to the NOTIFY leave before we go.
                let _ = d
                    .next(Some(Instant::now() + Duration::from_millis(200)))
                    .await;
                return exit::CONNECTED;
            }
            Next::Event(e) => tracing::debug!(?e, "event"),
            Next::Deadline | Next::Signal => {
                let (text, code) = if accepted {
                    ("the proxy sent no summary".to_string(), exit::FAILED)
                } else {
                    refusal_words(None, "")
                };
                out.say("failed", &text, json!({ "exit_code": code }));
                return code;
            }
        }
    }
}

/// Item ids from a transfer answer's `key` (`delivering`, `pending`).
fn ids(body: &[u8], key: &str) -> BTreeSet<String> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get(key)?.as_array().map(|a| {
                a.iter()
                    .filter_map(|i| i.as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// `permit-ua inbox fetch [ID...]`: the transfer request, then every delivered item
/// checked, saved and acknowledged.
pub async fn run_fetch(mut d: Driver, out: Output, ctx: &InboxContext, wanted: &[String]) -> u8 {
    if let Some(bad) = wanted.iter().find(|i| !is_item_id(i)) {
        eprintln!("permit-ua: {bad} is not an item id (32 lowercase hex digits)");
        return exit::USAGE;
    }
    let aor = aor_of(&d);
    let id =
        d.ua.store_send(Instant::now(), transfer_request(&aor, wanted));
    let mut deadline = Instant::now() + WAIT;
    let mut expected: Option<BTreeSet<String>> = None;
    // Items may arrive before the transfer request's 200 (UDP reorders).
    let mut arrived: BTreeSet<String> = BTreeSet::new();
    let mut failures = 0u32;
    let mut saved = 0u32;
    loop {
        if expected.as_ref().is_some_and(BTreeSet::is_empty) {
            // Our last 200 must leave (and a retransmitted MESSAGE be answered).
            let _ = d
                .next(Some(Instant::now() + Duration::from_millis(500)))
                .await;
            let code = if failures == 0 {
                exit::CONNECTED
            } else {
                exit::FAILED
            };
            out.say(
                "fetched",
                &format!("{saved} items saved, {failures} failed"),
                json!({ "saved": saved, "failed": failures, "exit_code": code }),
            );
            return code;
        }
        match d.next(Some(deadline)).await {
            Next::Event(Event::Store(StoreEvent::Answered {
                id: got,
                status,
                reason,
                body,
                ..
            })) if got == id => {
                if status.is_some_and(|s| (200..300).contains(&s)) {
                    let delivering = ids(&body, "delivering");
                    let pending = ids(&body, "pending");
                    out.say(
                        "transfer",
                        &format!(
                            "{} items coming, {} already under way",
                            delivering.len(),
                            pending.len()
                        ),
                        json!({ "delivering": delivering, "pending": pending }),
                    );
                    expected = Some(delivering.difference(&arrived).cloned().collect());
                } else {
                    let (text, code) = refusal_words(status, &reason);
                    out.say(
                        "failed",
                        &text,
                        json!({ "status": status, "reason": reason, "exit_code": code }),
                    );
                    return code;
                }
            }
            Next::Event(Event::Store(StoreEvent::Message(inc))) => {
                let item = inc.item.as_deref().and_then(ItemInfo::parse).map(|i| i.id);
                if take(&mut d, out, ctx, &inc).await {
                    saved += 1;
                } else {
                    failures += 1;
                }
                if let Some(i) = item {
                    if let Some(exp) = expected.as_mut() {
                        exp.remove(&i);
                    }
                    arrived.insert(i);
                }
                deadline = Instant::now() + WAIT;
            }
            Next::Event(e) => tracing::debug!(?e, "event"),
            Next::Deadline | Next::Signal => {
                let missing = expected.map_or(0, |e| e.len());
                out.say(
                    "failed",
                    &format!("{missing} items did not arrive; they stay at the proxy"),
                    json!({ "missing": missing, "exit_code": exit::FAILED }),
                );
                return exit::FAILED;
            }
        }
    }
}

/// Accepts one delivered MESSAGE ([`accept`], with a progress bar), answers it (200,
/// or the refusal that keeps the item at the proxy) and says so. Whether it was saved.
async fn take(d: &mut Driver, out: Output, ctx: &InboxContext, inc: &Incoming) -> bool {
    let item = inc.item.as_deref().and_then(ItemInfo::parse).map(|i| i.id);
    let mut bar = Progress::new(out);
    let result = accept(ctx, inc, &mut |n, t| bar.update(n, t)).await;
    bar.finish();
    match result {
        Ok(s) => {
            d.ua.store_reply(Instant::now(), inc.id, 200, "OK");
            out.say("saved", &s.describe(), s.fields());
            true
        }
        Err(r) => {
            d.ua.store_reply(Instant::now(), inc.id, r.status, r.reason);
            out.say(
                "item-refused",
                &format!("item not accepted: {} ({})", r.reason, r.detail),
                json!({ "item": item, "status": r.status, "reason": r.reason }),
            );
            false
        }
    }
}

/// A progress bar for large transfers (indicatif), shown only in plain output and
/// for transfers of more than 1 MiB.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    show: bool,
}

impl Progress {
    pub fn new(out: Output) -> Self {
        Self {
            bar: None,
            show: !out.json,
        }
    }

    pub fn update(&mut self, done: u64, total: u64) {
        if !self.show || total < (1 << 20) {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let b = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                b.set_style(style);
            }
            b
        });
        bar.set_position(done);
    }

    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// The automatic fetch of `permit-ua answer`: on a message-summary NOTIFY that says
/// items wait, and after a call ends while they still do, a transfer request when the
/// UA's load is below its limit; each delivered item is accepted as by `inbox fetch`.
pub struct AutoFetch {
    pub ctx: InboxContext,
    out: Output,
    /// Items wait (the last summary said so) and no transfer took them yet.
    waiting: bool,
    /// Our transfer request in flight.
    in_flight: Option<u32>,
}

impl AutoFetch {
    pub fn new(ctx: InboxContext, out: Output) -> Self {
        Self {
            ctx,
            out,
            waiting: false,
            in_flight: None,
        }
    }

    fn maybe_fetch(&mut self, d: &mut Driver) {
        let load = d.ua.load();
        if !self.waiting || self.in_flight.is_some() || load.active >= load.max {
            return;
        }
        let aor = aor_of(d);
        self.waiting = false;
        self.in_flight = Some(d.ua.store_send(Instant::now(), transfer_request(&aor, &[])));
    }

    /// A call ended: fetch what waits if the load now allows.
    pub fn call_ended(&mut self, d: &mut Driver) {
        self.maybe_fetch(d);
    }

    pub async fn handle(&mut self, d: &mut Driver, e: StoreEvent) {
        match e {
            StoreEvent::Summary { body } => {
                let s = parse_summary(&body);
                if s.waiting {
                    let load = d.ua.load();
                    let text = if load.active >= load.max {
                        format!("{} items wait; fetching when a call ends", s.count)
                    } else {
                        format!("{} items wait; fetching them", s.count)
                    };
                    self.out
                        .say("waiting", &text, json!({ "waiting": s.count }));
                }
                self.waiting = s.waiting;
                self.maybe_fetch(d);
            }
            StoreEvent::Answered {
                id, status, body, ..
            } if Some(id) == self.in_flight => {
                self.in_flight = None;
                if status.is_some_and(|s| (200..300).contains(&s)) {
                    let delivering = ids(&body, "delivering");
                    self.out.say(
                        "transfer",
                        &format!("{} items coming", delivering.len()),
                        json!({ "delivering": delivering }),
                    );
                } else {
                    self.out.say(
                        "warning",
                        &format!("transfer request answered {status:?}"),
                        json!({ "status": status }),
                    );
                }
            }
            StoreEvent::Message(inc) => {
                take(d, self.out, &self.ctx, &inc).await;
            }
            StoreEvent::Answered { .. } => {}
        }
    }
}

/// The kept headers of an answer, for commands.
pub fn kept<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
    answered_header(headers, name)
}

/// A UA that does not fetch (`register`): a delivered item is answered 480, so the
/// proxy keeps it (RFC 3428 §7: a non-2xx final means not delivered).
pub fn refuse_unwanted(d: &mut Driver, e: &StoreEvent) {
    if let StoreEvent::Message(inc) = e {
        d.ua.store_reply(Instant::now(), inc.id, 480, "Temporarily Unavailable");
    }
}
