//! `permit-ua send AOR --text ".." | --file F [--secret]` (docs/profile.md "Data with
//! attributes"):
//!
//! - secret data is sealed for the callee's public key ([`crate::inbox::seal`]) and
//!   goes through the proxy only: a deposit (`Request-Disposition: queue`), which a
//!   free callee gets at once through the proxy and a busy or offline one later;
//! - other data up to [`MESSAGE_LIMIT`] asks for direct mode first
//!   (`Request-Disposition: redirect, queue`): a free callee's address comes back in a
//!   302 with a permit token, and the MESSAGE goes straight there; a busy or offline
//!   callee's data is stored (202);
//! - data above [`MESSAGE_LIMIT`] goes up over HTTP: an announcement (202 with
//!   `Permit-Upload`), then resumable chunks (`PUT` with `Content-Range`, `HEAD` for
//!   the offset after an interruption), with a progress bar.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::engine::Event;
use crate::inbox::fetch::{Progress, kept, refusal_words};
use crate::inbox::http::{self, Url};
use crate::inbox::item::{ItemInfo, sha256_hex};
use crate::inbox::seal::{self, SEALED_TYPE};
use crate::inbox::{Outgoing, StoreEvent};
use crate::outcome::exit;
use crate::shell::{Driver, Next, Output};

/// Data above this goes over HTTP instead of in a MESSAGE (RFC 3428 §8: MESSAGE is
/// for small content; the proxy's `max_item_bytes` default is 60000).
pub const MESSAGE_LIMIT: usize = 32 * 1024;
/// One PUT carries at most this much (the proxy takes up to 16 MiB per request).
const CHUNK: usize = 1 << 20;
/// Attempts of one chunk before the upload gives up (each after a HEAD).
const ATTEMPTS: u32 = 5;
/// The longest a SIP exchange of `send` may take (Timer F is 32 s on UDP).
const WAIT: Duration = Duration::from_secs(40);
/// The upload announcement's body type.
pub const UPLOAD_TYPE: &str = "application/permit-upload+json";

/// What to send.
#[derive(Debug, Clone)]
pub struct Payload {
    pub content_type: String,
    pub name: Option<String>,
    pub data: Vec<u8>,
}

impl Payload {
    pub fn text(t: &str) -> Self {
        Self {
            content_type: "text/plain;charset=utf-8".into(),
            name: None,
            data: t.as_bytes().to_vec(),
        }
    }

    pub fn file(path: &Path) -> std::io::Result<Self> {
        let data = std::fs::read(path)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        let content_type = match ext.as_deref() {
            Some("txt") => "text/plain",
            Some("json") => "application/json",
            Some("png") => "image/png",
            Some("jpg" | "jpeg") => "image/jpeg",
            Some("pdf") => "application/pdf",
            _ => "application/octet-stream",
        };
        Ok(Self {
            content_type: content_type.into(),
            name,
            data,
        })
    }
}

/// Options of `send`.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// The callee's public key (43 base64url characters): the data is sealed.
    pub secret_for: Option<[u8; 32]>,
    /// Never direct: always through the proxy (for non-secret data too).
    pub via_proxy: bool,
    /// 32 fresh random bytes for the ephemeral key of sealing.
    pub ephemeral: [u8; 32],
}

