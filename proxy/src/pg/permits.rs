//! Permit lists in PostgreSQL: the tables of the embedded store (`permit_list`,
//! `permit_entry`, `permit_change`) and the same change-log protocol, with NOTIFY in
//! place of SQLite's `data_version`.
//!
//! Each write is one transaction under an advisory lock that serialises permit writers
//! of every node (so `permit_change.seq` grows in commit order and a reader's cursor
//! never skips a change committed late), checks the entity-tag (RFC 3903 §6 step 2),
//! edits the list, appends to the change log and announces it on
//! [`super::CHANNEL_PERMIT`]. [`PermitStore::poll_changes`] — called before every
//! lookup — costs one atomic load until the node's listener heard such a NOTIFY;
//! only then does it read the log after its cursor and the lists it names.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use postgres::GenericClient;

use super::{CHANNEL_PERMIT, Db, NodeId, PgError, PgUrl};
use crate::permits::{Aor, Changes, ETag, PermitEntry, PermitError, PermitStore, StoredList};
use crate::store::StoreError;

/// Change-log rows kept; a reader further behind reloads everything.
const CHANGE_LOG_KEEP: i64 = 10_000;
/// An import touching more callees than this logs one "everything" row instead.
const IMPORT_LOG_MAX: usize = 1_000;
/// The advisory lock of permit writers.
const WRITE_LOCK: i64 = 0x7065_726d_6974_0002;

impl From<postgres::Error> for PermitError {
    fn from(e: postgres::Error) -> Self {
        Self::Store(StoreError::Postgres(PgError::Db(e)))
    }
}

impl From<PgError> for PermitError {
    fn from(e: PgError) -> Self {
        Self::Store(StoreError::Postgres(e))
    }
}

/// Permit lists in the shared database.
pub struct PgPermitStore {
    db: Db,
    node: NodeId,
    /// Bumped by the listener on every NOTIFY of a permit change (and on reconnect).
    heard: Arc<AtomicU64>,
    /// `heard` when the log was last read.
    seen: u64,
    /// Highest `permit_change.seq` reflected in what this store reported.
    cursor: i64,
}

impl PgPermitStore {
    /// Connects; `heard` is the counter the node's listener bumps
    /// ([`super::listen::Heard::permits`]); a store without listener (the CLI) gets
    /// a counter of its own and never polls.
    pub fn open(url: &PgUrl, node: NodeId, heard: Arc<AtomicU64>) -> Result<Self, PgError> {
        Ok(Self {
            db: Db::open(url, "permit-pg-permits")?,
            node,
            seen: heard.load(Ordering::Acquire),
            heard,
            cursor: 0,
        })
    }

    /// Moves the cursor over own changes `first..=last` when nothing of others lies
    /// before them; otherwise the next poll reads them along with the others'.
    fn advance(&mut self, first: i64, last: i64) {
        if first == self.cursor + 1 {
            self.cursor = last;
        }
    }

    /// One write transaction: lock, check `if_match`, set the tag, `edit`, log.
    /// Returns `edit`'s result and the change's sequence number.
    fn write<T: Send + 'static>(
        &mut self,
        callee: &Aor,
        if_match: Option<ETag>,
        etag: ETag,
        edit: impl FnOnce(&mut postgres::Transaction<'_>, &str) -> Result<T, postgres::Error>
        + Send
        + 'static,
    ) -> Result<T, PermitError> {
        let callee = callee.as_str().to_owned();
        let node = self.node.0.clone();
        let (out, seq) = self.db.run(move |c| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])?;
            let current: Option<String> = tx
                .query_opt("SELECT etag FROM permit_list WHERE callee = $1", &[&callee])?
                .map(|r| r.get(0));
            // RFC 3903 §6 step 2, checked again inside the transaction.
            if let Some(want) = if_match
                && current.as_deref().and_then(ETag::parse) != Some(want)
            {
                return Err(PermitError::PreconditionFailed);
            }
            upsert_list(&mut tx, &callee, etag)?;
            let out = edit(&mut tx, &callee)?;
            let seq = log_change(&mut tx, Some(&callee))?;
            notify(&mut tx, &node)?;
            tx.commit()?;
            Ok::<_, PermitError>((out, seq))
        })?;
        self.advance(seq, seq);
        Ok(out)
    }
}

