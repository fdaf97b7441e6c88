//! The inbox on disk (docs/profile.md "Data with attributes"): an item is accepted
//! only once its bytes are checked (the SHA-256 the proxy names, for a link the
//! downloaded file's), opened when sealed, and written and synced: `DIR/<id>-<name>`
//! (data) and then `DIR/<id>.json` (what we know of it). Only then is the delivering
//! MESSAGE answered 200, which deletes the item at the proxy. A redelivered id whose
//! `.json` exists is answered 200 and not written again (dedup).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::Incoming;
use super::http::{self, Url};
use super::item::{Attributes, ItemInfo, sha256_hex};
use super::seal::{Identity, SEALED_TYPE};

/// The link body of a large item (docs/profile.md "Large files", delivery).
pub const FILE_LINK_TYPE: &str = "application/permit-file+json";
/// Largest download we take (the proxy's `max_upload_bytes` default is 50 MiB).
pub const MAX_DOWNLOAD: u64 = 1 << 30;

/// Where items go and the key that opens secret ones.
#[derive(Debug, Clone)]
pub struct InboxContext {
    pub dir: PathBuf,
    /// The identity file (X25519 private key); read when a secret item arrives.
    pub identity: PathBuf,
}

/// The default place of a user's files: `$XDG_DATA_HOME/permit-ua/<user>@<domain>`
/// (or `~/.local/share/...`), else `./permit-ua/<user>@<domain>`.
pub fn default_home(user: &str, domain: &str) -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("permit-ua").join(format!("{user}@{domain}"))
}

/// Why an item was not accepted: the status we answer (the proxy keeps it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub reason: &'static str,
    pub detail: String,
}

fn refuse(status: u16, reason: &'static str, detail: impl Into<String>) -> Refused {
    Refused {
        status,
        reason,
        detail: detail.into(),
    }
}

/// An accepted item.
#[derive(Debug, Clone)]
pub struct Saved {
    /// The item id, or `None` for a message that did not come from the store.
    pub item: Option<String>,
    pub from: Option<String>,
    pub path: PathBuf,
    pub size: usize,
    pub sha256: String,
    pub secret: bool,
    pub duplicate: bool,
    /// Came straight from the caller's UA (direct mode), not through the proxy.
    pub direct: bool,
}

impl Saved {
    pub fn fields(&self) -> Value {
        json!({
            "item": self.item, "from": self.from, "path": self.path.display().to_string(),
            "size": self.size, "sha256": self.sha256, "secret": self.secret,
            "duplicate": self.duplicate, "direct": self.direct,
        })
    }

    pub fn describe(&self) -> String {
        let from = self.from.as_deref().unwrap_or("someone");
        if self.duplicate {
            return format!(
                "item {} again: already saved",
                self.item.as_deref().unwrap_or("?")
            );
        }
        format!(
            "{}{} bytes from {from} saved to {}",
            if self.secret { "secret: " } else { "" },
            self.size,
            self.path.display()
        )
    }
}

/// Writes `data` to `path` through a temporary file, synced, then renamed.
fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("part");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A file name we may write: the last path component, printable, at most 100 bytes.
fn safe_name(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next()?.trim();
    let clean: String = base.chars().filter(|c| !c.is_control()).take(100).collect();
    (!clean.is_empty() && clean != "." && clean != "..").then_some(clean)
}

fn extension_for(ctype: &str) -> &'static str {
    match ctype.split(';').next().unwrap_or_default().trim() {
        t if t.starts_with("text/") => "txt",
        "application/json" => "json",
        "image/png" => "png",
        "image/jpeg" => "jpg",
        _ => "bin",
    }
}

