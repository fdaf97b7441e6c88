//! The driver loop: the only place where a sans-IO engine meets tokio (STYLE.md rule 1).

use std::time::Instant;

use sip_core::transport::{Received, Transmit};

use crate::Network;

/// A sans-IO engine as the driver sees it.
pub trait Engine {
    fn handle_received(&mut self, now: Instant, msg: Received);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_transmit(&mut self) -> Option<Transmit>;
    fn poll_timeout(&self) -> Option<Instant>;
}

/// Runs `engine` on `net` until `shutdown` resolves or the sockets close.
pub async fn run<E: Engine>(
    engine: &mut E,
    mut net: Network,
    shutdown: impl std::future::Future<Output = ()>,
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
        tokio::select! {
            biased;
            () = &mut shutdown => return,
            msg = net.inbound.recv() => {
                let Some(msg) = msg else { return };
                let now = Instant::now();
                engine.handle_received(now, msg);
                // Drain what is already queued before looking at timers again.
                while let Ok(more) = net.inbound.try_recv() {
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
