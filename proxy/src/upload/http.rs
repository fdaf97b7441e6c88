//! The HTTP/1.1 listener for large deposits (docs/profile.md "Large files"), a thin
//! tokio shell: one request per connection (`Connection: close`), every read bounded
//! in size and time, at most [`MAX_CONNECTIONS`] at once.
//!
//! - `HEAD /upload/<id>?t=<token>`: `204` with `Upload-Offset` (bytes stored so far)
//!   and `Upload-Length`; `200` with `Upload-Offset` = length once complete.
//! - `PUT /upload/<id>?t=<token>` with `Content-Range: bytes F-L/N` (F = the offset
//!   reached, else `409` with `Upload-Offset`): the chunk is appended and synced;
//!   `204` + `Upload-Offset` while incomplete; at the end the SHA-256 is checked
//!   (`422` and the bytes dropped on a mismatch), the file renamed and synced, and the
//!   slot replaced by the item in one transaction: `201`.
//! - `GET /files/<id>?t=<token>` (the owner's download URL): `200`, or `206` for
//!   `Range: bytes=F-`.
//!
//! Tokens are signed by [`super::Tokens`]; the listener reads no user database.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::io::{Read as _, Seek as _, Write as _};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{FILE_TYPE, FileRef, Purpose, Tokens, content_range, range};
use crate::mailbox::{Item, ItemId, MailboxError, SqliteItems, StoredItems, hex};

/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request head.
const HEAD_MAX: usize = 8 * 1024;
/// Largest chunk of one PUT.
pub const CHUNK_MAX: u64 = 16 * 1024 * 1024;
/// A peer that sends nothing for this long is dropped.
const IDLE: Duration = Duration::from_secs(30);

/// What the listener needs.
pub struct Uploads {
    pub tokens: Tokens,
    /// The data directory (`mailbox.sqlite`, `uploads/`).
    pub data: PathBuf,
    /// Lifetime of the item a complete upload becomes (the store's expiry).
    pub item_lifetime: u64,
    active: AtomicUsize,
}

impl Uploads {
    pub fn new(tokens: Tokens, data: PathBuf, item_lifetime: u64) -> Arc<Self> {
        Arc::new(Self {
            tokens,
            data,
            item_lifetime,
            active: AtomicUsize::new(0),
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, up: Arc<Uploads>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if up.active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            up.active.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!("upload listener full; connection closed");
            continue;
        }
        let up = up.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &up).await {
                tracing::debug!(error = %e, "upload connection ended");
            }
            up.active.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// A parsed request head.
struct Request {
    method: String,
    path: String,
    token: String,
    headers: Vec<(String, String)>,
    /// Body bytes read along with the head.
    early: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An answer: status, reason, extra headers, body.
struct Answer {
    status: u16,
    reason: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn answer(status: u16, reason: &'static str) -> Answer {
    Answer {
        status,
        reason,
        headers: Vec::new(),
        body: Vec::new(),
    }
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > HEAD_MAX {
            return Ok(None);
        }
        let n = tokio::time::timeout(IDLE, stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Ok(None);
    };
    let mut lines = head.split("\r\n");
    let mut start = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version)) = (start.next(), start.next(), start.next())
    else {
        return Ok(None);
    };
    if !version.starts_with("HTTP/1.") {
        return Ok(None);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let token = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("t="))
        .unwrap_or_default()
        .to_owned();
    let mut headers = Vec::new();
    for l in lines {
        let Some((n, v)) = l.split_once(':') else {
            return Ok(None);
        };
        headers.push((n.trim().to_owned(), v.trim().to_owned()));
    }
    Ok(Some(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        token,
        headers,
        early: buf[end + 4..].to_vec(),
    }))
}

async fn write_answer(stream: &mut TcpStream, a: &Answer) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        a.status,
        a.reason,
        a.body.len()
    );
    for (n, v) in &a.headers {
        head.push_str(n);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&a.body).await?;
    stream.flush().await
}

