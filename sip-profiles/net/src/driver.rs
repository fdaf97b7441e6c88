//! The driver loop: the only place where a sans-IO engine meets tokio (STYLE.md rule 1).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use sip_core::transport::{Received, Transmit};

use crate::Network;

/// A sans-IO engine as the driver sees it.
pub trait Engine {
    fn handle_received(&mut self, now: Instant, msg: Received);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_transmit(&mut self) -> Option<Transmit>;
    fn poll_timeout(&self) -> Option<Instant>;
    /// Work done outside the loop is ready for the engine (a store worker committed a
    /// group of writes, an operator's command is queued): the driver calls this when
    /// the `wake` signal given to [`run_woken`] fires.
    fn handle_wake(&mut self, _now: Instant) {}
    /// How long the input about to be handled waited before the shell read it (see
    /// [`crate::NetStats::input_wait`]); called before each `handle_received`. An engine
    /// may refuse new work while this is long (overload control).
    fn handle_load(&mut self, _now: Instant, _waited: Duration) {}
}

/// Runs `engine` on `net` until `shutdown` resolves or the sockets close.
pub async fn run<E: Engine>(
    engine: &mut E,
    net: Network,
    shutdown: impl std::future::Future<Output = ()>,
) {
    run_woken(engine, net, shutdown, None).await;
}

/// [`run`], plus [`Engine::handle_wake`] whenever `wake` is notified.
pub async fn run_woken<E: Engine>(
    engine: &mut E,
    mut net: Network,
    shutdown: impl std::future::Future<Output = ()>,
    wake: Option<Arc<Notify>>,
) {
    tokio::pin!(shutdown);
    loop {
        while let Some(t) = engine.poll_transmit() {
            net.sender.send(t).await;
        }
        let deadline = engine.poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let woken = async {
            match &wake {
                Some(w) => w.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = &mut shutdown => return,
            // Before new input: finished work releases answers that are waiting.
            () = woken => engine.handle_wake(Instant::now()),
            msg = net.inbound.recv() => {
                let Some(msg) = msg else { return };
                let now = Instant::now();
                engine.handle_load(now, net.sender.stats.input_wait());
                engine.handle_received(now, msg);
                // Drain what is already queued before looking at timers again.
                while let Ok(more) = net.inbound.try_recv() {
                    engine.handle_load(now, net.sender.stats.input_wait());
                    engine.handle_received(now, more);
                    while let Some(t) = engine.poll_transmit() {
                        net.sender.send(t).await;
                    }
                }
            }
            () = sleep => engine.handle_timeout(Instant::now()),
        }
    }
}
