//! The admin HTTP API and `/metrics` (docs/operations.md "Admin API and metrics",
//! docs/openapi.yaml): an axum router, off by default, bound to loopback unless the
//! operator says otherwise.
//!
//! I/O contract: a thin shell. Users and permit lists go through [`crate::ops`] (the
//! same calls as the CLI) on a blocking thread; registrations, stored items and the
//! engine's counters go through the engine's control queue ([`crate::control`]).
//! Every route but `/healthz` and `/readyz` needs `Authorization: Bearer <token>`,
//! compared in constant time; a request without it gets 401 before any handler runs.

mod handlers;
pub mod listener;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::control::Control;
use crate::ops::Ops;

/// The shortest token accepted in `[admin] token`.
pub const MIN_TOKEN_LEN: usize = 16;
/// Largest request body (a CSV import of about a million lines).
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// The bearer token, kept as its SHA-256 only: the comparison is over fixed-length
/// digests in constant time (no early exit on the first differing byte, no length
/// leak), and a memory dump holds no usable token. `Debug` prints nothing of it.
#[derive(Clone)]
pub struct Token([u8; 32]);

impl Token {
    pub fn new(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether `presented` is the token.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&self.0).into()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(redacted)")
    }
}

/// What the handlers share.
pub struct Admin {
    pub(crate) ops: Mutex<Ops>,
    token: Token,
    /// The engine's control queue; `None` when no engine runs (tests of the router).
    pub(crate) control: Option<Control>,
    /// The SIP listeners are bound and the engine runs.
    ready: AtomicBool,
    /// The sockets' drop counters.
    pub(crate) net: Option<Arc<sip_net::NetStats>>,
}

impl Admin {
    pub fn new(
        ops: Ops,
        token: Token,
        control: Option<Control>,
        net: Option<Arc<sip_net::NetStats>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            ops: Mutex::new(ops),
            token,
            control,
            ready: AtomicBool::new(false),
            net,
        })
    }

    /// Marks the proxy ready (listeners bound, stores open, engine about to run) or
    /// not (shutting down).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Runs `f` on the operations behind their lock, on tokio's blocking pool (SQLite
    /// waits on disk).
    pub(crate) async fn with_ops<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Ops) -> T + Send + 'static,
    ) -> T {
        let me = self.clone();
        let run = move || {
            let mut ops = me
                .ops
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut ops)
        };
        match tokio::task::spawn_blocking(run).await {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// The routes (docs/openapi.yaml).
pub fn router(admin: Arc<Admin>) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(handlers::metrics))
        .route("/users", get(handlers::list_users).post(handlers::add_user))
        .route("/users/{name}", delete(handlers::remove_user))
        .route("/users/{name}/password", put(handlers::set_password))
        .route("/permits", get(handlers::list_permits))
        .route("/permits/export", get(handlers::export_permits))
        .route("/permits/import", post(handlers::import_permits))
        .route(
            "/permits/{callee}",
            get(handlers::permit_list).post(handlers::add_permit),
        )
        .route(
            "/permits/{callee}/{caller}",
            delete(handlers::remove_permit),
        )
        .route("/registrations/{aor}", get(handlers::bindings))
        .route(
            "/registrations/{aor}/expire",
            post(handlers::expire_binding),
        )
        .route("/stored/{owner}", get(handlers::items))
        .route("/stored/item/{id}", delete(handlers::delete_item))
        .route_layer(middleware::from_fn_with_state(admin.clone(), bearer));
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .merge(guarded)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(admin)
}

/// RFC 6750 §2.1: `Authorization: Bearer <token>`; anything else is 401 with
/// `WWW-Authenticate: Bearer` (§3) and the request goes no further.
async fn bearer(State(admin): State<Arc<Admin>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .map(<[u8]>::trim_ascii);
    match presented {
        Some(t) if admin.token.matches(t) => next.run(req).await,
        _ => {
            // The path may name an AOR: only at debug (STYLE.md rule 11).
            tracing::info!(method = %req.method(), "admin: request without a valid token refused");
            tracing::debug!(path = %req.uri().path(), "admin: refused request");
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"permit-admin\"")],
                axum::Json(serde_json::json!({ "error": "missing or wrong bearer token" })),
            )
                .into_response()
        }
    }
}

/// Binds `addr` (a warning unless it is a loopback address: the API manages every
/// credential) and serves `admin` on it until the process ends.
pub async fn start(addr: SocketAddr, admin: Arc<Admin>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        tracing::warn!(addr = %bound, "the admin API listens on a non-loopback address: put it behind TLS and a firewall");
    }
    let app = router(admin);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener::Capped::new(listener), app).await {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests;
