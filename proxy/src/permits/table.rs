//! The in-memory permitted-terminal table: for each callee with a list, the set of
//! callers (exact AORs and whole domains) allowed to reach it, answered in O(1).
//!
//! Layout for a million lists of a hundred entries: every AOR and domain is interned
//! once ([`Interner`]); a callee's list is an [`IdSet`] of caller ids, domains tagged
//! with the top bit; the lists sit in one dense vector, and a callee's interned name
//! carries the position of its list. A lookup is two interner probes (callee, caller)
//! plus one set probe, and a third interner probe for the caller's domain when the
//! exact AOR is not on the list. Each change is applied in one call on the single engine thread, so a
//! reader sees a list either before or after it, never half-way.

use super::PermitError;
use super::aor::{Aor, ETag, PermitEntry};
use super::idset::IdSet;
use super::intern::{Interner, NO_TAG};

/// Marks a domain entry in an [`IdSet`] (ids stay below 2^31 - 2).
const DOMAIN: u32 = 1 << 31;

struct List {
    set: IdSet,
    callee: u32,
    etag: ETag,
}

/// Callee lists in memory. Keys are canonical AORs ([`Aor`] form).
#[derive(Default)]
pub struct PermitTable {
    /// Names; a callee's tag is the position of its list in `lists`.
    names: Interner,
    lists: Vec<List>,
    entries: usize,
}