async fn handle(mut stream: TcpStream, up: &Uploads) -> std::io::Result<()> {
    let Some(req) = read_head(&mut stream).await? else {
        return write_answer(&mut stream, &answer(400, "Bad Request")).await;
    };
    let mut parts = req.path.trim_start_matches('/').split('/');
    let (kind, id) = (parts.next(), parts.next().and_then(ItemId::parse));
    let (purpose, Some(id), None) = (
        match kind {
            Some("upload") => Purpose::Upload,
            Some("files") => Purpose::Download,
            _ => return write_answer(&mut stream, &answer(404, "Not Found")).await,
        },
        id,
        parts.next(),
    ) else {
        return write_answer(&mut stream, &answer(404, "Not Found")).await;
    };
    if !up.tokens.check(purpose, &id, &req.token, unix_now()) {
        return write_answer(&mut stream, &answer(403, "Forbidden")).await;
    }
    let a = match (purpose, req.method.as_str()) {
        (Purpose::Upload, "HEAD") => offset(up, &id),
        (Purpose::Upload, "PUT") => put(&mut stream, up, &id, &req).await,
        (Purpose::Download, "GET" | "HEAD") => {
            return get(&mut stream, up, &id, &req).await;
        }
        _ => Ok(answer(405, "Method Not Allowed")),
    };
    let a = a.unwrap_or_else(|e| storage_failure(&e));
    write_answer(&mut stream, &a).await
}

/// A storage fault: 507 when the disk is full, 503 otherwise, both with Retry-After.
fn storage_failure(e: &Fault) -> Answer {
    tracing::error!(error = %e, "upload storage failure");
    let (status, reason, retry) = match e {
        Fault::Io(e) if e.raw_os_error() == Some(28) => (507, "Insufficient Storage", 600),
        Fault::Store(MailboxError::Full) => (507, "Insufficient Storage", 600),
        _ => (503, "Service Unavailable", 30),
    };
    let mut a = answer(status, reason);
    a.headers.push(("Retry-After", retry.to_string()));
    a
}

#[derive(Debug, thiserror::Error)]
enum Fault {
    #[error("upload file: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] MailboxError),
}

fn store(up: &Uploads) -> Result<SqliteItems, Fault> {
    Ok(SqliteItems::open(&up.data, 0)?)
}

/// Runs blocking file work (fsync, hashing a whole file) off the engine's thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, Fault> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Fault::Io(std::io::Error::other(e)))?
        .map_err(Fault::Io)
}

fn file_len(p: &std::path::Path) -> Result<u64, Fault> {
    match std::fs::metadata(p) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// HEAD on an upload: how far it got.
fn offset(up: &Uploads, id: &ItemId) -> Result<Answer, Fault> {
    let mut s = store(up)?;
    let Some(slot) = s.get_slot(id)?.filter(|s| s.expires_at > unix_now()) else {
        if let Some(item) = s.get(id)? {
            let mut a = answer(200, "OK");
            a.headers
                .push(("Upload-Offset", item.stored_size().to_string()));
            return Ok(a);
        }
        return Ok(answer(404, "Not Found"));
    };
    let have = file_len(&s.part_path(id))?;
    let mut a = answer(204, "No Content");
    a.headers.push(("Upload-Offset", have.to_string()));
    a.headers.push(("Upload-Length", slot.size.to_string()));
    Ok(a)
}

/// PUT of one chunk (resumable: it must start where the stored bytes end).
async fn put(
    stream: &mut TcpStream,
    up: &Uploads,
    id: &ItemId,
    req: &Request,
) -> Result<Answer, Fault> {
    let mut s = store(up)?;
    let Some(slot) = s.get_slot(id)?.filter(|s| s.expires_at > unix_now()) else {
        return Ok(answer(404, "Not Found"));
    };
    let part = s.part_path(id);
    let have = file_len(&part)?;
    let length: Option<u64> = req.header("Content-Length").and_then(|v| v.parse().ok());
    let Some(length) = length else {
        return Ok(answer(411, "Length Required"));
    };
    let (first, last, total) = match req.header("Content-Range") {
        Some(v) => match content_range(v) {
            Some(r) => r,
            None => return Ok(answer(400, "Bad Content-Range")),
        },
        None if length > 0 => (0, length - 1, length),
        None => return Ok(answer(400, "Empty Upload")),
    };
    if total != slot.size {
        return Ok(answer(400, "Length Differs From Announcement"));
    }
    if last - first + 1 != length || length > CHUNK_MAX {
        return Ok(answer(413, "Chunk Too Large Or Mismatched"));
    }
    if first != have {
        let mut a = answer(409, "Conflict");
        a.headers.push(("Upload-Offset", have.to_string()));
        return Ok(a);
    }
    std::fs::create_dir_all(part.parent().unwrap_or(&up.data))?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)?;
    let mut left = length;
    let early = &req.early[..req
        .early
        .len()
        .min(usize::try_from(left).unwrap_or(usize::MAX))];
    file.write_all(early)?;
    left -= early.len() as u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut broken = false;
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        match tokio::time::timeout(IDLE, stream.read(&mut buf[..want])).await {
            Ok(Ok(n)) if n > 0 => {
                file.write_all(&buf[..n])?;
                left -= n as u64;
            }
            _ => {
                broken = true;
                break;
            }
        }
    }
    // What arrived stays, synced: the client resumes from it.
    blocking(move || file.sync_data()).await?;
    let now_have = file_len(&part)?;
    if broken || now_have < slot.size {
        let mut a = answer(204, "No Content");
        a.headers.push(("Upload-Offset", now_have.to_string()));
        return Ok(a);
    }
    complete(&mut s, up, &slot).await
}

