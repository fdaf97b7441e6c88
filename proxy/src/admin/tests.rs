//! The router without a socket: tokens, status codes, and that a refused request
//! changes nothing.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tower::ServiceExt;

use super::{Admin, Token, router};
use crate::ops::Ops;
use crate::store::Durability;

const TOKEN: &str = "0123456789abcdef-test-token";

fn admin(test: &str) -> (Arc<Admin>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("permit-admin-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ops = Ops::open(&dir, "example.org", Durability::Normal).unwrap();
    (Admin::new(ops, Token::new(TOKEN), None, None), dir)
}

async fn call(
    admin: &Arc<Admin>,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .unwrap();
    let resp = router(admin.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[test]
fn token_digest_compare() {
    let t = Token::new(TOKEN);
    assert!(t.matches(TOKEN.as_bytes()));
    assert!(!t.matches(b"0123456789abcdef-test-tokeN"));
    assert!(!t.matches(b""));
    assert_eq!(format!("{t:?}"), "Token(redacted)");
}

#[tokio::test]
async fn wrong_or_missing_token_is_401_and_changes_nothing() {
    let (a, dir) = admin("token");
    let add = r#"{"name":"alice","password":"pw"}"#;
    for token in [None, Some("wrong-token-wrong-token"), Some("")] {
        let (status, _) = call(&a, "POST", "/users", token, Some(add)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "token {token:?}");
        let (status, _) = call(&a, "GET", "/metrics", token, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, body) = call(&a, "GET", "/users", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"total\":0"), "{body}");
    // Health needs no token; readiness waits for the engine.
    assert_eq!(
        call(&a, "GET", "/healthz", None, None).await.0,
        StatusCode::OK
    );
    let (status, _) = call(&a, "GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    a.set_ready(true);
    assert_eq!(
        call(&a, "GET", "/readyz", None, None).await.0,
        StatusCode::OK
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn users_and_permits_through_the_router() {
    let (a, dir) = admin("crud");
    let t = Some(TOKEN);
    let (s, body) = call(
        &a,
        "POST",
        "/users",
        t,
        Some(r#"{"name":"alice","password":"pw"}"#),
    )
    .await;
    assert_eq!(
        (s, body.as_str()),
        (StatusCode::CREATED, r#"{"aor":"alice@example.org"}"#)
    );
    let (s, _) = call(
        &a,
        "POST",
        "/users",
        t,
        Some(r#"{"name":"alice","password":"x"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = call(
        &a,
        "PUT",
        "/users/alice/password",
        t,
        Some(r#"{"password":"new"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(
        &a,
        "PUT",
        "/users/bob/password",
        t,
        Some(r#"{"password":"new"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let entry = r#"{"caller":"*@partner.org"}"#;
    let (s, body) = call(&a, "POST", "/permits/bob@example.org", t, Some(entry)).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (s, _) = call(&a, "POST", "/permits/bob@example.org", t, Some(entry)).await;
    assert_eq!(s, StatusCode::OK, "already there");
    let (s, _) = call(&a, "POST", "/permits/not-an-aor", t, Some(entry)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, body) = call(&a, "GET", "/permits/bob@example.org", t, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains(r#""entries":["*@partner.org"]"#), "{body}");
    let (s, body) = call(&a, "GET", "/permits?limit=10", t, None).await;
    assert!(
        s == StatusCode::OK && body.contains(r#""total":1"#),
        "{body}"
    );
    let (s, csv) = call(&a, "GET", "/permits/export", t, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(csv.contains("bob@example.org,*@partner.org\n"), "{csv}");
    let (s, body) = call(
        &a,
        "DELETE",
        "/permits/bob@example.org/*@partner.org",
        t,
        None,
    )
    .await;
    assert!(
        s == StatusCode::OK && body.contains(r#""changed":true"#),
        "{body}"
    );
    let (s, _) = call(&a, "DELETE", "/users/alice", t, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(&a, "DELETE", "/users/alice", t, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // No engine behind this router: registrations and items as stored, no changes.
    let (s, _) = call(&a, "GET", "/registrations/bob@example.org", t, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, body) = call(&a, "GET", "/stored/bob@example.org", t, None).await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, r#"{"items":[]}"#));
    let expire = Some(r#"{"contact":"sip:bob@192.0.2.1"}"#);
    let (s, _) = call(
        &a,
        "POST",
        "/registrations/bob@example.org/expire",
        t,
        expire,
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, body) = call(&a, "GET", "/metrics", t, None).await;
    assert!(
        s == StatusCode::OK && body.contains("permit_engine_up 0"),
        "{body}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
