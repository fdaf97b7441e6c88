//! The engine's side of the operator's control queue ([`crate::control`]): commands
//! are taken when the driver wakes the engine, each answered on its own channel.
//! Reading state and expiring a binding or deleting an item here keeps every change
//! on the engine's thread, so the engine's view (location, message-summary) never
//! lags behind what the operator did.

use std::time::Instant;

use super::Proxy;
use crate::control::{BindingInfo, Command, Control, ControlError, EngineSnapshot, ItemInfo};
use crate::mailbox::ItemId;
use crate::permits::Aor;

/// Items listed for one owner at most.
const MAX_LISTED: usize = 1000;

impl Proxy {
    /// Hands the engine the queue the admin API fills (before the driver runs).
    pub fn set_control(&mut self, control: Control) {
        self.control = Some(control);
    }

    /// Answers every queued command (the driver's wake-up).
    pub(crate) fn handle_control(&mut self, now: Instant) {
        let Some(control) = self.control.clone() else {
            return;
        };
        while let Some(cmd) = control.pop() {
            // A caller that gave up waiting dropped its receiver: nothing to tell.
            match cmd {
                Command::Stats(reply) => {
                    let _ = reply.send(Ok(self.snapshot_all()));
                }
                Command::Bindings { aor, reply } => {
                    let _ = reply.send(self.control_bindings(now, &aor));
                }
                Command::Expire {
                    aor,
                    contact,
                    reply,
                } => {
                    let _ = reply.send(self.control_expire(&aor, &contact));
                }
                Command::Items { owner, reply } => {
                    let _ = reply.send(self.control_items(now, &owner));
                }
                Command::DeleteItem { id, reply } => {
                    let _ = reply.send(self.control_delete_item(&id));
                }
                Command::RemoteBindings(batch) => {
                    for (aor, bindings) in batch {
                        self.location.lock().apply_stored(&aor, bindings);
                    }
                }
                Command::ReloadPermits => self.permits.lock().refresh(),
            }
        }
    }

    /// This shard's counters on the board, for the first shard's [`Self::snapshot_all`].
    pub fn report(&mut self) {
        if self.shard == 0 {
            return;
        }
        let snapshot = self.snapshot();
        if let Some(slot) = self.board.lock().get_mut(usize::from(self.shard)) {
            *slot = Some(snapshot);
        }
    }

    /// This shard's state and what the other shards last reported (at most
    /// `REPORT_EVERY` old): counters and queues summed, shared tables once.
    pub fn snapshot_all(&self) -> EngineSnapshot {
        let mut all = self.snapshot();
        let board = self.board.lock();
        for (i, s) in board.iter().enumerate() {
            if let Some(s) = s.as_ref().filter(|_| i != usize::from(self.shard)) {
                all.stats.add(&s.stats);
                all.server_transactions += s.server_transactions;
                all.client_transactions += s.client_transactions;
                all.contexts += s.contexts;
                all.timers += s.timers;
                all.outbound_queue += s.outbound_queue;
                all.held_registers += s.held_registers;
                all.relayed_calls += s.relayed_calls;
                all.unrelayed_calls += s.unrelayed_calls;
                all.overload.over |= s.overload.over;
                all.overload.admitted_per_mille = all
                    .overload
                    .admitted_per_mille
                    .min(s.overload.admitted_per_mille);
                all.overload.waited = all.overload.waited.max(s.overload.waited);
            }
        }
        all
    }

    fn snapshot(&self) -> EngineSnapshot {
        let (aors, bindings) = self.location.lock().counts();
        let (held_registers, pending_writes) = self.writes_pending();
        let relay = self.relay_stats();
        let (auth_failures, limiter_refused) = {
            let auth = self.auth.lock();
            (auth.failures, auth.limiter_refused())
        };
        EngineSnapshot {
            stats: self.stats.clone(),
            server_transactions: self.server.len() + self.absorbing.len(),
            client_transactions: self.client.len(),
            contexts: self.contexts.len(),
            aors,
            bindings,
            timers: self.heap.len(),
            outbound_queue: self.out.len(),
            held_registers,
            pending_writes,
            auth_failures,
            limiter_refused,
            relayed_calls: relay.as_ref().map_or(0, |(_, h)| h.relayed),
            unrelayed_calls: relay.as_ref().map_or(0, |(_, h)| h.unrelayed),
            relay: relay.map(|(r, _)| r),
            overload: self.overload_state(),
        }
    }

    fn control_bindings(&self, now: Instant, aor: &str) -> Result<Vec<BindingInfo>, ControlError> {
        let aor = parse_aor(aor)?;
        let unix = self.unix(now);
        let location = self.location.lock();
        let list = location.bindings(aor.as_str());
        if list.is_empty() {
            return Err(ControlError::NotFound(format!("no bindings for {aor}")));
        }
        Ok(list
            .iter()
            .map(|b| BindingInfo {
                contact: b.contact.to_string(),
                expires_in: b.expires_at.saturating_sub(unix),
                q: b.q,
            })
            .collect())
    }

    /// Removes the binding whose Contact is `contact`, as a REGISTER with
    /// `Expires: 0` for that Contact would (RFC 3261 §10.3 step 7).
    fn control_expire(&mut self, aor: &str, contact: &str) -> Result<(), ControlError> {
        let aor = parse_aor(aor)?;
        let mut list = self.location.lock().bindings(aor.as_str()).to_vec();
        let before = list.len();
        list.retain(|b| &*b.contact != contact);
        if list.len() == before {
            return Err(ControlError::NotFound(format!(
                "{aor} has no binding {contact}"
            )));
        }
        // Stored now, or queued to the store worker (then routing follows once it
        // is settled, as for a REGISTER).
        let replaced = self.location.lock().replace(aor.as_str(), list).map(drop);
        match replaced {
            Ok(()) => {
                tracing::info!("admin: a binding expired by the operator");
                Ok(())
            }
            Err(e) => Err(ControlError::Store(e.to_string())),
        }
    }

