//! The node's LISTEN task: what other nodes commit reaches this node's memory.
//!
//! One async connection (tokio-postgres) LISTENs on the three channels:
//! - [`CHANNEL_BINDING`], payload `<node> <aor>` (or `<node>` alone: "reload by
//!   `changed_at`"): the task reads that AOR's bindings and hands them to the engine
//!   as [`Command::RemoteBindings`] on the control queue; a node skips its own.
//! - [`CHANNEL_PERMIT`]: the permit store's counter is bumped and the engine told
//!   [`Command::ReloadPermits`]; it reads the change log (`permits::PgPermitStore`).
//! - [`CHANNEL_USER`]: the credential cache's counter is bumped (read again before
//!   the next authentication).
//!
//! A lost connection is retried every second; after each (re)connect the task catches
//! up on what it may have missed: the permit log and the users by their counters, the
//! bindings by `binding_aor.changed_at` since the last session (with a margin for
//! transactions that committed late).
//!
//! [`Command::RemoteBindings`]: crate::control::Command::RemoteBindings
//! [`Command::ReloadPermits`]: crate::control::Command::ReloadPermits

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_postgres::AsyncMessage;

use super::location::{BINDING_COLUMNS, binding_from_row};
use super::{CHANNEL_BINDING, CHANNEL_PERMIT, CHANNEL_USER, NodeId, PgError, PgUrl};
use crate::control::{Control, ControlError};
use crate::location::Binding;

/// Counters the listener bumps for the stores that poll them.
#[derive(Debug, Clone, Default)]
pub struct Heard {
    pub permits: Arc<AtomicU64>,
    pub users: Arc<AtomicU64>,
}

/// AORs read and handed over per command.
const BATCH: usize = 512;
/// Margin for changes committed after the moment a catch-up read from.
const CATCH_UP_MARGIN_S: i64 = 60;
/// Wait between connection attempts.
const RETRY: Duration = Duration::from_secs(1);

/// What the task needs; see [`spawn`].
pub struct Listener {
    pub url: PgUrl,
    pub node: NodeId,
    pub heard: Heard,
    pub control: Control,
    /// Unix seconds of the node's start (its `load_all`): the first catch-up reads
    /// bindings changed since then.
    pub since_unix: i64,
}

/// Starts the task on the current runtime.
pub fn spawn(l: Listener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(l))
}

async fn run(mut l: Listener) {
    let mut since = l.since_unix - CATCH_UP_MARGIN_S;
    loop {
        match session(&mut l, &mut since).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "postgres listener lost its connection; reconnecting");
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One connection's life: LISTEN, catch up, then follow the notifications. `Ok` only
/// when the engine is gone.
async fn session(l: &mut Listener, since: &mut i64) -> Result<(), PgError> {
    let config = tokio_postgres::Config::from_str(l.url.expose())
        .map_err(|e| PgError::Url(e.to_string()))?;
    let mut config = config;
    config.connect_timeout(Duration::from_secs(5));
    config.keepalives(true);
    config.application_name("permit-proxy listener");
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "postgres listener connection failed");
                    return;
                }
                None => return,
            }
        }
    });
    let outcome = follow(l, since, &client, &mut rx).await;
    driver.abort();
    outcome
}

async fn follow(
    l: &Listener,
    since: &mut i64,
    client: &tokio_postgres::Client,
    rx: &mut tokio::sync::mpsc::Receiver<tokio_postgres::Notification>,
) -> Result<(), PgError> {
    client
        .batch_execute(&format!(
            "LISTEN {CHANNEL_BINDING}; LISTEN {CHANNEL_PERMIT}; LISTEN {CHANNEL_USER}"
        ))
        .await?;
    // Catch up on what a gap before this LISTEN may have hidden.
    l.heard.permits.fetch_add(1, Ordering::AcqRel);
    l.heard.users.fetch_add(1, Ordering::AcqRel);
    let _ = l.control.reload_permits();
    let now: i64 = client
        .query_one("SELECT extract(epoch FROM clock_timestamp())::BIGINT", &[])
        .await?
        .get(0);
    let changed: Vec<String> = client
        .query(
            "SELECT aor FROM binding_aor WHERE changed_at >= to_timestamp($1::BIGINT)",
            &[since],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    tracing::debug!(aors = changed.len(), "postgres listener caught up");
    hand_over(l, client, changed).await?;
    *since = now - CATCH_UP_MARGIN_S;
    tracing::info!("postgres listener ready");

    while let Some(first) = rx.recv().await {
        let mut aors = BTreeSet::new();
        let (mut permits, mut catch_up) = (false, false);
        let mut next = Some(first);
        while let Some(n) = next {
            let payload = n.payload();
            let (from, aor) = payload.split_once(' ').unwrap_or((payload, ""));
            match n.channel() {
                CHANNEL_BINDING if from != l.node.0 => {
                    if aor.is_empty() {
                        catch_up = true;
                    } else {
                        aors.insert(aor.to_owned());
                    }
                }
                CHANNEL_PERMIT => permits = true,
                CHANNEL_USER => {
                    l.heard.users.fetch_add(1, Ordering::AcqRel);
                }
                _ => {}
            }
            next = if aors.len() < BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if permits {
            l.heard.permits.fetch_add(1, Ordering::AcqRel);
            // The next lookup polls anyway; this only makes it prompt.
            let _ = l.control.reload_permits();
        }
        if catch_up {
            let from = *since;
            let changed: Vec<String> = client
                .query(
                    "SELECT aor FROM binding_aor WHERE changed_at >= to_timestamp($1::BIGINT)",
                    &[&from],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            aors.extend(changed);
        }
        hand_over(l, client, aors.into_iter().collect()).await?;
    }
    Err(PgError::Closed)
}

/// Reads the bindings of `aors` and hands them to the engine, [`BATCH`] AORs per
/// command; waits while the control queue is full.
async fn hand_over(
    l: &Listener,
    client: &tokio_postgres::Client,
    aors: Vec<String>,
) -> Result<(), PgError> {
    for chunk in aors.chunks(BATCH) {
        let rows = client
            .query(
                &format!("SELECT {BINDING_COLUMNS} FROM binding WHERE aor = ANY($1)"),
                &[&chunk],
            )
            .await?;
        let mut batch: Vec<(String, Vec<Binding>)> =
            chunk.iter().map(|a| (a.clone(), Vec::new())).collect();
        for r in &rows {
            let (aor, b) = binding_from_row(r)?;
            if let Some(slot) = batch.iter_mut().find(|(a, _)| *a == aor) {
                slot.1.push(b);
            }
        }
        loop {
            match l.control.remote_bindings(std::mem::take(&mut batch)) {
                Ok(()) => break,
                Err((ControlError::Busy, back)) => {
                    batch = back;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(_) => return Ok(()),
            }
        }
    }
    Ok(())
}
