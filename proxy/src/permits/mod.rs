//! The permitted-terminal table: for each callee AOR, the callers (exact AORs, or whole
//! domains written `*@example.com`) allowed to reach it.
//!
//! I/O contract: [`Permits`] answers [`Permits::is_permitted`] from memory in O(1)
//! ([`PermitTable`]); every change is committed to the [`PermitStore`] before it is
//! applied in memory and before the call returns, so an answered change survives a
//! kill -9. Before each read it asks the store whether another process (the operator
//! CLI on the same SQLite file) changed lists, and applies those changes first — one
//! `PRAGMA data_version` read when nothing changed. Each list carries an entity-tag for
//! conditional updates (RFC 3903 §4.1 `SIP-ETag`, §6 step 2 `SIP-If-Match` → 412).
//! See docs/permits.md.

mod aor;
mod csv;
mod error;
mod idset;
mod intern;
mod sqlite;
mod store;
mod table;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

pub use aor::{Aor, ETag, MAX_AOR_LEN, PermitEntry};
pub use csv::CsvErrors;
pub use error::PermitError;
pub use sqlite::SqlitePermitStore;
pub use store::{Changes, MemoryPermitStore, PermitStore, StoredList};
pub use table::PermitTable;

use crate::store::Durability;

/// Entries one list may hold through [`Permits::replace`] and [`Permits::add`] (the
/// paths a UA reaches); an operator's import is not limited.
pub const MAX_ENTRIES: usize = 100_000;

/// The outcome of [`Permits::add`] and [`Permits::remove`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The list's new entity-tag (fresh on every successful write, RFC 3903 §6 step 6).
    pub etag: ETag,
    /// Whether the entry set changed (`false`: already present / already absent).
    pub changed: bool,
}

/// What [`Permits::import_csv`] stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// `callee,caller` lines read (comments and blanks not counted).
    pub lines: usize,
    /// Callees whose lists the import touched (each got a new entity-tag).
    pub callees: usize,
}

/// The table and its store, for the engine (gate and PUBLISH handling) and the CLI.
pub struct Permits {
    store: Box<dyn PermitStore>,
    /// `None` when opened for administration: reads then go to the store.
    table: Option<PermitTable>,
    rng: StdRng,
}

impl Permits {
    /// Opens `DIR/permit.sqlite` and loads every list into memory (the proxy).
    pub fn open(dir: &Path, durability: Durability) -> Result<Self, PermitError> {
        let store = SqlitePermitStore::open(dir, durability)?;
        Self::with_store(Box::new(store), StdRng::from_os_rng())
    }

    /// Opens `DIR/permit.sqlite` without loading the table (the CLI: one change to a
    /// table of a million lists costs one transaction, not a full load). Reads go to
    /// the store; writes are the same as through [`Permits::open`].
    pub fn open_admin(dir: &Path, durability: Durability) -> Result<Self, PermitError> {
        let store = SqlitePermitStore::open(dir, durability)?;
        Ok(Self {
            store: Box::new(store),
            table: None,
            rng: StdRng::from_os_rng(),
        })
    }

    /// Administration mode on any store (the PostgreSQL one for the CLI and the admin
    /// API): no table in memory, reads go to the store.
    pub fn admin_with_store(store: Box<dyn PermitStore>) -> Self {
        Self {
            store,
            table: None,
            rng: StdRng::from_os_rng(),
        }
    }

    /// Loads every list of `store` into memory; `rng` draws the entity-tags.
    pub fn with_store(mut store: Box<dyn PermitStore>, rng: StdRng) -> Result<Self, PermitError> {
        let table = load_table(store.as_mut())?;
        Ok(Self {
            store,
            table: Some(table),
            rng,
        })
    }

    /// The in-memory table (`None` when opened for administration).
    pub fn table(&self) -> Option<&PermitTable> {
        self.table.as_ref()
    }

    /// Applies other writers' changes. A storage failure is logged and the table kept
    /// as it was (the gate keeps answering from the last good state).
    pub fn refresh(&mut self) {
        if let Err(e) = self.try_refresh(false) {
            tracing::warn!(error = %e, "permit table not refreshed");
        }
    }

    /// Applies every change committed so far by other writers, without waiting to be
    /// told of them (a PostgreSQL node otherwise learns of a change from its NOTIFY):
    /// after another connection's write was reported committed, reads see it.
    pub fn refresh_now(&mut self) {
        if let Err(e) = self.try_refresh(true) {
            tracing::warn!(error = %e, "permit table not refreshed");
        }
    }

