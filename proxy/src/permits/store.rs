//! Durable permit lists behind a trait (STYLE.md rule 9), and the in-memory reference
//! implementation that engine tests use as their double.
//!
//! Every write is conditional in the store itself (`if_match` is compared with the
//! stored entity-tag inside the write transaction, RFC 3903 §6 step 2), so two writers
//! racing on one list — the proxy answering a PUBLISH and the operator's CLI — cannot
//! both win on the same tag. A write returns only once it is committed.

use std::collections::{BTreeSet, HashMap};

use super::PermitError;
use super::aor::{Aor, ETag, PermitEntry};

/// One callee's list as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredList {
    pub callee: Aor,
    pub etag: ETag,
    pub entries: Vec<PermitEntry>,
}

/// Lists changed by other writers since the store last reported (see
/// [`PermitStore::poll_changes`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub enum Changes {
    #[default]
    None,
    /// These callees' lists as they are now; `None` for a list that no longer exists.
    Lists(Vec<(Aor, Option<StoredList>)>),
    /// Too much changed to say what: rebuild from [`PermitStore::load_all`].
    All,
}

/// Storage of the permitted-terminal table.
pub trait PermitStore: Send {
    /// Feeds every list to `sink`, one at a time (a million lists of a hundred entries
    /// never sit in memory as strings all at once); also marks everything up to now as
    /// seen for [`Self::poll_changes`]. A `sink` error stops the load and is returned.
    fn load_all(
        &mut self,
        sink: &mut dyn FnMut(StoredList) -> Result<(), PermitError>,
    ) -> Result<(), PermitError>;

    /// One callee's list, read from storage.
    fn load(&mut self, callee: &Aor) -> Result<Option<StoredList>, PermitError>;

    /// Sets `callee`'s list to `entries` (deduplicated) under tag `etag`.
    /// `if_match`: the write happens only if the stored tag equals it (an absent list
    /// matches no tag), else [`PermitError::PreconditionFailed`].
    fn replace(
        &mut self,
        callee: &Aor,
        entries: &[PermitEntry],
        if_match: Option<ETag>,
        etag: ETag,
    ) -> Result<(), PermitError>;

    /// Removes `remove`, then adds `add` (so an entry in both ends up present),
    /// creating the list if there is none, and sets the tag — one atomic change.
    /// Returns how many entries were actually removed or added (the tag changes even
    /// when that is 0).
    fn edit(
        &mut self,
        callee: &Aor,
        add: &[PermitEntry],
        remove: &[PermitEntry],
        if_match: Option<ETag>,
        etag: ETag,
    ) -> Result<usize, PermitError>;

    /// Adds each group of entries to its callee's list and sets that list's tag, all in
    /// one transaction: either every group is stored or none is.
    fn import(&mut self, groups: &[(Aor, Vec<PermitEntry>, ETag)]) -> Result<(), PermitError>;

    /// Lists that other writers (another process on the same file) changed since the
    /// last call, `load_all` or own write. Cheap when nothing changed: the proxy calls
    /// it before every lookup.
    fn poll_changes(&mut self) -> Result<Changes, PermitError>;

    /// Like [`Self::poll_changes`], but reads the change log even when no notice of a
    /// change arrived yet (a store told of changes asynchronously overrides this).
    fn poll_changes_now(&mut self) -> Result<Changes, PermitError> {
        self.poll_changes()
    }
}

/// RFC 3903 §6 step 2: a conditional write needs the current tag to be the one named.
pub(crate) fn check_precondition(
    current: Option<ETag>,
    if_match: Option<ETag>,
) -> Result<(), PermitError> {
    match if_match {
        Some(want) if current != Some(want) => Err(PermitError::PreconditionFailed),
        _ => Ok(()),
    }
}

/// The reference implementation: lists in a map, nothing shared with anyone, so
/// [`PermitStore::poll_changes`] never reports anything.
#[derive(Debug, Default)]
pub struct MemoryPermitStore {
    lists: HashMap<Aor, (ETag, BTreeSet<PermitEntry>)>,
}

impl MemoryPermitStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn stored(callee: &Aor, etag: ETag, set: &BTreeSet<PermitEntry>) -> StoredList {
        StoredList {
            callee: callee.clone(),
            etag,
            entries: set.iter().cloned().collect(),
        }
    }

    fn checked(
        &mut self,
        callee: &Aor,
        if_match: Option<ETag>,
        etag: ETag,
    ) -> Result<&mut BTreeSet<PermitEntry>, PermitError> {
        check_precondition(self.lists.get(callee).map(|l| l.0), if_match)?;
        let list = self
            .lists
            .entry(callee.clone())
            .or_insert_with(|| (etag, BTreeSet::new()));
        list.0 = etag;
        Ok(&mut list.1)
    }
}

impl PermitStore for MemoryPermitStore {
    fn load_all(
        &mut self,
        sink: &mut dyn FnMut(StoredList) -> Result<(), PermitError>,
    ) -> Result<(), PermitError> {
        for (c, (t, s)) in &self.lists {
            sink(Self::stored(c, *t, s))?;
        }
        Ok(())
    }

    fn load(&mut self, callee: &Aor) -> Result<Option<StoredList>, PermitError> {
        Ok(self
            .lists
            .get(callee)
            .map(|(t, s)| Self::stored(callee, *t, s)))
    }

    fn replace(
        &mut self,
        callee: &Aor,
        entries: &[PermitEntry],
        if_match: Option<ETag>,
        etag: ETag,
    ) -> Result<(), PermitError> {
        *self.checked(callee, if_match, etag)? = entries.iter().cloned().collect();
        Ok(())
    }

    fn edit(
        &mut self,
        callee: &Aor,
        add: &[PermitEntry],
        remove: &[PermitEntry],
        if_match: Option<ETag>,
        etag: ETag,
    ) -> Result<usize, PermitError> {
        let set = self.checked(callee, if_match, etag)?;
        let removed = remove.iter().filter(|e| set.remove(e)).count();
        let added = add.iter().filter(|e| set.insert((*e).clone())).count();
        Ok(removed + added)
    }

    fn import(&mut self, groups: &[(Aor, Vec<PermitEntry>, ETag)]) -> Result<(), PermitError> {
        for (callee, entries, etag) in groups {
            self.checked(callee, None, *etag)?
                .extend(entries.iter().cloned());
        }
        Ok(())
    }

    fn poll_changes(&mut self) -> Result<Changes, PermitError> {
        Ok(Changes::None)
    }
}
