//! The embedded item store: its own file `DIR/mailbox.sqlite` (WAL), so that its
//! `synchronous=FULL` (an fsync per commit: a 202 means the item is on disk, across
//! kill -9 and power loss) does not slow the other tables down.
//!
//! ```sql
//! item (id TEXT UNIQUE, owner, sender, content_type, attributes, body BLOB,
//!       size, sha256 BLOB, stored_at, expires_at)
//! ```
//!
//! An optional size cap (`PRAGMA max_page_count`) makes the store answer "full"
//! before the disk is: a write past it fails with `SQLITE_FULL`, like a full disk.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Item, ItemId, ItemMeta, MailboxError, StoredItems, Usage};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS item (
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    sender TEXT NOT NULL,
    content_type TEXT NOT NULL,
    attributes TEXT NOT NULL,
    body BLOB NOT NULL,
    size INTEGER NOT NULL,
    sha256 BLOB NOT NULL,
    stored_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS item_owner ON item (owner, stored_at);
CREATE INDEX IF NOT EXISTS item_sender ON item (sender);
CREATE INDEX IF NOT EXISTS item_expiry ON item (expires_at);
";

/// The file name in the data directory.
pub const FILE: &str = "mailbox.sqlite";

pub struct SqliteItems {
    conn: Connection,
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl SqliteItems {
    /// Opens (or creates) `DIR/mailbox.sqlite`; `max_bytes` caps the file (0: no cap).
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, MailboxError> {
        std::fs::create_dir_all(dir).map_err(|source| MailboxError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
        let conn = Connection::open(dir.join(FILE))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // Every commit is fsynced: the proxy answers 202 only after it returns.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        if max_bytes > 0 {
            let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let pages = int(max_bytes) / page.max(512);
            conn.query_row(
                &format!("PRAGMA max_page_count = {}", pages.max(1)),
                [],
                |_| Ok(()),
            )?;
        }
        Ok(Self { conn })
    }

    fn usage(&self, column: &str, who: &str, unix_now: u64) -> Result<Usage, MailboxError> {
        let sql = format!(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM item WHERE {column} = ?1 AND expires_at > ?2"
        );
        let (items, bytes): (i64, i64) = self
            .conn
            .prepare_cached(&sql)?
            .query_row(params![who, int(unix_now)], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(Usage {
            items: uint(items),
            bytes: uint(bytes),
        })
    }
}

fn digest(v: &[u8]) -> [u8; 32] {
    v.try_into().unwrap_or([0; 32])
}

impl StoredItems for SqliteItems {
    fn put(&mut self, item: &Item) -> Result<(), MailboxError> {
        self.conn
            .prepare_cached(
                "INSERT INTO item (id, owner, sender, content_type, attributes, body, size, sha256, stored_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                item.id.to_string(),
                item.owner,
                item.sender,
                item.content_type,
                item.attributes,
                item.body,
                int(item.body.len() as u64),
                &item.sha256[..],
                int(item.stored_at),
                int(item.expires_at),
            ])?;
        Ok(())
    }

    fn get(&mut self, id: &ItemId) -> Result<Option<Item>, MailboxError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT owner, sender, content_type, attributes, body, sha256, stored_at, expires_at
                 FROM item WHERE id = ?1",
            )?
            .query_row([id.to_string()], |r| {
                Ok(Item {
                    id: *id,
                    owner: r.get(0)?,
                    sender: r.get(1)?,
                    content_type: r.get(2)?,
                    attributes: r.get(3)?,
                    body: r.get(4)?,
                    sha256: digest(&r.get::<_, Vec<u8>>(5)?),
                    stored_at: uint(r.get(6)?),
                    expires_at: uint(r.get(7)?),
                })
            })
            .optional()?;
        Ok(row)
    }

    fn list(
        &mut self,
        owner: &str,
        unix_now: u64,
        limit: usize,
    ) -> Result<Vec<ItemMeta>, MailboxError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, sender, content_type, attributes, size, sha256, stored_at, expires_at
             FROM item WHERE owner = ?1 AND expires_at > ?2 ORDER BY stored_at, id LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![owner, int(unix_now), int(limit as u64)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                ItemMeta {
                    id: ItemId([0; 16]),
                    sender: r.get(1)?,
                    content_type: r.get(2)?,
                    attributes: r.get(3)?,
                    size: uint(r.get(4)?),
                    sha256: digest(&r.get::<_, Vec<u8>>(5)?),
                    stored_at: uint(r.get(6)?),
                    expires_at: uint(r.get(7)?),
                },
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, mut meta) = row?;
            // A row edited by hand into a bad id is skipped, not fatal.
            let Some(id) = ItemId::parse(&id) else {
                tracing::warn!("an item row has no valid id; skipped");
                continue;
            };
            meta.id = id;
            out.push(meta);
        }
        Ok(out)
    }

    fn delete(&mut self, id: &ItemId) -> Result<bool, MailboxError> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM item WHERE id = ?1")?
            .execute([id.to_string()])?;
        Ok(n > 0)
    }

    fn usage_of_owner(&mut self, owner: &str, unix_now: u64) -> Result<Usage, MailboxError> {
        self.usage("owner", owner, unix_now)
    }

    fn usage_of_sender(&mut self, sender: &str, unix_now: u64) -> Result<Usage, MailboxError> {
        self.usage("sender", sender, unix_now)
    }

    fn purge_expired(&mut self, unix_now: u64) -> Result<usize, MailboxError> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM item WHERE expires_at <= ?1")?
            .execute([int(unix_now)])?)
    }
}
