//! The embedded item store: its own file `DIR/mailbox.sqlite` (WAL), so that its
//! `synchronous=FULL` (an fsync per commit: a 202 means the item is on disk, across
//! kill -9 and power loss) does not slow the other tables down.
//!
//! ```sql
//! item        (id TEXT UNIQUE, owner, sender, content_type, attributes, body BLOB,
//!              size, sha256 BLOB, stored_at, expires_at)
//! upload_slot (id TEXT UNIQUE, owner, sender, content_type, attributes, name, size,
//!              sha256 BLOB, created_at, expires_at)        -- uploads under way
//! ```
//!
//! Uploaded files live beside it in `DIR/uploads/`; deleting or expiring their item
//! (or slot) removes the file.
//!
//! An optional size cap (`PRAGMA max_page_count`) makes the store answer "full"
//! before the disk is: a write past it fails with `SQLITE_FULL`, like a full disk.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use super::{Item, ItemId, ItemMeta, MailboxError, Slot, StoredItems, Usage};

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
CREATE TABLE IF NOT EXISTS upload_slot (
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    sender TEXT NOT NULL,
    content_type TEXT NOT NULL,
    attributes TEXT NOT NULL,
    name TEXT,
    size INTEGER NOT NULL,
    sha256 BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
";

/// The directory of uploaded files in the data directory: `<id>.part` while an upload
/// is under way, `<id>` once it is complete and an item.
pub const FILES: &str = "uploads";

/// The file name in the data directory.
pub const FILE: &str = "mailbox.sqlite";

pub struct SqliteItems {
    conn: Connection,
    files: PathBuf,
    /// Owners that may have items waiting: [`StoredItems::waiting`] runs for every
    /// REGISTER, and most owners have nothing waiting. This connection's own writes
    /// add their owner at once. Another connection's commit (the upload listener, the
    /// operator's CLI) moves the file's `data_version`, which is read at most once per
    /// second of `unix_now`, since the read takes SQLite's file locks (about 2 µs,
    /// as much as the COUNT it saves); the set is then read again.
    owners: Option<Owners>,
}

/// The set behind [`SqliteItems::waiting`].
struct Owners {
    /// `data_version` when the set was read.
    version: i64,
    /// The second (`unix_now`) of the last `data_version` read.
    checked_at: u64,
    set: HashSet<Box<str>>,
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
        Ok(Self {
            conn,
            files: dir.join(FILES),
            owners: None,
        })
    }

    /// Whether `owner` may have items waiting: `false` only when the set of owners
    /// with items lacks it. What other connections committed is in the set from the
    /// next second of `unix_now` on.
    fn may_have_items(&mut self, owner: &str, unix_now: u64) -> Result<bool, MailboxError> {
        let checked = self
            .owners
            .as_ref()
            .is_some_and(|o| o.checked_at == unix_now);
        if !checked {
            let version = crate::store::data_version(&self.conn)?;
            match &mut self.owners {
                Some(o) if o.version == version => o.checked_at = unix_now,
                _ => {
                    let set = self
                        .conn
                        .prepare_cached("SELECT DISTINCT owner FROM item WHERE expires_at > ?1")?
                        .query_map([int(unix_now)], |r| r.get::<_, String>(0))?
                        .map(|o| o.map(String::into_boxed_str))
                        .collect::<Result<HashSet<_>, _>>()?;
                    self.owners = Some(Owners {
                        version,
                        checked_at: unix_now,
                        set,
                    });
                }
            }
        }
        Ok(self.owners.as_ref().is_some_and(|o| o.set.contains(owner)))
    }

    /// This connection stored an item for `owner` (its own commits do not move
    /// `data_version`).
    fn owner_added(&mut self, owner: &str) {
        if let Some(o) = &mut self.owners {
            o.set.insert(owner.into());
        }
    }

    /// Where the file of a complete upload is.
    pub fn file_path(&self, id: &ItemId) -> PathBuf {
        self.files.join(id.to_string())
    }

    /// Where the bytes of an upload under way are.
    pub fn part_path(&self, id: &ItemId) -> PathBuf {
        self.files.join(format!("{id}.part"))
    }

    /// Removes the files of `id`, if any (an absent file is no error).
    fn remove_files(&self, id: &ItemId) {
        for p in [self.file_path(id), self.part_path(id)] {
            if let Err(e) = std::fs::remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(error = %e, "an uploaded file was not removed");
            }
        }
    }

    fn usage(&self, column: &str, who: &str, unix_now: u64) -> Result<Usage, MailboxError> {
        let sql = format!(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM (
                 SELECT size FROM item WHERE {column} = ?1 AND expires_at > ?2
                 UNION ALL
                 SELECT size FROM upload_slot WHERE {column} = ?1 AND expires_at > ?2)"
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

/// Inserts `item` (in a transaction or not).
fn insert(conn: &Connection, item: &Item) -> Result<(), MailboxError> {
    conn.prepare_cached(
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
                int(item.stored_size()),
                &item.sha256[..],
                int(item.stored_at),
                int(item.expires_at),
            ])?;
    Ok(())
}

impl StoredItems for SqliteItems {
    fn put(&mut self, item: &Item) -> Result<(), MailboxError> {
        let slot: bool = self
            .conn
            .prepare_cached("SELECT 1 FROM upload_slot WHERE id = ?1")?
            .exists([item.id.to_string()])?;
        if slot {
            return Err(MailboxError::Duplicate);
        }
        insert(&self.conn, item)?;
        self.owner_added(&item.owner);
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
        self.remove_files(id);
        Ok(n > 0)
    }

    fn waiting(&mut self, owner: &str, unix_now: u64) -> Result<Usage, MailboxError> {
        if !self.may_have_items(owner, unix_now)? {
            return Ok(Usage::default());
        }
        // `+expires_at`: the owner index alone, so the plan does not depend on the
        // bound values and the statement is not prepared again for each REGISTER.
        let (items, bytes): (i64, i64) = self
            .conn
            .prepare_cached(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM item
                 WHERE owner = ?1 AND +expires_at > ?2",
            )?
            .query_row(params![owner, int(unix_now)], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        if items == 0
            && let Some(o) = &mut self.owners
        {
            o.set.remove(owner);
        }
        Ok(Usage {
            items: uint(items),
            bytes: uint(bytes),
        })
    }

    fn usage_of_owner(&mut self, owner: &str, unix_now: u64) -> Result<Usage, MailboxError> {
        self.usage("owner", owner, unix_now)
    }

    fn usage_of_sender(&mut self, sender: &str, unix_now: u64) -> Result<Usage, MailboxError> {
        self.usage("sender", sender, unix_now)
    }

    fn purge_expired(&mut self, unix_now: u64) -> Result<usize, MailboxError> {
        let now = int(unix_now);
        // Files first: a file whose row is gone would never be removed.
        let ids: Vec<String> = self
            .conn
            .prepare_cached(
                "SELECT id FROM item WHERE expires_at <= ?1 AND content_type = ?2
                 UNION ALL SELECT id FROM upload_slot WHERE expires_at <= ?1",
            )?
            .query_map(params![now, crate::upload::FILE_TYPE], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for id in ids.iter().filter_map(|i| ItemId::parse(i)) {
            self.remove_files(&id);
        }
        let items = self
            .conn
            .prepare_cached("DELETE FROM item WHERE expires_at <= ?1")?
            .execute([now])?;
        let slots = self
            .conn
            .prepare_cached("DELETE FROM upload_slot WHERE expires_at <= ?1")?
            .execute([now])?;
        Ok(items + slots)
    }

    fn put_slot(&mut self, s: &Slot) -> Result<(), MailboxError> {
        let taken: bool = self
            .conn
            .prepare_cached("SELECT 1 FROM item WHERE id = ?1")?
            .exists([s.id.to_string()])?;
        if taken {
            return Err(MailboxError::Duplicate);
        }
        self.conn
            .prepare_cached(
                "INSERT INTO upload_slot (id, owner, sender, content_type, attributes, name, size, sha256, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                s.id.to_string(),
                s.owner,
                s.sender,
                s.content_type,
                s.attributes,
                s.name,
                int(s.size),
                &s.sha256[..],
                int(s.created_at),
                int(s.expires_at),
            ])?;
        Ok(())
    }

    fn get_slot(&mut self, id: &ItemId) -> Result<Option<Slot>, MailboxError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT owner, sender, content_type, attributes, name, size, sha256, created_at, expires_at
                 FROM upload_slot WHERE id = ?1",
            )?
            .query_row([id.to_string()], |r| {
                Ok(Slot {
                    id: *id,
                    owner: r.get(0)?,
                    sender: r.get(1)?,
                    content_type: r.get(2)?,
                    attributes: r.get(3)?,
                    name: r.get(4)?,
                    size: uint(r.get(5)?),
                    sha256: digest(&r.get::<_, Vec<u8>>(6)?),
                    created_at: uint(r.get(7)?),
                    expires_at: uint(r.get(8)?),
                })
            })
            .optional()?)
    }

    fn complete_slot(&mut self, item: &Item) -> Result<bool, MailboxError> {
        let tx = self.conn.transaction()?;
        let n = tx
            .prepare_cached("DELETE FROM upload_slot WHERE id = ?1")?
            .execute([item.id.to_string()])?;
        if n == 0 {
            return Ok(false);
        }
        insert(&tx, item)?;
        tx.commit()?;
        self.owner_added(&item.owner);
        Ok(true)
    }

    fn learn_owner(&mut self, owner: &str) {
        self.owner_added(owner);
    }
}