/// Checks, opens and saves one incoming MESSAGE (module docs).
pub async fn accept(
    ctx: &InboxContext,
    inc: &Incoming,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Saved, Refused> {
    let info = match inc.item.as_deref() {
        Some(v) => Some(
            ItemInfo::parse(v)
                .ok_or_else(|| refuse(400, "Bad Permit-Item", "Permit-Item without an item id"))?,
        ),
        None => None,
    };
    let attributes = Attributes::parse(inc.attributes.as_deref());
    let stem = match &info {
        Some(i) => i.id.clone(),
        None => format!("msg-{}", &sha256_hex(&inc.body)[..16]),
    };
    std::fs::create_dir_all(&ctx.dir)
        .map_err(|e| refuse(500, "Inbox Not Writable", e.to_string()))?;
    let meta_path = ctx.dir.join(format!("{stem}.json"));
    if info.is_some() && meta_path.exists() {
        // Redelivery after our 2xx was lost (docs/profile.md "Transfer request").
        let old: Value = std::fs::read(&meta_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        return Ok(Saved {
            item: info.map(|i| i.id),
            from: inc.from.clone(),
            path: PathBuf::from(old["path"].as_str().unwrap_or_default()),
            size: usize::try_from(old["size"].as_u64().unwrap_or(0)).unwrap_or(0),
            sha256: old["sha256"].as_str().unwrap_or_default().to_string(),
            secret: old["secret"].as_bool().unwrap_or(false),
            duplicate: true,
            direct: !inc.from_proxy,
        });
    }
    let (mut ctype, mut name, mut data) = (inc.content_type.clone(), None, inc.body.to_vec());
    let link = ctype.eq_ignore_ascii_case(FILE_LINK_TYPE);
    if link {
        let (n, t, bytes) = download(inc, progress).await?;
        (name, ctype, data) = (n, t, bytes);
    }
    // The delivered body, or the downloaded file, is checked against the SHA-256 the
    // proxy stored (for a link, the file's; docs/profile.md "Large files").
    if let Some(expected) = info.as_ref().and_then(|i| i.sha256.as_deref())
        && expected != sha256_hex(&data)
    {
        let what = if link {
            "the downloaded file"
        } else {
            "the MESSAGE body"
        };
        return Err(refuse(400, "Checksum Mismatch", what));
    }
    let secret = attributes.secret() || ctype.eq_ignore_ascii_case(SEALED_TYPE);
    if secret {
        let identity = load_identity(&ctx.identity)?;
        let (t, n, plain) = identity
            .open(&data)
            .map_err(|e| refuse(488, "Cannot Open Sealed Data", e.to_string()))?;
        (ctype, data) = (t, plain);
        name = n.or(name);
    }
    let file = match name.as_deref().and_then(safe_name) {
        Some(n) => format!("{stem}-{n}"),
        None => format!("{stem}.{}", extension_for(&ctype)),
    };
    let path = ctx.dir.join(file);
    let sha256 = sha256_hex(&data);
    write_synced(&path, &data).map_err(|e| refuse(500, "Inbox Not Writable", e.to_string()))?;
    let saved = Saved {
        item: info.as_ref().map(|i| i.id.clone()),
        from: inc.from.clone(),
        path,
        size: data.len(),
        sha256,
        secret,
        duplicate: false,
        direct: !inc.from_proxy,
    };
    let mut meta = saved.fields();
    meta["type"] = json!(ctype);
    meta["received"] = json!(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    );
    meta["attributes"] = json!(attributes.header());
    write_synced(&meta_path, meta.to_string().as_bytes())
        .map_err(|e| refuse(500, "Inbox Not Writable", e.to_string()))?;
    Ok(saved)
}

fn load_identity(path: &Path) -> Result<Identity, Refused> {
    if !path.exists() {
        return Err(refuse(
            488,
            "Cannot Open Sealed Data",
            format!(
                "no identity file {} (create it with `permit-ua key`)",
                path.display()
            ),
        ));
    }
    Identity::load_or_create(path, [0; 32])
        .map_err(|e| refuse(500, "Cannot Open Sealed Data", e.to_string()))
}

/// Downloads a large item from its `Permit-Download` link and checks its SHA-256:
/// (name, type, bytes).
async fn download(
    inc: &Incoming,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(Option<String>, String, Vec<u8>), Refused> {
    let link: Value =
        serde_json::from_slice(&inc.body).map_err(|_| refuse(400, "Bad File Link", "not JSON"))?;
    let size = link["size"]
        .as_u64()
        .filter(|s| *s <= MAX_DOWNLOAD)
        .ok_or_else(|| refuse(400, "Bad File Link", "no size, or too large"))?;
    let sum = link["sha256"]
        .as_str()
        .map(str::to_ascii_lowercase)
        .filter(|s| s.len() == 64)
        .ok_or_else(|| refuse(400, "Bad File Link", "no sha256"))?;
    let url = inc
        .download
        .as_deref()
        .and_then(Url::parse)
        .ok_or_else(|| refuse(400, "Bad File Link", "no Permit-Download URL"))?;
    let resp = http::request(&url, "GET", &[], b"", size, &mut |n| progress(n, size))
        .await
        .map_err(|e| refuse(480, "Download Failed", e.to_string()))?;
    if resp.status != 200 {
        return Err(refuse(
            480,
            "Download Failed",
            format!("HTTP {}", resp.status),
        ));
    }
    if sha256_hex(&resp.body) != sum {
        return Err(refuse(400, "Checksum Mismatch", "the downloaded file"));
    }
    let name = link["name"].as_str().map(str::to_string);
    let ctype = link["type"]
        .as_str()
        .unwrap_or("application/octet-stream")
        .to_string();
    Ok((name, ctype, resp.body))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::inbox::seal;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    fn ctx(name: &str) -> InboxContext {
        let dir = std::env::temp_dir().join(format!("permit-inbox-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        InboxContext {
            identity: dir.join("id.key"),
            dir: dir.join("in"),
        }
    }

    fn item(body: &[u8], sum: &str, attributes: Option<&str>, ctype: &str) -> Incoming {
        Incoming {
            id: 1,
            from: Some("sip:alice@example.org".into()),
            content_type: ctype.into(),
            item: Some(format!("{ID};sha256={sum};stored=1;expires=2")),
            attributes: attributes.map(str::to_string),
            download: None,
            body: Bytes::copy_from_slice(body),
            from_proxy: true,
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_wrong_checksum_is_refused_and_writes_nothing() {
        let c = ctx("sum");
        let inc = item(b"hello", &"0".repeat(64), None, "text/plain");
        let r = accept(&c, &inc, &mut |_, _| {}).await.unwrap_err();
        assert_eq!((r.status, r.reason), (400, "Checksum Mismatch"));
        let files = std::fs::read_dir(&c.dir).map_or(0, Iterator::count);
        assert_eq!(files, 0, "nothing written");
        let _ = std::fs::remove_dir_all(c.dir.parent().unwrap());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_redelivered_item_is_not_written_twice_and_sealed_items_open() {
        let c = ctx("dedup");
        let id = Identity::load_or_create(&c.identity, [8; 32]).unwrap();
        let sealed = seal::seal(&id.public(), [2; 32], "text/plain", Some("n.txt"), b"psst");
        let inc = item(&sealed, &sha256_hex(&sealed), Some("secret"), SEALED_TYPE);
        let first = accept(&c, &inc, &mut |_, _| {}).await.unwrap();
        assert!(!first.duplicate && first.secret);
        assert_eq!(std::fs::read(&first.path).unwrap(), b"psst");
        assert!(first.path.ends_with(format!("{ID}-n.txt")));
        std::fs::write(&first.path, b"kept").unwrap();
        let again = accept(&c, &inc, &mut |_, _| {}).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(
            std::fs::read(&first.path).unwrap(),
            b"kept",
            "not rewritten"
        );
        // Without the key file, a sealed item is refused (and kept at the proxy).
        std::fs::remove_file(&c.identity).unwrap();
        let other = Incoming {
            item: Some(format!("{};sha256={}", "f".repeat(32), sha256_hex(&sealed))),
            ..inc
        };
        let r = accept(&c, &other, &mut |_, _| {}).await.unwrap_err();
        assert_eq!(r.status, 488);
        let _ = std::fs::remove_dir_all(c.dir.parent().unwrap());
    }

    #[test]
    fn file_names_stay_in_the_inbox() {
        assert_eq!(safe_name("../../etc/passwd").as_deref(), Some("passwd"));
        assert_eq!(safe_name("a\\b\u{7}.txt").as_deref(), Some("b.txt"));
        assert_eq!(safe_name(".."), None);
        assert_eq!(safe_name(""), None);
    }
}