/// The last byte arrived: check, rename, sync, and turn the slot into the item.
async fn complete(
    s: &mut SqliteItems,
    up: &Uploads,
    slot: &crate::mailbox::Slot,
) -> Result<Answer, Fault> {
    let id = slot.id;
    let (part, done) = (s.part_path(&id), s.file_path(&id));
    let want = slot.sha256;
    let verified = blocking(move || {
        let mut f = std::fs::File::open(&part)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        if <[u8; 32]>::from(h.finalize()) != want {
            // The bytes are dropped; the slot stays, so the upload can start again.
            std::fs::remove_file(&part)?;
            return Ok(false);
        }
        std::fs::rename(&part, &done)?;
        if let Some(dir) = done.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(true)
    })
    .await?;
    if !verified {
        return Ok(answer(422, "Checksum Mismatch"));
    }
    let done = s.file_path(&id);
    let file_ref = FileRef {
        file: id.to_string(),
        name: slot.name.clone(),
        content_type: slot.content_type.clone(),
        size: slot.size,
        sha256: hex(&slot.sha256),
    };
    let body = serde_json::to_vec(&file_ref).unwrap_or_default();
    let expires = unix_now().saturating_add(up.item_lifetime);
    let mut item = Item::new(
        id,
        &slot.owner,
        &slot.sender,
        FILE_TYPE,
        &slot.attributes,
        body,
        unix_now(),
        expires,
    );
    // The item's digest is the file's, not the descriptor's.
    item.sha256 = slot.sha256;
    if !s.complete_slot(&item)? {
        std::fs::remove_file(&done)?;
        return Ok(answer(404, "Not Found"));
    }
    tracing::debug!(item = %id, size = slot.size, "upload complete");
    let mut a = answer(201, "Created");
    a.headers.push(("Upload-Offset", slot.size.to_string()));
    Ok(a)
}

/// GET of a stored file by its owner's download URL.
async fn get(
    stream: &mut TcpStream,
    up: &Uploads,
    id: &ItemId,
    req: &Request,
) -> std::io::Result<()> {
    let found = store(up).and_then(|mut s| {
        let item = s.get(id)?;
        Ok((item, s.file_path(id)))
    });
    let (item, path) = match found {
        Ok((Some(i), p)) if i.content_type == FILE_TYPE && i.expires_at > unix_now() => (i, p),
        Ok(_) => return write_answer(stream, &answer(404, "Not Found")).await,
        Err(e) => return write_answer(stream, &storage_failure(&e)).await,
    };
    let size = item.stored_size();
    let (first, last, status, reason) = if let Some(v) = req.header("Range") {
        let Some((f, l)) = range(v, size) else {
            let mut a = answer(416, "Range Not Satisfiable");
            a.headers.push(("Content-Range", format!("bytes */{size}")));
            return write_answer(stream, &a).await;
        };
        (f, l, 206, "Partial Content")
    } else {
        (0, size.saturating_sub(1), 200, "OK")
    };
    let Ok(mut f) = std::fs::File::open(&path) else {
        return write_answer(stream, &answer(404, "Not Found")).await;
    };
    let len = if size == 0 { 0 } else { last - first + 1 };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Length: {len}\r\n\
Accept-Ranges: bytes\r\nX-Content-SHA256: {}\r\n",
        hex(&item.sha256)
    );
    if status == 206 {
        let _ = write!(head, "Content-Range: bytes {first}-{last}/{size}\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    if req.method == "HEAD" {
        return stream.flush().await;
    }
    f.seek(std::io::SeekFrom::Start(first))?;
    let mut left = len;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    stream.flush().await
}