fn upsert_list(
    tx: &mut impl GenericClient,
    callee: &str,
    etag: ETag,
) -> Result<(), postgres::Error> {
    tx.execute(
        "INSERT INTO permit_list (callee, etag) VALUES ($1, $2)
         ON CONFLICT (callee) DO UPDATE SET etag = EXCLUDED.etag",
        &[&callee, &etag.to_string()],
    )?;
    Ok(())
}

fn insert_entry(
    tx: &mut impl GenericClient,
    callee: &str,
    e: &PermitEntry,
) -> Result<bool, postgres::Error> {
    let n = tx.execute(
        "INSERT INTO permit_entry (callee, entry) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&callee, &e.to_string()],
    )?;
    Ok(n > 0)
}

/// Appends a change row (`None`: everything) and prunes the log; returns its seq.
fn log_change(tx: &mut impl GenericClient, callee: Option<&str>) -> Result<i64, postgres::Error> {
    let seq: i64 = tx
        .query_one(
            "INSERT INTO permit_change (callee) VALUES ($1) RETURNING seq",
            &[&callee],
        )?
        .get(0);
    tx.execute(
        "DELETE FROM permit_change WHERE seq <= $1",
        &[&(seq - CHANGE_LOG_KEEP)],
    )?;
    Ok(seq)
}

fn notify(tx: &mut impl GenericClient, node: &str) -> Result<(), postgres::Error> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL_PERMIT, &node])?;
    Ok(())
}

/// A stored row that is not an entry (a hand edit) is skipped with a warning.
fn parse_row(entry: &str) -> Option<PermitEntry> {
    PermitEntry::parse(entry)
        .inspect_err(|e| {
            tracing::warn!("a permit_entry row is not an entry; skipped");
            tracing::debug!(error = %e, "permit_entry row skipped");
        })
        .ok()
}

fn load_one(tx: &mut impl GenericClient, callee: &Aor) -> Result<Option<StoredList>, PermitError> {
    let Some(row) = tx.query_opt(
        "SELECT etag FROM permit_list WHERE callee = $1",
        &[&callee.as_str()],
    )?
    else {
        return Ok(None);
    };
    let etag: String = row.get(0);
    let entries = tx
        .query(
            "SELECT entry FROM permit_entry WHERE callee = $1",
            &[&callee.as_str()],
        )?
        .iter()
        .filter_map(|r| parse_row(r.get(0)))
        .collect();
    Ok(Some(StoredList {
        callee: callee.clone(),
        etag: ETag::parse(&etag).unwrap_or(ETag::from_u64(0)),
        entries,
    }))
}

/// Every list, grouped by callee, with the log's head at the same snapshot.
fn load_all_in(c: &mut postgres::Client) -> Result<(i64, Vec<StoredList>), PermitError> {
    let mut tx = c
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    tx.batch_execute("SET LOCAL statement_timeout = 0")?;
    let max: i64 = tx
        .query_one("SELECT COALESCE(MAX(seq), 0) FROM permit_change", &[])?
        .get(0);
    let mut lists: Vec<StoredList> = Vec::new();
    let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for r in tx.query("SELECT callee, etag FROM permit_list ORDER BY callee", &[])? {
        let callee: String = r.get(0);
        let etag: String = r.get(1);
        let Ok(aor) = Aor::parse(&callee) else {
            tracing::warn!("a permit_list row is not an AOR; skipped");
            continue;
        };
        at.insert(callee, lists.len());
        lists.push(StoredList {
            callee: aor,
            etag: ETag::parse(&etag).unwrap_or(ETag::from_u64(0)),
            entries: Vec::new(),
        });
    }
    for r in tx.query("SELECT callee, entry FROM permit_entry", &[])? {
        let callee: &str = r.get(0);
        // Entries of a callee without a list row (hand edits) are skipped.
        if let Some(i) = at.get(callee) {
            lists[*i].entries.extend(parse_row(r.get(1)));
        }
    }
    tx.commit()?;
    Ok((max, lists))
}

impl PermitStore for PgPermitStore {
    fn load_all(
        &mut self,
        sink: &mut dyn FnMut(StoredList) -> Result<(), PermitError>,
    ) -> Result<(), PermitError> {
        let heard = self.heard.load(Ordering::Acquire);
        let (max, lists) = self.db.run(load_all_in)?;
        for l in lists {
            sink(l)?;
        }
        self.cursor = max;
        self.seen = heard;
        Ok(())
    }