/// The final answer to one store request.
struct Answer {
    status: Option<u16>,
    reason: String,
    call_id: String,
    headers: Vec<(&'static str, String)>,
}

async fn exchange(d: &mut Driver, out: Outgoing) -> Option<Answer> {
    let id = d.ua.store_send(Instant::now(), out);
    let deadline = Instant::now() + WAIT;
    loop {
        match d.next(Some(deadline)).await {
            Next::Event(Event::Store(StoreEvent::Answered {
                id: got,
                call_id,
                status,
                reason,
                headers,
                ..
            })) if got == id => {
                return Some(Answer {
                    status,
                    reason,
                    call_id,
                    headers,
                });
            }
            Next::Event(e) => tracing::debug!(?e, "event"),
            Next::Deadline => {
                return Some(Answer {
                    status: None,
                    reason: String::new(),
                    call_id: String::new(),
                    headers: vec![],
                });
            }
            Next::Signal => return None,
        }
    }
}

/// The Request-URI and embedded `Permit-Token` of a 302's Contact (RFC 3261
/// §19.1.5): `<sip:bob@198.51.100.7:5062?Permit-Token=v1...>`.
fn redirect_target(contact: &str) -> Option<(String, Option<String>)> {
    let inner = contact
        .trim()
        .trim_start_matches(|c| c != '<')
        .trim_start_matches('<');
    let inner = &inner[..inner.find('>')?];
    let (uri, headers) = match inner.split_once('?') {
        Some((u, h)) => (u, h),
        None => (inner, ""),
    };
    let token = headers
        .split('&')
        .find_map(|h| h.strip_prefix("Permit-Token="))
        .map(str::to_string);
    Some((uri.to_string(), token))
}

fn item_fields(headers: &[(&'static str, String)]) -> (Option<String>, Option<u64>) {
    let info = kept(headers, "Permit-Item").and_then(ItemInfo::parse);
    (
        info.as_ref().map(|i| i.id.clone()),
        info.and_then(|i| i.expires),
    )
}

/// `permit-ua send`.
pub async fn run_send(
    mut d: Driver,
    out: Output,
    target: &str,
    payload: Payload,
    opts: SendOptions,
) -> u8 {
    let local = d.ua.config().local.clone();
    let to = local.target_uri(target);
    let callee = crate::call::user_of(&to);
    let secret = opts.secret_for.is_some();
    let (ctype, data) = match &opts.secret_for {
        Some(key) => (
            SEALED_TYPE.to_string(),
            seal::seal(
                key,
                opts.ephemeral,
                &payload.content_type,
                payload.name.as_deref(),
                &payload.data,
            ),
        ),
        None => (payload.content_type.clone(), payload.data.clone()),
    };
    let mut headers: Vec<(&'static str, String)> = vec![];
    if secret {
        headers.push(("Permit-Attributes", "secret".into()));
    }
    if data.len() > MESSAGE_LIMIT {
        let name = if secret { None } else { payload.name.clone() };
        return upload(&mut d, out, (&to, &callee), headers, &ctype, name, &data).await;
    }
    // Secret data never goes peer to peer: a plain deposit, through the proxy.
    let direct = !secret && !opts.via_proxy;
    let mut disposition = headers.clone();
    disposition.push((
        "Request-Disposition",
        if direct { "redirect, queue" } else { "queue" }.into(),
    ));
    let first = Outgoing {
        method: "MESSAGE",
        uri: to.clone(),
        to: to.clone(),
        call_id: None,
        headers: disposition,
        body: Some((ctype.clone(), data.clone())),
        direct: false,
    };
    let Some(a) = exchange(&mut d, first).await else {
        return exit::FAILED;
    };
    let size = data.len();
    match a.status {
        Some(302) if direct => {
            let body = (ctype, data);
            straight(&mut d, out, (&to, &callee), headers, &a, body).await
        }
        Some(202) => {
            let (item, expires) = item_fields(&a.headers);
            out.say(
                "stored",
                &format!(
                    "{callee} cannot take it now: stored as item {}",
                    item.as_deref().unwrap_or("?")
                ),
                json!({ "item": item, "expires": expires, "status": 202, "secret": secret,
                        "size": size, "exit_code": 0 }),
            );
            exit::CONNECTED
        }
        Some(200..=299) => delivered(out, &callee, size, false),
        Some(403) => failed(
            out,
            &format!("you are not on {callee}'s list, or {callee} does not exist (403)"),
            exit::REFUSED,
        ),
        Some(486) => failed(
            out,
            &format!("{callee}'s mailbox is full ({})", a.reason),
            exit::BUSY,
        ),
        status => {
            let (text, code) = refusal_words(status, &a.reason);
            failed(out, &text, code)
        }
    }
}

/// Direct mode: the MESSAGE again, straight to the Contact of the proxy's 302, with
/// its permit token (RFC 3261 §19.1.5) and the same Call-ID the token is bound to.
async fn straight(
    d: &mut Driver,
    out: Output,
    (to, callee): (&str, &str),
    mut headers: Vec<(&'static str, String)>,
    a: &Answer,
    (ctype, data): (String, Vec<u8>),
) -> u8 {
    let Some((uri, token)) = kept(&a.headers, "Contact").and_then(redirect_target) else {
        return failed(out, "the proxy's 302 has no usable Contact", exit::FAILED);
    };
    if let Some(t) = token.or_else(|| kept(&a.headers, "Permit-Token").map(str::to_string)) {
        headers.push(("Permit-Token", t));
    }
    let size = data.len();
    let msg = Outgoing {
        method: "MESSAGE",
        uri,
        to: to.to_string(),
        call_id: Some(a.call_id.clone()),
        headers,
        body: Some((ctype, data)),
        direct: true,
    };
    let Some(b) = exchange(d, msg).await else {
        return exit::FAILED;
    };
    match b.status {
        Some(200..=299) => delivered(out, callee, size, true),
        status => {
            let (text, code) = refusal_words(status, &b.reason);
            failed(out, &format!("{callee}'s UA: {text}"), code)
        }
    }
}

fn delivered(out: Output, callee: &str, size: usize, direct: bool) -> u8 {
    let how = if direct {
        "straight to its UA"
    } else {
        "through the proxy"
    };
    out.say(
        "delivered",
        &format!("{size} bytes delivered to {callee} {how}"),
        json!({ "direct": direct, "status": 200, "size": size, "exit_code": 0 }),
    );
    exit::CONNECTED
}

fn failed(out: Output, text: &str, code: u8) -> u8 {
    out.say("failed", text, json!({ "exit_code": code }));
    code
}

/// Large data: the announcement, then the resumable upload.
async fn upload(
    d: &mut Driver,
    out: Output,
    (to, callee): (&str, &str),
    mut headers: Vec<(&'static str, String)>,
    ctype: &str,
    name: Option<String>,
    data: &[u8],
) -> u8 {
    let sha256 = sha256_hex(data);
    let mut ann = json!({ "size": data.len(), "sha256": sha256, "type": ctype });
    if let Some(n) = name {
        ann["name"] = Value::String(n);
    }
    headers.push(("Request-Disposition", "queue".into()));
    let announce = Outgoing {
        method: "MESSAGE",
        uri: to.to_string(),
        to: to.to_string(),
        call_id: None,
        headers,
        body: Some((UPLOAD_TYPE.into(), ann.to_string().into_bytes())),
        direct: false,
    };
    let Some(a) = exchange(d, announce).await else {
        return exit::FAILED;
    };
    match a.status {
        Some(202) => {}
        Some(403) => {
            return failed(
                out,
                &format!("you are not on {callee}'s list, or {callee} does not exist (403)"),
                exit::REFUSED,
            );
        }
        Some(413) => {
            return failed(
                out,
                &format!("too large for the proxy ({} bytes, 413)", data.len()),
                exit::FAILED,
            );
        }
        status => {
            let (text, code) = refusal_words(status, &a.reason);
            return failed(out, &text, code);
        }
    }
    let (item, expires) = item_fields(&a.headers);
    let Some(url) = kept(&a.headers, "Permit-Upload").and_then(Url::parse) else {
        return failed(
            out,
            "the proxy's 202 has no Permit-Upload URL",
            exit::FAILED,
        );
    };
    let mut bar = Progress::new(out);
    let result = put_all(&url, data, &mut bar).await;
    bar.finish();
    match result {
        Ok(()) => {
            out.say(
                "stored",
                &format!(
                    "{} bytes uploaded for {callee}: item {}",
                    data.len(),
                    item.as_deref().unwrap_or("?")
                ),
                json!({ "item": item, "expires": expires, "status": 201, "size": data.len(),
                        "sha256": sha256, "uploaded": true, "exit_code": 0 }),
            );
            exit::CONNECTED
        }
        Err(e) => failed(out, &format!("upload failed: {e}"), exit::FAILED),
    }
}

/// The offset the proxy holds (`HEAD`, `Upload-Offset`).
async fn offset(url: &Url) -> std::io::Result<u64> {
    let r = http::request(url, "HEAD", &[], b"", 0, &mut |_| {}).await?;
    match r.status {
        200 | 204 => r
            .header("Upload-Offset")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| std::io::Error::other("HEAD without Upload-Offset")),
        s => Err(std::io::Error::other(format!("HEAD answered {s}"))),
    }
}

/// Sends `data` in chunks from the proxy's offset; after a failed chunk asks the
/// offset again and goes on from there (at most [`ATTEMPTS`] times in a row).
async fn put_all(url: &Url, data: &[u8], bar: &mut Progress) -> Result<(), String> {
    let total = data.len() as u64;
    let mut at = offset(url).await.map_err(|e| e.to_string())?;
    let mut failures = 0;
    loop {
        if at >= total {
            return Ok(());
        }
        let start = usize::try_from(at).map_err(|e| e.to_string())?;
        let end = (start + CHUNK).min(data.len());
        let range = format!("bytes {start}-{}/{total}", end - 1);
        let result = http::request(
            url,
            "PUT",
            &[("Content-Range", range)],
            &data[start..end],
            4096,
            &mut |n| bar.update(at + n, total),
        )
        .await;
        match result {
            Ok(r) if r.status == 201 => {
                bar.update(total, total);
                return Ok(());
            }
            Ok(r) if r.status == 204 => {
                at = r
                    .header("Upload-Offset")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(end as u64);
                failures = 0;
            }
            Ok(r) if r.status == 422 => {
                return Err("the proxy's checksum differs from ours (422)".into());
            }
            Ok(r) if r.status == 409 => {
                at = r
                    .header("Upload-Offset")
                    .and_then(|v| v.parse().ok())
                    .ok_or("409 without Upload-Offset")?;
            }
            Ok(r) if matches!(r.status, 400 | 403 | 404 | 413) => {
                return Err(format!("the proxy answered {}", r.status));
            }
            other => {
                failures += 1;
                tracing::info!(?other, failures, "upload chunk failed; resuming");
                if failures >= ATTEMPTS {
                    return Err(format!("{failures} attempts failed: {other:?}"));
                }
                tokio::time::sleep(Duration::from_millis(500 * u64::from(failures))).await;
                if let Ok(o) = offset(url).await {
                    at = o;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_contacts() {
        let (uri, token) =
            redirect_target("<sip:bob@127.0.0.1:5062;transport=tcp?Permit-Token=v1.1.2.x>")
                .unwrap();
        assert_eq!(uri, "sip:bob@127.0.0.1:5062;transport=tcp");
        assert_eq!(token.as_deref(), Some("v1.1.2.x"));
        let (uri, token) = redirect_target("\"Bob\" <sip:bob@[::1]:5062>").unwrap();
        assert_eq!((uri.as_str(), token), ("sip:bob@[::1]:5062", None));
        assert!(redirect_target("sip:bob@h").is_none());
    }

    /// A stand-in for the proxy's upload listener: HEAD gives the offset, PUT must
    /// start there (409 otherwise); the first PUT is cut after `cut` bytes (the
    /// connection drops, what arrived is kept); 201 once everything arrived.
    async fn upload_server(
        listener: tokio::net::TcpListener,
        total: usize,
        cut: usize,
    ) -> (Vec<u8>, u32) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stored = Vec::new();
        let mut puts = 0u32;
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let head_end = loop {
                let n = s.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let value = |name: &str| {
                head.lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            };
            if head.starts_with("HEAD") {
                let r = format!(
                    "HTTP/1.1 204 No Content\r\nUpload-Offset: {}\r\n\r\n",
                    stored.len()
                );
                s.write_all(r.as_bytes()).await.unwrap();
                continue;
            }
            puts += 1;
            let len: usize = value("Content-Length:").unwrap().parse().unwrap();
            let range = value("Content-Range:").unwrap();
            let first: usize = range[6..range.find('-').unwrap()].parse().unwrap();
            if first != stored.len() {
                let r = format!(
                    "HTTP/1.1 409 Conflict\r\nUpload-Offset: {}\r\n\r\n",
                    stored.len()
                );
                s.write_all(r.as_bytes()).await.unwrap();
                continue;
            }
            let mut body = buf[head_end..].to_vec();
            let limit = if puts == 1 { cut } else { len };
            while body.len() < limit.min(len) {
                let n = s.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(limit.min(len));
            stored.extend_from_slice(&body);
            if puts == 1 {
                drop(s); // interrupted: no answer
                continue;
            }
            let done = stored.len() >= total;
            let r = if done {
                "HTTP/1.1 201 Created\r\n\r\n".to_string()
            } else {
                format!(
                    "HTTP/1.1 204 No Content\r\nUpload-Offset: {}\r\n\r\n",
                    stored.len()
                )
            };
            s.write_all(r.as_bytes()).await.unwrap();
            if done {
                return (stored, puts);
            }
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_interrupted_upload_resumes_from_the_proxys_offset() {
        let data: Vec<u8> = (0..(CHUNK + CHUNK / 2)).map(|i| (i % 251) as u8).collect();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(upload_server(listener, data.len(), 100_000));
        let url = Url::parse(&format!("http://127.0.0.1:{port}/upload/x?t=1")).unwrap();
        let mut bar = Progress::new(crate::shell::Output { json: true });
        put_all(&url, &data, &mut bar).await.unwrap();
        let (stored, puts) = server.await.unwrap();
        assert_eq!(stored.len(), data.len());
        assert!(stored == data, "the bytes arrive whole and in order");
        assert!(puts >= 3, "cut, resumed, finished: {puts} PUTs");
    }

    #[test]
    fn text_and_file_payloads() {
        assert_eq!(Payload::text("hi").data, b"hi");
        let p = std::env::temp_dir().join(format!("permit-send-{}.png", std::process::id()));
        std::fs::write(&p, b"\x89PNG").unwrap();
        let f = Payload::file(&p).unwrap();
        assert_eq!(f.content_type, "image/png");
        assert_eq!(f.name.unwrap(), p.file_name().unwrap().to_string_lossy());
        let _ = std::fs::remove_file(&p);
    }
}