    /// `now`: read the change log even without a notice of a change.
    fn try_refresh(&mut self, now: bool) -> Result<(), PermitError> {
        let Some(table) = self.table.as_mut() else {
            return Ok(());
        };
        let changes = if now {
            self.store.poll_changes_now()?
        } else {
            self.store.poll_changes()?
        };
        match changes {
            Changes::None => {}
            Changes::Lists(lists) => {
                for (callee, list) in lists {
                    match list {
                        Some(l) => table.set_list(&l.callee, &l.entries, l.etag)?,
                        None => table.drop_list(callee.as_str()),
                    }
                }
            }
            // Built aside and swapped in: no reader ever sees an emptied table.
            Changes::All => *table = load_table(self.store.as_mut())?,
        }
        Ok(())
    }

    /// Whether `caller` may reach `callee` (AOR keys, `sip:` optional; hosts are
    /// compared case-insensitively, users case-sensitively). A callee without a list
    /// permits no one.
    pub fn is_permitted(&mut self, callee: &str, caller: &str) -> bool {
        self.refresh();
        let (callee, caller) = (aor::lookup_key(callee), aor::lookup_key(caller));
        match &self.table {
            Some(t) => t.is_permitted(&callee, &caller),
            None => self
                .stored(&callee)
                .is_some_and(|l| entries_permit(&l.entries, &caller)),
        }
    }

    /// Whether `callee` has a list (possibly empty).
    pub fn known_callee(&mut self, callee: &str) -> bool {
        self.refresh();
        let callee = aor::lookup_key(callee);
        match &self.table {
            Some(t) => t.has_list(&callee),
            None => self.stored(&callee).is_some(),
        }
    }

    /// The current entity-tag of `callee`'s list.
    pub fn etag(&mut self, callee: &str) -> Option<ETag> {
        self.refresh();
        let callee = aor::lookup_key(callee);
        match &self.table {
            Some(t) => t.etag(&callee),
            None => self.stored(&callee).map(|l| l.etag),
        }
    }

    /// `callee`'s entries, sorted (exact AORs first, then domains); `None` if it has no
    /// list.
    pub fn list(&mut self, callee: &str) -> Option<Vec<PermitEntry>> {
        self.refresh();
        let callee = aor::lookup_key(callee);
        match &self.table {
            Some(t) => t.list(&callee),
            None => self.stored(&callee).map(|l| {
                let mut v = l.entries;
                v.sort_unstable();
                v
            }),
        }
    }

    /// Sets `callee`'s list to `entries`. With `if_match`, only if it names the list's
    /// current tag (else [`PermitError::PreconditionFailed`]). Returns the new tag.
    pub fn replace(
        &mut self,
        callee: &Aor,
        entries: &[PermitEntry],
        if_match: Option<&str>,
    ) -> Result<ETag, PermitError> {
        if entries.len() > MAX_ENTRIES {
            return Err(PermitError::ListTooLong { max: MAX_ENTRIES });
        }
        let (if_match, etag) = self.prepare(callee, if_match)?;
        self.store.replace(callee, entries, if_match, etag)?;
        if let Some(t) = self.table.as_mut() {
            t.set_list(callee, entries, etag)?;
        }
        Ok(etag)
    }

    /// Adds one entry to `callee`'s list (created if it has none).
    pub fn add(
        &mut self,
        callee: &Aor,
        entry: &PermitEntry,
        if_match: Option<&str>,
    ) -> Result<Written, PermitError> {
        self.edit(callee, std::slice::from_ref(entry), &[], if_match)
    }

    /// Removes one entry from `callee`'s list.
    pub fn remove(
        &mut self,
        callee: &Aor,
        entry: &PermitEntry,
        if_match: Option<&str>,
    ) -> Result<Written, PermitError> {
        self.edit(callee, &[], std::slice::from_ref(entry), if_match)
    }

    /// Removes `remove`, then adds `add` (an entry in both ends up present), as one
    /// atomic change of `callee`'s list under one new tag: the add/remove form of the
    /// management PUBLISH. `changed` is whether any entry was actually added or removed.
    pub fn edit(
        &mut self,
        callee: &Aor,
        add: &[PermitEntry],
        remove: &[PermitEntry],
        if_match: Option<&str>,
    ) -> Result<Written, PermitError> {
        let (if_match, etag) = self.prepare(callee, if_match)?;
        self.check_len(callee, add, remove)?;
        let n = self.store.edit(callee, add, remove, if_match, etag)?;
        if let Some(t) = self.table.as_mut() {
            t.edit(callee, add, remove, etag)?;
        }
        Ok(Written {
            etag,
            changed: n > 0,
        })
    }