    fn load(&mut self, callee: &Aor) -> Result<Option<StoredList>, PermitError> {
        let callee = callee.clone();
        self.db.run(move |c| load_one(c, &callee))
    }

    fn replace(
        &mut self,
        callee: &Aor,
        entries: &[PermitEntry],
        if_match: Option<ETag>,
        etag: ETag,
    ) -> Result<(), PermitError> {
        let entries = entries.to_vec();
        self.write(callee, if_match, etag, move |tx, callee| {
            tx.execute("DELETE FROM permit_entry WHERE callee = $1", &[&callee])?;
            for e in &entries {
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
        let (add, remove) = (add.to_vec(), remove.to_vec());
        self.write(callee, if_match, etag, move |tx, callee| {
            let mut n = 0;
            for e in &remove {
                let gone = tx.execute(
                    "DELETE FROM permit_entry WHERE callee = $1 AND entry = $2",
                    &[&callee, &e.to_string()],
                )?;
                n += usize::try_from(gone).unwrap_or(0);
            }
            for e in &add {
                n += usize::from(insert_entry(tx, callee, e)?);
            }
            Ok(n)
        })
    }

    fn import(&mut self, groups: &[(Aor, Vec<PermitEntry>, ETag)]) -> Result<(), PermitError> {
        let groups = groups.to_vec();
        let node = self.node.0.clone();
        let cursor = self.cursor;
        let (first, last) = self.db.run(move |c| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])?;
            tx.batch_execute("SET LOCAL statement_timeout = 0")?;
            for (callee, entries, etag) in &groups {
                upsert_list(&mut tx, callee.as_str(), *etag)?;
                for e in entries {
                    insert_entry(&mut tx, callee.as_str(), e)?;
                }
            }
            let span = if groups.len() > IMPORT_LOG_MAX {
                let s = log_change(&mut tx, None)?;
                (s, s)
            } else {
                let mut seqs = Vec::with_capacity(groups.len());
                for (callee, _, _) in &groups {
                    seqs.push(log_change(&mut tx, Some(callee.as_str()))?);
                }
                (
                    seqs.first().copied().unwrap_or(cursor + 1),
                    seqs.last().copied().unwrap_or(cursor),
                )
            };
            notify(&mut tx, &node)?;
            tx.commit()?;
            Ok::<_, PermitError>(span)
        })?;
        self.advance(first, last);
        Ok(())
    }

    fn poll_changes(&mut self) -> Result<Changes, PermitError> {
        if self.heard.load(Ordering::Acquire) == self.seen {
            return Ok(Changes::None);
        }
        self.poll_changes_now()
    }

    /// Reads the log even before the NOTIFY of a change this node knows was committed
    /// (its own permit writer's, on another connection) has been heard.
    fn poll_changes_now(&mut self) -> Result<Changes, PermitError> {
        let heard = self.heard.load(Ordering::Acquire);
        let cursor = self.cursor;
        let (max, changes) = self.db.run(move |c| poll_in(c, cursor))?;
        if changes != Changes::All {
            // `All` moves the cursor when the caller runs `load_all`.
            self.cursor = self.cursor.max(max);
            self.seen = heard;
        }
        Ok(changes)
    }
}

/// The changes after `cursor`: the log's head and what it names.
fn poll_in(c: &mut postgres::Client, cursor: i64) -> Result<(i64, Changes), PermitError> {
    let mut tx = c
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    let row = tx.query_one(
        "SELECT COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) FROM permit_change",
        &[],
    )?;
    let (min, max): (i64, i64) = (row.get(0), row.get(1));
    let everything = max > cursor
        && (min > cursor + 1
            || tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM permit_change WHERE seq > $1 AND callee IS NULL)",
                    &[&cursor],
                )?
                .get::<_, bool>(0));
    let changes = if max <= cursor {
        Changes::None
    } else if everything {
        Changes::All
    } else {
        let names: Vec<String> = tx
            .query(
                "SELECT DISTINCT callee FROM permit_change WHERE seq > $1",
                &[&cursor],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut lists = Vec::with_capacity(names.len());
        for name in names {
            if let Ok(aor) = Aor::parse(&name) {
                let list = load_one(&mut tx, &aor)?;
                lists.push((aor, list));
            }
        }
        Changes::Lists(lists)
    };
    tx.commit()?;
    Ok((max, changes))
}
