//! The admin API's handlers: each one decodes the request, makes one call to
//! [`crate::ops`] or to the engine's control queue, and encodes the answer. No policy
//! lives here.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{Admin, metrics};
use crate::control::ControlError;
use crate::ops::{Ops, OpsError, Page};

/// `?offset=&limit=` of a listing.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    offset: Option<usize>,
    limit: Option<usize>,
}

impl PageQuery {
    fn page(&self) -> Page {
        Page::new(self.offset, self.limit)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    name: String,
    password: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPassword {
    password: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEntry {
    caller: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expire {
    contact: String,
}

fn status_of(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn failure(code: u16, message: String) -> Response {
    if code >= 500 {
        tracing::error!(status = code, "admin request failed: {message}");
    }
    (status_of(code), Json(json!({ "error": message }))).into_response()
}

fn ops_failure(e: &OpsError) -> Response {
    failure(e.status(), e.to_string())
}

fn control_failure(e: &ControlError) -> Response {
    failure(e.status(), e.to_string())
}

/// Changes to registrations and stored items go through the engine: without one
/// behind this API they are refused.
fn no_engine() -> Response {
    control_failure(&ControlError::Stopped)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The answer of an ops call: `ok` on success, the error's status otherwise.
fn answer<T>(r: Result<T, OpsError>, ok: impl FnOnce(T) -> Response) -> Response {
    match r {
        Ok(v) => ok(v),
        Err(e) => ops_failure(&e),
    }
}

fn answer_control<T>(r: Result<T, ControlError>, ok: impl FnOnce(T) -> Response) -> Response {
    match r {
        Ok(v) => ok(v),
        Err(e) => control_failure(&e),
    }
}

// ---------------------------------------------------------------- health

/// The process is up.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// The listeners are bound, the engine runs and the stores answer.
pub async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    if !admin.is_ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting or stopping\n").into_response();
    }
    match admin.with_ops(Ops::ready).await {
        Ok(()) => "ready\n".into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")).into_response(),
    }
}

/// Prometheus text exposition format 0.0.4.
pub async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    let engine = match &admin.control {
        Some(c) => c.stats().await.ok(),
        None => None,
    };
    let unix = unix_now();
    let store = admin.with_ops(move |o| o.store_usage(unix)).await.ok();
    let text = metrics::render(engine.as_ref(), admin.net.as_deref(), store);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

// ---------------------------------------------------------------- users

pub async fn list_users(State(admin): State<Arc<Admin>>, Query(q): Query<PageQuery>) -> Response {
    let page = q.page();
    let r = admin.with_ops(move |o| o.list_users(page)).await;
    answer(r, |p| Json(p).into_response())
}

pub async fn add_user(State(admin): State<Arc<Admin>>, Json(u): Json<NewUser>) -> Response {
    let r = admin
        .with_ops(move |o| o.add_user(&u.name, || Ok(u.password)))
        .await;
    answer(r, |aor| {
        (StatusCode::CREATED, Json(json!({ "aor": aor }))).into_response()
    })
}

pub async fn set_password(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    Json(p): Json<NewPassword>,
) -> Response {
    let r = admin
        .with_ops(move |o| o.set_password(&name, || Ok(p.password)))
        .await;
    answer(r, |()| StatusCode::NO_CONTENT.into_response())
}

pub async fn remove_user(State(admin): State<Arc<Admin>>, Path(name): Path<String>) -> Response {
    let r = admin.with_ops(move |o| o.remove_user(&name)).await;
    answer(r, |()| StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------- permits

pub async fn list_permits(State(admin): State<Arc<Admin>>, Query(q): Query<PageQuery>) -> Response {
    let page = q.page();
    let r = admin.with_ops(move |o| o.permit_lists(page)).await;
    answer(r, |p| Json(p).into_response())
}

pub async fn permit_list(State(admin): State<Arc<Admin>>, Path(callee): Path<String>) -> Response {
    let r = admin.with_ops(move |o| o.permit_list(&callee)).await;
    answer(r, |l| match l {
        Some(l) => Json(l).into_response(),
        None => failure(404, "no list: nobody may reach this callee".into()),
    })
}

pub async fn add_permit(
    State(admin): State<Arc<Admin>>,
    Path(callee): Path<String>,
    Json(e): Json<NewEntry>,
) -> Response {
    let r = admin
        .with_ops(move |o| o.add_permit(&callee, &e.caller))
        .await;
    answer(r, |w| {
        let status = if w.changed {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        let body = json!({ "etag": w.etag.to_string(), "changed": w.changed });
        (status, Json(body)).into_response()
    })
}

pub async fn remove_permit(
    State(admin): State<Arc<Admin>>,
    Path((callee, caller)): Path<(String, String)>,
) -> Response {
    let r = admin
        .with_ops(move |o| o.remove_permit(&callee, &caller))
        .await;
    answer(r, |w| {
        Json(json!({ "etag": w.etag.to_string(), "changed": w.changed })).into_response()
    })
}

/// The body is the CSV import format (docs/permits.md).
pub async fn import_permits(State(admin): State<Arc<Admin>>, body: Bytes) -> Response {
    let r = admin.with_ops(move |o| o.import_permits(&body[..])).await;
    answer(r, |n| {
        Json(json!({ "lines": n.lines, "callees": n.callees })).into_response()
    })
}

pub async fn export_permits(State(admin): State<Arc<Admin>>) -> Response {
    let r = admin
        .with_ops(|o| {
            let mut csv = Vec::new();
            o.export_permits(&mut csv).map(|_| csv)
        })
        .await;
    answer(r, |csv| {
        ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv).into_response()
    })
}

// ---------------------------------------------------------------- engine state

/// From the engine when it runs behind this API; else as stored.
pub async fn bindings(State(admin): State<Arc<Admin>>, Path(aor): Path<String>) -> Response {
    let ok = |b| Json(json!({ "bindings": b })).into_response();
    if let Some(c) = &admin.control {
        return answer_control(c.bindings(aor).await, ok);
    }
    let r = admin
        .with_ops(move |o| o.stored_bindings(&aor, unix_now()))
        .await;
    answer(r, ok)
}

pub async fn expire_binding(
    State(admin): State<Arc<Admin>>,
    Path(aor): Path<String>,
    Json(e): Json<Expire>,
) -> Response {
    let Some(c) = &admin.control else {
        return no_engine();
    };
    answer_control(c.expire(aor, e.contact).await, |()| {
        StatusCode::NO_CONTENT.into_response()
    })
}

/// From the engine when it runs behind this API; else as stored.
pub async fn items(State(admin): State<Arc<Admin>>, Path(owner): Path<String>) -> Response {
    let ok = |i| Json(json!({ "items": i })).into_response();
    if let Some(c) = &admin.control {
        return answer_control(c.items(owner).await, ok);
    }
    let r = admin
        .with_ops(move |o| o.stored_items(&owner, unix_now()))
        .await;
    answer(r, ok)
}

pub async fn delete_item(State(admin): State<Arc<Admin>>, Path(id): Path<String>) -> Response {
    let Some(c) = &admin.control else {
        return no_engine();
    };
    answer_control(c.delete_item(id).await, |()| {
        StatusCode::NO_CONTENT.into_response()
    })
}