    /// Adds every `callee,caller` line of `reader` (format in docs/permits.md) in one
    /// transaction; any bad line fails the whole import with every bad line's number.
    pub fn import_csv(&mut self, reader: impl BufRead) -> Result<Imported, PermitError> {
        let rows = csv::parse(reader)?;
        let lines = rows.len();
        let mut at: HashMap<Aor, usize> = HashMap::new();
        let mut groups: Vec<(Aor, Vec<PermitEntry>, ETag)> = Vec::new();
        for (callee, entry) in rows {
            let i = *at.entry(callee.clone()).or_insert_with(|| {
                groups.push((callee, Vec::new(), ETag::from_u64(0)));
                groups.len() - 1
            });
            groups[i].1.push(entry);
        }
        self.refresh();
        for g in &mut groups {
            let current = self.table.as_ref().and_then(|t| t.etag(g.0.as_str()));
            g.2 = self.fresh_etag(current);
        }
        self.store.import(&groups)?;
        if let Some(t) = self.table.as_mut() {
            for (callee, entries, etag) in &groups {
                let mut merged = t.list(callee.as_str()).unwrap_or_default();
                merged.extend(entries.iter().cloned());
                t.set_list(callee, &merged, *etag)?;
            }
        }
        Ok(Imported {
            lines,
            callees: groups.len(),
        })
    }

    /// Refreshes, checks `if_match` against the current tag (the store checks again
    /// inside its transaction), and draws the next tag.
    fn prepare(
        &mut self,
        callee: &Aor,
        if_match: Option<&str>,
    ) -> Result<(Option<ETag>, ETag), PermitError> {
        self.refresh();
        let current = match &self.table {
            Some(t) => t.etag(callee.as_str()),
            None => self.stored(callee.as_str()).map(|l| l.etag),
        };
        let if_match = match if_match {
            None => None,
            Some(s) => Some(ETag::parse(s).ok_or(PermitError::PreconditionFailed)?),
        };
        store::check_precondition(current, if_match)?;
        Ok((if_match, self.fresh_etag(current)))
    }

    /// [`PermitError::ListTooLong`] if the edit would leave more than [`MAX_ENTRIES`].
    fn check_len(
        &mut self,
        callee: &Aor,
        add: &[PermitEntry],
        remove: &[PermitEntry],
    ) -> Result<(), PermitError> {
        let len = match &self.table {
            Some(t) => t.list_len(callee.as_str()),
            None => self.stored(callee.as_str()).map_or(0, |l| l.entries.len()),
        };
        if len + add.len() <= MAX_ENTRIES {
            return Ok(());
        }
        // Near the limit: count exactly.
        let mut set: std::collections::BTreeSet<PermitEntry> = self
            .list(callee.as_str())
            .unwrap_or_default()
            .into_iter()
            .collect();
        for e in remove {
            set.remove(e);
        }
        set.extend(add.iter().cloned());
        if set.len() > MAX_ENTRIES {
            return Err(PermitError::ListTooLong { max: MAX_ENTRIES });
        }
        Ok(())
    }

    /// A random tag other than `current` (RFC 3903 §6 step 6).
    fn fresh_etag(&mut self, current: Option<ETag>) -> ETag {
        loop {
            let t = ETag::from_u64(self.rng.next_u64());
            if Some(t) != current {
                return t;
            }
        }
    }

    /// A list read from the store (administration mode); errors are logged.
    fn stored(&mut self, callee: &str) -> Option<StoredList> {
        let callee = Aor::parse(callee).ok()?;
        self.store
            .load(&callee)
            .inspect_err(|e| tracing::warn!(error = %e, "permit list not read"))
            .ok()
            .flatten()
    }
}

fn load_table(store: &mut dyn PermitStore) -> Result<PermitTable, PermitError> {
    let mut t = PermitTable::new();
    store.load_all(&mut |l| t.set_list(&l.callee, &l.entries, l.etag))?;
    t.shrink_to_fit();
    Ok(t)
}

/// The table's rule over a plain list (administration mode).
fn entries_permit(entries: &[PermitEntry], caller: &str) -> bool {
    let host = caller.rsplit_once('@').map(|(_, h)| h);
    entries.iter().any(|e| match e {
        PermitEntry::Exact(a) => a == caller,
        PermitEntry::Domain(d) => Some(d.as_str()) == host,
    })
}