impl PermitTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `caller` may reach `callee` (both canonical AOR keys): the caller's AOR
    /// is on the callee's list, or its domain is. A callee without a list permits no
    /// one.
    pub fn is_permitted(&self, callee: &str, caller: &str) -> bool {
        let Some(list) = self.find(callee) else {
            return false;
        };
        if self.names.accepts(caller, |id| list.set.contains(id)) {
            return true;
        }
        caller.rsplit_once('@').is_some_and(|(_, host)| {
            self.names
                .accepts(host, |id| list.set.contains(id | DOMAIN))
        })
    }

    /// Whether `callee` has a list (possibly empty).
    pub fn has_list(&self, callee: &str) -> bool {
        self.find(callee).is_some()
    }

    pub fn etag(&self, callee: &str) -> Option<ETag> {
        self.find(callee).map(|l| l.etag)
    }

    /// The entries of `callee`'s list, sorted (exact AORs, then domains, each by text).
    pub fn list(&self, callee: &str) -> Option<Vec<PermitEntry>> {
        let list = self.find(callee)?;
        let mut out: Vec<PermitEntry> = list.set.iter().map(|v| self.entry(v)).collect();
        out.sort_unstable();
        Some(out)
    }

    /// Number of entries of `callee`'s list (0 when it has none).
    pub fn list_len(&self, callee: &str) -> usize {
        self.find(callee).map_or(0, |l| l.set.len())
    }

    /// Number of callees with a list.
    pub fn callees(&self) -> usize {
        self.lists.len()
    }

    /// Number of distinct names (callees, callers, domains) interned.
    pub fn names(&self) -> usize {
        self.names.len()
    }

    /// Number of entries over all lists.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Heap bytes the table holds by its own accounting (capacities; the allocator's
    /// per-block overhead comes on top).
    pub fn heap_bytes(&self) -> usize {
        self.names.heap_bytes()
            + self.lists.capacity() * std::mem::size_of::<List>()
            + self.lists.iter().map(|l| l.set.heap_bytes()).sum::<usize>()
    }

    /// Gives back spare capacity after a bulk load (the arena and the list vector grow
    /// by doubling).
    pub fn shrink_to_fit(&mut self) {
        self.names.shrink_to_fit();
        self.lists.shrink_to_fit();
    }

    /// Sets `callee`'s list to exactly `entries` with tag `etag`.
    pub fn set_list(
        &mut self,
        callee: &Aor,
        entries: &[PermitEntry],
        etag: ETag,
    ) -> Result<(), PermitError> {
        let ids = entries
            .iter()
            .map(|e| self.intern_entry(e))
            .collect::<Result<Vec<u32>, _>>()?;
        let set = IdSet::from_ids(&ids);
        let pos = self.slot_for(callee)?;
        let list = &mut self.lists[pos];
        self.entries = self.entries - list.set.len() + set.len();
        list.set = set;
        list.etag = etag;
        Ok(())
    }

    /// Removes `remove`, then adds `add` (an entry in both ends up present) on
    /// `callee`'s list, created if missing, and sets its tag. Returns how many entries
    /// were removed or added. Names are interned before anything changes, so a
    /// [`PermitError::TableFull`] leaves the list as it was.
    pub fn edit(
        &mut self,
        callee: &Aor,
        add: &[PermitEntry],
        remove: &[PermitEntry],
        etag: ETag,
    ) -> Result<usize, PermitError> {
        let add_ids = add
            .iter()
            .map(|e| self.intern_entry(e))
            .collect::<Result<Vec<u32>, _>>()?;
        let mut remove_ids: Vec<u32> = remove.iter().filter_map(|e| self.lookup_entry(e)).collect();
        remove_ids.sort_unstable();
        let pos = self.slot_for(callee)?;
        let list = &mut self.lists[pos];
        let before = list.set.len();
        let mut removed = 0;
        if remove_ids.iter().any(|&id| list.set.contains(id)) {
            let keep: Vec<u32> = list
                .set
                .iter()
                .filter(|id| remove_ids.binary_search(id).is_err())
                .collect();
            removed = before - keep.len();
            list.set = IdSet::from_ids(&keep);
        }
        let added = add_ids.iter().filter(|&&id| list.set.insert(id)).count();
        self.entries = self.entries - before + list.set.len();
        list.etag = etag;
        Ok(removed + added)
    }

    /// Forgets `callee`'s list altogether (it becomes unknown).
    pub fn drop_list(&mut self, callee: &str) {
        let Some(slot) = self.names.get(callee).filter(|s| s.tag != NO_TAG) else {
            return;
        };
        self.names.set_tag(callee, NO_TAG);
        let pos = slot.tag as usize;
        let gone = self.lists.swap_remove(pos);
        self.entries -= gone.set.len();
        if let Some(moved) = self.lists.get(pos) {
            let name = self.names.resolve(moved.callee).to_owned();
            self.names.set_tag(&name, slot.tag);
        }
    }

    fn find(&self, callee: &str) -> Option<&List> {
        let slot = self.names.get(callee)?;
        self.lists.get(slot.tag as usize)
    }

    /// Position of `callee`'s list, creating an empty one if needed.
    fn slot_for(&mut self, callee: &Aor) -> Result<usize, PermitError> {
        let slot = self
            .names
            .intern(callee.as_str())
            .ok_or(PermitError::TableFull)?;
        if slot.tag != NO_TAG {
            return Ok(slot.tag as usize);
        }
        let pos = u32::try_from(self.lists.len())
            .ok()
            .filter(|&p| p != NO_TAG)
            .ok_or(PermitError::TableFull)?;
        self.lists.push(List {
            set: IdSet::default(),
            callee: slot.id,
            etag: ETag::from_u64(0),
        });
        self.names.set_tag(callee.as_str(), pos);
        Ok(pos as usize)
    }

    fn intern_entry(&mut self, e: &PermitEntry) -> Result<u32, PermitError> {
        let id = match e {
            PermitEntry::Exact(aor) => self.names.intern(aor).map(|s| s.id),
            PermitEntry::Domain(host) => self.names.intern(host).map(|s| s.id | DOMAIN),
        };
        id.ok_or(PermitError::TableFull)
    }

    fn lookup_entry(&self, e: &PermitEntry) -> Option<u32> {
        match e {
            PermitEntry::Exact(aor) => self.names.get(aor).map(|s| s.id),
            PermitEntry::Domain(host) => self.names.get(host).map(|s| s.id | DOMAIN),
        }
    }

    fn entry(&self, v: u32) -> PermitEntry {
        if v & DOMAIN == 0 {
            PermitEntry::Exact(self.names.resolve(v).to_owned())
        } else {
            PermitEntry::Domain(self.names.resolve(v & !DOMAIN).to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aor(s: &str) -> Aor {
        Aor::parse(s).unwrap()
    }
    fn e(s: &str) -> PermitEntry {
        PermitEntry::parse(s).unwrap()
    }
    const T1: ETag = ETag::from_u64(1);

    #[test]
    fn exact_and_domain_entries() {
        let mut t = PermitTable::new();
        let bob = aor("bob@example.com");
        t.set_list(&bob, &[e("alice@example.com"), e("*@partner.org")], T1)
            .unwrap();
        assert!(t.is_permitted("bob@example.com", "alice@example.com"));
        assert!(t.is_permitted("bob@example.com", "anyone@partner.org"));
        assert!(!t.is_permitted("bob@example.com", "carol@example.com"));
        // The user part is case-sensitive; keys arrive canonical (host lowercase).
        assert!(!t.is_permitted("bob@example.com", "Alice@example.com"));
        assert!(!t.is_permitted("Bob@example.com", "alice@example.com"));
        // A domain entry does not match a subdomain or the bare host.
        assert!(!t.is_permitted("bob@example.com", "x@sub.partner.org"));
        assert!(!t.is_permitted("bob@example.com", "partner.org"));
        // Unknown callee and a known name that has no list.
        assert!(!t.is_permitted("nobody@example.com", "alice@example.com"));
        assert!(!t.is_permitted("alice@example.com", "bob@example.com"));
        assert!(!t.has_list("alice@example.com"));
        assert_eq!(
            t.list("bob@example.com").unwrap(),
            vec![e("alice@example.com"), e("*@partner.org")]
        );
        assert_eq!((t.callees(), t.entries()), (1, 2));
    }

    #[test]
    fn changes_replace_add_remove_drop() {
        let mut t = PermitTable::new();
        let bob = aor("bob@example.com");
        let carol = aor("carol@example.com");
        assert_eq!(t.edit(&bob, &[e("alice@example.com")], &[], T1).unwrap(), 1);
        assert_eq!(t.edit(&bob, &[e("alice@example.com")], &[], T1).unwrap(), 0);
        t.set_list(&carol, &[e("bob@example.com"), e("bob@example.com")], T1)
            .unwrap();
        assert_eq!(t.list_len("carol@example.com"), 1);
        let both = [e("alice@example.com"), e("*@x.org")];
        // alice removed and re-added, *@x.org added: three changes, two entries.
        assert_eq!(t.edit(&bob, &both, &both, ETag::from_u64(2)).unwrap(), 3);
        assert_eq!(t.list_len("bob@example.com"), 2);
        assert_eq!(t.edit(&bob, &[], &both, ETag::from_u64(2)).unwrap(), 2);
        let nobody = [e("nobody@x.org")];
        assert_eq!(t.edit(&bob, &[], &nobody, ETag::from_u64(3)).unwrap(), 0);
        assert_eq!(t.etag("bob@example.com"), Some(ETag::from_u64(3)));
        assert_eq!(t.list("bob@example.com").unwrap(), vec![]);
        assert!(t.has_list("bob@example.com"));
        t.set_list(&bob, &[e("*@example.com")], T1).unwrap();
        assert!(t.is_permitted("bob@example.com", "carol@example.com"));
        assert_eq!(t.entries(), 2);
        t.drop_list("bob@example.com");
        assert!(!t.has_list("bob@example.com"));
        assert!(t.is_permitted("carol@example.com", "bob@example.com"));
        assert_eq!((t.callees(), t.entries()), (1, 1));
        t.drop_list("bob@example.com");
        t.drop_list("carol@example.com");
        assert_eq!((t.callees(), t.entries()), (0, 0));
        assert!(!t.is_permitted("carol@example.com", "bob@example.com"));
    }
}
