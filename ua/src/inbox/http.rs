//! A small HTTP/1.1 client for the proxy's upload and download listener
//! (docs/profile.md "Large files: HTTP upload"): one request per connection
//! (`Connection: close`, RFC 9112 §9.6), `Content-Length` bodies, bounded reads.

use std::fmt::Write as _;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest response head we read.
const MAX_HEAD: usize = 16 * 1024;
/// A request that makes no progress for this long fails.
const STALL: Duration = Duration::from_secs(30);

/// `http://host:port/path?query`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    pub target: String,
}

impl Url {
    /// Parses an `http:` URL (the proxy hands out IP literals or names), `<...>` allowed.
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .strip_prefix("http://")?;
        let (authority, target) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, p) = v6.split_once(']')?;
            (h, p.strip_prefix(':').map_or(Some(80), |p| p.parse().ok())?)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().ok()?),
                None => (authority, 80),
            }
        };
        if host.is_empty() || target.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return None;
        }
        Some(Self {
            host: host.to_string(),
            port,
            target: target.to_string(),
        })
    }

    fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// An HTTP response.
#[derive(Debug, Clone, Default)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn stalled() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "the HTTP peer stalled")
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// Sends one request and reads the answer; `progress` is told the bytes of the body
/// sent (PUT) or received (GET) so far. The response body is read up to `max_body`
/// bytes (more is an error).
pub async fn request(
    url: &Url,
    method: &str,
    headers: &[(&str, String)],
    body: &[u8],
    max_body: u64,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<Response> {
    let connect = TcpStream::connect((url.host.as_str(), url.port));
    let mut stream = tokio::time::timeout(STALL, connect)
        .await
        .map_err(|_| stalled())??;
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: permit-ua\r\n",
        url.target,
        url.host_header()
    );
    for (n, v) in headers {
        let _ = write!(head, "{n}: {v}\r\n");
    }
    if method == "PUT" || !body.is_empty() {
        let _ = write!(head, "Content-Length: {}\r\n", body.len());
    }
    head.push_str("\r\n");
    tokio::time::timeout(STALL, stream.write_all(head.as_bytes()))
        .await
        .map_err(|_| stalled())??;
    let mut sent = 0u64;
    for chunk in body.chunks(64 * 1024) {
        tokio::time::timeout(STALL, stream.write_all(chunk))
            .await
            .map_err(|_| stalled())??;
        sent += chunk.len() as u64;
        progress(sent);
    }
    tokio::time::timeout(STALL, stream.flush())
        .await
        .map_err(|_| stalled())??;
    read_response(&mut stream, method == "HEAD", max_body, progress).await
}

async fn read_response(
    stream: &mut TcpStream,
    head_only: bool,
    max_body: u64,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<Response> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 64 * 1024];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(bad("HTTP response head too long"));
        }
        let n = tokio::time::timeout(STALL, stream.read(&mut chunk))
            .await
            .map_err(|_| stalled())??;
        if n == 0 {
            return Err(bad("connection closed before the HTTP response"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| {
            l.strip_prefix("HTTP/1.1 ")
                .or_else(|| l.strip_prefix("HTTP/1.0 "))
        })
        .and_then(|l| l.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("not an HTTP response"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut resp = Response {
        status,
        headers,
        body: buf[end + 4..].to_vec(),
    };
    let length: Option<u64> = resp.header("Content-Length").and_then(|v| v.parse().ok());
    if head_only || status == 204 || status == 304 {
        resp.body.clear();
        return Ok(resp);
    }
    if length.is_some_and(|l| l > max_body) {
        return Err(bad("HTTP response body larger than expected"));
    }
    loop {
        if length.is_some_and(|l| resp.body.len() as u64 >= l) {
            break;
        }
        let n = tokio::time::timeout(STALL, stream.read(&mut chunk))
            .await
            .map_err(|_| stalled())??;
        if n == 0 {
            if length.is_some() {
                return Err(bad("connection closed in the HTTP body"));
            }
            break;
        }
        resp.body.extend_from_slice(&chunk[..n]);
        if resp.body.len() as u64 > max_body {
            return Err(bad("HTTP response body larger than expected"));
        }
        progress(resp.body.len() as u64);
    }
    if let Some(l) = length {
        resp.body.truncate(usize::try_from(l).unwrap_or(usize::MAX));
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("<http://127.0.0.1:8080/upload/ab?t=1.x>").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("127.0.0.1", 8080, "/upload/ab?t=1.x")
        );
        let v6 = Url::parse("http://[::1]:81/files/x").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 81));
        assert_eq!(v6.host_header(), "[::1]:81");
        assert_eq!(Url::parse("http://h/").unwrap().port, 80);
        assert!(Url::parse("https://h/").is_none());
        assert!(Url::parse("http://h/a b").is_none());
        assert!(Url::parse("http://:1/").is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reads_a_response_with_a_body_and_refuses_an_oversized_one() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for body in ["hello", "far too long"] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut req = vec![0u8; 4096];
                let _ = s.read(&mut req).await.unwrap();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Content-SHA256: z\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        let url = Url::parse(&format!("http://127.0.0.1:{port}/files/x")).unwrap();
        let mut seen = 0;
        let r = request(&url, "GET", &[], b"", 8, &mut |n| seen = n)
            .await
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(r.header("x-content-sha256"), Some("z"));
        assert!(seen <= 5);
        let e = request(&url, "GET", &[], b"", 8, &mut |_| {}).await;
        assert!(e.is_err(), "a body above the limit is an error");
        server.await.unwrap();
    }
}
