//! The embedded permit store: three tables in the data directory's `permit.sqlite`
//! (WAL mode, shared with the location and credential stores).
//!
//! ```sql
//! permit_list   (callee TEXT PRIMARY KEY, etag TEXT NOT NULL)          WITHOUT ROWID
//! permit_entry  (callee TEXT, entry TEXT, PRIMARY KEY (callee, entry)) WITHOUT ROWID
//! permit_change (seq INTEGER PRIMARY KEY, callee TEXT)   -- NULL callee: everything
//! ```
//!
//! `permit_entry.entry` holds the text form (`alice@example.com`, `*@example.com`), so
//! an operator can read the tables with the `sqlite3` shell. Each write is one
//! `BEGIN IMMEDIATE` transaction that checks the entity-tag, edits the list, and
//! appends to `permit_change`. Another connection (the running proxy, when the CLI
//! wrote) notices the write through `PRAGMA data_version` and reloads only the callees
//! named in `permit_change` after its cursor; when the log was pruned past its cursor
//! or names everything, it reloads all lists.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::PermitError;
use super::aor::{Aor, ETag, PermitEntry};
use super::store::{Changes, PermitStore, StoredList, check_precondition};
use crate::store::{Durability, StoreError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS permit_list (
    callee TEXT PRIMARY KEY,
    etag TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS permit_entry (
    callee TEXT NOT NULL,
    entry TEXT NOT NULL,
    PRIMARY KEY (callee, entry)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS permit_change (
    seq INTEGER PRIMARY KEY,
    callee TEXT
);
";

/// Change-log rows kept; a reader further behind reloads everything.
const CHANGE_LOG_KEEP: i64 = 10_000;
/// An import touching more callees than this logs one "everything" row instead.
const IMPORT_LOG_MAX: usize = 1_000;

/// Permit lists in `DIR/permit.sqlite`.
pub struct SqlitePermitStore {
    conn: Connection,
    /// `PRAGMA data_version` at the last look (moves on other connections' commits).
    seen_version: Option<i64>,
    /// Highest `permit_change.seq` reflected in what this store reported.
    cursor: i64,
    keep: i64,
}

impl SqlitePermitStore {
    /// Opens (or creates) the tables in `DIR/permit.sqlite`.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self, PermitError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
        let conn = Connection::open(dir.join("permit.sqlite"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn,
            seen_version: None,
            cursor: 0,
            keep: CHANGE_LOG_KEEP,
        })
    }

    /// Number of lists and of entries (for start-up logs and `permit list`).
    pub fn counts(&self) -> Result<(usize, usize), PermitError> {
        let count = |sql| -> Result<usize, PermitError> {
            let n: i64 = self.conn.query_row(sql, [], |r| r.get(0))?;
            Ok(usize::try_from(n).unwrap_or(0))
        };
        Ok((
            count("SELECT COUNT(*) FROM permit_list")?,
            count("SELECT COUNT(*) FROM permit_entry")?,
        ))
    }

    fn data_version(&self) -> Result<i64, PermitError> {
        Ok(crate::store::data_version(&self.conn)?)
    }

    /// Runs `edit` on `callee`'s list inside one immediate transaction after checking
    /// `if_match` and storing the new tag; logs the change.
    fn write<T>(
        &mut self,
        callee: &Aor,
        if_match: Option<ETag>,
        etag: ETag,
        edit: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, PermitError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: Option<String> = tx
            .prepare_cached("SELECT etag FROM permit_list WHERE callee = ?1")?
            .query_row([callee.as_str()], |r| r.get(0))
            .optional()?;
        check_precondition(current.as_deref().and_then(ETag::parse), if_match)?;
        upsert_list(&tx, callee, etag)?;
        let out = edit(&tx)?;
        let seq = log_change(&tx, Some(callee), self.keep)?;
        tx.commit()?;
        self.advance(seq, seq);
        Ok(out)
    }

    /// Moves the cursor over own changes `first..=last` when nothing of others lies
    /// before them; otherwise the next poll reads them along with the others'.
    fn advance(&mut self, first: i64, last: i64) {
        if first == self.cursor + 1 {
            self.cursor = last;
        }
    }

    #[cfg(test)]
    pub(crate) fn set_change_log_keep(&mut self, keep: i64) {
        self.keep = keep;
    }
}

fn upsert_list(tx: &Transaction<'_>, callee: &Aor, etag: ETag) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO permit_list (callee, etag) VALUES (?1, ?2)
         ON CONFLICT(callee) DO UPDATE SET etag = ?2",
    )?
    .execute([callee.as_str(), &etag.to_string()])?;
    Ok(())
}

fn insert_entry(tx: &Transaction<'_>, callee: &Aor, e: &PermitEntry) -> rusqlite::Result<bool> {
    let n = tx
        .prepare_cached("INSERT OR IGNORE INTO permit_entry (callee, entry) VALUES (?1, ?2)")?
        .execute([callee.as_str(), &e.to_string()])?;
    Ok(n > 0)
}

/// Appends a change row (`None`: everything) and prunes the log; returns its seq.
fn log_change(tx: &Transaction<'_>, callee: Option<&Aor>, keep: i64) -> rusqlite::Result<i64> {
    tx.prepare_cached("INSERT INTO permit_change (callee) VALUES (?1)")?
        .execute([callee.map(Aor::as_str)])?;
    let seq = tx.last_insert_rowid();
    tx.prepare_cached("DELETE FROM permit_change WHERE seq <= ?1")?
        .execute([seq - keep])?;
    Ok(seq)
}

/// Parses a stored row; a row edited by hand into something invalid is skipped with
/// a warning rather than taking the proxy down.
/// (AORs are logged at debug only, STYLE.md rule 11.)
fn parse_row(callee: &str, entry: &str) -> Option<PermitEntry> {
    PermitEntry::parse(entry)
        .inspect_err(|e| {
            tracing::warn!("a permit_entry row is not an entry; skipped");
            tracing::debug!(callee, error = %e, "permit_entry row skipped");
        })
        .ok()
}

fn load_one(tx: &Transaction<'_>, callee: &Aor) -> Result<Option<StoredList>, PermitError> {
    let etag: Option<String> = tx
        .prepare_cached("SELECT etag FROM permit_list WHERE callee = ?1")?
        .query_row([callee.as_str()], |r| r.get(0))
        .optional()?;
    let Some(etag) = etag else {
        return Ok(None);
    };
    let mut stmt = tx.prepare_cached("SELECT entry FROM permit_entry WHERE callee = ?1")?;
    let mut entries = Vec::new();
    for row in stmt.query_map([callee.as_str()], |r| r.get::<_, String>(0))? {
        entries.extend(parse_row(callee.as_str(), &row?));
    }
    Ok(Some(StoredList {
        callee: callee.clone(),
        etag: ETag::parse(&etag).unwrap_or(ETag::from_u64(0)),
        entries,
    }))
}

impl PermitStore for SqlitePermitStore {
    fn load_all(
        &mut self,
        sink: &mut dyn FnMut(StoredList) -> Result<(), PermitError>,
    ) -> Result<(), PermitError> {
        let version = self.data_version()?;
        let tx = self.conn.transaction()?;
        let max: i64 =
            tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM permit_change", [], |r| {
                r.get(0)
            })?;
        // Both tables are clustered by callee: walk them side by side, one list at a
        // time.
        let mut lists = tx.prepare("SELECT callee, etag FROM permit_list ORDER BY callee")?;
        let mut entries =
            tx.prepare("SELECT callee, entry FROM permit_entry ORDER BY callee, entry")?;
        let mut rows = entries.query([])?;
        let mut pending: Option<(String, String)> = None;
        for list in lists.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
            let (callee, etag) = list?;
            let mut out = Vec::new();
            loop {
                if pending.is_none() {
                    pending = rows
                        .next()?
                        .map(|r| Ok::<_, rusqlite::Error>((r.get(0)?, r.get(1)?)))
                        .transpose()?;
                }
                match &pending {
                    Some((c, e)) if *c == callee => {
                        out.extend(parse_row(c, e));
                        pending = None;
                    }
                    // Entries of a callee without a list row (hand edits) are skipped.
                    Some((c, _)) if *c < callee => pending = None,
                    _ => break,
                }
            }
            let Ok(aor) = Aor::parse(&callee) else {
                tracing::warn!("a permit_list row is not an AOR; skipped");
                tracing::debug!(callee, "permit_list row skipped");
                continue;
            };
            sink(StoredList {
                callee: aor,
                etag: ETag::parse(&etag).unwrap_or(ETag::from_u64(0)),
                entries: out,
            })?;
        }
        drop(rows);
        drop(entries);
        drop(lists);
        tx.finish()?;
        self.cursor = max;
        self.seen_version = Some(version);
        Ok(())
    }

    fn load(&mut self, callee: &Aor) -> Result<Option<StoredList>, PermitError> {
        let tx = self.conn.transaction()?;
        let out = load_one(&tx, callee)?;
        tx.finish()?;
        Ok(out)
    }

    fn replace(
        &mut self,
        callee: &Aor,
        entries: &[PermitEntry],
        if_match: Option<ETag>,
        etag: ETag,
    ) -> Result<(), PermitError> {
        self.write(callee, if_match, etag, |tx| {
            tx.prepare_cached("DELETE FROM permit_entry WHERE callee = ?1")?
                .execute([callee.as_str()])?;
            for e in entries {
                insert_entry(tx, callee, e)?;
            }
            Ok(())
        })
    }

    fn edit(
        &mut self,
        callee: &Aor,
        add: &[PermitEntry],
        remove: &[PermitEntry],
        if_match: Option<ETag>,
        etag: ETag,
    ) -> Result<usize, PermitError> {
        self.write(callee, if_match, etag, |tx| {
            let mut n = 0;
            let mut del =
                tx.prepare_cached("DELETE FROM permit_entry WHERE callee = ?1 AND entry = ?2")?;
            for e in remove {
                n += del.execute([callee.as_str(), &e.to_string()])?;
            }
            for e in add {
                n += usize::from(insert_entry(tx, callee, e)?);
            }
            Ok(n)
        })
    }

    fn import(&mut self, groups: &[(Aor, Vec<PermitEntry>, ETag)]) -> Result<(), PermitError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (callee, entries, etag) in groups {
            upsert_list(&tx, callee, *etag)?;
            for e in entries {
                insert_entry(&tx, callee, e)?;
            }
        }
        let (first, last) = if groups.len() > IMPORT_LOG_MAX {
            let s = log_change(&tx, None, self.keep)?;
            (s, s)
        } else {
            let mut seqs = Vec::with_capacity(groups.len());
            for (callee, _, _) in groups {
                seqs.push(log_change(&tx, Some(callee), self.keep)?);
            }
            (
                seqs.first().copied().unwrap_or(self.cursor + 1),
                seqs.last().copied().unwrap_or(self.cursor),
            )
        };
        tx.commit()?;
        self.advance(first, last);
        Ok(())
    }

    fn poll_changes(&mut self) -> Result<Changes, PermitError> {
        let version = self.data_version()?;
        if self.seen_version == Some(version) {
            return Ok(Changes::None);
        }
        let tx = self.conn.transaction()?;
        let (min, max): (i64, i64) = tx.query_row(
            "SELECT COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) FROM permit_change",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let cursor = self.cursor;
        let everything: bool = max > cursor
            && (min > cursor + 1
                || tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM permit_change WHERE seq > ?1 AND callee IS NULL)",
                    [cursor],
                    |r| r.get(0),
                )?);
        let changes = if max <= cursor {
            Changes::None
        } else if everything {
            Changes::All
        } else {
            let mut stmt =
                tx.prepare("SELECT DISTINCT callee FROM permit_change WHERE seq > ?1")?;
            let names = stmt
                .query_map([cursor], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            drop(stmt);
            let mut lists = Vec::with_capacity(names.len());
            for name in names {
                if let Ok(aor) = Aor::parse(&name) {
                    let list = load_one(&tx, &aor)?;
                    lists.push((aor, list));
                }
            }
            Changes::Lists(lists)
        };
        tx.finish()?;
        if changes != Changes::All {
            // `All` moves the cursor when the caller runs `load_all`.
            self.cursor = self.cursor.max(max);
            self.seen_version = Some(version);
        }
        Ok(changes)
    }
}
