//! The reference implementation of [`StoredItems`] and the engine tests' double. Clones
//! share one store, so a test keeps a handle to look inside and to inject a failing
//! disk ([`MemoryItems::fail_writes`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::{Item, ItemId, ItemMeta, MailboxError, Slot, StoredItems, Usage};

#[derive(Default)]
struct Inner {
    items: BTreeMap<ItemId, Item>,
    slots: BTreeMap<ItemId, Slot>,
    /// Writes fail with this (a full or broken disk).
    failure: Option<Failure>,
}

/// An injected write failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Full,
    Unavailable,
}

#[derive(Clone, Default)]
pub struct MemoryItems {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryItems {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes every later write fail (`None`: work again).
    pub fn fail_writes(&self, failure: Option<Failure>) {
        self.lock().failure = failure;
    }

    /// Every stored item, expired ones included (tests).
    pub fn all(&self) -> Vec<Item> {
        self.lock().items.values().cloned().collect()
    }

    /// Every upload slot (tests).
    pub fn slots(&self) -> Vec<Slot> {
        self.lock().slots.values().cloned().collect()
    }

    fn check(inner: &Inner) -> Result<(), MailboxError> {
        match inner.failure {
            None => Ok(()),
            Some(Failure::Full) => Err(MailboxError::Full),
            Some(Failure::Unavailable) => Err(MailboxError::Unavailable),
        }
    }

    /// Unexpired items and slots whose (owner, sender) `pick` selects.
    fn usage(&self, unix_now: u64, pick: impl Fn(&str, &str) -> bool) -> Usage {
        let inner = self.lock();
        let items = inner
            .items
            .values()
            .filter(|i| i.expires_at > unix_now && pick(&i.owner, &i.sender))
            .map(Item::stored_size);
        let slots = inner
            .slots
            .values()
            .filter(|s| s.expires_at > unix_now && pick(&s.owner, &s.sender))
            .map(|s| s.size);
        items.chain(slots).fold(Usage::default(), |u, size| Usage {
            items: u.items + 1,
            bytes: u.bytes + size,
        })
    }
}

impl StoredItems for MemoryItems {
    fn put(&mut self, item: &Item) -> Result<(), MailboxError> {
        let mut inner = self.lock();
        Self::check(&inner)?;
        if inner.items.contains_key(&item.id) {
            return Err(MailboxError::Duplicate);
        }
        inner.items.insert(item.id, item.clone());
        Ok(())
    }

    fn get(&mut self, id: &ItemId) -> Result<Option<Item>, MailboxError> {
        Ok(self.lock().items.get(id).cloned())
    }

    fn list(
        &mut self,
        owner: &str,
        unix_now: u64,
        limit: usize,
    ) -> Result<Vec<ItemMeta>, MailboxError> {
        let mut v: Vec<ItemMeta> = self
            .lock()
            .items
            .values()
            .filter(|i| i.owner == owner && i.expires_at > unix_now)
            .map(Item::meta)
            .collect();
        v.sort_by_key(|m| (m.stored_at, m.id));
        v.truncate(limit);
        Ok(v)
    }

    fn delete(&mut self, id: &ItemId) -> Result<bool, MailboxError> {
        let mut inner = self.lock();
        Self::check(&inner)?;
        Ok(inner.items.remove(id).is_some())
    }

    fn usage_of_owner(&mut self, owner: &str, unix_now: u64) -> Result<Usage, MailboxError> {
        Ok(self.usage(unix_now, |o, _| o == owner))
    }

    fn usage_of_sender(&mut self, sender: &str, unix_now: u64) -> Result<Usage, MailboxError> {
        Ok(self.usage(unix_now, |_, s| s == sender))
    }

    fn purge_expired(&mut self, unix_now: u64) -> Result<usize, MailboxError> {
        let mut inner = self.lock();
        let before = inner.items.len() + inner.slots.len();
        inner.items.retain(|_, i| i.expires_at > unix_now);
        inner.slots.retain(|_, s| s.expires_at > unix_now);
        Ok(before - inner.items.len() - inner.slots.len())
    }

    fn put_slot(&mut self, slot: &Slot) -> Result<(), MailboxError> {
        let mut inner = self.lock();
        Self::check(&inner)?;
        if inner.slots.contains_key(&slot.id) || inner.items.contains_key(&slot.id) {
            return Err(MailboxError::Duplicate);
        }
        inner.slots.insert(slot.id, slot.clone());
        Ok(())
    }

    fn get_slot(&mut self, id: &ItemId) -> Result<Option<Slot>, MailboxError> {
        Ok(self.lock().slots.get(id).cloned())
    }

    fn complete_slot(&mut self, item: &Item) -> Result<bool, MailboxError> {
        let mut inner = self.lock();
        Self::check(&inner)?;
        if inner.slots.remove(&item.id).is_none() {
            return Ok(false);
        }
        inner.items.insert(item.id, item.clone());
        Ok(true)
    }
}