    fn control_items(&mut self, now: Instant, owner: &str) -> Result<Vec<ItemInfo>, ControlError> {
        let owner = parse_aor(owner)?;
        let unix = self.unix(now);
        let list = self
            .sf
            .mailbox
            .lock()
            .list(owner.as_str(), unix, MAX_LISTED)
            .map_err(|e| ControlError::Store(e.to_string()))?;
        Ok(list.into_iter().map(ItemInfo::from).collect())
    }

    fn control_delete_item(&mut self, id: &str) -> Result<(), ControlError> {
        let parsed = ItemId::parse(id)
            .ok_or_else(|| ControlError::BadInput(format!("bad item id {id:?}")))?;
        let outcome = self.sf.mailbox.lock().delete(&parsed);
        match outcome {
            Ok(true) => Ok(()),
            Ok(false) => Err(ControlError::NotFound(format!("no item {id}"))),
            Err(e) => Err(ControlError::Store(e.to_string())),
        }
    }
}

fn parse_aor(s: &str) -> Result<Aor, ControlError> {
    Aor::parse(s).map_err(|e| ControlError::BadInput(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use bytes::Bytes;
    use sip_core::transport::{Received, Transport};
    use tokio::sync::Notify;

    use super::super::tests::{addr, permits};
    use super::super::{Proxy, ProxyConfig};
    use crate::auth::{Auth, AuthSettings};
    use crate::control::{Control, ControlError, METHODS};
    use crate::location::Location;
    use crate::route::Identity;
    use crate::store::MemoryStore;
    use crate::users::MemoryUsers;

    /// An open proxy (no authentication) on the in-memory stores, bob registered.
    fn proxy_with_bob() -> (Proxy, Instant) {
        let identity = Identity {
            domain: "localhost".into(),
            listeners: vec![(Transport::Udp, addr("127.0.0.1:5060"))],
        };
        let open = AuthSettings {
            enabled: false,
            ..AuthSettings::default()
        };
        let auth = Auth::new(
            open,
            "localhost".into(),
            Box::new(MemoryUsers::default()),
            [9; 32],
        );
        let location = Location::open(Box::new(MemoryStore::default())).unwrap();
        let now = Instant::now();
        let cfg = ProxyConfig::new(identity);
        let mut p = Proxy::new(cfg, location, auth, permits(&[]), now, 1_800_000_000, 7);
        let register = "REGISTER sip:localhost SIP/2.0\r\n\
            Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKreg1\r\n\
            From: <sip:bob@localhost>;tag=r1\r\nTo: <sip:bob@localhost>\r\n\
            Call-ID: reg-bob\r\nCSeq: 1 REGISTER\r\n\
            Contact: <sip:bob@127.0.0.1:5080>\r\nExpires: 600\r\n\
            Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
        p.handle_received(
            now,
            Received {
                transport: Transport::Udp,
                local: addr("127.0.0.1:5060"),
                peer: addr("127.0.0.1:5080"),
                data: Bytes::from_static(register.as_bytes()),
            },
        );
        // The answer to the REGISTER (and anything else) only when asked.
        while p.poll_transmit().is_some() {}
        (p, now)
    }

    /// The operator's commands reach the engine's state only when the engine looks
    /// at its queue, and each gets its answer.
    #[test]
    fn commands_are_answered_when_the_engine_looks_at_its_queue() {
        let (mut proxy, now) = proxy_with_bob();
        let control = Control::new(Arc::new(Notify::new()));
        proxy.set_control(control.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let engine = &mut proxy;
        rt.block_on(async {
            let ask = async {
                let s = control.stats().await.unwrap();
                let register = METHODS.iter().position(|m| *m == "REGISTER").unwrap();
                assert_eq!(s.stats.traffic.requests[register], 1);
                assert_eq!(s.stats.traffic.responses[200 - 100], 1);
                assert_eq!((s.stats.registrations, s.aors, s.bindings), (1, 1, 1));
                let b = control.bindings("sip:bob@localhost".into()).await.unwrap();
                assert_eq!(b.len(), 1);
                assert_eq!(b[0].contact, "sip:bob@127.0.0.1:5080");
                assert!(b[0].expires_in > 0 && b[0].expires_in <= 600);
                let bob = || "bob@localhost".to_string();
                let other = control.expire(bob(), "sip:bob@192.0.2.1".into()).await;
                assert!(matches!(other, Err(ControlError::NotFound(_))));
                control.expire(bob(), b[0].contact.clone()).await.unwrap();
                let gone = control.bindings(bob()).await;
                assert!(matches!(gone, Err(ControlError::NotFound(_))));
                let bad = control.bindings("nobody".into()).await;
                assert!(matches!(bad, Err(ControlError::BadInput(_))));
                assert_eq!(control.items(bob()).await.unwrap(), vec![]);
                let bad = control.delete_item("xyz".into()).await;
                assert!(matches!(bad, Err(ControlError::BadInput(_))));
                let none = control.delete_item("0".repeat(32)).await;
                assert!(matches!(none, Err(ControlError::NotFound(_))));
            };
            let serve = async {
                loop {
                    tokio::task::yield_now().await;
                    engine.handle_control(now);
                }
            };
            tokio::select! {
                () = ask => {}
                () = serve => {}
            }
        });
        let (aors, bindings) = proxy.location_counts();
        assert_eq!(
            bindings, 0,
            "the binding is gone from the location service ({aors} AORs)"
        );
    }
}
